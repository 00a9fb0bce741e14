"""Thin layers that speak the seed libraries' names on sagakit's one engine.

Code written for one of these libraries runs on sagakit by changing its imports (and, where the
library had no engine object, adding one ``Engine(...)`` line):

* :mod:`sagakit.compat.restate_saga` — restate-saga (Python), with :mod:`sagakit.compat.restate`
  standing in for the few ``restate`` SDK names its examples use
  (``import sagakit.compat.restate as restate``). Guide: ``docs/migrating/restate-saga.md``.
* :mod:`sagakit.compat.saga_orchestrator` — python-saga-orchestrator.
* :mod:`sagakit.compat.minos` — minos-microservice-saga's execution engine.

Each module only translates names and call shapes; the journal, replay, compensation and
retries are sagakit's own. ``docs/migrating/`` has one guide per library: every public name
and its sagakit spelling, and each behaviour that differs, with why.
"""

"""Code changed in place under live sagas: ``saga.patched`` and ``saga.deprecate_patch``, as in
Temporal. Mixed into :class:`~sagakit.engine.run.SagaRun`.

A patch point takes its sequence number only when it is, or becomes, part of the journal:

* past the end of the journal (the saga reaches the point for the first time, on the new
  code): a ``patch`` entry named after the change id is journaled, ``patched`` is True;
* replaying, and the entry at this number is the marker of this change: it is taken, True;
* replaying, and the entry there is anything else: the journal was written by code without
  the patch; False, and the number is left to the old code path, which replays against it.

"Past the end" is judged on the calling strand: no entry at this number nor at any later
number of the same strand (those equal to it modulo the strand's stride, which its nested
gathers use too). A missing entry with later ones recorded belongs to an operation of the
old code that never got journaled (a step still running when its worker died), not to the
new code's path.

The marker is written behind, like a clock reading: it leaves nothing outside the run, and
whatever does (the next step, a wait, the outcome) settles it first. Lost in a crash, it takes
every later entry with it (appends commit in order), so the next run finds the same journal's
end at the same point and decides the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import NonDeterminismError
from ..stores.base import EntryKind, EntryStatus, JournalEntry
from .core import RunCore

if TYPE_CHECKING:
    from .parallel import Strand


class PatchesMixin(RunCore):
    """``saga.patched`` / ``saga.deprecate_patch`` of a run (see the module docstring)."""

    _nondeterminism: NonDeterminismError | None

    if TYPE_CHECKING:  # implemented by ParallelMixin

        def _numbering(self) -> Strand: ...

    def patch(self, change_id: str, deprecated: bool) -> bool:
        """``saga.patched(change_id)`` (``deprecated``: ``saga.deprecate_patch``, which never
        journals a marker and answers only whether it took one)."""
        strand = self._numbering()
        seq = strand.next
        entry = self._journal.get(seq)
        if entry is not None and entry.kind == EntryKind.PATCH:
            if entry.name == change_id:
                # looked up like any replayed operation (a replay check counts it as met)
                self._recorded(strand.take(), EntryKind.PATCH, change_id)
                return True
            if deprecated:
                # every saga reaching a deprecated patch ran with it or before it: a marker of
                # another change means this code is not the code that journal was written by
                error = NonDeterminismError(
                    self.saga_id,
                    seq,
                    f"patch {entry.name!r}",
                    f"saga.deprecate_patch({change_id!r})",
                )
                self._nondeterminism = self._nondeterminism or error
                raise error
            # another change's marker: an older patch of the same place (`if patched("v3"):
            # ... elif patched("v2"): ...`), whose own call comes next
            return False
        if deprecated or entry is not None or self._recorded_after(strand):
            return False
        self._recorded(seq, EntryKind.PATCH, change_id)  # None: where a replay check stops
        self._check_draining()
        strand.take()
        now = self.clock.now()
        marker = JournalEntry(
            self.saga_id, seq, EntryKind.PATCH, change_id, EntryStatus.COMPLETED, 1, None, None,
            None, now, now,
        )  # fmt: skip
        self._write_behind(marker)
        return True

    def _recorded_after(self, strand: Strand) -> bool:
        """Whether the journal holds an entry at a later number of ``strand``."""
        start, stride = strand.next, strand.stride
        return any(s > start and (s - start) % stride == 0 for s in self._journal)


__all__ = ["PatchesMixin"]

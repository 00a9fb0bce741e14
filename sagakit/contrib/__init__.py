"""Integrations of sagakit with other frameworks, each in a module of its own that imports its
framework only when imported itself: :mod:`sagakit.contrib.fastapi` (``pip install
'sagakit[fastapi]'``)."""

"""sagakit's test suite (a package, so that helpers run as ``python -m tests.<module>``)."""

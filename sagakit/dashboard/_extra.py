"""The dashboard's third-party parts (Starlette, Jinja2, uvicorn: ``sagakit[dashboard]``),
checked before they are imported, so that a missing one is a sentence naming the extra."""

from __future__ import annotations

import importlib.util

from ..errors import SagaError

__all__ = ["REQUEST_TIMEOUT", "DashboardNotInstalled", "require_dashboard"]

#: the longest a request waits for the database before it gives up
REQUEST_TIMEOUT = 30.0

_MODULES = {"starlette": "Starlette", "jinja2": "Jinja2", "uvicorn": "uvicorn"}


class DashboardNotInstalled(SagaError, ImportError):
    """The dashboard's dependencies are not installed (``pip install 'sagakit[dashboard]'``)."""


def require_dashboard() -> None:
    """Raise DashboardNotInstalled, naming what is missing, unless Starlette, Jinja2 and
    uvicorn are importable."""
    missing = [
        name for module, name in _MODULES.items() if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise DashboardNotInstalled(
            f"the sagakit dashboard needs {', '.join(missing)}, which are not installed: "
            "pip install 'sagakit[dashboard]'"
        )

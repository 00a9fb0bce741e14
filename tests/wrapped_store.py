"""A base for the tests' store wrappers: a real store, with some of its calls intercepted.

A subclass overrides the calls it watches or holds; everything else (and ``on_work``, which
the engine sets) passes to the real store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sagakit.stores.base import Store


class WrappedStore:
    """Passes every call to ``inner`` unless a subclass overrides it."""

    def __init__(self, inner: Store):
        self.inner = inner

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def on_work(self) -> Callable[[], None] | None:
        return self.inner.on_work

    @on_work.setter
    def on_work(self, value: Callable[[], None] | None) -> None:
        self.inner.on_work = value

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

"""What the test servers (PostgreSQL, Restate, an ASGI app) share: each is a context manager
that starts on enter, cleans up if starting fails, and cleans up on exit."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Served:
    """A server a test starts with ``with``; subclasses give ``start`` and ``cleanup``."""

    def start(self) -> Self:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

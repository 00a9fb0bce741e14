"""restate-saga's terminal-error registry: sagakit's one registry, with restate-saga's
``clear_terminal_errors`` (the classes only) and ``resolve_terminal_error``."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from ... import errors
from ...errors import (
    ErrorMapper,
    TerminalError,
    register_terminal_errors,
    unregister_terminal_errors,
)

#: restate-saga's ``ErrorMapper``: ``(err) -> TerminalError | None``
Mapper = Callable[[Exception], TerminalError | None]

__all__ = [
    "clear_terminal_errors",
    "register_terminal_errors",
    "resolve_terminal_error",
    "set_global_error_mapper",
    "unregister_terminal_errors",
]


def clear_terminal_errors() -> None:
    """Forget every registered terminal error class (the global mapper stays, as in
    restate-saga; sagakit's own ``clear_terminal_errors`` forgets both)."""
    mapper = errors._global_mapper
    errors.clear_terminal_errors()
    errors.set_global_error_mapper(mapper)


def set_global_error_mapper(mapper: Mapper | None) -> None:
    """Set the function asked, after the registered classes, whether a step's error is
    terminal: it returns a ``TerminalError`` (terminal) or None (retried)."""
    # sagakit only ever asks a mapper about an Exception
    errors.set_global_error_mapper(cast(ErrorMapper | None, mapper))


def resolve_terminal_error(
    err: Exception, step_mapper: Mapper | None = None
) -> TerminalError | None:
    """The terminal form of ``err``, as a step resolves it: ``step_mapper`` first, then the
    registered classes, then the global mapper; None means the error is retried. A
    :class:`TerminalError` is its own terminal form."""
    if step_mapper is not None:
        mapped = step_mapper(err)
        if mapped is not None:
            return mapped
    return errors.as_terminal(err)

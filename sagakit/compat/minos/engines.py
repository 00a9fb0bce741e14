"""Which sagakit Engine a minos object runs on, and opening it when nobody did.

A repository or manager holds its Engine; a lone ``SagaExecution`` takes ``engine=`` or the
process default set with :func:`set_default_engine`. An engine that is not started yet
(``async with engine:``) is started on first use, so that minos code that never had an engine
object runs by adding one line; close it with ``await engine.close()`` (or the repository's
``destroy()``, for an engine the repository made).
"""

from __future__ import annotations

import asyncio
import weakref

from ...engine import Engine
from .exceptions import SagaException

_default: Engine | None = None
_locks: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()
#: engines this layer started (and so may close)
opened_here: weakref.WeakSet[Engine] = weakref.WeakSet()


def set_default_engine(engine: Engine | str) -> Engine:
    """Make ``engine`` (or ``Engine(url)``) the one minos objects use when they are given none;
    return it."""
    global _default
    _default = engine if isinstance(engine, Engine) else Engine(engine)
    return _default


def default_engine() -> Engine:
    """The engine set with :func:`set_default_engine`."""
    if _default is None:
        raise SagaException(
            "no sagakit Engine for this minos execution: pass engine=Engine(url) (to "
            "SagaExecution.from_definition / from_raw, SagaManager or "
            "DatabaseSagaExecutionRepository), or call "
            "sagakit.compat.minos.set_default_engine(Engine(url)) once at start-up"
        )
    return _default


async def started(engine: Engine) -> Engine:
    """``engine``, started (as ``async with engine`` does) if it was not."""
    lock = _locks.setdefault(engine, asyncio.Lock())
    async with lock:
        if not engine.is_open:
            await engine.__aenter__()
            opened_here.add(engine)
    return engine


__all__ = ["default_engine", "opened_here", "set_default_engine", "started"]

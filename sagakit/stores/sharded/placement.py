"""Where a saga, a queue, a schedule and a state scope live among N shards: pure functions.

The shard of a key is ``blake2b(key) % N``: the same in every process, machine and Python run
(never ``hash()``, which is salted per process). These functions must never change: a saga
written under one placement is looked for under it, and a change would send every process's
first lookup to the wrong database (tests/test_sharded_store.py pins known values).

What decides the key (:func:`placement_key`), in order of precedence:

1. a saga's ``object_key``: the sagas of a virtual object run one at a time in arrival order,
   which the store enforces inside one database, so they all live on one shard (with the
   object's state);
2. its ``queue``: a queue's limits are counted in the claim's transaction, so a queue (its
   sagas and its declared limits) lives wholly on one shard;
3. else its ``saga_id``.

A schedule lives on the shard of its name; a state scope on the shard of the saga or object
it belongs to.
"""

from __future__ import annotations

from hashlib import blake2b

from ..base import NewSaga

__all__ = [
    "placement_key",
    "scope_key",
    "shard_for",
    "shard_of_saga",
]

#: the scope prefixes of sagakit.engine.waits (a saga's state, an object's state)
_SAGA_SCOPE = "saga:"
_OBJECT_SCOPE = "object:"


def shard_for(key: str, shards: int) -> int:
    """The index (0 to ``shards - 1``) of the shard that holds ``key``.

    >>> shard_for("order-1", 2)
    1
    """
    if shards < 1:
        raise ValueError(f"a sharded store needs at least one shard, not {shards}")
    digest = blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def placement_key(new: NewSaga) -> str:
    """The key a new saga is placed by: its object key, else its queue, else its id."""
    if new.object_key is not None:
        return new.object_key
    if new.queue is not None:
        return new.queue
    return new.saga_id


def shard_of_saga(new: NewSaga, shards: int) -> int:
    """The shard a new saga is written to."""
    return shard_for(placement_key(new), shards)


def scope_key(scope: str) -> str:
    """The key of a state scope's shard: the object key of an object's scope, the saga id of
    a saga's (whose saga may live elsewhere: see :meth:`ShardedStore.load_state`)."""
    if scope.startswith(_OBJECT_SCOPE):
        return scope.removeprefix(_OBJECT_SCOPE)
    return scope.removeprefix(_SAGA_SCOPE)

"""One store over several databases of one kind, each saga placed on one of them by a hash
(see docs/sharding.md): :class:`ShardedStore`, the ``shards:`` URL, and the placement rules."""

from __future__ import annotations

from .placement import placement_key, shard_for
from .store import ShardedStore
from .urls import SHARDS_PREFIX, is_sharded_url, shard_urls, sharded_url

__all__ = [
    "SHARDS_PREFIX",
    "ShardedStore",
    "is_sharded_url",
    "placement_key",
    "shard_for",
    "shard_urls",
    "sharded_url",
]

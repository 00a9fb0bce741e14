"""Which shard holds a saga: its placement first, then the others, with a bounded memory of
what was learnt.

A saga is written to the shard of its placement key (:mod:`.placement`), which is its id only
when it has no object key and no queue. A lookup by id alone therefore reads the shard of the
id first (right for most sagas), then the others at once. What a process learns (a saga it
created, claimed, loaded or listed) is kept in a bounded LRU map, so that a saga's own writes
(its appends, renewals, releases) never look.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence

from ..base import SagaRecord, Store
from .fanout import gather_shards
from .placement import shard_for

__all__ = ["DEFAULT_CACHE_SIZE", "Router"]

#: how many saga ids a process remembers the shard of
DEFAULT_CACHE_SIZE = 100_000


class Router:
    """The shards and what this process knows of where each saga is."""

    def __init__(self, shards: Sequence[Store], labels: Sequence[str], cache_size: int):
        self.shards = list(shards)
        self.labels = list(labels)
        self._known: OrderedDict[str, int] = OrderedDict()
        self._cache_size = max(1, cache_size)

    @property
    def count(self) -> int:
        return len(self.shards)

    def learn(self, saga_id: str, shard: int) -> None:
        """Remember that ``saga_id`` is on ``shard``."""
        known = self._known
        known[saga_id] = shard
        known.move_to_end(saga_id)
        if len(known) > self._cache_size:
            known.popitem(last=False)

    def forget(self, saga_id: str) -> None:
        """Forget a saga (deleted: its id may be used again, placed anew)."""
        self._known.pop(saga_id, None)

    def known(self, saga_id: str) -> int | None:
        """The shard this process knows ``saga_id`` is on, without looking."""
        shard = self._known.get(saga_id)
        if shard is not None:
            self._known.move_to_end(saga_id)
        return shard

    async def find(self, saga_id: str) -> tuple[int, SagaRecord] | None:
        """The shard that holds ``saga_id`` and its row, or None when no shard has it."""
        first = self.known(saga_id)
        if first is None:
            first = shard_for(saga_id, self.count)
        record = await self.shards[first].load_saga(saga_id)
        if record is not None:
            self.learn(saga_id, first)
            return first, record
        if first == self._known.get(saga_id):
            self.forget(saga_id)  # deleted since, or a stale memory: look everywhere
        others = [i for i in range(self.count) if i != first]
        found = await gather_shards(
            [self.labels[i] for i in others], [self.shards[i].load_saga(saga_id) for i in others]
        )
        for i, record in zip(others, found, strict=True):
            if record is not None:
                self.learn(saga_id, i)
                return i, record
        return None

    async def locate(self, saga_id: str) -> int | None:
        """The shard that holds ``saga_id`` (known, or looked up), or None."""
        shard = self.known(saga_id)
        if shard is not None:
            return shard
        found = await self.find(saga_id)
        return None if found is None else found[0]

    async def locate_many(self, saga_ids: Sequence[str]) -> dict[int, list[str]]:
        """``saga_ids`` grouped by the shard that holds them (unknown ids are left out)."""
        groups: dict[int, list[str]] = {}
        unknown = [s for s in saga_ids if self.known(s) is None]
        if unknown:
            await asyncio.gather(*(self.locate(s) for s in unknown))
        for saga_id in saga_ids:
            shard = self.known(saga_id)
            if shard is not None:
                groups.setdefault(shard, []).append(saga_id)
        return groups

"""Asking every shard at once, and making one answer of their answers.

A fan-out runs concurrently (one task per shard) and waits for every shard, so that no query
is left running behind a failure; then the first failure is raised: a StoreError names the
shard it came from (its URL with the password hidden), anything else is raised as it is.

Claims and lease renewals are the exception (:func:`gather_available`): they go on with the
shards that answer. A claim that failed on one shard after another shard had leased sagas to
this worker must still hand those sagas over (dropped, they would wait out their lease), and
one database down must not stop the work on the others.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from ...errors import StoreError
from ..base import SagaRecord

T = TypeVar("T")

__all__ = ["gather_available", "gather_shards", "merge_newest", "named", "split_limit"]

log = logging.getLogger("sagakit.stores.sharded")


def named(label: str, exc: StoreError) -> StoreError:
    """``exc`` as raised by the shard ``label``: the same error, its message naming the shard
    (a message that names it already is left as it is)."""
    if label in str(exc):
        return exc
    error = StoreError(f"{label}: {exc}")
    error.__cause__ = exc
    return error


async def gather_shards(labels: Sequence[str], calls: Sequence[Awaitable[T]]) -> list[T]:
    """The answers of ``calls`` (one per shard, in shard order), run concurrently."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for label, result in zip(labels, results, strict=True):
        if isinstance(result, StoreError):
            raise named(label, result)
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


async def gather_available(
    labels: Sequence[str], calls: Sequence[Awaitable[T]]
) -> tuple[list[T | None], list[StoreError]]:
    """The answers of ``calls`` run concurrently, ``None`` for each shard that failed with a
    StoreError (returned apart, each naming its shard); any other error is raised."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    answers: list[T | None] = []
    errors: list[StoreError] = []
    for label, result in zip(labels, results, strict=True):
        if isinstance(result, StoreError):
            errors.append(named(label, result))
            answers.append(None)
        elif isinstance(result, BaseException):
            raise result
        else:
            answers.append(result)
    return answers, errors


def unless_all_failed(errors: Sequence[StoreError], asked: int, what: str) -> None:
    """Raise the first error when every shard asked failed; else log the failures (the work
    goes on with the shards that answered)."""
    if errors and len(errors) >= asked:
        raise errors[0]
    for error in errors:
        log.warning("%s went on without a shard that failed: %s", what, error)


def split_limit(limit: int, shards: int, start: int) -> list[int]:
    """``limit`` shared among ``shards`` as evenly as possible, the extra ones going to the
    shards from ``start`` on (a caller that rotates ``start`` is fair to every shard)."""
    base, extra = divmod(max(0, limit), shards)
    shares = [base] * shards
    for i in range(extra):
        shares[(start + i) % shards] += 1
    return shares


async def fill(
    limit: int,
    shards: int,
    start: int,
    labels: Sequence[str],
    take: Callable[[int, int], Awaitable[list[T]]],
) -> list[T]:
    """Up to ``limit`` items taken from the shards by ``take(shard, share)``: first every
    shard's share at once (:func:`split_limit`), then, while items are missing, the rest asked
    one shard at a time (from ``start`` on) of those that were asked nothing or gave their
    whole share (they may hold more)."""
    shares = split_limit(limit, shards, start)
    asked = [i for i in range(shards) if shares[i] > 0]
    pages, errors = await gather_available(
        [labels[i] for i in asked], [take(i, shares[i]) for i in asked]
    )
    failed = {i for i, page in zip(asked, pages, strict=True) if page is None}
    taken: list[T] = [item for page in pages if page is not None for item in page]
    full = {i for i, page in zip(asked, pages, strict=True) if page and len(page) >= shares[i]}
    for step in range(shards):
        if len(taken) >= limit:
            break
        i = (start + step) % shards
        if i in failed or (shares[i] > 0 and i not in full):
            continue  # it failed, or gave less than asked: it has no more
        try:
            taken.extend(await take(i, limit - len(taken)))
        except StoreError as exc:
            errors.append(named(labels[i], exc))
            failed.add(i)
    # sagas some shards leased to this worker are handed over even when others failed
    if not taken and asked and failed.issuperset(asked):
        raise errors[0]
    for error in errors:
        log.warning("a claim went on without a shard that failed: %s", error)
    return taken


def _newest_key(record: SagaRecord) -> tuple[float, str]:
    return (record.created_at, record.saga_id)


def merge_newest(pages: Iterable[list[SagaRecord]], limit: int) -> list[SagaRecord]:
    """The newest ``limit`` records of pages that are each newest first (by ``created_at``,
    then ``saga_id``, both descending: the stores' ``list_sagas`` order)."""
    merged = heapq.merge(*pages, key=_newest_key, reverse=True)
    out: list[SagaRecord] = []
    for record in merged:
        if len(out) >= limit:
            break
        out.append(record)
    return out

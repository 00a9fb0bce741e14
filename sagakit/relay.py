"""The relay: publishes the outbox's rows through a transport and marks them published.

An engine given a transport (``Engine(transport=...)``) runs one, and so does a
:class:`~sagakit.participant.Participant` whose store no such engine serves. One relay per
database publishes at a time: each holds the store's relay lease while it works (renewed as it
goes; another relay takes over within ``lease`` once it dies), so that the messages of each
destination leave in the order their rows were written.

Publishing is at least once: a row is marked published after the transport confirmed it, so a
relay that dies between the two publishes it again, and the consumer's inbox drops the repeat.
A publish that fails holds back the later rows of the same destination (their order stands)
and is tried again after a backoff; other destinations go on.

The relay wakes when rows are committed: at once for rows written by this process (the store
calls ``on_outbox``), by ``NOTIFY`` on PostgreSQL for rows written by others, and at the
latest at its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import timedelta

from .stores.outbox import OutboxRow, OutboxStore
from .transports.base import Message, Transport

log = logging.getLogger("sagakit.relay")

#: how many rows one pass reads
BATCH = 200
#: how long a relay lease lasts unrenewed unless told otherwise
DEFAULT_LEASE = timedelta(seconds=10)


def check_relay_lease(lease: object) -> timedelta:
    """``relay_lease`` as given to an Engine or a Participant: a positive timedelta."""
    if not isinstance(lease, timedelta):
        raise TypeError(
            f"relay_lease must be a timedelta (e.g. timedelta(seconds=10)), got {lease!r}"
        )
    if lease <= timedelta(0):
        raise ValueError(f"relay_lease must be positive, got {lease}")
    return lease


def to_message(row: OutboxRow) -> Message:
    """The transport message of an outbox row."""
    m = row.message
    return Message(
        id=m.message_id,
        destination=m.destination,
        kind=m.kind,
        name=m.name,
        payload=m.payload,
        reply_to=m.reply_to,
        correlation_id=m.correlation_id,
        headers=dict(m.headers),
    )


class Relay:
    """Publishes ``store``'s outbox through ``transport`` (see the module docstring).

    Args:
        store: an open store that keeps an outbox.
        transport: an open transport.
        owner: this relay's name in the relay lease (default: host, process, random).
        poll_interval: the longest it waits before looking at the outbox again (seconds).
        lease: how long the lease it holds lasts unrenewed (seconds); it renews it every
            third of that, and another relay takes over within that long once it stops.
    """

    def __init__(
        self,
        store: OutboxStore,
        transport: Transport,
        *,
        owner: str | None = None,
        poll_interval: float = 1.0,
        lease: float = DEFAULT_LEASE.total_seconds(),
    ):
        if not lease > 0:
            raise ValueError(f"the relay lease must be positive, got {lease!r} seconds")
        self.store = store
        self.transport = transport
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.poll_interval = poll_interval
        self.lease = lease
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: rows published by this relay (for tests and benchmarks)
        self.published = 0

    def start(self) -> None:
        """Start publishing in the background (call inside a running event loop)."""
        if self._task is None:
            self.store.on_outbox = self.poke
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sagakit-relay")

    def poke(self) -> None:
        """Look at the outbox now (new rows were committed)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop publishing; unpublished rows stay for the next relay."""
        if self.store.on_outbox == self.poke:
            self.store.on_outbox = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = 0.05
        while True:
            self._wake.clear()
            wait = min(self.poll_interval, self.lease / 3)
            try:
                if await self.store.take_relay_lease(self.owner, self.lease):
                    if not await self.publish_pending():
                        wait = min(wait, delay)  # a publish failed: try again after a backoff
                        delay = min(delay * 2, 5.0)
                    else:
                        delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("the relay could not read the outbox (%s); trying again", exc)
                wait = min(wait, delay)
                delay = min(delay * 2, 5.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def publish_pending(self) -> bool:
        """Publish every unpublished row, in order per destination; False if a publish failed
        (its destination's later rows wait for the next pass)."""
        ok = True
        while True:
            rows = await self.store.unpublished(BATCH)
            if not rows:
                return ok
            blocked: set[str] = set()
            done: list[int] = []
            for row in rows:
                destination = row.message.destination
                if destination in blocked:
                    continue
                try:
                    await self.transport.publish(to_message(row))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(
                        "could not publish message %s to %s (%s); it is tried again",
                        row.message.message_id,
                        destination,
                        exc,
                    )
                    blocked.add(destination)
                    await self.store.mark_publish_failed(
                        row.position, f"{type(exc).__name__}: {exc}"
                    )
                    continue
                done.append(row.position)
            if done:
                await self.store.mark_published(done)
                self.published += len(done)
            if blocked:
                return False
            if len(rows) < BATCH:
                return ok


__all__ = ["DEFAULT_LEASE", "Relay", "check_relay_lease", "to_message"]

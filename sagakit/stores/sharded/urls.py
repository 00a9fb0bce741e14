"""The ``shards:`` URL: several store URLs of one kind, read as one store.

``shards:postgresql://h/a postgresql://h/b`` (the URLs separated by whitespace, which no URL
contains) is what ``open_store``, ``Engine(url)``, ``sagakit --db``, the dashboard and the
``SAGAKIT_DB`` variable take. The order of the URLs is the shards' numbering: it decides where
every saga lives, so it must never change once sagas are written (see docs/sharding.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from urllib.parse import urlsplit

from ...errors import StoreError
from ...urls import redact_url

__all__ = ["SHARDS_PREFIX", "check_shard_urls", "is_sharded_url", "shard_urls", "sharded_url"]

SHARDS_PREFIX = "shards:"


def is_sharded_url(url: str) -> bool:
    """Whether ``url`` is a ``shards:`` URL."""
    return url.startswith(SHARDS_PREFIX)


def sharded_url(urls: Sequence[str]) -> str:
    """The ``shards:`` URL of these store URLs."""
    return SHARDS_PREFIX + " ".join(urls)


def shard_urls(url: str) -> list[str]:
    """The store URLs of a ``shards:`` URL, checked (see :func:`check_shard_urls`)."""
    if not is_sharded_url(url):
        raise StoreError(
            f"not a sharded store URL: {redact_url(url)!r}; write "
            "'shards:postgresql://host/db1 postgresql://host/db2' (URLs separated by spaces)"
        )
    urls = url.removeprefix(SHARDS_PREFIX).split()
    check_shard_urls(urls)
    return urls


def _kind(url: str) -> str:
    if url.startswith("sqlite:"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    if url.startswith("memory:"):
        return "memory"
    return "unknown"


def _identity(url: str, kind: str) -> tuple[str, ...]:
    """What makes two URLs the same database: a SQLite file's resolved path; a PostgreSQL
    server and database (whoever connects to it)."""
    if kind == "sqlite":
        path = url.removeprefix("sqlite:///").split("?", 1)[0]
        return (kind, os.path.realpath(os.path.expanduser(path)))
    parts = urlsplit(url)
    return (kind, (parts.hostname or "").lower(), str(parts.port or 5432), parts.path.strip("/"))


def check_shard_urls(urls: Sequence[str]) -> None:
    """Refuse, with a StoreError that says what to write instead: fewer than two URLs, URLs of
    different kinds or of a kind that cannot be sharded, the same database twice."""
    shown = [redact_url(u) for u in urls]
    if len(urls) < 2:
        raise StoreError(
            f"a sharded store needs two or more store URLs, got {len(urls)} ({shown}); "
            "with one database, use its URL alone"
        )
    kinds = {_kind(u) for u in urls}
    if len(kinds) > 1:
        raise StoreError(
            f"the shards of a sharded store must be of one kind, got {sorted(kinds)} in "
            f"{shown}: use only postgresql:// URLs (or only sqlite:/// files)"
        )
    (kind,) = kinds
    if kind not in ("sqlite", "postgresql"):
        raise StoreError(
            f"a sharded store's shards are PostgreSQL databases or SQLite files, not {shown}: "
            "write postgresql://user@host/db (or sqlite:///path.db) URLs"
        )
    seen: dict[tuple[str, ...], str] = {}
    for url, show in zip(urls, shown, strict=True):
        identity = _identity(url, kind)
        if identity in seen:
            raise StoreError(
                f"the sharded store names one database twice ({seen[identity]!r} and "
                f"{show!r}): each shard must be a database of its own"
            )
        seen[identity] = show

"""Database URLs fit for the screen and the logs: the one place that hides their passwords."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["redact_url"]

#: what stands for a password that was hidden
MASK = "***"
#: a password given as a query parameter (libpq and asyncpg read ``?password=``)
#: a sharded store's URL: ``shards:URL URL...`` (sagakit.stores.sharded)
_SHARDS = "shards:"
_QUERY_SECRET = re.compile(r"([?&](?:ssl)?password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password (in the user part, or a ``password``/``sslpassword`` query
    parameter) replaced by ``***``, and everything else (user, host, IPv6 brackets, port,
    path, the rest of the query) exactly as written. A URL without a password (a SQLite path,
    ``postgresql://app@host/db``) comes back unchanged, and so does text that is not a URL.

    >>> redact_url("postgresql://app:s3cret@[::1]:5432/orders?sslmode=require")
    'postgresql://app:***@[::1]:5432/orders?sslmode=require'
    """
    if url.startswith(_SHARDS):  # a sharded store's URLs, each with its password
        return _SHARDS + " ".join(redact_url(part) for part in url[len(_SHARDS) :].split())
    start = url.find("://")
    if start < 0:
        return url
    if "?" in url:
        base, _, query = url.partition("?")
        url = base + _QUERY_SECRET.sub(rf"\1{MASK}", "?" + query)
    start += 3
    try:
        netloc = urlsplit(url).netloc
    except ValueError:  # an unbalanced IPv6 bracket: the authority ends at the first "/"
        netloc = url[start:].split("/", 1)[0]
    if not url.startswith(netloc, start):
        return url
    userinfo, at, hostport = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{url[:start]}{user}:{MASK}@{hostport}{url[start + len(netloc) :]}"

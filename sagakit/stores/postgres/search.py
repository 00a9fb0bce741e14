"""The PostgreSQL store's operator's search: ``list_sagas`` and ``count_sagas`` with the
conditions of :mod:`sagakit.stores.searching` (id prefix, several statuses, last write and due
times, a value inside the input or output).

The query is assembled here, and not kept whole in queries.sql, because its conditions come
and go with the filter: only fixed SQL fragments are joined, and every value (an id prefix, a
JSON path, a compared value) is a bound parameter.

Indexes (``EXPLAIN``, see docs/operations.md): an id prefix is the range ``saga_id >= $lo AND
saga_id < $hi`` on the primary key when the ids' collation orders text by code point (``C``,
``POSIX``, ``C.UTF-8``, ``ucs_basic``: :class:`IdOrder` asks the catalog once); under another
collation (``en_US.UTF-8``...), where such a range is not the set of ids with that prefix, it is
``saga_id COLLATE "C"``'s range: exact, but read by a scan bounded by the other conditions.
Statuses use the index on ``status``; a value inside the input or output (stored as text JSON,
read with ``::jsonb #>``) is checked row by row among the sagas the other conditions leave.
"""

from __future__ import annotations

import asyncpg

from ..base import SagaFilter, SagaRecord, record_from_row
from ..searching import check_id_prefix, prefix_upper_bound

#: collations that order text by code point, as the prefix range needs
_BYTEWISE = ("C", "POSIX", "C.UTF-8", "C.utf8", "ucs_basic")
_ID_COLLATION = """
SELECT CASE WHEN c.collname <> 'default' THEN c.collname
            WHEN coalesce(to_jsonb(d) ->> 'datlocprovider', 'c') = 'c' THEN d.datcollate END
FROM pg_attribute a
JOIN pg_collation c ON c.oid = a.attcollation
JOIN pg_database d ON d.datname = current_database()
WHERE a.attrelid = 'saga_instances'::regclass AND a.attname = 'saga_id'
"""


class IdOrder:
    """Whether this database orders saga ids by code point (read once per store)."""

    def __init__(self) -> None:
        self.bytewise: bool | None = None

    async def read(self, conn: asyncpg.Connection) -> bool:
        if self.bytewise is None:
            self.bytewise = await conn.fetchval(_ID_COLLATION) in _BYTEWISE
        return self.bytewise


async def list_sagas(
    conn: asyncpg.Connection, order: IdOrder, where: SagaFilter, limit: int
) -> list[SagaRecord]:
    """``Store.list_sagas`` for a filter that searches."""
    query, args = list_query(where, limit, bytewise=await order.read(conn))
    return [record_from_row(tuple(row)) for row in await conn.fetch(query, *args)]


async def count_sagas(conn: asyncpg.Connection, order: IdOrder, where: SagaFilter) -> int:
    """``Store.count_sagas``."""
    query, args = count_query(where, bytewise=await order.read(conn))
    return int(await conn.fetchval(query, *args))


_COLUMNS = """saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, ''), queue, priority, nullif(partition_key, ''), dedup_id, run"""


def conditions(
    where: SagaFilter, *, bytewise: bool, paging: bool = True
) -> tuple[str, list[object]]:
    """The WHERE clause of ``where`` and its arguments ($1, $2, ... in order); ``bytewise``:
    the ids' collation orders by code point (see :class:`IdOrder`)."""
    parts: list[str] = []
    args: list[object] = []

    def arg(value: object, cast: str) -> str:
        args.append(value)
        return f"${len(args)}::{cast}"

    if where.status is not None:
        parts.append(f"status = {arg(where.status, 'text')}")
    if where.statuses is not None:
        parts.append(f"status = ANY({arg(list(where.statuses), 'text[]')})")
    if where.name is not None:
        parts.append(f"name = {arg(where.name, 'text')}")
    if where.created_after is not None:
        parts.append(f"created_at >= {arg(where.created_after, 'float8')}")
    if where.created_before is not None:
        parts.append(f"created_at < {arg(where.created_before, 'float8')}")
    if where.updated_before is not None:
        parts.append(f"updated_at < {arg(where.updated_before, 'float8')}")
    if where.due_before is not None:
        parts.append(f"lease_expires_at < {arg(where.due_before, 'float8')}")
    if where.parent_id is not None:
        parts.append(f"parent_id = {arg(where.parent_id, 'text')}")
    if where.id_prefix is not None:
        prefix = check_id_prefix(where.id_prefix)
        # the range is the ids with that prefix only in code point order
        column = "saga_id" if bytewise else 'saga_id COLLATE "C"'
        parts.append(f"{column} >= {arg(prefix, 'text')}")
        upper = prefix_upper_bound(prefix)
        if upper is not None:
            parts.append(f"{column} < {arg(upper, 'text')}")
        else:
            parts.append(f"starts_with(saga_id, {arg(prefix, 'text')})")
    for match in where.where:
        column = "input" if match.source == "input" else "output"
        path = arg(list(match.path), "text[]")
        values = arg(match.candidates(), "text[]")
        # jsonb compares numbers by value (42 = 42.0) and strings exactly
        parts.append(f"({column}::jsonb #> {path}) = ANY({values}::jsonb[])")
    if paging and where.after is not None:
        created = arg(where.after[0], "float8")
        saga_id = arg(where.after[1], "text")
        parts.append(
            f"(created_at < {created} OR (created_at = {created} AND saga_id < {saga_id}))"
        )
    return (" AND ".join(parts) or "true"), args


def list_query(where: SagaFilter, limit: int, *, bytewise: bool) -> tuple[str, list[object]]:
    """``list_sagas``: newest first."""
    clause, args = conditions(where, bytewise=bytewise)
    args.append(limit)
    sql = (
        f"SELECT {_COLUMNS}\nFROM saga_instances\nWHERE {clause}\n"
        f"ORDER BY created_at DESC, saga_id DESC\nLIMIT ${len(args)}"
    )
    return sql, args


def count_query(where: SagaFilter, *, bytewise: bool) -> tuple[str, list[object]]:
    """``count_sagas``."""
    clause, args = conditions(where, bytewise=bytewise, paging=False)
    return f"SELECT count(*) FROM saga_instances WHERE {clause}", args

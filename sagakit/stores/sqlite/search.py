"""The SQLite store's operator's search: ``list_sagas`` and ``count_sagas`` with the conditions
of :mod:`sagakit.stores.searching` (id prefix, several statuses, last write and due times, a
value inside the input or output).

The query is assembled here, and not kept whole in queries.sql, because its conditions come
and go with the filter: only fixed SQL fragments are joined, and every value (an id prefix, a
JSON path, a compared value) is a bound parameter.

Indexes (``EXPLAIN QUERY PLAN``, see docs/operations.md): an id prefix is the range
``saga_id >= :lo AND saga_id < :hi`` on the primary key; statuses use ``(status,
lease_expires_at)``; a value inside the input or output is checked row by row among the sagas
the other conditions leave (SQLite cannot index inside JSON text without a generated column).
"""

from __future__ import annotations

from typing import Any

from ..base import SagaFilter
from ..searching import check_id_prefix, prefix_upper_bound

_COLUMNS = """saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, ''), queue, priority, nullif(partition_key, ''), dedup_id, run"""


def conditions(where: SagaFilter, *, paging: bool = True) -> tuple[str, dict[str, Any]]:
    """The WHERE clause of ``where`` and its parameters."""
    parts: list[str] = []
    params: dict[str, Any] = {}
    if where.status is not None:
        parts.append("status = :status")
        params["status"] = where.status
    if where.statuses is not None:
        names = [f":st{i}" for i in range(len(where.statuses))]
        parts.append(f"status IN ({', '.join(names) or 'NULL'})")
        params.update(
            {name[1:]: status for name, status in zip(names, where.statuses, strict=True)}
        )
    if where.name is not None:
        parts.append("name = :name")
        params["name"] = where.name
    if where.created_after is not None:
        parts.append("created_at >= :created_after")
        params["created_after"] = where.created_after
    if where.created_before is not None:
        parts.append("created_at < :created_before")
        params["created_before"] = where.created_before
    if where.updated_before is not None:
        parts.append("updated_at < :updated_before")
        params["updated_before"] = where.updated_before
    if where.due_before is not None:
        parts.append("lease_expires_at < :due_before")
        params["due_before"] = where.due_before
    if where.parent_id is not None:
        parts.append("parent_id = :parent_id")
        params["parent_id"] = where.parent_id
    if where.id_prefix is not None:
        prefix = check_id_prefix(where.id_prefix)
        # the range reads the primary key; substr keeps the test exact
        parts.append("saga_id >= :id_lo AND substr(saga_id, 1, :id_len) = :id_lo")
        params.update(id_lo=prefix, id_len=len(prefix))
        upper = prefix_upper_bound(prefix)
        if upper is not None:
            parts.append("saga_id < :id_hi")
            params["id_hi"] = upper
    for i, match in enumerate(where.where):
        column = "input" if match.source == "input" else "output"
        tests = [f"(json_type({column}, :p{i}) = 'text' AND json_extract({column}, :p{i}) = :s{i})"]
        params[f"p{i}"] = match.json_path
        params[f"s{i}"] = match.value
        if match.number is not None:
            tests.append(
                f"(json_type({column}, :p{i}) IN ('integer', 'real')"
                f" AND json_extract({column}, :p{i}) = :n{i})"
            )
            params[f"n{i}"] = match.number
        if match.literal is not None:
            tests.append(f"json_type({column}, :p{i}) = :l{i}")
            params[f"l{i}"] = match.literal
        parts.append(f"({' OR '.join(tests)})")
    if paging and where.after is not None:
        parts.append(
            "(created_at < :after_created OR (created_at = :after_created AND saga_id < :after_id))"
        )
        params["after_created"], params["after_id"] = where.after
    return (" AND ".join(parts) or "1"), params


def list_query(where: SagaFilter, limit: int) -> tuple[str, dict[str, Any]]:
    """``list_sagas``: newest first."""
    clause, params = conditions(where)
    params["limit"] = limit
    sql = (
        f"SELECT {_COLUMNS}\nFROM saga_instances\nWHERE {clause}\n"
        "ORDER BY created_at DESC, saga_id DESC\nLIMIT :limit"
    )
    return sql, params


def count_query(where: SagaFilter) -> tuple[str, dict[str, Any]]:
    """``count_sagas``."""
    clause, params = conditions(where, paging=False)
    return f"SELECT count(*) FROM saga_instances WHERE {clause}", params

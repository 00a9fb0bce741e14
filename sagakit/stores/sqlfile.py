"""Loads named SQL queries from a ``.sql`` file beside a store.

A file holds blocks that start with ``-- name: some_query``; each block's text up to the next
such line is the query. Keeping SQL in files (never built with f-strings) lets a reader see every
statement a store runs in one place.
"""

from __future__ import annotations

from importlib import resources


def load_queries(package: str, filename: str) -> dict[str, str]:
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("-- name:"):
            if name is not None:
                queries[name] = "\n".join(lines).strip()
            name = stripped.removeprefix("-- name:").strip()
            lines = []
        elif name is not None and not stripped.startswith("--"):
            lines.append(line)
    if name is not None:
        queries[name] = "\n".join(lines).strip()
    return queries


def load_migrations(package: str) -> list[tuple[int, str]]:
    """Numbered migration scripts ``NNNN_description.sql`` in ``package``, in order."""
    found: list[tuple[int, str]] = []
    for item in resources.files(package).iterdir():
        if item.name.endswith(".sql") and item.name[:4].isdigit():
            found.append((int(item.name[:4]), item.read_text(encoding="utf-8")))
    return sorted(found)

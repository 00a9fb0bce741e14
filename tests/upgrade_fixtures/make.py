"""Regenerate the rows that earlier releases left with sagas in flight (the upgrade tests' data).

    .venv/bin/python -m tests.upgrade_fixtures.make            # every schema version below
    .venv/bin/python -m tests.upgrade_fixtures.make 3 4        # only these

For each earlier schema version N, the sagakit source of the last commit whose newest migration
was N is extracted (``git archive COMMIT sagakit``) into a temporary folder, and
``scenario.py`` runs on it (``PYTHONPATH`` = that folder, this venv's pydantic, asyncpg and
click) against a fresh SQLite file and a fresh database of a throwaway PostgreSQL server
(tests/pgserver.py; releases before schema 6's kept their tables in ``public``, the
fixture names the schema as ``pg_schema``), one process per saga it
leaves in flight. Every sagakit table's rows are then dumped to ``schema_N_sqlite.json`` and
``schema_N_postgres.json``: what that release really wrote, on each store. JSON keeps each
value's Python type (float, int, None, text), so the rows go back in as they came out.

The files are committed test data; change them only by running this command.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from tests.pgserver import PgServer

from .cases import CASES, cases_for

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

#: schema version -> the last commit whose newest migration it was (found with
#: ``git log -- sagakit/stores/sqlite/migrations/``: the parent of the commit that added the
#: next migration)
RELEASES: dict[int, str] = {
    1: "dc329c9f36d237c8ab472265d0b28a4c5f2f0c4a",  # 3a92480^ (3a92480 added 0002)
    2: "985d1780dfe596368ca4338e4614a3203f2bd5dd",  # c28f783^ (c28f783 added 0003)
    3: "62dfc47c93731711c134d50fcf0a025bf608ed2e",  # 1d2a251^ (1d2a251 added 0004)
    4: "47a1581096d4cd05101ed4c45ee11b08061a9f79",  # a411666^ (a411666 added 0005)
    5: "b7b0e39b77093d389c245196486709035bfbfed8",  # 14a8c2d^ (14a8c2d added 0006)
    # the newest commit when 0007 was being written; any commit up to the one adding 0007 has
    # the same schema 6 and the same runner (_check_release says so if one does not)
    6: "1864ed196eec9f10a75d74959846043b7ae6d08e",
    # the newest commit when 0008 was being written (any commit up to the one adding 0008 has
    # the same schema 7)
    7: "6aa841ff35e040edd8ccb9df705c0723f4a95c5a",
    # the newest commit when 0009 was being written (any commit up to the one adding 0009 has
    # the same schema 8)
    8: "81ee5658850cbf9b38c2f0883742ae713be02058",
}


def fixture_path(version: int, kind: str) -> Path:
    return HERE / f"schema_{version}_{kind}.json"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout


def _check_release(version: int, commit: str) -> None:
    for kind in ("sqlite", "postgres"):
        names = _git("ls-tree", "--name-only", commit, f"sagakit/stores/{kind}/migrations/")
        newest = max(int(Path(n).name[:4]) for n in names.split() if n.endswith(".sql"))
        if newest != version:
            raise SystemExit(f"{commit} has {kind} migrations up to {newest}, not {version}")


def _extract(commit: str, into: Path) -> None:
    archive = subprocess.run(
        ["git", "archive", commit, "sagakit"], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def _run_case(source: Path, case: str, url: str) -> None:
    """One process of the old release leaves one saga as the case says."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    result = subprocess.run(
        [sys.executable, str(HERE / "scenario.py"), case, url],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if f"sagakit from {source}/sagakit/" not in result.stdout:
        raise SystemExit(f"{case}: the scenario did not run on {source}:\n{result.stdout}")
    kill_in = CASES[case][3]
    expected = -signal.SIGKILL if kill_in else 0
    if result.returncode != expected:
        raise SystemExit(
            f"{case} on {url}: exit {result.returncode}, expected {expected}\n{result.stderr}"
        )


def _ordered(tables: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The version table, then the sagas (the rows others reference), then the rest."""
    first = [t for t in ("saga_schema_version", "saga_instances") if t in tables]
    return {t: tables[t] for t in first + sorted(set(tables) - set(first))}


def _dump_sqlite(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        tables = {}
        for name in names:
            width = len(conn.execute(f"SELECT * FROM {name} LIMIT 0").description)
            order = ", ".join(str(i) for i in range(1, min(width, 2) + 1))
            rows = conn.execute(f"SELECT * FROM {name} ORDER BY {order}").fetchall()
            tables[name] = [dict(r) for r in rows]
    finally:
        conn.close()
    return {"tables": _ordered(tables), "sequences": {}}


async def _dump_postgres(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        # public before the schema of its own (schema 6's release), sagakit from then on
        schema = await conn.fetchval(
            "SELECT schemaname FROM pg_tables WHERE tablename = 'saga_schema_version'"
        )
        await conn.execute(f"SET search_path = {schema}")
        names = [
            r[0]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", schema
            )
        ]
        tables = {}
        for name in names:
            columns = await conn.fetch(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = $1 AND table_name = $2",
                schema,
                name,
            )
            width = len(columns)
            order = ", ".join(str(i) for i in range(1, min(width, 2) + 1))
            rows = await conn.fetch(f"SELECT * FROM {name} ORDER BY {order}")
            tables[name] = [dict(r) for r in rows]
        sequences = {}
        for (seq,) in await conn.fetch(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = $1 ORDER BY 1", schema
        ):
            row = await conn.fetchrow(f"SELECT last_value, is_called FROM {seq}")
            sequences[seq] = {"last_value": row["last_value"], "is_called": row["is_called"]}
    finally:
        await conn.close()
    return {"pg_schema": schema, "tables": _ordered(tables), "sequences": sequences}


def _check(dump: dict[str, Any], version: int, cases: list[str], where: str) -> None:
    """The release left each saga as its case says, and JSON gives every value back as is."""
    statuses = {r["saga_id"]: r["status"] for r in dump["tables"]["saga_instances"]}
    wanted = {CASES[c][0]: CASES[c][4] for c in cases}
    if statuses != wanted:
        raise SystemExit(f"schema {version} on {where}: left {statuses}, expected {wanted}")
    undone = [
        e["name"]
        for e in dump["tables"]["saga_journal"]
        if e["saga_id"] == "rollback" and e["kind"] == "compensation" and e["status"] == "completed"
    ]
    if undone != ["Notify"]:
        raise SystemExit(f"schema {version} on {where}: the rollback journaled {undone} undone")
    again = json.loads(json.dumps(dump))
    for table, rows in dump["tables"].items():
        for row, back in zip(rows, again["tables"][table], strict=True):
            for column, value in row.items():
                if type(back[column]) is not type(value) or back[column] != value:
                    raise SystemExit(f"{table}.{column}: {value!r} does not round-trip in JSON")


def _write(version: int, kind: str, commit: str, cases: list[str], dump: dict[str, Any]) -> None:
    document = {
        "schema_version": version,
        "store": kind,
        "commit": commit,
        "cases": cases,
        "generated_by": "python -m tests.upgrade_fixtures.make",
        **dump,
    }
    text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
    fixture_path(version, kind).write_text(text)


async def _fresh_database(server: PgServer) -> str:
    name = f"upgrade_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server.url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def make(version: int, server: PgServer) -> None:
    commit = RELEASES[version]
    _check_release(version, commit)
    cases = cases_for(version)
    with tempfile.TemporaryDirectory(prefix=f"sagakit-schema-{version}-") as tmp:
        source = Path(tmp)
        _extract(commit, source)
        db = source / "sagas.db"
        pg_url = asyncio.run(_fresh_database(server))
        for kind, url in (("sqlite", f"sqlite:///{db}"), ("postgres", pg_url)):
            for case in cases:
                _run_case(source, case, url)
            dump = _dump_sqlite(db) if kind == "sqlite" else asyncio.run(_dump_postgres(url))
            _check(dump, version, cases, kind)
            _write(version, kind, commit, cases, dump)
            print(f"schema {version} ({commit[:7]}) on {kind}: {', '.join(cases)}", flush=True)


def main(argv: list[str]) -> None:
    versions = [int(a) for a in argv] or sorted(RELEASES)
    with PgServer(durable=False) as server:
        for version in versions:
            make(version, server)


if __name__ == "__main__":
    main(sys.argv[1:])

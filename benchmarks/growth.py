"""Throughput and claim latency on an empty store against the same store grown by N finished
sagas (issue 16): ``python -m benchmarks.throughput --prefill 1000000``.

The finished sagas are written with bulk SQL into the store's own tables, as a month of real
traffic would have left them: ids are random UUIDs (the engine's default) arriving in time
order over the 30 days before now, 90% COMPLETED with three journal entries and 10%
COMPENSATED with six (three steps, the last failed, and three compensations), a third of them
of the workflow under test. Then the database gets what a production one has had: ANALYZE on
SQLite, VACUUM ANALYZE on PostgreSQL (autovacuum's work).

Each phase opens a new engine (new connections, so PostgreSQL plans its statements against the
grown tables) and measures: the scenario's sagas/s and latency run in this process; the same
sagas started with ``run_here=False`` and run by the engine's background worker (claims under
load); a claim on an idle store (nothing due: what every worker pays each poll); and a busy
claim (16 due sagas taken in one ``Store.claim``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sqlite3
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from benchmarks.throughput import STEP_DELAY, _pct, bench, run_load
from sagakit import Engine

DAYS = 30
#: the journal of a finished saga: (status of the saga, seq, kind, step, status, output,
#: compensation, error)
_FAILED = '{"type":"TerminalError","message":"planned failure","step":"Step2","seq":2}'
TEMPLATE: list[tuple[str, int, str, str, str, str | None, str | None, str | None]] = [
    *(
        ("COMPLETED", i, "step", f"Step{i}", "completed", f'{{"i":{i}}}', f'{{"i":{i}}}', None)
        for i in range(3)
    ),
    *(
        ("COMPENSATED", i, "step", f"Step{i}", "completed", f'{{"i":{i}}}', f'{{"i":{i}}}', None)
        for i in range(2)
    ),
    ("COMPENSATED", 2, "step", "Step2", "failed", None, None, _FAILED),
    *(
        ("COMPENSATED", 3 + i, "compensation", f"Step{2 - i}", "completed", None,
         f'{{"undoes":{2 - i}}}', None)
        for i in range(3)
    ),
]  # fmt: skip
_INPUT = '{"steps":3,"delay":0,"fail_at":-1}'
_ERROR = (
    '{"kind":"compensated","cause":{"type":"TerminalError","message":"planned failure",'
    '"step":"Step2","seq":2},"rollback_seq":3}'
)
NAMES = ["Bench", "Checkout", "Refund"]
_SAGA_COLUMNS = (
    "saga_id, name, status, input, output, error, owner, fence, lease_expires_at, "
    "created_at, updated_at, event_count"
)
_JOURNAL_COLUMNS = (
    "saga_id, seq, kind, name, status, attempts, output, compensation, error, "
    "started_at, finished_at"
)
BATCH = 100_000


# -- filling the store -------------------------------------------------------------------------


def _saga_rows(first: int, count: int, total: int, start: float) -> list[tuple[Any, ...]]:
    """Sagas ``first``..``first+count`` of ``total``, in time order over the month."""
    span = DAYS * 86400 / total
    rows = []
    for i in range(first, first + count):
        created = start + i * span
        failed = i % 10 == 0
        rows.append(
            (
                str(uuid.uuid4()),
                NAMES[i % 3],
                "COMPENSATED" if failed else "COMPLETED",
                _INPUT,
                None if failed else "3",
                _ERROR if failed else None,
                None,
                1,
                0.0,
                created,
                created + 0.005 + random.random() * 0.05,
                0,
            )
        )
    return rows


def prefill_sqlite(path: str, total: int) -> None:
    """Insert ``total`` finished sagas and their journals, 100,000 a transaction, then ANALYZE
    and a checkpoint."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA cache_size = -262144")  # 256 MiB for this bulk load only
    conn.execute("CREATE TEMP TABLE fill_template (outcome, seq, kind, name, status, output, "
                 "compensation, error)")  # fmt: skip
    conn.executemany("INSERT INTO fill_template VALUES (?, ?, ?, ?, ?, ?, ?, ?)", TEMPLATE)
    conn.execute("CREATE TEMP TABLE fill (saga_id TEXT PRIMARY KEY, status, created_at)")
    start = time.time() - DAYS * 86400
    placeholders = ", ".join("?" * len(_SAGA_COLUMNS.split(",")))
    for first in range(0, total, BATCH):
        rows = _saga_rows(first, min(BATCH, total - first), total, start)
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO saga_instances ({_SAGA_COLUMNS}) VALUES ({placeholders})", rows
        )
        conn.executemany("INSERT INTO fill VALUES (?, ?, ?)", ((r[0], r[2], r[9]) for r in rows))
        conn.execute(
            f"INSERT INTO saga_journal ({_JOURNAL_COLUMNS}) "
            "SELECT f.saga_id, t.seq, t.kind, t.name, t.status, 1, t.output, t.compensation, "
            "t.error, f.created_at + t.seq * 0.002, f.created_at + t.seq * 0.002 + 0.001 "
            "FROM fill f JOIN fill_template t ON t.outcome = f.status ORDER BY f.saga_id, t.seq"
        )
        conn.execute("DELETE FROM fill")
        conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the bulk load's WAL, as if long ago
    conn.close()


async def _pg_schema(conn: Any) -> str:
    """The schema the store's tables are in (``public`` before issue 16's own schema)."""
    found = await conn.fetchval(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = 'saga_instances' AND c.relkind IN ('r', 'p') "
        "ORDER BY n.nspname = 'public' LIMIT 1"
    )
    if found is None:
        raise SystemExit("no saga_instances table: the engine did not create the schema")
    return str(found)


async def prefill_postgres(url: str, total: int) -> None:
    """Insert ``total`` finished sagas and their journals with generate_series, 100,000 a
    statement (one transaction each), then VACUUM ANALYZE."""
    import asyncpg

    conn = await asyncpg.connect(url)
    schema = await _pg_schema(conn)
    await conn.execute(f'SET search_path = "{schema}"')
    await conn.execute(
        "CREATE TEMP TABLE fill_template (outcome text, seq int, kind text, name text, "
        "status text, output text, compensation text, error text)"
    )
    await conn.executemany(
        "INSERT INTO fill_template VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", TEMPLATE
    )
    start = time.time() - DAYS * 86400
    span = DAYS * 86400 / total
    for first in range(0, total, BATCH):
        await conn.execute(
            f"""
            WITH s AS (
                INSERT INTO saga_instances ({_SAGA_COLUMNS})
                SELECT gen_random_uuid()::text, ($4::text[])[1 + i % 3],
                       CASE WHEN i % 10 = 0 THEN 'COMPENSATED' ELSE 'COMPLETED' END,
                       $5, CASE WHEN i % 10 = 0 THEN NULL ELSE '3' END,
                       CASE WHEN i % 10 = 0 THEN $6 END,
                       NULL, 1, 0, $3 + i * $7, $3 + i * $7 + 0.005 + random() * 0.05, 0
                FROM generate_series($1::int, $2::int) AS i
                ORDER BY i
                RETURNING saga_id, status, created_at
            )
            INSERT INTO saga_journal ({_JOURNAL_COLUMNS})
            SELECT s.saga_id, t.seq, t.kind, t.name, t.status, 1, t.output, t.compensation,
                   t.error, s.created_at + t.seq * 0.002, s.created_at + t.seq * 0.002 + 0.001
            FROM s JOIN fill_template t ON t.outcome = s.status
            """,
            first,
            min(total, first + BATCH) - 1,
            start,
            NAMES,
            _INPUT,
            _ERROR,
            span,
        )
    for table in ("saga_instances", "saga_journal"):
        await conn.execute(f"VACUUM ANALYZE {table}")
    await conn.close()


async def prefill(url: str, total: int) -> float:
    """Fill the store; return the seconds it took."""
    began = time.perf_counter()
    if url.startswith("sqlite"):
        await asyncio.to_thread(prefill_sqlite, url.removeprefix("sqlite:///"), total)
    else:
        await prefill_postgres(url, total)
    return time.perf_counter() - began


async def sizes(url: str) -> str:
    """How many sagas and journal entries the store holds, and the database's size."""
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        conn = sqlite3.connect(path)
        sagas = conn.execute("SELECT count(*) FROM saga_instances").fetchone()[0]
        entries = conn.execute("SELECT count(*) FROM saga_journal").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        size = pages * conn.execute("PRAGMA page_size").fetchone()[0]
        conn.close()
    else:
        import asyncpg

        pg = await asyncpg.connect(url)
        await pg.execute(f'SET search_path = "{await _pg_schema(pg)}"')
        sagas = await pg.fetchval("SELECT count(*) FROM saga_instances")
        entries = await pg.fetchval("SELECT count(*) FROM saga_journal")
        size = await pg.fetchval("SELECT pg_database_size(current_database())")
        await pg.close()
    return f"{sagas:,} sagas, {entries:,} journal entries, {size / 2**20:,.0f} MiB"


# -- measuring ---------------------------------------------------------------------------------


async def _claim_latency(engine: Engine, rounds: int) -> tuple[float, float]:
    """p50/p95 (ms) of a claim that finds nothing due: a worker's poll on an idle store."""
    store = engine._store
    assert store is not None
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        await store.claim("bench-idle-worker", ["Bench"], 30.0, 16)
        times.append(time.perf_counter() - began)
    return _pct(times, 0.50), _pct(times, 0.95)


async def _busy_claims(url: str, tag: str, rounds: int, steps: int) -> tuple[float, float]:
    """p50/p95 (ms) of a claim that takes 16 due sagas (started with ``run_here=False`` by an
    engine whose background worker claims nothing), the sagas then run to the end."""
    times = []
    async with Engine(url, worker=False, observers=[]) as engine:
        engine.register(bench)
        store = engine._store
        assert store is not None
        for r in range(rounds):
            for i in range(16):
                inp = {"steps": steps, "delay": 0.0, "fail_at": -1}
                await engine.start(bench, inp, saga_id=f"{tag}-{r}-{i}", run_here=False)
            began = time.perf_counter()
            claimed = await store.claim(engine.worker_id, ["Bench"], 30.0, 16)
            times.append(time.perf_counter() - began)
            tasks = [engine._run_claimed(c) for c in claimed]
            for c in claimed:
                await engine.settle(c.record.saga_id)
            del tasks
    return _pct(times, 0.50), _pct(times, 0.95)


async def measure(url: str, args: argparse.Namespace, scenario: str, phase: str) -> dict[str, Any]:
    delay = STEP_DELAY[scenario]
    fail_rate = 1.0 if scenario == "compensation" else args.fail_rate
    observers: list[Any] | None = [] if args.observers == "none" else None
    figures: dict[str, Any] = {}
    began = time.perf_counter()
    async with Engine(url, observers=observers, poll_interval=_POLL) as engine:
        figures["open_ms"] = (time.perf_counter() - began) * 1000
        engine.register(bench)
        run = (engine, args.concurrency, args.steps, delay, fail_rate)
        await run_load(engine, 200, *run[1:], tag=f"{phase}-w{scenario}")
        figures["load"] = await run_load(engine, args.sagas, *run[1:], tag=f"{phase}-{scenario}")
        figures["alone"] = await run_load(
            engine, min(500, args.sagas), 1, *run[2:], tag=f"{phase}-a{scenario}"
        )
        figures["worker"] = await run_load(
            engine, args.sagas, *run[1:], tag=f"{phase}-q{scenario}", run_here=False
        )
        figures["idle_claim"] = await _claim_latency(engine, 300)
    figures["busy_claim"] = await _busy_claims(url, f"{phase}-b{scenario}", 50, args.steps)
    return figures


#: the background worker's poll; the run_here=False sagas are claimed when their start wakes
#: it (PostgreSQL: LISTEN/NOTIFY; in-process on SQLite), the poll only catches up
_POLL = timedelta(milliseconds=200)


def _line(phase: str, f: dict[str, Any]) -> str:
    load, alone, worker = f["load"], f["alone"], f["worker"]
    return (
        f"{phase:<6} here {load['sagas_per_s']:>6.0f} sagas/s p50/p95 {load['p50']:.1f}/"
        f"{load['p95']:.1f} ms, alone p50 {alone['p50']:.2f} ms | worker "
        f"{worker['sagas_per_s']:>6.0f} sagas/s p50/p95 {worker['p50']:.1f}/{worker['p95']:.1f} "
        f"ms | claim idle p50/p95 {f['idle_claim'][0]:.2f}/{f['idle_claim'][1]:.2f} ms, 16 due "
        f"{f['busy_claim'][0]:.2f}/{f['busy_claim'][1]:.2f} ms | open {f['open_ms']:.0f} ms"
    )


async def full_database(url: str) -> str:
    """A second, empty database beside the store's (same SQLite folder, same PostgreSQL
    server) to grow, so that both are measured in turn in the same run."""
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        full = path.with_name(f"{path.stem}-full{path.suffix}")
        for leftover in (full, Path(f"{full}-wal"), Path(f"{full}-shm")):
            leftover.unlink(missing_ok=True)
        return f"sqlite:///{full}"
    import asyncpg

    conn = await asyncpg.connect(url)
    await conn.execute(f"DROP DATABASE IF EXISTS {_PG_FULL}")
    await conn.execute(f"CREATE DATABASE {_PG_FULL}")
    await conn.close()
    return urlunsplit(urlsplit(url)._replace(path=f"/{_PG_FULL}"))


_PG_FULL = "sagakit_bench_full"


def _best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The best of each figure over the rounds: on a shared host, noise only ever slows."""
    return {
        "load": max((r["load"] for r in rounds), key=lambda f: f["sagas_per_s"]),
        "alone": min((r["alone"] for r in rounds), key=lambda f: f["p50"]),
        "worker": max((r["worker"] for r in rounds), key=lambda f: f["sagas_per_s"]),
        "idle_claim": min(r["idle_claim"] for r in rounds),
        "busy_claim": min(r["busy_claim"] for r in rounds),
        "open_ms": min(r["open_ms"] for r in rounds),
    }


def _ratios(empty: dict[str, Any], full: dict[str, Any]) -> str:
    def ratio(what: str, key: str) -> str:
        return f"{what} {full[key]['sagas_per_s'] / empty[key]['sagas_per_s']:.2f}"

    def inverse(what: str, key: str) -> str:  # latency: empty / full, 1.0 = flat
        return f"{what} {empty[key][0] / full[key][0]:.2f}"

    return ", ".join(
        [
            ratio("here", "load"),
            ratio("worker", "worker"),
            inverse("claim idle", "idle_claim"),
            inverse("claim 16 due", "busy_claim"),
        ]
    )


async def scenario_growth(url: str, args: argparse.Namespace, scenario: str) -> None:
    """The scenario on an empty store and on one grown by ``args.prefill`` finished sagas,
    in turn (empty, full, empty, full...), in the same run and on the same server."""
    full_url = await full_database(url)
    async with Engine(full_url, worker=False, observers=[]):
        pass  # the schema, as the engine makes it
    seconds = await prefill(full_url, args.prefill)
    print(f"prefilled {args.prefill:,} finished sagas in {seconds:.0f} s: {await sizes(full_url)}")
    empties, fulls = [], []
    for r in range(args.rounds):
        empties.append(await measure(url, args, scenario, f"empty{r}"))
        print(_line("empty", empties[-1]), flush=True)
        fulls.append(await measure(full_url, args, scenario, f"full{r}"))
        print(_line("full", fulls[-1]), flush=True)
        print(f"  round {r + 1}: full/empty {_ratios(empties[-1], fulls[-1])}", flush=True)
    await plans(full_url)
    print(f"grown store at the end: {await sizes(full_url)}")
    print(
        f"ratio full/empty ({scenario}, best of {args.rounds} rounds each): "
        f"throughput {_ratios(_best(empties), _best(fulls))} (claims: empty p50 / full p50)"
    )


# -- query plans -------------------------------------------------------------------------------

#: the statements of a claim and of the write path, with the parameters of a plausible call
_SQLITE_PLANS = ["claim_candidates", "claim", "insert_saga", "update_saga_status",
                 "upsert_entry", "get_journal"]  # fmt: skip
_PG_PLANS: dict[str, list[Any]] = {
    "claim": ["bench-explain", ["Bench"], 30.0, 16],
    "create_sagas": [["explain-new"], ["Bench"], [_INPUT], ["w"], [30.0], [None], [""]],
    "append_one": ["explain-new", 1, None, None, None, None, None, False, None, 0, "step",
                   "Step0", "completed", 1, "{}", "{}", None, 1.0, 2.0],
    "get_journal": ["explain-new"],
}  # fmt: skip


def _sqlite_plans(path: str) -> None:
    from sagakit.stores.sqlite.store import Q

    conn = sqlite3.connect(path)
    for name in _SQLITE_PLANS:
        if name not in Q:
            continue
        params: dict[str, Any] = dict.fromkeys(re.findall(r":(\w+)", Q[name]))
        params.update(now=time.time(), names='["Bench"]', limit=16, saga_ids='["x"]')
        plan = conn.execute("EXPLAIN QUERY PLAN " + Q[name], params).fetchall()
        print(f"  {name}: " + "; ".join(row[3] for row in plan))
    conn.close()


async def _pg_plans(url: str) -> None:
    import asyncpg

    from sagakit.stores.postgres.sql import Q

    conn = await asyncpg.connect(url)
    await conn.execute(f'SET search_path = "{await _pg_schema(conn)}"')
    # the store's own planner settings: generic plans, table scans priced out
    await conn.execute("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off")
    for name, args in _PG_PLANS.items():
        if name not in Q:
            continue
        # EXPLAIN ANALYZE runs the statement: in a transaction rolled back, so nothing stays
        # statements grow parameters (issue 16's versions): the new ones are NULL
        arity = max(int(n) for n in re.findall(r"\$(\d+)", Q[name]))
        args = (args + [None] * arity)[:arity]
        transaction = conn.transaction()
        await transaction.start()
        try:
            rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + Q[name], *args)
        except Exception as exc:  # a statement changed meanwhile: say so, go on
            print(f"  {name}: not explained ({exc})")
            continue
        finally:
            await transaction.rollback()
        print(f"  {name}:")
        for row in rows:
            print("    " + row[0])
    await conn.close()


async def plans(url: str) -> None:
    """The plans of the claim and write statements on the grown store."""
    print("query plans on the grown store:")
    if url.startswith("sqlite"):
        _sqlite_plans(url.removeprefix("sqlite:///"))
    else:
        await _pg_plans(url)

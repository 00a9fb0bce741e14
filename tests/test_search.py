"""The operator's search (issue 19): sagas by id prefix, workflow, status, time and a value
inside their input or output, on the three stores, through the admin API and ``sagakit
list``; conditions that could smuggle SQL are refused with a clear error, and values that
look like SQL are only values."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from sagakit import Engine, SagaContext, SagaStatus, SagaValidationError, saga_workflow
from sagakit.search import FieldMatch, SearchError, parse_where, parse_wheres
from sagakit.stores.base import SagaFilter
from sagakit.stores.searching import prefix_upper_bound
from tests.conftest import make_engine


@saga_workflow("Ship")
async def ship(saga: SagaContext, inp: Any) -> Any:
    return {"status": inp.get("ship", "shipped"), "n": inp.get("n", 0)}


@saga_workflow("Refund")
async def refund(saga: SagaContext, inp: Any) -> Any:
    return {"status": "refunded"}


#: saga id -> (workflow, input)
SEEDED: dict[str, tuple[Any, Any]] = {
    "ab12-0001": (ship, {"customer_id": 42}),
    "ab12-0002": (ship, {"customer_id": "42"}),
    "ab12-0003": (ship, {"customer_id": 42.0, "ship": "held"}),
    "ab13-0001": (ship, {"customer": {"id": 7, "tier": "gold"}}),
    "ab1%-0001": (refund, {"customer_id": 43, "flag": True}),
    "AB12-0001": (refund, {"flag": "true", "note": "x' OR '1'='1"}),
    "zz-0001": (refund, {"nothing": None, "list": [1, 2]}),
    "zz-0002": (refund, {"customer_id": [42]}),
}


async def seeded(engine: Engine) -> None:
    for saga_id, (workflow, inp) in SEEDED.items():
        handle = await engine.start(workflow, inp, saga_id=saga_id)
        await handle.result()


async def ids(engine: Engine, **kwargs: Any) -> set[str]:
    page = await engine.admin.list_sagas(limit=100, **kwargs)
    found = {s.saga_id for s in page}
    where = SagaFilter(
        status=kwargs.get("status"),
        name=kwargs.get("name"),
        id_prefix=kwargs.get("id_prefix"),
        where=parse_wheres(kwargs.get("where", ())),
    )
    # count_sagas agrees with the listing
    assert await engine._store_or_raise().count_sagas(where) == len(found)
    return found


async def test_every_filter_on_each_store(store_url: str) -> None:
    async with make_engine(store_url) as engine:
        engine.register(ship, refund)
        await seeded(engine)

        # id prefix: exact, case-sensitive, and LIKE's wildcards are plain characters
        assert await ids(engine, id_prefix="ab12") == {"ab12-0001", "ab12-0002", "ab12-0003"}
        assert await ids(engine, id_prefix="ab1") == {
            "ab12-0001",
            "ab12-0002",
            "ab12-0003",
            "ab13-0001",
            "ab1%-0001",
        }
        assert await ids(engine, id_prefix="ab1%") == {"ab1%-0001"}
        assert await ids(engine, id_prefix="ab1_") == set()
        assert await ids(engine, id_prefix="AB") == {"AB12-0001"}
        assert await ids(engine, id_prefix="ab12-0001") == {"ab12-0001"}
        assert await ids(engine, id_prefix="ab12-00011") == set()

        # a value inside the input: 42 matches the number (42.0 too) and the string
        assert await ids(engine, where=["input.customer_id=42"]) == {
            "ab12-0001",
            "ab12-0002",
            "ab12-0003",
        }
        assert await ids(engine, where=["input.customer_id=42.0"]) == {"ab12-0001", "ab12-0003"}
        assert await ids(engine, where=["input.customer_id=043"]) == set()  # not a JSON number
        assert await ids(engine, where=["input.customer.id=7"]) == {"ab13-0001"}
        assert await ids(engine, where=["input.customer.tier=gold"]) == {"ab13-0001"}
        assert await ids(engine, where=["input.customer=7"]) == set()  # an object never matches
        assert await ids(engine, where=["input.flag=true"]) == {"ab1%-0001", "AB12-0001"}
        assert await ids(engine, where=["input.nothing=null"]) == {"zz-0001"}
        assert await ids(engine, where=["input.missing=null"]) == set()
        assert await ids(engine, where=["input.note=x' OR '1'='1"]) == {"AB12-0001"}
        assert await ids(engine, where=["input.customer_id="]) == set()
        # a value inside the output
        assert await ids(engine, where=["output.status=held"]) == {"ab12-0003"}
        assert len(await ids(engine, where=["output.status=refunded"])) == 4
        # with the other filters: all hold
        assert await ids(engine, where=["input.customer_id=42", "output.status=shipped"]) == {
            "ab12-0001",
            "ab12-0002",
        }
        assert await ids(engine, name="Refund", where=["input.flag=true"]) == {
            "ab1%-0001",
            "AB12-0001",
        }
        assert await ids(engine, id_prefix="ab", name="Refund") == {"ab1%-0001"}
        assert await ids(engine, status="COMPLETED", id_prefix="zz") == {"zz-0001", "zz-0002"}
        assert await ids(engine, status="FAILED", id_prefix="zz") == set()

        # a time range
        everything = await engine.admin.list_sagas(limit=100)
        times = sorted(s.created_at for s in everything)
        middle = times[len(times) // 2]
        later = await engine.admin.list_sagas(
            limit=100, created_after=middle, where=["output.status=refunded"]
        )
        assert {s.saga_id for s in later} == {
            s.saga_id
            for s in everything
            if s.created_at >= middle and s.output == {"status": "refunded"}
        }

        # paging through a search: each saga once, newest first
        seen: list[str] = []
        cursor = None
        while True:
            page = await engine.admin.list_sagas(
                limit=2, cursor=cursor, id_prefix="ab1", where=["output.status=shipped"]
            )
            seen += [s.saga_id for s in page]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == ["ab13-0001", "ab12-0002", "ab12-0001"]


async def test_conditions_that_could_smuggle_sql_are_refused(store_url: str) -> None:
    async with make_engine(store_url) as engine:
        engine.register(ship, refund)
        await seeded(engine)
        for bad, needle in [
            ("input.a'); DROP TABLE saga_instances; --=1", "not a key a search accepts"),
            ('input."customer_id"=42', "not a key a search accepts"),
            ("input.customer_id[0]=42", "not a key a search accepts"),
            ("input.$.customer_id=42", "not a key a search accepts"),
            ("input..customer_id=42", "not a key a search accepts"),
            ("input.1st=42", "not a key a search accepts"),
            ("error.message=boom", "input or output"),
            ("status=COMPLETED", "input or output"),
            ("input=42", "needs a key"),
            ("input.customer_id", "write <field>=<value>"),
        ]:
            with pytest.raises(SearchError) as caught:
                await engine.admin.list_sagas(where=[bad])
            assert needle in str(caught.value), (bad, str(caught.value))
            assert isinstance(caught.value, SagaValidationError)
        with pytest.raises(SearchError, match="at most 8"):
            await engine.admin.list_sagas(where=["input.a=1"] * 9)
        with pytest.raises(SearchError, match="non-empty"):
            await engine.admin.list_sagas(id_prefix="")
        # a FieldMatch made in code is checked the same way
        with pytest.raises(SearchError):
            FieldMatch("input", ("a b",), "1")
        # values and prefixes that look like SQL are only values: nothing matches, all is there
        assert await ids(engine, id_prefix="' OR 1=1 --") == set()
        assert await ids(engine, where=["input.customer_id=42' OR '1'='1"]) == set()
        assert await ids(engine, where=['input.customer_id=42") OR true --']) == set()
        assert len((await engine.admin.list_sagas(limit=100)).sagas) == len(SEEDED)


def test_parse_where_and_the_id_range() -> None:
    match = parse_where("input.customer.id=a=b")
    assert match == FieldMatch("input", ("customer", "id"), "a=b")
    assert match.label == "input.customer.id" and match.json_path == "$.customer.id"
    assert parse_where(" output.status =shipped").value == "shipped"
    assert FieldMatch("input", ("n",), "42").candidates() == ['"42"', "42"]
    assert FieldMatch("input", ("n",), "-1.5e3").number == -1500.0
    assert FieldMatch("input", ("n",), "abc").candidates() == ['"abc"']
    assert FieldMatch("input", ("n",), "null").matches('{"n": null}')
    assert not FieldMatch("input", ("n",), "0").matches('{"n": false}')
    assert not FieldMatch("input", ("n",), "1").matches('{"n": true}')
    assert prefix_upper_bound("ab") == "ac"
    assert prefix_upper_bound("a\U0010ffff") == "b"
    assert prefix_upper_bound("\U0010ffff") is None
    assert prefix_upper_bound("a\ud7ff") == "a\ue000"


async def test_sagakit_list_searches(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    async with make_engine(url) as engine:
        engine.register(ship, refund)
        await seeded(engine)

    def sagakit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sagakit.cli", *args, "--db", url],
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = sagakit(
        "list", "--id-prefix", "ab12", "--where", "input.customer_id=42", "--since", "1h", "--json"
    )
    assert result.returncode == 0, result.stderr
    found = {s["saga_id"] for s in json.loads(result.stdout)["sagas"]}
    assert found == {"ab12-0001", "ab12-0002", "ab12-0003"}

    result = sagakit(
        "list", "--where", "input.customer_id=42", "--where", "output.status=held", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert [s["saga_id"] for s in json.loads(result.stdout)["sagas"]] == ["ab12-0003"]

    result = sagakit("list", "--where", "input.customer.id=7")
    assert result.returncode == 0, result.stderr
    assert "ab13-0001" in result.stdout and "ab12-0001" not in result.stdout

    # the next page's command keeps the search
    result = sagakit(
        "list", "--id-prefix", "ab12", "--where", "input.customer_id=42", "--limit", "1"
    )
    assert result.returncode == 0, result.stderr
    assert "--id-prefix ab12 --where input.customer_id=42" in result.stdout

    result = sagakit("list", "--until", "1h")
    assert result.returncode == 0 and "no sagas" in result.stdout

    # a malformed condition is a usage error, refused before the database is opened
    result = sagakit("list", "--where", "input.a;DROP TABLE x=1")
    assert result.returncode == 2
    assert "not a key a search accepts" in result.stderr and "Traceback" not in result.stderr
    result = sagakit("list", "--where", "customer_id=42")
    assert result.returncode == 2 and "input or output" in result.stderr


def test_search_statuses_and_times_in_the_filter() -> None:
    where = SagaFilter(statuses=(SagaStatus.RUNNING.value,), updated_before=time.time())
    assert where.searches and not SagaFilter(status="RUNNING").searches


async def test_postgres_id_prefix_is_exact_under_any_collation(pg_url: str) -> None:
    """A database whose ids sort by code point reads the primary key's range; under another
    collation the range is taken in "C" order: both find exactly the ids with the prefix."""
    import asyncpg

    from sagakit.stores.postgres import search as pg_search

    async with make_engine(pg_url) as engine:
        engine.register(ship, refund)
        await seeded(engine)
    conn = await asyncpg.connect(pg_url, server_settings={"search_path": "sagakit, public"})
    try:
        assert await pg_search.IdOrder().read(conn)  # the test server's collation is C.UTF-8
        for prefix in ["ab1", "ab12", "ab1%", "AB", "zz-0002", "\U0010ffff"]:
            expected = {i for i in SEEDED if i.startswith(prefix)}
            for bytewise in (True, False):
                where = SagaFilter(id_prefix=prefix)
                sql, args = pg_search.list_query(where, 100, bytewise=bytewise)
                assert {r[0] for r in await conn.fetch(sql, *args)} == expected, (prefix, bytewise)
                sql, args = pg_search.count_query(where, bytewise=bytewise)
                assert await conn.fetchval(sql, *args) == len(expected)
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN " + pg_search.count_query(SagaFilter(id_prefix="ab12"), bytewise=True)[0],
                "ab12",
                "ab13",
            )
        )
        assert "saga_instances_pkey" in plan
    finally:
        await conn.close()


async def test_postgres_id_prefix_under_a_linguistic_collation(pg_server: Any) -> None:
    """Under ICU's en-US order ("ab-1x" sorts among "ab1..."), the id range is taken in code
    point order: still exactly the ids with the prefix."""
    import asyncpg

    from sagakit.stores.postgres import search as pg_search

    name = f"icu_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{pg_server.port}/postgres")
    try:
        await admin.execute(
            f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu "
            "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        )
    finally:
        await admin.close()
    url = f"postgresql://postgres@127.0.0.1:{pg_server.port}/{name}"
    async with make_engine(url) as engine:
        engine.register(ship, refund)
        for saga_id in ["ab-1x", "ab1-y", "ab10", "AB-1", "ab", "ab-"]:
            await (await engine.start(refund, {}, saga_id=saga_id)).result()
        conn = await asyncpg.connect(url, server_settings={"search_path": "sagakit, public"})
        try:
            assert not await pg_search.IdOrder().read(conn)
        finally:
            await conn.close()
        for prefix, expected in [
            ("ab-1", {"ab-1x"}),
            ("ab1", {"ab1-y", "ab10"}),
            ("ab-", {"ab-", "ab-1x"}),
            ("ab", {"ab-1x", "ab1-y", "ab10", "ab", "ab-"}),
            ("AB", {"AB-1"}),
        ]:
            assert await ids(engine, id_prefix=prefix) == expected, prefix

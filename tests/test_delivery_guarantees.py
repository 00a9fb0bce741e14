"""Deliveries to a saga happen once: a wait token answers one ``notify`` (also when two
processes race with it), and a signal sent again with its key is not stored twice. On every
store kind; the race between processes on SQLite and PostgreSQL.

(A delivery repeated by the store itself after a lost acknowledgement is covered by the fault
matrix, tests/test_fault_matrix.py.)
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from sagakit import Engine, SagaContext, SagaValidationError, saga_workflow
from tests.conftest import make_engine
from tests.waiting import WAIT, suspended


@saga_workflow("WaitsOnce")
async def waits_once(saga: SagaContext, inp: Any) -> Any:
    first = await saga.wait_for_signal("a")
    return first


@saga_workflow("Collects")
async def collects(saga: SagaContext, count: int) -> list[Any]:
    return [await saga.wait_for_signal("item") for _ in range(count)]


async def test_a_token_answers_the_first_notify_only(engine: Engine) -> None:
    handle = await engine.start(waits_once, None, saga_id="once")
    token = (await suspended(engine, "once")).wait_token
    assert token is not None
    # both before the saga moves on: the second finds the token used
    assert await engine.notify("once", token, "x") is True
    assert await engine.notify("once", token, "y") is False
    assert await handle.result(timeout=WAIT) == "x"
    events = await engine._store_or_raise().load_events("once")
    assert [e.payload for e in events] == ['"x"']


async def test_a_signal_sent_again_with_its_key_is_stored_once(engine: Engine) -> None:
    handle = await engine.start(collects, 2, saga_id="keyed")
    await engine.signal("keyed", "item", 1, key="msg-1")
    await engine.signal("keyed", "item", 1, key="msg-1")  # the sender's own retry
    await engine.signal("keyed", "item", 2, key="msg-2")
    assert await handle.result(timeout=WAIT) == [1, 2]
    events = await engine._store_or_raise().load_events("keyed")
    assert [e.payload for e in events] == ["1", "2"]


async def test_a_bad_signal_key_is_refused_before_anything_is_written(engine: Engine) -> None:
    await engine.start(collects, 1, saga_id="badkey")
    await suspended(engine, "badkey")
    for bad in ("", "k" * 201):
        with pytest.raises(SagaValidationError, match="delivery key"):
            await engine.signal("badkey", "item", 1, key=bad)
    assert await engine._store_or_raise().load_events("badkey") == []


_NOTIFIER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from sagakit import Engine

    async def main(url, saga_id, token, go, value):
        async with Engine(url, worker=False) as engine:
            await engine.get(saga_id)  # connected and warm before the start line
            Path(go + "." + value).touch()
            while not Path(go).exists():
                time.sleep(0.001)  # a busy start line: both processes leave it together
            print(await engine.notify(saga_id, token, value))

    asyncio.run(main(*sys.argv[1:]))
    """
)


def _spawn_notifiers(url: str, token: str, go: str) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", _NOTIFIER, url, "race", token, go, value],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for value in ("p1", "p2")
    ]


async def test_two_processes_racing_with_one_token_deliver_once(
    process_db_url: str, tmp_path: Path
) -> None:
    async with make_engine(process_db_url) as engine:
        engine.register(waits_once)
        handle = await engine.start(waits_once, None, saga_id="race")
        token = (await suspended(engine, "race")).wait_token
        assert token is not None
        go = str(tmp_path / "go")
        procs = _spawn_notifiers(process_db_url, token, go)
        try:
            deadline = time.monotonic() + 120  # a hang guard only
            while not all(Path(f"{go}.{v}").exists() for v in ("p1", "p2")):
                assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                assert time.monotonic() < deadline, "the notifiers never got ready"
                await asyncio.sleep(0.01)
            Path(go).touch()
            answers = [await asyncio.to_thread(p.communicate, timeout=120) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        said = [out.strip() for out, _ in answers]
        assert sorted(said) == ["False", "True"], answers
        winner = ("p1", "p2")[said.index("True")]
        assert await handle.result(timeout=WAIT) == winner
        events = await engine._store_or_raise().load_events("race")
        assert [e.payload for e in events] == [f'"{winner}"']

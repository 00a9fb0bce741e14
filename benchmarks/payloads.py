"""Large payloads (issue 21): what a step that returns 1, 10 or 100 MB of JSON costs to journal
and to replay, and the memory it takes, on SQLite and PostgreSQL.

    python -m benchmarks.payloads [--sizes 1,10,100] [--stores sqlite,postgres]
                                  [--shape records|text] [--url postgresql://...]

Without --url, PostgreSQL is a throwaway server (tests/pgserver.py, fsync on). The payload is
``--shape records`` (the default): a list of small dicts, about 90 bytes of JSON each, as an
export or a report would be (``{"id": 17, "sku": "SKU-00000017", "qty": 4, "price": 19.99,
"warehouse": "eu-west-1"}``); ``--shape text`` is one long string (cheap to encode: no Python
objects to walk). Sizes are MB (10^6 bytes) of JSON. The payload limit is lifted for the
measurement (``Engine(max_payload_bytes=None)``).

Each size runs in fresh processes, one per phase, so that each peak is its own:

* write: a saga's step returns the payload; the figure is the time from the step's end (its
  body returns) to the next step's start, which the engine allows only once the first step's
  entry is committed: JSON encoding, the write and the commit;
* load: ``store.load_journal`` of that saga (what a run reads once when it resumes) and the
  JSON decoding of the entry (what the replay of the step returns);
* resume: another engine takes the saga over after a signal (claim, journal, replay) until its
  next step starts.

Peak memory is the process's ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end of the
phase, and "over idle" subtracts the same phase run with a 100-byte payload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sagakit import Engine, SagaContext, saga_step, saga_workflow, serde
from sagakit.stores import open_store

#: perf_counter at points of the saga, in the child process
_T: dict[str, float] = {}
_PAYLOAD: list[Any] = []


def build(shape: str, size: int) -> Any:
    """A payload whose JSON is about ``size`` bytes."""
    if shape == "text":
        return "a" * max(0, size - 2)
    sample = {"id": 0, "sku": "SKU-00000000", "qty": 1, "price": 19.99, "warehouse": "eu-west-1"}
    count = max(1, size // (len(serde.dumps(sample)) + 1))
    return [
        {"id": i, "sku": f"SKU-{i:08d}", "qty": i % 7 + 1, "price": 19.99, "warehouse": "eu-west-1"}
        for i in range(count)
    ]


@saga_step("Produce")
async def produce(saga: SagaContext, inp: Any) -> Any:
    _T["produced"] = time.perf_counter()
    return _PAYLOAD[0]


@saga_step("Next")
async def next_step(saga: SagaContext, name: str) -> None:
    _T[name] = time.perf_counter()


@saga_workflow("Payload")
async def payload_saga(saga: SagaContext, inp: Any) -> int:
    out = await produce(saga, None)
    await next_step(saga, "written")
    await saga.wait_for_signal("go")
    await next_step(saga, "resumed")
    return len(out)


def _engine(url: str) -> Engine:
    engine = Engine(url, max_payload_bytes=None, worker_id="bench")
    engine.register(payload_saga)
    return engine


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def _until(check: Any) -> None:
    for _ in range(60_000):
        if await check():
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("the saga did not get there in 5 minutes")


async def phase_write(url: str, saga_id: str, shape: str, size: int) -> dict[str, float]:
    _PAYLOAD.append(build(shape, size))
    began = time.perf_counter()
    text = serde.dumps(_PAYLOAD[0])
    encode = time.perf_counter() - began
    json_bytes = len(text)
    del text
    gc.collect()
    async with _engine(url) as engine:
        await engine.start(payload_saga, None, saga_id=saga_id)

        async def suspended() -> bool:
            found = await engine.list(status="SUSPENDED", name="Payload", limit=1000)
            return any(s.saga_id == saga_id for s in found)

        await _until(suspended)
    return {
        "json_bytes": json_bytes,
        "encode_ms": encode * 1e3,
        "write_ms": (_T["written"] - _T["produced"]) * 1e3,
        "peak_mb": _peak_mb(),
    }


async def phase_load(url: str, saga_id: str) -> dict[str, float]:
    store = open_store(url)
    await store.open()
    try:
        began = time.perf_counter()
        journal = await store.load_journal(saga_id)
        loaded = time.perf_counter()
        [entry] = [e for e in journal if e.name == "Produce"]
        serde.loads(entry.output)
        decoded = time.perf_counter()
    finally:
        await store.close()
    return {
        "load_ms": (loaded - began) * 1e3,
        "decode_ms": (decoded - loaded) * 1e3,
        "peak_mb": _peak_mb(),
    }


async def phase_resume(url: str, saga_id: str) -> dict[str, float]:
    async with _engine(url) as engine:
        began = time.perf_counter()
        await engine.signal(saga_id, "go")

        async def resumed() -> bool:
            return "resumed" in _T

        await _until(resumed)
    return {"resume_ms": (_T["resumed"] - began) * 1e3, "peak_mb": _peak_mb()}


def child(args: argparse.Namespace) -> None:
    if args.phase == "write":
        figures = asyncio.run(phase_write(args.url, args.saga_id, args.shape, args.bytes))
    elif args.phase == "load":
        figures = asyncio.run(phase_load(args.url, args.saga_id))
    else:
        figures = asyncio.run(phase_resume(args.url, args.saga_id))
    print(json.dumps(figures))


def _run_phase(phase: str, url: str, saga_id: str, shape: str, size: int) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.payloads", "--phase", phase, "--url", url]
    command += ["--saga-id", saga_id, "--shape", shape, "--bytes", str(size)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{phase} of {saga_id} failed:\n{done.stderr}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def measure(url: str, label: str, shape: str, size: int) -> dict[str, float]:
    saga_id = f"payload-{label}-{shape}-{size}-{time.time_ns()}"
    write = _run_phase("write", url, saga_id, shape, size)
    load = _run_phase("load", url, saga_id, shape, size)
    resume = _run_phase("resume", url, saga_id, shape, size)
    return {
        **write,
        "write_peak_mb": write["peak_mb"],
        "load_ms": load["load_ms"],
        "decode_ms": load["decode_ms"],
        "load_peak_mb": load["peak_mb"],
        "resume_ms": resume["resume_ms"],
        "resume_peak_mb": resume["peak_mb"],
    }


def check_cost() -> None:
    """What the limit check adds to an encode: nothing for dumps' ASCII JSON."""
    text = serde.dumps(build("records", 10_000_000))
    n = 100_000
    began = time.perf_counter()
    for _ in range(n):
        serde.check_size(text, what="x", limit=2 * 1024 * 1024 * 1024)
    ascii_ns = (time.perf_counter() - began) / n * 1e9
    # a str that is not ASCII (not from dumps) whose 4 bytes a character could pass the limit is
    # encoded to count its bytes: 5 million characters, 10 MB of UTF-8, against 15 MB
    wide = "é" * 5_000_000
    began = time.perf_counter()
    serde.check_size(wide, what="x", limit=15_000_000)
    wide_ms = (time.perf_counter() - began) * 1e3
    print(
        f"limit check: {ascii_ns:.0f} ns on the 10 MB JSON of dumps (ASCII: its length is its "
        f"size); {wide_ms:.1f} ms to count the bytes of a 10 MB non-ASCII str near the limit"
    )


@contextlib.contextmanager
def stores(names: list[str], pg_url: str | None) -> Iterator[list[tuple[str, str]]]:
    with contextlib.ExitStack() as stack:
        found: list[tuple[str, str]] = []
        for name in names:
            if name == "sqlite":
                folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="payloads-"))
                found.append(("sqlite", f"sqlite:///{Path(folder) / 'bench.db'}"))
            elif pg_url is not None:
                found.append(("postgres", pg_url))
            else:
                from tests.pgserver import PgServer

                found.append(("postgres", stack.enter_context(PgServer(durable=True)).url))
        yield found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,10,100", help="MB of JSON, comma-separated")
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--shape", default="records", choices=["records", "text"])
    parser.add_argument("--url", default=None, help="a PostgreSQL URL (default: a throwaway)")
    parser.add_argument("--phase", choices=["write", "load", "resume"], help=argparse.SUPPRESS)
    parser.add_argument("--saga-id", help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase is not None:
        child(args)
        return
    sizes = [float(s) for s in args.sizes.split(",")]
    check_cost()
    print(f"shape: {args.shape}. Times in ms; memory: peak RSS in MB over the same phase run")
    print("with a 100-byte payload (its own peak in brackets, per store)")
    print(
        f"{'store':<9}{'JSON':>9}{'encode':>9}{'write':>9}{'load':>9}{'decode':>9}"
        f"{'resume':>9}{'mem w':>8}{'mem l':>8}{'mem r':>8}"
    )
    with stores(args.stores.split(","), args.url) as found:
        for label, url in found:
            idle = measure(url, label, args.shape, 100)
            print(
                f"{label:<9}{'(idle)':>9}{'':>45}[{idle['write_peak_mb']:>5.0f}]"
                f"[{idle['load_peak_mb']:>5.0f}][{idle['resume_peak_mb']:>5.0f}]",
                flush=True,
            )
            for mb in sizes:
                f = measure(url, label, args.shape, int(mb * 1_000_000))
                times = [f[k] for k in ("encode_ms", "write_ms", "load_ms", "decode_ms")]
                times.append(f["resume_ms"])
                memory = [f[f"{k}_peak_mb"] - idle[f"{k}_peak_mb"] for k in ("write", "load")]
                memory.append(f["resume_peak_mb"] - idle["resume_peak_mb"])
                print(
                    f"{label:<9}{f['json_bytes'] / 1e6:>7.1f}MB"
                    + "".join(f"{t:>9.1f}" for t in times)
                    + "".join(f"{m:>8.0f}" for m in memory),
                    flush=True,
                )


if __name__ == "__main__":
    main()

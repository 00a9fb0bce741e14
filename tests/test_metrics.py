"""Metrics (sagakit.metrics): scraped from the ASGI app and from a real ``sagakit worker
--metrics-port`` process after runs of known sagas, and checked against the store's counts;
OpenTelemetry metrics through an in-memory reader; the label cap; the error naming the extra.

The sagas are tests/cli_admin_app.py's ``Transfer``: ``{"n": 1}`` completes, ``{"decline":
True}`` compensates Debit (Credit fails for good at its first attempt), ``{"flag": PATH}``
parks after three attempts of Credit while PATH does not exist."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

from sagakit import Engine, SagaContext, SagaStatus, saga_step, saga_workflow
from sagakit.metrics import MetricsNotInstalled, SagaMetrics, metrics_app
from tests.cli_admin_app import WORKFLOWS, transfer

REPO = Path(__file__).resolve().parent.parent
COMPLETED, COMPENSATED = 3, 2
#: Credit's attempts: one per completed or declined saga, three for the parked one
CREDIT_ATTEMPTS = COMPLETED + COMPENSATED + 3


def inputs(flag: Path) -> dict[str, dict[str, Any]]:
    sagas: dict[str, dict[str, Any]] = {f"ok-{i}": {"n": 1} for i in range(COMPLETED)}
    sagas.update({f"no-{i}": {"decline": True} for i in range(COMPENSATED)})
    sagas["parked"] = {"flag": str(flag)}
    return sagas


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text page, by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def settle(engine: Engine, saga_ids: list[str]) -> None:
    """Wait until each saga completed, rolled back or parked."""
    rest = {SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.PARKED}
    deadline = time.monotonic() + 30
    for saga_id in saga_ids:
        while (await engine.get(saga_id)).status not in rest:
            assert time.monotonic() < deadline, f"saga {saga_id} did not settle"
            await asyncio.sleep(0.02)


def check_against_store(samples: Samples, counts: dict[str, int]) -> None:
    assert counts.get("COMPLETED") == COMPLETED
    assert counts.get("COMPENSATED") == COMPENSATED
    assert counts.get("PARKED") == 1
    for status in ("COMPLETED", "COMPENSATED", "PARKED", "RUNNING", "FAILED"):
        assert value(samples, "sagakit_sagas", status=status) == counts.get(status, 0), status
    for status in ("COMPLETED", "COMPENSATED"):
        ended = value(samples, "sagakit_sagas_ended_total", workflow="Transfer", status=status)
        assert ended == counts[status], status
    assert value(samples, "sagakit_runs_total", workflow="Transfer", status="PARKED") == 1
    credit = value(
        samples, "sagakit_step_duration_seconds_count", workflow="Transfer", step="Credit"
    )
    assert credit == CREDIT_ATTEMPTS
    debit = value(samples, "sagakit_step_duration_seconds_count", workflow="Transfer", step="Debit")
    assert debit == COMPLETED + COMPENSATED + 1
    undone = value(samples, "sagakit_compensation_duration_seconds_count", step="Debit")
    assert undone == COMPENSATED
    assert value(samples, "sagakit_retries_total", step="Credit", kind="step") == 2
    assert value(samples, "sagakit_store_commit_duration_seconds_count") > 0


async def test_the_asgi_app_serves_what_the_store_counts(tmp_path: Path) -> None:
    async with Engine(f"sqlite:///{tmp_path / 'm.db'}", metrics=True) as engine:
        engine.register(*WORKFLOWS)
        sagas = inputs(tmp_path / "never")
        for saga_id, inp in sagas.items():
            await engine.start(transfer, inp, saga_id)
        await settle(engine, list(sagas))
        app = metrics_app(engine)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = parse(response.text)
        check_against_store(samples, await engine.admin.count_by_status())
        assert value(samples, "sagakit_sagas_started_total", workflow="Transfer") == len(sagas)
        # the process's default registry is served too
        assert any(name.startswith("python_") for name, _ in samples)


async def test_engines_in_one_process_keep_their_own_counts() -> None:
    first = Engine("memory://", metrics=True)
    second = Engine("memory://", metrics=True)
    async with first, second:
        first.register(*WORKFLOWS)
        second.register(*WORKFLOWS)
        await (await first.start(transfer, {"n": 1}, "a")).result()
    assert first.metrics is not None and second.metrics is not None
    assert first.metrics.registry is not second.metrics.registry
    started = "sagakit_sagas_started_total"
    assert first.metrics.registry.get_sample_value(started, {"workflow": "Transfer"}) == 1
    assert second.metrics.registry.get_sample_value(started, {"workflow": "Transfer"}) is None


def test_metrics_can_be_turned_off() -> None:
    assert Engine("memory://", metrics=False).metrics is None
    assert Engine("memory://").metrics is not None  # prometheus_client is installed here


# -- a real worker process --------------------------------------------------------------------


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(url: str, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
        out = tmp_path / f"worker{len(procs)}.out"
        command = [sys.executable, "-m", "sagakit.cli", "worker", "--db", url, *extra]
        command += ["--app", "tests.cli_admin_app:WORKFLOWS", "--poll", "0.05", "--lease", "2"]
        with open(out, "wb") as sink:
            proc = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc, out

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for_line(proc: subprocess.Popen[bytes], out: Path, pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + 30
    while True:
        found = re.search(pattern, out.read_text())
        if found:
            return found
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.05)


async def test_worker_metrics_port_serves_what_the_store_counts(
    tmp_path: Path, worker: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    sagas = inputs(tmp_path / "never")
    async with Engine(url, worker=False, metrics=False) as client:
        client.register(*WORKFLOWS)
        for saga_id, inp in sagas.items():
            await client.start(transfer, inp, saga_id, run_here=False)
        proc, out = worker(url, "--metrics-port", "0")
        found = wait_for_line(proc, out, r"metrics on http://127\.0\.0\.1:(\d+)/metrics")
        await settle(client, list(sagas))
        counts = await client.admin.count_by_status()
    address = f"http://127.0.0.1:{found.group(1)}/metrics"

    def scrape() -> Samples:
        with urllib.request.urlopen(address, timeout=10) as response:
            return parse(response.read().decode())

    # the runs' last counts land just after their status commits: scrape until they are in
    deadline = time.monotonic() + 30
    while True:
        samples = await asyncio.to_thread(scrape)
        try:
            check_against_store(samples, counts)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    assert value(samples, "sagakit_store_claim_duration_seconds_count") > 0
    # the worker created none of these sagas: the client did
    assert value(samples, "sagakit_sagas_started_total") == 0


def test_worker_refuses_a_metrics_port_in_use(tmp_path: Path, worker: Any) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, out = worker(f"sqlite:///{tmp_path / 'p.db'}", "--metrics-port", str(port))
        assert proc.wait(timeout=30) == 1
    assert "--metrics-port" in out.read_text()


# -- OpenTelemetry ------------------------------------------------------------------------------


def otel_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


async def test_opentelemetry_metrics_through_an_sdk_meter_provider(tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = SagaMetrics(meter_provider=provider, prometheus=False)
    assert metrics.registry is None
    async with Engine("memory://", metrics=metrics) as engine:
        engine.register(*WORKFLOWS)
        sagas = inputs(tmp_path / "never")
        for saga_id, inp in sagas.items():
            await engine.start(transfer, inp, saga_id)
        await settle(engine, list(sagas))
        await metrics.refresh(force=True)
        points = otel_points(reader)
    ended = {
        p.attributes["sagakit.status"]: p.value
        for p in points["sagakit.sagas.ended"]
        if p.attributes["sagakit.workflow"] == "Transfer"
    }
    assert ended == {"COMPLETED": COMPLETED, "COMPENSATED": COMPENSATED}
    credit = [
        p for p in points["sagakit.step.duration"] if p.attributes["sagakit.step"] == "Credit"
    ]
    assert sum(p.count for p in credit) == CREDIT_ATTEMPTS
    gauge = {p.attributes["sagakit.status"]: p.value for p in points["sagakit.sagas"]}
    assert gauge["PARKED"] == 1 and gauge["COMPLETED"] == COMPLETED
    started = sum(p.value for p in points["sagakit.sagas.started"])
    assert started == len(sagas)


# -- bounded labels, missing package ---------------------------------------------------------


@saga_step("Only")
async def only(ctx: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
    return inp


def numbered(n: int) -> Any:
    @saga_workflow(f"Generated{n}")
    async def generated(saga: SagaContext, inp: dict[str, Any]) -> dict[str, Any]:
        return await only(saga, inp)

    return generated


async def test_label_values_beyond_the_cap_are_counted_as_other() -> None:
    workflows = [numbered(n) for n in range(5)]
    async with Engine("memory://", metrics=SagaMetrics(max_label_values=2)) as engine:
        engine.register(*workflows)
        for n, wf in enumerate(workflows):
            await (await engine.start(wf, {"n": n}, f"g{n}")).result()
        assert engine.metrics is not None
        registry = engine.metrics.registry
    started = "sagakit_sagas_started_total"
    assert registry.get_sample_value(started, {"workflow": "Generated0"}) == 1
    assert registry.get_sample_value(started, {"workflow": "Generated1"}) == 1
    assert registry.get_sample_value(started, {"workflow": "other"}) == 3
    assert registry.get_sample_value(started, {"workflow": "Generated4"}) is None
    overflow = registry.get_sample_value(
        "sagakit_metrics_label_overflow_total", {"label": "workflow"}
    )
    assert overflow is not None and overflow > 0


def test_a_missing_prometheus_client_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MetricsNotInstalled, match=r"sagakit\[metrics\]"):
        metrics_app()
    with pytest.raises(MetricsNotInstalled, match=r"sagakit\[metrics\]"):
        Engine("memory://", metrics=True)
    assert Engine("memory://").metrics is None  # the default: off, quietly

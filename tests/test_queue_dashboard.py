"""The dashboard's queues (issue 17): QUEUED in the counts and the status filter with a colour
of its own, the "Queues" card of the front page, a queued saga's queue, partition, priority
and place on its page, and cancel/compensate offered and done on a QUEUED saga. The dashboard
runs in-process on a free port, asked with ``http.client`` (as in tests/test_dashboard.py);
no worker runs, so the queued sagas stay queued."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from sagakit import Engine, Queue, RateLimit, SagaStatus
from sagakit.dashboard import Dashboard
from sagakit.dashboard.queues import render_queues_card
from sagakit.stores.queueing import QueueLimits, QueueState

from .test_dashboard import TOKEN, call, saga_url, snapshot
from .test_queue_admin import mail

MAIL = Queue("mail", concurrency=2, rate=RateLimit(50, per=timedelta(seconds=1)))
PAY = Queue("pay", priority=True, partitioned=True)


async def _prepare(url: str) -> None:
    engine = Engine(url, worker=False)
    engine.register(mail, MAIL, PAY)
    async with engine:
        for saga_id in ("m-1", "m-2", "m-cancel", "m-compensate"):
            await engine.enqueue(MAIL, mail, {}, saga_id)
        await engine.enqueue(PAY, mail, {}, "p-1", partition_key="acme", priority=7)
        await engine.enqueue(
            PAY, mail, {}, "p-2", partition_key="acme", priority=3, dedup_id="invoice-42"
        )
        await engine.admin.set_queue_limits("mail", concurrency=5, by="test")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    path: Path = tmp_path_factory.mktemp("queue-dashboard") / "sagas.db"
    url = f"sqlite:///{path}"
    asyncio.run(_prepare(url))
    with Dashboard(url, port=0, token=TOKEN) as running:
        yield running


def test_queued_has_a_count_a_filter_and_a_colour(dashboard: Dashboard) -> None:
    page = call(dashboard, "GET", "/")
    assert page.status == 200
    count = re.search(
        r'<a class="count c-QUEUED[^"]*"[^>]*><span class="n">(\d+)</span>', page.body
    )
    assert count is not None and int(count[1]) >= 4
    assert '<option value="QUEUED">QUEUED</option>' in page.body
    assert ".s-QUEUED{" in page.body and ".c-QUEUED{" in page.body
    listed = call(dashboard, "GET", "/?status=QUEUED")
    assert 'data-saga="m-1"' in listed.body and 'data-saga="p-2"' in listed.body
    assert 'data-status="QUEUED"' in listed.body


def test_the_queues_card_lists_limits_and_counts(dashboard: Dashboard) -> None:
    body = call(dashboard, "GET", "/").body
    card = body[body.index('<section class="queues"') :]
    card = card[: card.index("</section>")]
    mail_row = re.search(r'<tr data-queue="mail">(.*?)</tr>', card)
    assert mail_row is not None
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", mail_row[1])]
    # name, concurrency (raised by an operator: marked), per worker, rate, state, queued...
    assert cells[:5] == ["mail", "5*", "none", "50/1s", "active"]
    assert cells[5] == "4" and cells[7] == "0"
    pay_row = re.search(r'<tr data-queue="pay">(.*?)</tr>', card)
    assert pay_row is not None and "none" in pay_row[1]
    assert "changed at run time by an operator" in card


def test_a_queued_sagas_page_shows_its_queue_and_place(dashboard: Dashboard) -> None:
    page = call(dashboard, "GET", saga_url("p-1"))
    assert page.status == 200
    text = " ".join(page.text().split())
    assert "queue pay" in text and "partition acme" in text and "priority 7" in text
    # p-2 has the smaller priority number: it starts first, p-1 is second in the partition
    assert re.search(r'<span id="queue-position">2</span> in its partition', page.body)
    second = call(dashboard, "GET", saga_url("p-2"))
    assert '<span id="queue-position">1</span>' in second.body
    assert "next to start" in second.body and "invoice-42" in second.body
    assert "waiting in queue pay" in second.body  # the timeline's bar of what it does now
    for action in ("cancel", "compensate"):
        assert f'data-action="{action}"' in page.body


def test_cancel_and_compensate_a_queued_saga_from_the_dashboard(dashboard: Dashboard) -> None:
    reply = call(
        dashboard, "POST", saga_url("m-cancel") + "/cancel", {"token": TOKEN, "reason": "spam"}
    )
    assert reply.status == 303
    assert snapshot(dashboard, "m-cancel").status == SagaStatus.CANCELLED
    reply = call(dashboard, "POST", saga_url("m-compensate") + "/compensate", {"token": TOKEN})
    assert reply.status == 303
    assert snapshot(dashboard, "m-compensate").status in (
        SagaStatus.COMPENSATING,
        SagaStatus.COMPENSATED,
    )
    # the others keep their places: m-1 still starts next
    assert '<span id="queue-position">1</span>' in call(dashboard, "GET", saga_url("m-1")).body


def test_the_card_escapes_and_shows_nothing_without_queues() -> None:
    assert render_queues_card([]) == ""
    state = QueueState(
        '<b>"x"</b>',
        QueueLimits(concurrency=1),
        {"paused": True},
        queued=1,
        oldest_queued_at=0.0,
    )
    html = render_queues_card([state], now=90.0)
    assert '<b>"x"</b>' not in html and "&lt;b&gt;" in html
    assert "paused*" in html and "1 min 30 s" in html

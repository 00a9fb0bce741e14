"""Property test of the queue choice every store makes in its claim
(:func:`sagakit.stores.queueing.choose`), against a plain model of the limits.

A random load is a queue's limits (concurrency, worker_concurrency, a rate limit, paused,
partitioned), candidates across partitions in the order the stores give them (per partition:
sagas due again first, then fresh ones), the slots held per partition and by the claiming
worker, the starts inside the rate window and each partition's latest start. The chosen set
must stay within every limit, take each partition's candidates in order, be maximal (no
candidate that fits is left out while the claim has room), give partitions fair turns, and say
when a rate-limited partition admits its next start.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sagakit.stores.queueing import Candidate, QueueChoice, QueueLimits, QueueLoad, choose

NOW = 1000.0
PER = 1.0


@dataclass
class Case:
    load: QueueLoad
    limit: int


@st.composite
def cases(draw: st.DrawFn) -> Case:
    partitioned = draw(st.booleans())
    keys = ["a", "b", "c"] if partitioned else [""]
    rate_limit = draw(st.none() | st.integers(1, 3))
    limits = QueueLimits(
        concurrency=draw(st.none() | st.integers(1, 4)),
        worker_concurrency=draw(st.none() | st.integers(1, 5)),
        rate_limit=rate_limit,
        rate_per=None if rate_limit is None else PER,
        partitioned=partitioned,
        paused=draw(st.booleans()),
    )
    # per partition: due-again candidates first, then fresh ones (the stores' order) ...
    lists: dict[str, list[Candidate]] = {}
    n = 0
    for key in keys:
        resumed, fresh = draw(st.integers(0, 3)), draw(st.integers(0, 5))
        lists[key] = []
        for i in range(resumed + fresh):
            lists[key].append(Candidate(f"s{n}", key, fresh=i >= resumed))
            n += 1
    # ... interleaved across partitions in any way
    picks = draw(st.permutations([k for k in keys for _ in lists[k]]))
    taken = dict.fromkeys(keys, 0)
    candidates = []
    for key in picks:
        candidates.append(lists[key][taken[key]])
        taken[key] += 1
    running = {k: draw(st.integers(0, 4)) for k in keys if draw(st.booleans())}
    recent = {
        k: draw(st.lists(st.floats(NOW - PER + 0.001, NOW), max_size=4))
        for k in keys
        if rate_limit is not None
    }
    last = {k: draw(st.floats(0.0, NOW)) for k in keys if draw(st.booleans())}
    load = QueueLoad(
        limits,
        candidates,
        running=running,
        mine=draw(st.integers(0, 5)),
        recent_starts=recent,
        last_start=last,
    )
    return Case(load, draw(st.integers(0, 8)))


def rate_case(recent: list[float], fresh: int) -> Case:
    """One partition with a rate of 1 and ``fresh`` sagas waiting."""
    limits = QueueLimits(rate_limit=1, rate_per=PER)
    candidates = [Candidate(f"s{i}", "", fresh=True) for i in range(fresh)]
    return Case(QueueLoad(limits, candidates, recent_starts={"": recent}), 5)


def room(limit: int | None, used: int) -> float:
    """What is left of a limit (none when it is already exceeded: an operator lowered it)."""
    return math.inf if limit is None else max(0, limit - used)


@settings(max_examples=400, deadline=None)
@given(cases())
@example(rate_case(recent=[], fresh=2))
@example(rate_case(recent=[NOW - 0.5], fresh=3))
def test_the_choice_keeps_every_limit_order_and_fairness_and_is_maximal(case: Case) -> None:
    load, limits = case.load, case.load.limits
    choice: QueueChoice = choose(load, case.limit, NOW)
    by_id = {c.saga_id: c for c in load.candidates}
    chosen = [by_id[s] for s in choice.saga_ids]
    assert len(set(choice.saga_ids)) == len(chosen), "a saga chosen twice"

    # every limit holds: the claim's, the worker's, each partition's slots and rate tokens
    assert len(chosen) <= case.limit
    assert len(chosen) <= room(limits.worker_concurrency, load.mine)
    count = Counter(c.partition_key for c in chosen)
    fresh = Counter(c.partition_key for c in chosen if c.fresh)
    for key in count:
        assert count[key] <= room(limits.concurrency, load.running.get(key, 0))
        if limits.rate_limit is not None:
            assert fresh[key] <= room(limits.rate_limit, len(load.recent_starts.get(key, [])))
    if limits.paused:
        assert not fresh, "a paused queue started a saga"

    # each partition's candidates are taken in order (a paused queue skips its fresh ones)
    eligible: dict[str, list[Candidate]] = {}
    for c in load.candidates:
        if not (limits.paused and c.fresh):
            eligible.setdefault(c.partition_key, []).append(c)
    for key, queue in eligible.items():
        mine = [c for c in chosen if c.partition_key == key]
        assert queue[: len(mine)] == mine, f"partition {key!r} skipped ahead"

    # maximal: while the claim had room, each partition's next candidate did not fit
    claim_room = min(case.limit, room(limits.worker_concurrency, load.mine)) - len(chosen)
    left: dict[str, Candidate] = {}
    for key, queue in eligible.items():
        if count[key] < len(queue):
            left[key] = queue[count[key]]
    blocked_by_rate: list[str] = []
    for key, head in left.items():
        slots = room(limits.concurrency, load.running.get(key, 0)) - count[key]
        tokens = math.inf
        if limits.rate_limit is not None:
            tokens = room(limits.rate_limit, len(load.recent_starts.get(key, []))) - fresh[key]
        fits = slots > 0 and (not head.fresh or tokens > 0)
        if claim_room > 0:
            assert not fits, f"{head.saga_id} fits but was left out"
        if slots > 0 and head.fresh and tokens <= 0:
            blocked_by_rate.append(key)

    # fair turns: a partition left with a candidate that fits got at least as many as any
    # partition after it in the turn order (least recently started first), and at most one
    # fewer than one before it
    order = sorted(eligible, key=lambda k: (load.last_start.get(k, -math.inf), k))
    for key in left:
        slots = room(limits.concurrency, load.running.get(key, 0)) - count[key]
        if slots <= 0 or key in blocked_by_rate:
            continue
        place = order.index(key)
        for other in order:
            if order.index(other) > place:
                assert count[other] <= count[key], (key, other, count)
            else:
                assert count[other] <= count[key] + 1, (key, other, count)

    # the next token's time, for a partition whose rate held a saga back while it had room
    # (the oldest start in its window leaves it; with none before the claim, the claim's own)
    if choice.retry_at is not None:
        assert choice.retry_at in {
            min(load.recent_starts.get(k) or [NOW]) + PER for k in blocked_by_rate
        }
    if blocked_by_rate and claim_room > 0:
        assert choice.retry_at is not None


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(0, 6))
def test_an_unlimited_queue_takes_every_candidate_up_to_the_claim(n: int, limit: int) -> None:
    load = QueueLoad(QueueLimits(), [Candidate(f"s{i}", "", fresh=True) for i in range(n)])
    assert choose(load, limit, NOW).saga_ids == [f"s{i}" for i in range(min(n, limit))]

"""Property tests of the pure fan-out queue: random interleavings of take/deliver/lost/fail across slots."""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gpucell.client import fanout_queue as fq
from gpucell.errors import BrokerUnavailableError, RemoteError

WINDOW_S = 5.0                     # the reconnect window the harness runs with (short, so it is crossed)


def expected(item: int) -> int:
    return item * 7


@dataclass
class ItemModel:
    state: str = "queued"          # queued -> running -> done / errored / failed / dropped; yielded at the end
    attempts: int = 0              # own failures that cost a try
    lost: int = 0                  # worker deaths since the last reset (the queue's LOST_RETRIES count)
    ready_at: float = 0.0          # not to be taken before this
    own_failures: int = 0
    losses: int = 0


@dataclass
class Harness:
    """Drives a FanoutQueue the way fanout.py does and checks each answer against a model of every item."""

    q: fq.FanoutQueue
    source: list[int]
    now: float = 100.0
    items: dict[int, ItemModel] = field(default_factory=dict)
    outstanding: dict[int, fq.Batch] = field(default_factory=dict)   # taken, not yet reported
    reported: list[fq.Batch] = field(default_factory=list)
    yielded: list[fq.Outcome] = field(default_factory=list)
    stopping: bool = False
    fatal: BaseException | None = None
    down_since: float | None = None
    lost_batches: int = 0

    # ------------------------------------------------------------ the model's rules for one item

    def _requeue(self, index: int, ready_at: float) -> None:
        self.items[index].state = "queued"
        self.items[index].ready_at = ready_at

    def _own_failure(self, index: int) -> None:
        m = self.items[index]
        m.own_failures += 1
        if m.attempts < self.q.retries and not self.stopping:
            m.attempts += 1
            self._requeue(index, self.now + fq.retry_delay(m.attempts))
            return
        if self.q.return_exceptions:
            m.state = "errored"
            return
        m.state = "failed"
        self._stop(index)

    def _stop(self, fatal: Any) -> None:
        if self.fatal is None:
            self.fatal = fatal
            assert self.q.fatal is not None
            so_far = getattr(self.q.fatal, "results_so_far")
            seen = {o.index for o in self.yielded}
            for index, value in so_far.items():
                assert self.items[index].state == "done" and index not in seen
                assert value == expected(self.source[index])
        self.stopping = True

    # ------------------------------------------------------------ events

    def take(self, slot: int) -> fq.Take:
        step = self.q.take(slot, self.now)
        if isinstance(step, fq.Read):
            assert step.count >= 1 and not self.q.exhausted and not self.stopping
            start = self.q.next_index
            got = self.source[start:start + step.count]
            for offset in range(len(got)):
                self.items[start + offset] = ItemModel(ready_at=-math.inf)
            self.q.admit(list(got), exhausted=len(got) < step.count)
            step = self.q.take(slot, self.now)
            assert not isinstance(step, fq.Read), "one read is all a take needs"
        if isinstance(step, fq.Batch):
            assert not self.stopping
            assert step.slot == slot and step.id not in self.outstanding
            assert 1 <= len(step.indices) <= fq.MAX_BATCH and len(set(step.indices)) == len(step.indices)
            assert step.items == [self.source[i] for i in step.indices]
            suspects = [i for i in step.indices if self.items[i].lost >= fq.SOLO_AFTER_LOST]
            assert not suspects or len(step.indices) == 1, f"suspect {suspects} shares a batch"
            for index in step.indices:
                m = self.items[index]
                assert m.state == "queued", f"item {index} taken while {m.state}"
                assert m.ready_at <= self.now, f"item {index} taken {m.ready_at - self.now:g}s before its backoff"
                m.state = "running"
            self.outstanding[step.id] = step
        elif isinstance(step, fq.Wait):
            assert step.seconds > 0 and not self.stopping
        else:
            assert self.stopping or (self.q.exhausted and not self.outstanding and
                                     all(m.state != "queued" for m in self.items.values()))
        return step

    def _report(self, k: int) -> fq.Batch | None:
        if not self.outstanding:
            return None
        batch = self.outstanding.pop(sorted(self.outstanding)[k % len(self.outstanding)])
        self.reported.append(batch)
        return batch

    def deliver(self, k: int, ran: int, fail_mask: int) -> None:
        batch = self._report(k)
        if batch is None:
            return
        ran = min(ran, len(batch.indices))
        values: list[Any] = []
        failures: dict[int, RemoteError] = {}
        for pos in range(ran):
            item = batch.items[pos]
            if fail_mask >> pos & 1:
                values.append(None)
                failures[pos] = RemoteError("ValueError", f"bad {item}")
            else:
                values.append(expected(item))
        self.q.broker_reachable()        # what the runner does when a cell comes back
        self.down_since = None
        self.q.deliver(batch, values, failures, compute_s=0.001 * ran, nbytes=64 * len(batch.indices), now=self.now)
        for pos, index in enumerate(batch.indices):
            if pos >= ran:
                self._requeue(index, 0.0)
            elif pos in failures:
                self._own_failure(index)
            else:
                self.items[index].state = "done"

    def fail(self, k: int) -> None:
        batch = self._report(k)
        if batch is None:
            return
        self.q.batch_failed(batch, TimeoutError("the cell timed out"), self.now)
        if self.stopping:
            for index in batch.indices:
                self.items[index].state = "dropped"
            return
        for index in batch.indices:
            self._own_failure(index)

    def lose(self, k: int) -> None:
        batch = self._report(k)
        if batch is None:
            return
        self.q.batch_lost(batch, RuntimeError("the worker died"), self.now)
        if self.stopping:
            for index in batch.indices:
                self.items[index].state = "dropped"
            return
        self.lost_batches += 1
        for index in batch.indices:
            m = self.items[index]
            m.losses += 1
            m.lost += 1
            if m.lost > fq.LOST_RETRIES:
                m.lost = 0
                self._own_failure(index)
            else:
                self._requeue(index, self.now + fq.retry_delay(m.lost))

    def unreachable(self, k: int) -> None:
        batch = self._report(k)
        if batch is None:
            return
        self.q.batch_unreachable(batch, ConnectionError("broker down"), self.now)
        if not self.stopping and self.down_since is not None and self.now - self.down_since > WINDOW_S:
            assert isinstance(self.q.fatal, BrokerUnavailableError) or self.fatal is not None
            self._stop("unreachable")
        if self.stopping:
            for index in batch.indices:
                self.items[index].state = "dropped"
            return
        if self.down_since is None:
            self.down_since = self.now
        for index in batch.indices:
            self._requeue(index, self.now)

    def duplicate(self, k: int, kind: int) -> None:
        """A late report about a batch already reported: nothing changes."""
        if not self.reported:
            return
        batch = self.reported[k % len(self.reported)]
        before = self.snapshot()
        if kind == 0:
            self.q.deliver(batch, [expected(i) for i in batch.items], {}, 0.0, 0, self.now)
        elif kind == 1:
            self.q.batch_failed(batch, TimeoutError("late"), self.now)
        elif kind == 2:
            self.q.batch_lost(batch, RuntimeError("late"), self.now)
        else:
            self.q.batch_unreachable(batch, ConnectionError("late"), self.now)
        assert self.snapshot() == before, f"a late report changed the queue: {before} -> {self.snapshot()}"

    def consume(self, n: int) -> None:
        for _ in range(n):
            outcome = self.q.next_result()
            if outcome is None:
                return
            m = self.items[outcome.index]
            assert m.state in ("done", "errored"), f"item {outcome.index} yielded while {m.state}"
            if m.state == "done":
                assert outcome.ok and outcome.value == expected(self.source[outcome.index])
            else:
                error = outcome.value
                assert not outcome.ok and isinstance(error, RemoteError) and error.index == outcome.index
                assert str(error).startswith(f"item {outcome.index} failed: ")
            m.state = "yielded"
            self.yielded.append(outcome)
            if self.q.ordered:
                assert outcome.index == len(self.yielded) - 1, "results out of index order"

    def snapshot(self) -> tuple[Any, ...]:
        q = self.q
        items = sorted((i, it.state, it.batch, it.attempts, it.lost, it.value) for i, it in q._items.items())
        return (q.pending, q.in_flight, q.done, q.failed, q.retrying, q.lost_batches, q.reconnects,
                q.next_index, q.yielded, q.stopping, q.fatal, items, sorted(q._retry), q._paused_until, q._down_since)

    # ------------------------------------------------------------ invariants after every event

    def check(self) -> None:
        q = self.q
        states = Counter(m.state for m in self.items.values())
        retrying = sum(1 for m in self.items.values()
                       if m.state in ("queued", "running") and (m.attempts or m.lost))
        assert q.pending == states["queued"]
        assert q.in_flight == states["running"] == sum(len(b.indices) for b in self.outstanding.values())
        done_yielded = sum(1 for o in self.yielded if o.ok)
        assert q.done == states["done"] + done_yielded
        assert q.failed == states["errored"] + states["failed"] + len(self.yielded) - done_yielded
        assert q.retrying == retrying
        assert q.lost_batches == self.lost_batches
        assert q.next_index == len(self.items) and q.yielded == len(self.yielded)
        assert q.stopping == self.stopping
        # The tallies are what the queue's own items say.
        live = Counter(item.state.value for item in q._items.values())
        assert q.pending == live["queued"] and q.in_flight == live["running"]
        assert q.retrying == sum(1 for item in q._items.values()
                                 if item.state in (fq.ItemState.QUEUED, fq.ItemState.RUNNING)
                                 and (item.attempts or item.lost))
        assert q.next_index - q.yielded <= q._window()
        for index, m in self.items.items():
            assert m.attempts <= q.retries and m.own_failures <= q.retries + 1
            assert m.losses <= (fq.LOST_RETRIES + 1) * (q.retries + 1)
            assert m.state == "yielded" or index in q._items

    def drain(self) -> None:
        """Run to the end as a healthy cluster would: every batch comes back whole."""
        slots = len(self.q._slots)
        for _ in range(20 * len(self.source) + 200):
            if self.q.finished or self.stopping:
                return
            waits = []
            for slot in range(slots):
                step = self.take(slot)
                self.check()
                if isinstance(step, fq.Wait):
                    waits.append(step.seconds)
            while self.outstanding:
                self.deliver(0, fq.MAX_BATCH, 0)
                self.check()
            self.consume(len(self.source) + 1)
            self.check()
            if waits and not self.q.finished:
                self.now += min(waits)
        raise AssertionError(f"no end: {self.q.pending} pending, {self.q.in_flight} in flight")


# ---------------------------------------------------------------- strategies

take = st.tuples(st.just("take"), st.integers(0, 2))
consume = st.tuples(st.just("consume"), st.integers(1, 5))
actions = st.one_of(
    take, take, take,             # weighted: reports need batches out
    st.tuples(st.just("deliver"), st.integers(0, 7), st.integers(0, 6), st.integers(0, 2 ** 6 - 1)),
    st.tuples(st.just("deliver"), st.integers(0, 7), st.just(fq.MAX_BATCH), st.just(0)),
    st.tuples(st.just("fail"), st.integers(0, 7)),
    st.tuples(st.just("lose"), st.integers(0, 7)),
    st.tuples(st.just("lose"), st.integers(0, 7)),
    st.tuples(st.just("unreachable"), st.integers(0, 7)),
    st.tuples(st.just("duplicate"), st.integers(0, 20), st.integers(0, 3)),
    consume, consume,
    st.tuples(st.just("ready"), st.integers(0, 2)),
    st.tuples(st.just("tick"), st.sampled_from([0.05, 0.3, 1.0, 3.0, 12.0])),
)


@dataclass(frozen=True)
class Setup:
    n: int
    slots: int
    retries: int
    ordered: bool
    return_exceptions: bool
    hint: str                      # the source's length hint: right, absent, too small, too large


setups = st.builds(Setup, n=st.integers(0, 40), slots=st.integers(1, 3), retries=st.integers(0, 2),
                   ordered=st.booleans(), return_exceptions=st.booleans(),
                   hint=st.sampled_from(["right", "none", "small", "large"]))


def make(setup: Setup) -> Harness:
    total = {"right": setup.n, "none": None, "small": setup.n // 2, "large": setup.n * 2 + 3}[setup.hint]
    q = fq.FanoutQueue(setup.slots, total=total, retries=setup.retries, ordered=setup.ordered,
                       return_exceptions=setup.return_exceptions, reconnect_window_s=WINDOW_S)
    return Harness(q, [1000 + i for i in range(setup.n)])


def run_actions(h: Harness, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    slots = len(h.q._slots)
    for step in steps:
        kind = step[0]
        h.now += 0.01
        if kind == "take":
            h.take(step[1] % slots)
        elif kind == "deliver":
            h.deliver(step[1], step[2], step[3])
        elif kind == "fail":
            h.fail(step[1])
        elif kind == "lose":
            h.lose(step[1])
        elif kind == "unreachable":
            h.unreachable(step[1])
        elif kind == "duplicate":
            h.duplicate(step[1], step[2])
        elif kind == "consume":
            h.consume(step[1])
        elif kind == "ready":
            h.q.slot_ready(step[1] % slots)
        elif kind == "tick":
            h.now += step[1]
        h.check()


# A few seconds by default; GPUCELL_PROPERTY_EXAMPLES=5000 for a deeper hunt.
PROPERTY_SETTINGS = settings(max_examples=int(os.environ.get("GPUCELL_PROPERTY_EXAMPLES", "200")), deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(setups, st.lists(actions, min_size=30, max_size=150))
def test_random_interleavings_deliver_every_item_once_in_order(setup: Setup, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    h = make(setup)
    run_actions(h, steps)
    h.drain()
    event(f"ended: {'stopped' if h.stopping else 'finished'}; lost batches: {min(h.lost_batches, 3)}; "
          f"retried: {any(m.attempts for m in h.items.values())}; reconnects: {h.q.reconnects > 0}")
    if h.stopping:
        # The map stopped on an item that failed for good (or a broker that stayed away): that error says so.
        assert h.q.fatal is not None and h.q.take(0, h.now) is None
        if isinstance(h.fatal, int):
            assert isinstance(h.q.fatal, RemoteError) and h.q.fatal.index == h.fatal  # type: ignore[attr-defined]
        return
    # Every item came out exactly once, with its own result or its own error; none lost with its worker.
    assert h.q.finished and h.q.next_result() is None
    assert sorted(o.index for o in h.yielded) == list(range(setup.n))
    assert h.q.done + h.q.failed == setup.n and h.q.pending == h.q.in_flight == h.q.retrying == 0
    if setup.ordered:
        assert [o.index for o in h.yielded] == list(range(setup.n))


deadly = st.one_of(take, take, st.tuples(st.just("lose"), st.integers(0, 7)),
                   st.tuples(st.just("lose"), st.integers(0, 7)),
                   st.tuples(st.just("deliver"), st.integers(0, 7), st.integers(0, 3), st.integers(0, 3)),
                   st.tuples(st.just("tick"), st.sampled_from([0.3, 3.0, 12.0])), consume)


@PROPERTY_SETTINGS
@given(st.builds(Setup, n=st.integers(1, 5), slots=st.integers(1, 2), retries=st.integers(0, 1),
                 ordered=st.booleans(), return_exceptions=st.booleans(), hint=st.sampled_from(["right", "none"])),
       st.lists(deadly, min_size=20, max_size=150))
def test_workers_that_keep_dying_lose_and_double_nothing(setup: Setup, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    h = make(setup)
    run_actions(h, steps)
    h.drain()
    event(f"an item lost past LOST_RETRIES: {any(m.losses > fq.LOST_RETRIES for m in h.items.values())}")
    if not h.stopping:
        assert sorted(o.index for o in h.yielded) == list(range(setup.n))
        for o in h.yielded:          # an item its workers kept dying under stands as that error, in its place
            assert o.ok or o.value.ename in ("ValueError", "WorkerLostError")


@PROPERTY_SETTINGS
@given(setups, st.lists(actions, max_size=40))
def test_a_cancelled_queue_hands_out_nothing_and_keeps_its_counts(setup: Setup, steps: list[tuple]) -> None:  # type: ignore[type-arg]
    h = make(setup)
    run_actions(h, steps)
    h.q.stop()
    h.stopping = True
    assert h.take(0) is None
    while h.outstanding:             # what was in flight comes back after the stop: dropped or kept, never lost
        if len(h.outstanding) % 2:
            h.lose(0)
        else:
            h.deliver(0, fq.MAX_BATCH, 0)
        h.check()
    assert h.q.in_flight == 0


# ---------------------------------------------------------------- single behaviours, spelled out


def _queue(**options: Any) -> fq.FanoutQueue:
    q = fq.FanoutQueue(1, **options)
    return q


def _take(q: fq.FanoutQueue, source: list[Any], now: float, slot: int = 0) -> fq.Take:
    step = q.take(slot, now)
    if isinstance(step, fq.Read):
        got = source[q.next_index:q.next_index + step.count]
        q.admit(got, exhausted=len(got) < step.count)
        step = q.take(slot, now)
    return step


def test_a_late_duplicate_delivery_is_ignored() -> None:
    q = _queue(total=None)
    batch = _take(q, ["a", "b"], 0.0)
    assert isinstance(batch, fq.Batch) and batch.items == ["a", "b"]
    q.deliver(batch, ["A", "B"], {}, 0.01, 10, 1.0)
    q.deliver(batch, ["X", "Y"], {}, 0.01, 10, 1.0)
    assert q.done == 2
    assert [q.next_result(), q.next_result(), q.next_result()] == [fq.Outcome(0, True, "A"), fq.Outcome(1, True, "B"),
                                                                  None]


def test_an_item_lost_twice_runs_alone() -> None:
    q = _queue(total=None)
    source = ["a", "b"]
    now = 0.0
    for lost in range(1, fq.SOLO_AFTER_LOST + 1):
        batch = _take(q, source, now)
        assert isinstance(batch, fq.Batch) and batch.indices == [0, 1]
        q.batch_lost(batch, RuntimeError("worker died"), now)
        assert q.retrying == 2 and q.pending == 2 and q.in_flight == 0
        now += fq.retry_delay(lost)
    solo = [_take(q, source, now), _take(q, source, now)]
    assert [b.indices for b in solo if isinstance(b, fq.Batch)] == [[0], [1]], "suspects run alone"


def test_an_item_lost_too_often_fails_with_the_reason_and_costs_no_retry() -> None:
    q = _queue(total=1, retries=0, return_exceptions=True)
    now = 0.0
    for lost in range(1, fq.LOST_RETRIES + 2):
        batch = _take(q, ["a"], now)
        assert isinstance(batch, fq.Batch) and batch.indices == [0]
        q.batch_lost(batch, RuntimeError("worker died"), now)
        now += fq.retry_delay(lost)
    assert q.lost_batches == fq.LOST_RETRIES + 1 and q.failed == 1 and q.retrying == 0
    outcome = q.next_result()
    assert outcome is not None and not outcome.ok and outcome.value.ename == "WorkerLostError"
    assert str(outcome.value) == (f"item 0 failed: WorkerLostError: worker died "
                                  f"(the item's worker was lost {fq.LOST_RETRIES + 1} times)")
    assert _take(q, ["a"], now) is None and q.finished     # the next read finds the source at its end


def test_a_broker_away_past_the_window_stops_the_map_with_its_reason() -> None:
    q = _queue(total=4, reconnect_window_s=60.0)
    source = [1, 2, 3, 4]
    now = 0.0
    batch = _take(q, source, now)
    assert isinstance(batch, fq.Batch)
    q.batch_unreachable(batch, ConnectionError("refused"), now)
    assert q.reconnects == 1 and q.pending == 2 and q.in_flight == 0
    paused = q.take(0, now)
    assert isinstance(paused, fq.Wait) and paused.seconds == pytest.approx(fq.RECONNECT_BASE_S)
    now += 61.0
    batch = _take(q, source, now)
    assert isinstance(batch, fq.Batch)
    q.batch_unreachable(batch, ConnectionError("refused"), now)
    assert isinstance(q.fatal, BrokerUnavailableError)
    assert str(q.fatal) == "the map stopped: the broker stayed unreachable for 60s (refused)"
    assert q.take(0, now) is None and q.in_flight == 0


def test_the_tail_is_shared_between_ready_slots() -> None:
    q = fq.FanoutQueue(2, total=8)
    q.slot_ready(0)
    q.slot_ready(1)
    source = list(range(8))
    first = _take(q, source, 0.0)
    assert isinstance(first, fq.Batch) and len(first.indices) == fq.FIRST_BATCH
    q.deliver(first, [0, 0], {}, 0.0001, 16, 0.0)   # fast items: by time the batch would be large
    second = _take(q, source, 0.0)
    assert isinstance(second, fq.Batch) and len(second.indices) == math.ceil(6 / 4)

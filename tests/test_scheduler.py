"""Property tests of the pure scheduler: random event sequences, checked against the instructions it emits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpucell.broker import scheduler as sch

SESSIONS = ("s1", "s2", "s3")
POOL_NAMES = ("T4", "A100")
IDLE_CHOICES = (None, 0.5, 4.0)
TIMEOUT_CHOICES = (0.0, 0.0, 0.5, 2.0)


@dataclass
class CellModel:
    session: str
    pool: str
    order: int
    idle: float | None
    state: str = "queued"          # queued -> running -> finished, or failed
    worker: str = ""
    reason: str = ""
    kind: str = ""
    timeout: float = 0.0
    started: float = 0.0
    interrupted_at: float | None = None


@dataclass
class WorkerModel:
    pool: str
    state: str = "starting"        # starting -> ready -> terminated -> gone
    session: str | None = None
    assigned_at: float | None = None
    cell: str = ""
    idle_since: float | None = None
    idle_timeout: float = 0.0
    usage_records: int = 0
    reachable: bool = True
    lost_reason: str = ""


@dataclass
class Harness:
    """Drives a Scheduler with events and checks every instruction it emits against a model of the world."""

    pools: dict[str, sch.PoolLimits]
    heartbeat_timeout: float = 0.0
    start_timeout: float = 0.0
    sched: sch.Scheduler = field(init=False)
    now: float = 100.0
    cells: dict[str, CellModel] = field(default_factory=dict)
    workers: dict[str, WorkerModel] = field(default_factory=dict)
    usage: dict[tuple[str, str], float] = field(default_factory=dict)
    next_cell: int = 0
    closed: set[str] = field(default_factory=set)
    dispatch_log: list[str] = field(default_factory=list)
    next_stimulus: int = 0

    def __post_init__(self) -> None:
        self.sched = sch.Scheduler(dict(self.pools), heartbeat_timeout=self.heartbeat_timeout,
                                   start_timeout=self.start_timeout)

    # ------------------------------------------------------------ delivering events

    def handle(self, event: sch.Event) -> list[sch.Instruction]:
        if not event.stimulus_id:
            self.next_stimulus += 1
            event = replace(event, stimulus_id=f"{type(event).__name__}-{self.next_stimulus}")
        before = self._capacity_waiting()
        out = self.sched.handle(event)
        failed = set()
        for ins in out:
            self._check(ins, event)
            if isinstance(ins, sch.FailCell):
                failed.add(ins.cell_id)
        self._check_state(before, failed)
        if isinstance(event, sch.Tick):
            self._check_idle_release(event.now)
            self._check_deadlines(event.now)
        stimuli = {i.stimulus_id for i in out}
        assert all(stimuli), "every instruction names the stimulus that caused it"
        if event.stimulus_id and not isinstance(event, (sch.Tick, sch.WorkerHeartbeat)):
            assert stimuli <= {event.stimulus_id}, "only a Tick or a heartbeat yields events of its own"
        return out

    def _check(self, ins: sch.Instruction, event: sch.Event) -> None:
        now = event.now
        if isinstance(ins, sch.Launch):
            assert ins.worker_id not in self.workers, f"worker id {ins.worker_id} reused"
            assert ins.pool in self.pools
            self.workers[ins.worker_id] = WorkerModel(ins.pool, idle_timeout=self.pools[ins.pool].idle_timeout)
        elif isinstance(ins, sch.Assigned):
            worker = self.workers[ins.worker_id]
            assert worker.session is None, f"{ins.worker_id} serves {worker.session} and then {ins.session}"
            assert worker.state in ("starting", "ready"), f"{ins.worker_id} assigned while {worker.state}"
            assert ins.pool == worker.pool
            worker.session = ins.session
            worker.assigned_at = ins.now
            assert ins.now == now
        elif isinstance(ins, sch.Dispatch):
            cell = self.cells[ins.cell_id]
            worker = self.workers[ins.worker_id]
            assert cell.state == "queued", f"cell {ins.cell_id} dispatched while {cell.state}"
            assert worker.state == "ready", f"dispatch to {ins.worker_id} while {worker.state}"
            assert worker.reachable, f"dispatch to {ins.worker_id}, whose stream dropped"
            assert not worker.cell, f"{ins.worker_id} got {ins.cell_id} while running {worker.cell}"
            assert worker.session == cell.session, "a worker runs only its own session's cells"
            assert worker.pool == cell.pool
            cell.state, cell.worker, cell.started = "running", ins.worker_id, now
            self.dispatch_log.append(ins.cell_id)
            worker.cell = ins.cell_id
            worker.idle_since = None
            if cell.idle:
                worker.idle_timeout = cell.idle
        elif isinstance(ins, sch.Terminate):
            worker = self.workers.get(ins.worker_id)
            assert ins.reason
            if worker is None or ins.worker_id not in self.sched.workers:
                if worker is not None:
                    worker.state = "gone"  # a hand-started worker the scheduler refused; it shuts down
                return
            assert worker.state in ("starting", "ready"), f"{ins.worker_id} terminated twice"
            worker.state = "terminated"
            if worker.assigned_at is not None:
                assert worker.usage_records == 1, f"{ins.worker_id} released without a usage record"
        elif isinstance(ins, sch.FailCell):
            cell = self.cells.get(ins.cell_id)
            assert ins.reason and ins.kind in ("worker_lost", "cancelled", "rejected", "timeout")
            if cell is None:
                return  # rejected at submission (unknown pool)
            assert cell.state in ("queued", "running"), f"{ins.cell_id} failed while {cell.state}"
            if ins.kind == "timeout":
                assert cell.state == "running" and cell.interrupted_at is not None
                assert now >= cell.interrupted_at + self.sched.timeout_grace, "failed before the grace was over"
                assert ins.reason == sch.timeout_reason(cell.timeout)
            if cell.state == "running":
                self.workers[cell.worker].cell = ""
            cell.state, cell.reason, cell.kind = "failed", ins.reason, ins.kind
        elif isinstance(ins, sch.InterruptCell):
            cell = self.cells[ins.cell_id]
            assert cell.state == "running" and cell.worker == ins.worker_id
            assert cell.interrupted_at is None, f"{ins.cell_id} interrupted twice"
            assert cell.timeout > 0 and now >= cell.started + cell.timeout, "interrupted before its timeout"
            assert ins.reason == sch.timeout_reason(cell.timeout)
            cell.interrupted_at = now
        elif isinstance(ins, sch.WorkerLost):
            worker = self.workers[ins.worker_id]
            assert worker.state != "gone" and ins.reason, f"{ins.worker_id} lost twice"
            worker.state, worker.lost_reason = "gone", ins.reason  # the broker stops it or counts it gone
        elif isinstance(ins, sch.QueuePosition):
            cell = self.cells[ins.cell_id]
            assert cell.state == "queued" and ins.position >= 1 and ins.pool == cell.pool
        elif isinstance(ins, sch.UsageRecorded):
            worker = self.workers[ins.worker_id]
            assert worker.session == ins.session and worker.pool == ins.pool
            assert worker.assigned_at == ins.start and ins.end == now and ins.start <= ins.end
            worker.usage_records += 1
            assert worker.usage_records == 1, f"{ins.worker_id} metered twice"
            key = (ins.session, ins.pool)
            self.usage[key] = self.usage.get(key, 0.0) + (ins.end - ins.start)

    def _capacity_waiting(self) -> dict[str, list[str]]:
        return {pool: [c.cell_id for c in queue if c.position > 0] for pool, queue in self.sched.queues.items()}

    def _check_state(self, before: dict[str, list[str]], failed: set[str]) -> None:
        for pool, limits in self.pools.items():
            alive = [w for w in self.workers.values() if w.pool == pool and w.state != "gone"]
            assert len(alive) <= limits.max_workers, f"{pool}: {len(alive)} processes > {limits.max_workers}"
            assert self.sched._pool_size(pool) <= limits.max_workers
            # FIFO: positions of the cells waiting for capacity are 1..k in submission order.
            queue = list(self.sched.queues[pool])
            orders = [self.cells[c.cell_id].order for c in queue]
            assert orders == sorted(orders), "the queue is in submission order"
            waiting = [c for c in queue if c.position > 0]
            assert [c.position for c in waiting] == list(range(1, len(waiting) + 1))
            # No overtaking: the sessions that got capacity in this step are the head of the waiting line
            # (a session's later cells leave the line with its first: they wait for its worker instead).
            now_waiting = {c.cell_id for c in waiting}
            line = [c for c in before.get(pool, []) if c not in failed]
            firsts = [c for i, c in enumerate(line)
                      if self.cells[c].session not in {self.cells[d].session for d in line[:i]}]
            served = [c for c in firsts if c not in now_waiting]
            assert served == firsts[:len(served)], f"{pool}: {served} overtook {firsts}"
            # Work conserving: nobody waits for capacity while an unassigned worker or a free slot exists.
            if waiting:
                assert self.sched._pool_size(pool) >= limits.max_workers
                assert not any(w.session is None and w.pool == pool and w.state is not sch.WorkerState.RELEASING
                               and w.reachable for w in self.sched.workers.values())
        # Usage: what the scheduler reports is the sum of the intervals it announced.
        snapshot = self.sched.usage_snapshot(self.now)
        assert all(seconds >= 0 for seconds in snapshot.values()), f"negative usage: {snapshot}"
        expected = dict(self.usage)
        for w in self.workers.values():
            if w.assigned_at is not None and w.usage_records == 0 and w.state in ("starting", "ready"):
                key = (w.session or "", w.pool)
                expected[key] = expected.get(key, 0.0) + (self.now - w.assigned_at)
        assert snapshot.keys() == expected.keys()
        for key, seconds in expected.items():
            assert snapshot[key] == pytest.approx(seconds, abs=1e-6)

    def _check_deadlines(self, now: float) -> None:
        """After a Tick nothing is overdue: timeouts interrupted, stuck cells failed, silent workers lost."""
        grace = self.sched.timeout_grace
        for cell_id, c in self.cells.items():
            if c.state == "running" and c.timeout > 0 and c.worker in self.sched.workers:
                if c.worker and self.sched.running.get(cell_id) == c.worker:
                    assert now < c.started + c.timeout or c.interrupted_at is not None, f"{cell_id} not interrupted"
                    assert c.interrupted_at is None or now < c.interrupted_at + grace, f"{cell_id} not failed"
        for w in self.sched.workers.values():
            if self.heartbeat_timeout and w.reachable and w.last_seen is not None:
                assert now - w.last_seen <= self.heartbeat_timeout, f"{w.id} silent and kept"
            if self.start_timeout and w.state is sch.WorkerState.STARTING:
                assert now - w.created <= self.start_timeout, f"{w.id} never registered and kept"
            if not w.reachable:
                assert now < w.disconnected_at + self.sched.disconnect_grace

    def _check_idle_release(self, now: float) -> None:
        for worker_id, w in self.workers.items():
            if w.session is not None and w.state == "ready" and not w.cell and w.idle_since is not None:
                assert now - w.idle_since < w.idle_timeout, (
                    f"{worker_id} idle {now - w.idle_since:g}s past its {w.idle_timeout:g}s timeout")
        for w in self.sched.workers.values():
            if w.session is not None and w.state is sch.WorkerState.IDLE:
                assert now - w.last_active < w.idle_timeout

    # ------------------------------------------------------------ actions

    def advance(self, dt: float) -> None:
        self.now += dt

    def submit(self, session: str, pool: str, fresh: bool, idle: float | None, timeout: float = 0.0) -> None:
        if session in self.closed:
            return
        self.next_cell += 1
        cell_id = f"c{self.next_cell}"
        self.cells[cell_id] = CellModel(session, pool, self.next_cell, idle, timeout=timeout)
        self.handle(sch.CellSubmitted(cell_id, session, pool, self.now, fresh=fresh, idle_timeout=idle,
                                      timeout=timeout, stimulus_id=f"submit-{cell_id}"))

    def heard(self, worker_id: str, rss: int = 0) -> list[sch.Instruction]:
        if self.workers[worker_id].state in ("ready", "terminated"):
            return self.handle(sch.WorkerHeartbeat(worker_id, self.now, rss, stimulus_id=f"heard-{worker_id}"))
        return []

    def disconnect(self, worker_id: str) -> None:
        worker = self.workers[worker_id]
        if worker.state in ("ready", "terminated") and worker.reachable:
            worker.reachable = False
            self.handle(sch.WorkerDisconnected(worker_id, self.now, stimulus_id=f"dropped-{worker_id}"))

    def undeliver(self, cell_id: str) -> None:
        """The broker found no stream for a Dispatch: the cell waits again, in its place."""
        cell = self.cells[cell_id]
        worker = self.workers[cell.worker]
        if cell.state != "running" or cell.interrupted_at is not None or self.sched.running.get(cell_id) != cell.worker:
            return
        if cell_id not in self.sched.dispatched:
            return  # a lane cell: nothing was dispatched
        cell.state, worker.cell, worker.idle_since = "queued", "", self.now
        worker.reachable = False
        self.dispatch_log.remove(cell_id)
        self.handle(sch.CellUndelivered(cell_id, cell.worker, self.now, stimulus_id=f"undelivered-{cell_id}"))

    def finish(self, cell_id: str) -> None:
        cell = self.cells[cell_id]
        if cell.state != "running":
            return
        worker = self.workers[cell.worker]
        cell.state = "finished"
        worker.cell = ""
        worker.idle_since = self.now
        self.handle(sch.CellFinished(cell_id, self.now))

    def lane(self, worker_id: str) -> None:
        """The session sends a cell straight to its idle warm worker (the direct lane)."""
        worker = self.workers[worker_id]
        if worker.state != "ready" or worker.session is None or worker.cell or worker.session in self.closed:
            return
        self.next_cell += 1
        cell_id = f"c{self.next_cell}"
        self.cells[cell_id] = CellModel(worker.session, worker.pool, self.next_cell, None, state="running",
                                        worker=worker_id)
        worker.cell = cell_id
        worker.idle_since = None
        self.handle(sch.LaneCellStarted(cell_id, worker_id, self.now))
        assert self.sched.workers[worker_id].state is sch.WorkerState.BUSY, "a lane cell left its worker idle"

    def ready(self, worker_id: str) -> None:
        worker = self.workers[worker_id]
        if worker.state == "starting":
            worker.state = "ready"
            worker.idle_since = self.now
            self.handle(sch.WorkerReady(worker_id, self.now))

    def gone(self, worker_id: str, reason: str = "worker lost") -> None:
        worker = self.workers[worker_id]
        if worker.state == "gone":
            return
        running = self.cells.get(worker.cell)
        worker.state = "gone"  # the process is gone before the broker hears of it
        self.handle(sch.WorkerGone(worker_id, self.now, reason))
        if running is not None:
            assert running.state == "failed", f"{worker.cell} vanished with {worker_id}"  # a crash fails its cell
        if worker.assigned_at is not None:
            assert worker.usage_records == 1

    def join(self, pool: str, n: int) -> None:
        worker_id = f"{pool.lower()}-{n}"  # the names the scheduler itself would pick: ids must not clash
        if worker_id in self.workers:
            return
        self.workers[worker_id] = WorkerModel(pool, state="ready", idle_since=self.now,
                                              idle_timeout=self.pools[pool].idle_timeout)
        self.handle(sch.WorkerJoined(worker_id, pool, self.now))

    def quiesce(self) -> None:
        """Deliver what the world would: workers come up or go, cells finish, time passes."""
        longest = max([p.idle_timeout for p in self.pools.values()] + [c.idle or 0 for c in self.cells.values()])
        for _ in range(20 * (len(self.cells) + 5)):
            for worker_id, w in list(self.workers.items()):
                if w.state == "starting":
                    self.ready(worker_id)
                elif w.state == "terminated":
                    self.gone(worker_id, "released")
                elif not w.reachable:
                    self.gone(worker_id, "worker process exited")  # its provisioner says why
            for cell_id, c in list(self.cells.items()):
                if c.state == "running":
                    self.finish(cell_id)
            pending = [c for c in self.cells.values() if c.state in ("queued", "running")]
            busy = [w for w in self.workers.values() if w.state in ("starting", "terminated")]
            if not pending and not busy:
                return
            if not busy and not any(c.state == "running" for c in pending):
                # Only idle time can free capacity now: let the session workers time out.
                self.advance(longest + 0.01)
                self.handle(sch.Tick(self.now))
        raise AssertionError(f"no quiescence: {[(k, c) for k, c in self.cells.items() if c.state == 'queued']}")


# ---------------------------------------------------------------- strategies

pool_limits = st.integers(1, 3).flatmap(lambda mx: st.builds(
    sch.PoolLimits, min_warm=st.integers(0, mx), max_workers=st.just(mx),
    idle_timeout=st.sampled_from([1.0, 2.0, 5.0])))

actions = st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(SESSIONS), st.integers(0, 1), st.booleans(),
              st.sampled_from(IDLE_CHOICES), st.sampled_from(TIMEOUT_CHOICES)),
    st.tuples(st.just("heard"), st.integers(0, 50)),
    st.tuples(st.just("disconnect"), st.integers(0, 50)),
    st.tuples(st.just("undeliver"), st.integers(0, 50)),
    st.tuples(st.just("finish"), st.integers(0, 50)),
    st.tuples(st.just("ready"), st.integers(0, 50)),
    st.tuples(st.just("gone"), st.integers(0, 50)),
    st.tuples(st.just("crash"), st.integers(0, 50)),
    st.tuples(st.just("withdraw"), st.integers(0, 50)),
    st.tuples(st.just("release"), st.sampled_from(SESSIONS), st.integers(-1, 1)),
    st.tuples(st.just("close"), st.sampled_from(SESSIONS)),
    st.tuples(st.just("join"), st.integers(0, 1), st.integers(1, 8)),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.2, 0.6, 1.1, 2.5, 6.0])),
    st.tuples(st.just("lane"), st.integers(0, 50)),
)


def run_actions(pools: dict[str, sch.PoolLimits], steps: list[tuple]) -> Harness:  # type: ignore[type-arg]
    h = Harness(pools)
    names = list(pools)
    h.handle(sch.Tick(h.now))
    for step in steps:
        kind = step[0]
        h.advance(0.05)
        if kind == "submit":
            h.submit(step[1], names[step[2] % len(names)], step[3], step[4], step[5])
        elif kind in ("heard", "disconnect"):
            candidates = sorted(w for w, m in h.workers.items() if m.state in ("ready", "terminated"))
            if candidates:
                (h.heard if kind == "heard" else h.disconnect)(candidates[step[1] % len(candidates)])
        elif kind == "undeliver":
            running = sorted(c for c, m in h.cells.items() if m.state == "running")
            if running:
                h.undeliver(running[step[1] % len(running)])
        elif kind in ("finish", "withdraw"):
            live = sorted((c for c in h.cells if h.cells[c].state in ("queued", "running")), key=lambda c: h.cells[c].order)
            if live:
                cell_id = live[step[1] % len(live)]
                if kind == "finish":
                    h.finish(cell_id)
                else:
                    was = h.cells[cell_id].state
                    h.handle(sch.CellWithdrawn(cell_id, h.now))
                    # A queued cell fails as cancelled; a running one is the worker's to stop (via cancel).
                    assert h.cells[cell_id].state == ("failed" if was == "queued" else "running")
        elif kind in ("ready", "gone", "crash"):
            wanted = {"ready": ("starting",), "gone": ("terminated",), "crash": ("starting", "ready")}[kind]
            candidates = sorted(w for w, m in h.workers.items() if m.state in wanted)
            if candidates:
                worker_id = candidates[step[1] % len(candidates)]
                if kind == "ready":
                    h.ready(worker_id)
                else:
                    h.gone(worker_id, "released" if kind == "gone" else "worker crashed")
        elif kind == "release":
            pool = None if step[2] < 0 else names[step[2] % len(names)]
            h.handle(sch.ReleaseRequested(step[1], h.now, pool=pool))
        elif kind == "close":
            h.closed.add(step[1])
            h.handle(sch.SessionClosed(step[1], h.now))
        elif kind == "join":
            h.join(names[step[1] % len(names)], step[2])
        elif kind == "lane":
            candidates = sorted(w for w, m in h.workers.items() if m.state == "ready" and m.session and not m.cell)
            if candidates:
                h.lane(candidates[step[1] % len(candidates)])
        elif kind == "tick":
            h.advance(step[1])
            h.handle(sch.Tick(h.now))
    return h


# A few seconds by default; GPUCELL_PROPERTY_EXAMPLES=5000 for a deeper hunt.
PROPERTY_SETTINGS = settings(max_examples=int(os.environ.get("GPUCELL_PROPERTY_EXAMPLES", "150")), deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(st.lists(pool_limits, min_size=1, max_size=2), st.lists(actions, max_size=60))
def test_random_sequences_keep_every_invariant_and_drain(limits: list[sch.PoolLimits], steps: list[tuple]) -> None:  # type: ignore[type-arg]
    pools = dict(zip(POOL_NAMES, limits))
    h = run_actions(pools, steps)
    h.quiesce()
    for cell_id, cell in h.cells.items():
        assert cell.state in ("finished", "failed"), f"{cell_id} neither ran nor failed: {cell}"
        if cell.state == "failed":
            assert cell.reason
    # Closing every session ends every interval: the meter stops and adds up.
    for session in SESSIONS:
        h.handle(sch.SessionClosed(session, h.now))
    assert all(w.session is None or w.state in ("terminated", "gone") for w in h.workers.values())
    assert h.sched.usage_snapshot(h.now + 100) == pytest.approx(h.usage)
    # Idle reserves above min_warm go too; the pools settle at min_warm unassigned workers.
    h.quiesce()
    h.advance(max(p.idle_timeout for p in pools.values()) + 0.01)
    h.handle(sch.Tick(h.now))
    h.quiesce()
    for pool, lim in pools.items():
        spare = [w for w in h.sched.workers.values() if w.pool == pool]
        assert len(spare) == lim.min_warm and all(w.session is None for w in spare)


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(st.sampled_from(SESSIONS), st.sampled_from([0.0, 0.3, 1.5])), min_size=1, max_size=12),
       st.integers(1, 2))
def test_waiting_sessions_are_served_in_submission_order(subs: list[tuple[str, float]], max_workers: int) -> None:
    h = Harness({"T4": sch.PoolLimits(min_warm=0, max_workers=max_workers, idle_timeout=1.0)})
    for session, dt in subs:
        h.advance(dt)
        h.submit(session, "T4", False, None)
        h.handle(sch.Tick(h.now))
    h.quiesce()
    assert all(c.state == "finished" for c in h.cells.values())
    # Sessions get their first worker in the order they first asked; nobody waits forever.
    asked = list(dict.fromkeys(h.cells[c].session for c in sorted(h.cells, key=lambda c: h.cells[c].order)))
    served = list(dict.fromkeys(h.cells[c].session for c in h.dispatch_log))
    assert served == asked


def test_idle_session_worker_is_released_by_the_next_tick_and_pool_goes_to_zero() -> None:
    h = Harness({"T4": sch.PoolLimits(min_warm=0, max_workers=2, idle_timeout=2.0)})
    h.submit("s1", "T4", False, 0.5)
    (worker_id,) = h.workers
    h.ready(worker_id)
    h.finish("c1")
    h.advance(0.49)
    assert not [i for i in h.handle(sch.Tick(h.now)) if isinstance(i, sch.Terminate)]
    h.advance(0.02)
    out = h.handle(sch.Tick(h.now))
    assert [i.worker_id for i in out if isinstance(i, sch.Terminate)] == [worker_id]
    h.gone(worker_id)
    assert h.sched.workers == {}
    assert h.usage[("s1", "T4")] == pytest.approx(h.now - 100.0)


def test_min_warm_reserve_is_taken_and_refilled() -> None:
    h = Harness({"T4": sch.PoolLimits(min_warm=1, max_workers=3, idle_timeout=5.0)})
    h.handle(sch.Tick(h.now))
    (reserve,) = h.workers
    h.ready(reserve)
    h.submit("s1", "T4", False, None)
    assert h.cells["c1"].state == "running" and h.cells["c1"].worker == reserve
    fresh = [w for w, m in h.workers.items() if m.state == "starting"]
    assert len(fresh) == 1 and h.workers[fresh[0]].session is None


def test_a_worker_named_like_a_future_launch_does_not_collide() -> None:
    h = Harness({"T4": sch.PoolLimits(min_warm=0, max_workers=3, idle_timeout=5.0)})
    h.join("T4", 1)
    h.join("T4", 2)
    h.submit("s1", "T4", False, None)   # takes t4-1
    h.submit("s2", "T4", False, None)   # takes t4-2
    h.submit("s3", "T4", False, None)   # launches: must not be called t4-1
    launched = [w for w, m in h.workers.items() if m.state == "starting"]
    assert len(launched) == 1 and launched[0] not in ("t4-1", "t4-2")
    assert len(h.sched.workers) == 3


def test_a_hand_started_worker_past_max_workers_is_refused() -> None:
    h = Harness({"T4": sch.PoolLimits(min_warm=0, max_workers=1, idle_timeout=5.0)})
    h.join("T4", 7)
    out = h.handle(sch.WorkerJoined("t4-8", "T4", h.now))
    assert any(isinstance(i, sch.Terminate) and i.worker_id == "t4-8" for i in out)
    assert list(h.sched.workers) == ["t4-7"]
    out = h.handle(sch.WorkerJoined("x-1", "H200", h.now))
    assert [i.reason for i in out if isinstance(i, sch.Terminate)] == ["no pool serves 'H200'"]


# ---------------------------------------------------------------- timeouts, silence, start, memory, usage


@PROPERTY_SETTINGS
@given(st.lists(st.sampled_from([0.5, 1.0, 3.0]), min_size=1, max_size=4),
       st.lists(st.tuples(st.sampled_from([0.1, 0.7, 2.0, 5.5]), st.booleans()), max_size=15))
def test_a_cell_past_its_timeout_is_interrupted_once_and_past_the_grace_failed_once(
        timeouts: list[float], steps: list[tuple[float, bool]]) -> None:
    h = Harness({"T4": sch.PoolLimits(min_warm=0, max_workers=4, idle_timeout=60.0)})
    for i, timeout in enumerate(timeouts):
        h.submit(f"s{i}", "T4", False, None, timeout)
    for worker_id in sorted(h.workers):
        h.ready(worker_id)
    stopped: dict[str, str] = {}
    for dt, obeys in steps:
        h.advance(dt)
        for ins in h.handle(sch.Tick(h.now)):
            if isinstance(ins, sch.InterruptCell):
                assert ins.stimulus_id == f"cell-timeout-{ins.cell_id}"
                if obeys:
                    h.finish(ins.cell_id)  # the interrupt worked: the worker reports the cell ended
            elif isinstance(ins, sch.FailCell):
                assert ins.kind == "timeout" and ins.stimulus_id == f"timeout-grace-{ins.cell_id}"
            elif isinstance(ins, sch.Terminate):
                stopped[ins.worker_id] = ins.reason
    # Whatever is still running now passes its timeout, then the grace: each is failed, once, as a timeout.
    for _ in range(2):
        h.advance(max(timeouts) + sch.TIMEOUT_GRACE_S)
        for ins in h.handle(sch.Tick(h.now)):
            if isinstance(ins, sch.Terminate):
                stopped[ins.worker_id] = ins.reason
    for cell_id, cell in h.cells.items():
        assert cell.interrupted_at is not None, f"{cell_id} never interrupted"
        if cell.state == "failed":
            assert cell.kind == "timeout" and cell.reason == sch.timeout_reason(cell.timeout)
            assert "ignored the interrupt" in stopped[cell.worker], "a stuck cell's worker is stopped"
        else:
            assert cell.state == "finished" and "ignored the interrupt" not in stopped.get(cell.worker, "")


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(st.sampled_from([0.3, 1.0, 2.5]), st.sets(st.integers(0, 2))), max_size=15))
def test_a_silent_worker_is_lost_and_its_cell_fails_with_the_heartbeat_reason(
        steps: list[tuple[float, set[int]]]) -> None:
    h = Harness({"T4": sch.PoolLimits(min_warm=0, max_workers=3, idle_timeout=60.0)}, heartbeat_timeout=2.0)
    for i in range(3):
        h.submit(f"s{i}", "T4", False, None)
    workers = sorted(h.workers)
    for worker_id in workers:
        h.ready(worker_id)
    last_heard = {w: h.now for w in workers}
    for dt, speaking in steps:
        h.advance(dt)
        for i in speaking:
            if h.workers[workers[i]].state == "ready":
                h.heard(workers[i])
                last_heard[workers[i]] = h.now
        h.handle(sch.Tick(h.now))
        for worker_id in workers:
            silent = h.now - last_heard[worker_id] > 2.0
            model = h.workers[worker_id]
            if model.state == "gone":
                assert model.lost_reason == "no heartbeat for 2s"
            else:
                assert not silent, f"{worker_id} silent for {h.now - last_heard[worker_id]:g}s and kept"
    for cell in h.cells.values():
        if h.workers[cell.worker].state == "gone":
            assert cell.state == "failed" and cell.kind == "worker_lost"
            assert cell.reason == "worker lost: no heartbeat for 2s"
        else:
            assert cell.state == "running"


@PROPERTY_SETTINGS
@given(st.lists(st.sampled_from([0.5, 2.0, 4.0]), max_size=8), st.integers(0, 3))
def test_a_worker_that_never_registers_is_lost_and_its_session_waits_no_more(dts: list[float], registered: int) -> None:
    h = Harness({"T4": sch.PoolLimits(min_warm=0, max_workers=3, idle_timeout=60.0)}, start_timeout=5.0)
    launched = h.now
    for i in range(3):
        h.submit(f"s{i}", "T4", False, None)
        h.submit(f"s{i}", "T4", False, None)
    workers = sorted(h.workers)
    for worker_id in workers[:registered]:
        h.ready(worker_id)
    for dt in dts + [5.1]:
        h.advance(dt)
        h.handle(sch.Tick(h.now))
        for i, worker_id in enumerate(workers):
            model = h.workers[worker_id]
            lost = i >= registered and h.now - launched > 5.0
            assert (model.state == "gone") == lost, f"{worker_id}: {model.state} at +{h.now - launched:g}s"
            if lost:
                assert model.lost_reason == "did not register within 5s"
                for cell in h.cells.values():
                    if cell.session == model.session:
                        assert cell.state == "failed"
                        assert cell.reason == "worker failed to start: did not register within 5s"


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(100, 600)), max_size=12))
def test_a_worker_over_its_memory_limit_is_stopped_at_once_and_its_cell_says_why(
        beats: list[tuple[int, int]]) -> None:
    h = Harness({"T4": sch.PoolLimits(min_warm=0, max_workers=3, idle_timeout=60.0, memory_limit_mb=400)})
    for i in range(3):
        h.submit(f"s{i}", "T4", False, None)
    workers = sorted(h.workers)
    for worker_id in workers:
        h.ready(worker_id)
    for i, mb in beats:
        worker_id = workers[i]
        alive = h.workers[worker_id].state == "ready"
        running = h.workers[worker_id].cell
        out = h.heard(worker_id, mb * 1_000_000)
        lost = [ins for ins in out if isinstance(ins, sch.WorkerLost)]
        if alive and mb > 400:
            reason = f"worker exceeded its memory limit ({mb} MB > 400 MB, memory_limit_mb of pool T4) and was stopped"
            assert lost == [sch.WorkerLost(worker_id, reason, 0.0, stimulus_id=f"over-memory-{worker_id}")]
            assert h.cells[running].state == "failed" and h.cells[running].reason == f"worker lost: {reason}"
        else:
            assert not lost


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(st.sampled_from(SESSIONS), st.floats(0, 1e6)), max_size=5), st.lists(actions, max_size=40))
def test_restored_usage_adds_to_the_busy_intervals_and_is_never_negative(
        restored: list[tuple[str, float]], steps: list[tuple]) -> None:  # type: ignore[type-arg]
    pools = {"T4": sch.PoolLimits(min_warm=0, max_workers=2, idle_timeout=1.0)}
    h = run_actions(pools, steps)
    before = h.sched.usage_snapshot(h.now)
    h.sched.handle(sch.UsageRestored(tuple((s, "T4", sec) for s, sec in restored), h.now))
    after = h.sched.usage_snapshot(h.now)
    for session in SESSIONS:
        earlier = sum(sec for s, sec in restored if s == session)
        assert after.get((session, "T4"), 0.0) == pytest.approx(before.get((session, "T4"), 0.0) + earlier)
        assert after.get((session, "T4"), 0.0) >= 0


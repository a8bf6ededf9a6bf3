"""The broker's scheduler as a pure state machine: events in, instructions out, no I/O inside."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Union


class WorkerState(str, Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    RELEASING = "releasing"


@dataclass
class PoolLimits:
    min_warm: int = 0
    max_workers: int = 4
    idle_timeout: float = 300.0
    per_session: int = 0           # most workers one owner (a notebook and its maps) may hold; 0: no quota


@dataclass
class Worker:
    id: str
    pool: str
    state: WorkerState
    session: str | None            # None: an unassigned warm worker
    last_active: float
    idle_timeout: float
    assigned_at: float | None = None
    cell: str | None = None
    cells_run: int = 0
    owner: str = ""                # the notebook session it works for (a map's workers share their notebook's)


@dataclass
class PendingCell:
    cell_id: str
    session: str
    pool: str
    submitted: float
    fresh: bool = False
    idle_timeout: float | None = None
    position: int = 0              # last queue position reported (0: none)
    owner: str = ""


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class CellSubmitted:
    cell_id: str
    session: str
    pool: str
    now: float
    fresh: bool = False
    idle_timeout: float | None = None
    owner: str = ""                # empty: the session itself


@dataclass(frozen=True)
class CellFinished:
    cell_id: str
    now: float


@dataclass(frozen=True)
class LaneCellStarted:
    """A cell came to a session's warm worker over its direct lane: the worker is busy until CellFinished."""

    cell_id: str
    worker_id: str
    now: float


@dataclass(frozen=True)
class CellWithdrawn:
    """The client cancelled a cell or went away before it finished."""

    cell_id: str
    now: float


@dataclass(frozen=True)
class WorkerReady:
    """A launched worker registered and can take work."""

    worker_id: str
    now: float


@dataclass(frozen=True)
class WorkerJoined:
    """A worker nobody launched here (`gpucell worker` by hand) registered for a pool."""

    worker_id: str
    pool: str
    now: float


@dataclass(frozen=True)
class WorkerGone:
    worker_id: str
    now: float
    reason: str = "worker lost"


@dataclass(frozen=True)
class ReleaseRequested:
    session: str
    now: float
    pool: str | None = None
    worker_id: str | None = None


@dataclass(frozen=True)
class SessionClosed:
    session: str
    now: float


@dataclass(frozen=True)
class Tick:
    now: float


Event = Union[CellSubmitted, CellFinished, LaneCellStarted, CellWithdrawn, WorkerReady, WorkerJoined, WorkerGone,
              ReleaseRequested, SessionClosed, Tick]

# ---------------------------------------------------------------- instructions


@dataclass(frozen=True)
class Launch:
    worker_id: str
    pool: str


@dataclass(frozen=True)
class Dispatch:
    cell_id: str
    worker_id: str
    cold: bool


@dataclass(frozen=True)
class Terminate:
    worker_id: str
    reason: str


@dataclass(frozen=True)
class FailCell:
    cell_id: str
    reason: str
    kind: str                      # "worker_lost", "cancelled", "rejected"


@dataclass(frozen=True)
class QueuePosition:
    cell_id: str
    position: int
    pool: str


@dataclass(frozen=True)
class Assigned:
    """A worker now belongs to a session (for good): the start of its metered interval."""

    worker_id: str
    session: str
    pool: str
    now: float


@dataclass(frozen=True)
class UsageRecorded:
    session: str
    pool: str
    worker_id: str
    start: float
    end: float


@dataclass(frozen=True)
class WorkerStarting:
    """A cell now waits for a worker that is starting for it (the user sees "starting a T4 worker")."""

    cell_id: str
    worker_id: str
    pool: str


Instruction = Union[Launch, Dispatch, Terminate, FailCell, QueuePosition, Assigned, UsageRecorded, WorkerStarting]


@dataclass
class Scheduler:
    """Pools of workers, a FIFO queue per pool, session affinity and idle release.

    Invariants (property-tested in tests/test_scheduler.py): a worker serves at most one session
    in its life; a pool never has more than max_workers processes (releasing ones included, until
    they are gone); every queued cell is eventually dispatched or failed with a reason; a session
    worker idle past its timeout is released by the next Tick; cells waiting for capacity get it
    in submission order; usage is the sum of the assignment intervals.
    """

    pools: dict[str, PoolLimits]
    workers: dict[str, Worker] = field(default_factory=dict)
    queues: dict[str, deque[PendingCell]] = field(default_factory=dict)
    running: dict[str, str] = field(default_factory=dict)          # cell -> worker
    cold_cells: set[str] = field(default_factory=set)              # cells that waited for a launch
    usage: dict[tuple[str, str], float] = field(default_factory=dict)  # (session, pool) -> seconds
    _next_id: int = 0
    _seen_ids: set[str] = field(default_factory=set)               # never reuse a worker id

    def __post_init__(self) -> None:
        for name in self.pools:
            self.queues.setdefault(name, deque())

    # ------------------------------------------------------------ entry point

    def handle(self, event: Event) -> list[Instruction]:
        out: list[Instruction] = []
        if isinstance(event, CellSubmitted):
            if event.pool not in self.pools:
                return [FailCell(event.cell_id, f"no pool serves {event.pool!r}", "rejected")]
            self.queues[event.pool].append(PendingCell(event.cell_id, event.session, event.pool,
                                                       event.now, event.fresh, event.idle_timeout,
                                                       owner=event.owner or event.session))
            self._pump(event.pool, event.now, out)
        elif isinstance(event, CellFinished):
            self._finish_cell(event.cell_id, event.now, out)
        elif isinstance(event, LaneCellStarted):
            worker = self.workers.get(event.worker_id)
            # Only the owner holds the lane's ticket, so an idle assigned worker is the only state to
            # expect; a worker already busy (a queued broker cell got there first) stays busy anyway.
            if worker is not None and worker.session is not None and worker.state is WorkerState.IDLE:
                worker.state = WorkerState.BUSY
                worker.cell = event.cell_id
                worker.cells_run += 1
                worker.last_active = event.now
                self.running[event.cell_id] = worker.id
        elif isinstance(event, CellWithdrawn):
            self._withdraw(event.cell_id, event.now, out)
        elif isinstance(event, WorkerReady):
            worker = self.workers.get(event.worker_id)
            if worker is not None and worker.state is WorkerState.STARTING:
                worker.state = WorkerState.IDLE
                worker.last_active = event.now
                self._pump(worker.pool, event.now, out)
        elif isinstance(event, WorkerJoined):
            self._join(event, out)
        elif isinstance(event, WorkerGone):
            self._worker_gone(event.worker_id, event.now, event.reason, out)
        elif isinstance(event, ReleaseRequested):
            for worker in list(self.workers.values()):
                if worker.session != event.session or worker.state is WorkerState.RELEASING:
                    continue
                if event.pool and worker.pool != event.pool:
                    continue
                if event.worker_id and worker.id != event.worker_id:
                    continue
                self._terminate(worker, event.now, "released by the user", out)
            for pool in self.pools:
                self._pump(pool, event.now, out)
        elif isinstance(event, SessionClosed):
            for queue in self.queues.values():
                for cell in [c for c in queue if c.session == event.session]:
                    queue.remove(cell)
                    self.cold_cells.discard(cell.cell_id)
                    out.append(FailCell(cell.cell_id, "session closed", "cancelled"))
            out.extend(self.handle(ReleaseRequested(event.session, event.now)))
        elif isinstance(event, Tick):
            self._tick(event.now, out)
        return out

    # ------------------------------------------------------------ queries

    def session_worker(self, session: str, pool: str) -> Worker | None:
        for worker in self.workers.values():
            if worker.session == session and worker.pool == pool and worker.state is not WorkerState.RELEASING:
                return worker
        return None

    def queue_length(self, pool: str) -> int:
        return sum(1 for c in self.queues.get(pool, ()) if c.position > 0)

    def usage_snapshot(self, now: float) -> dict[tuple[str, str], float]:
        """Worker-seconds per (session, pool), including workers still assigned."""
        totals = dict(self.usage)
        for worker in self.workers.values():
            if worker.session is not None and worker.assigned_at is not None and worker.state is not WorkerState.RELEASING:
                key = (worker.session, worker.pool)
                totals[key] = totals.get(key, 0.0) + (now - worker.assigned_at)
        return totals

    # ------------------------------------------------------------ internals

    def _new_worker_id(self, pool: str) -> str:
        # A hand-started worker may have joined under a name this counter would produce.
        while True:
            self._next_id += 1
            worker_id = f"{pool.lower().replace(':', 'x')}-{self._next_id}"
            if worker_id not in self._seen_ids:
                self._seen_ids.add(worker_id)
                return worker_id

    def _join(self, event: WorkerJoined, out: list[Instruction]) -> None:
        if event.worker_id in self.workers:
            return  # a duplicate registration; the worker we know keeps the name
        self._seen_ids.add(event.worker_id)  # even a refused one may still be connected for a moment
        if event.pool not in self.pools:
            out.append(Terminate(event.worker_id, f"no pool serves {event.pool!r}"))
            return
        limits = self.pools[event.pool]
        if self._pool_size(event.pool) >= limits.max_workers:
            out.append(Terminate(event.worker_id, f"pool {event.pool} is full ({limits.max_workers} workers)"))
            return
        self.workers[event.worker_id] = Worker(event.worker_id, event.pool, WorkerState.IDLE, None,
                                               event.now, limits.idle_timeout)
        self._pump(event.pool, event.now, out)

    def _pool_size(self, pool: str) -> int:
        return sum(1 for w in self.workers.values() if w.pool == pool)

    def _held_by(self, owner: str, pool: str) -> int:
        return sum(1 for w in self.workers.values()
                   if w.pool == pool and w.owner == owner and w.state is not WorkerState.RELEASING)

    def _launch(self, pool: str, session: str | None, now: float, out: list[Instruction]) -> Worker:
        # A cell's --idle applies when it is dispatched (_dispatch), not to a launch it may never use.
        worker = Worker(self._new_worker_id(pool), pool, WorkerState.STARTING, None, now,
                        self.pools[pool].idle_timeout)
        self.workers[worker.id] = worker
        out.append(Launch(worker.id, pool))
        if session is not None:
            self._assign(worker, session, now, out)
        return worker

    def _assign(self, worker: Worker, session: str, now: float, out: list[Instruction]) -> None:
        assert worker.session is None, "a worker serves one session in its life"
        worker.session = session
        worker.assigned_at = now
        out.append(Assigned(worker.id, session, worker.pool, now))

    def _dispatch(self, cell: PendingCell, worker: Worker, now: float, out: list[Instruction]) -> None:
        worker.state = WorkerState.BUSY
        worker.cell = cell.cell_id
        worker.cells_run += 1
        worker.last_active = now
        if cell.idle_timeout:
            worker.idle_timeout = cell.idle_timeout
        self.running[cell.cell_id] = worker.id
        out.append(Dispatch(cell.cell_id, worker.id, cold=cell.cell_id in self.cold_cells))
        self.cold_cells.discard(cell.cell_id)

    def _pump(self, pool: str, now: float, out: list[Instruction]) -> None:
        """Dispatch what can run, launch what is needed, report queue positions, keep min_warm."""
        limits = self.pools[pool]
        queue = self.queues[pool]
        position = 0
        for cell in list(queue):
            worker = self.session_worker(cell.session, pool)
            if worker is not None and cell.fresh and worker.cells_run > 0 and worker.state is WorkerState.IDLE:
                # --fresh: this session's warm worker goes; the cell gets a new process.
                self._terminate(worker, now, "replaced by a fresh worker", out)
                worker = None
            if worker is not None:
                # Not waiting for capacity any more: the session's own worker takes its cells in order.
                cell.position = 0
                if worker.state is WorkerState.IDLE:
                    queue.remove(cell)
                    self._dispatch(cell, worker, now, out)
                continue
            if limits.per_session and self._held_by(cell.owner, pool) >= limits.per_session:
                queue.remove(cell)
                self.cold_cells.discard(cell.cell_id)
                out.append(FailCell(cell.cell_id, f"quota: this notebook already holds {limits.per_session} {pool} "
                                    f"worker(s), the most pool {pool} allows one session "
                                    f"(max_workers_per_session); release one or wait for it to idle out",
                                    "rejected"))
                continue
            reserve = next((w for w in self.workers.values() if w.pool == pool and w.session is None
                            and w.state in (WorkerState.IDLE, WorkerState.STARTING)), None)
            if reserve is not None:
                cell.position = 0
                reserve.owner = cell.owner
                self._assign(reserve, cell.session, now, out)
                if reserve.state is WorkerState.IDLE:
                    queue.remove(cell)
                    self._dispatch(cell, reserve, now, out)
                else:
                    self.cold_cells.add(cell.cell_id)
                    out.append(WorkerStarting(cell.cell_id, reserve.id, pool))
                continue
            if self._pool_size(pool) < limits.max_workers:
                cell.position = 0
                started = self._launch(pool, cell.session, now, out)
                started.owner = cell.owner
                self.cold_cells.add(cell.cell_id)
                out.append(WorkerStarting(cell.cell_id, started.id, pool))
                continue
            position += 1
            if cell.position != position:
                cell.position = position
                out.append(QueuePosition(cell.cell_id, position, pool))
        reserves = sum(1 for w in self.workers.values() if w.pool == pool and w.session is None
                       and w.state in (WorkerState.IDLE, WorkerState.STARTING))
        while reserves < limits.min_warm and self._pool_size(pool) < limits.max_workers:
            self._launch(pool, None, now, out)
            reserves += 1

    def _finish_cell(self, cell_id: str, now: float, out: list[Instruction]) -> None:
        worker_id = self.running.pop(cell_id, None)
        worker = self.workers.get(worker_id) if worker_id else None
        if worker is None:
            return
        if worker.state is WorkerState.BUSY and worker.cell == cell_id:
            worker.state = WorkerState.IDLE
            worker.cell = None
            worker.last_active = now
        self._pump(worker.pool, now, out)

    def _withdraw(self, cell_id: str, now: float, out: list[Instruction]) -> None:
        for pool, queue in self.queues.items():
            for cell in queue:
                if cell.cell_id == cell_id:
                    queue.remove(cell)
                    self.cold_cells.discard(cell_id)
                    out.append(FailCell(cell_id, "cancelled while queued", "cancelled"))
                    self._pump(pool, now, out)
                    return

    def _terminate(self, worker: Worker, now: float, reason: str, out: list[Instruction]) -> None:
        if worker.state is WorkerState.RELEASING:
            return
        self._record_usage(worker, now, out)
        worker.state = WorkerState.RELEASING
        out.append(Terminate(worker.id, reason))
        if worker.cell is not None:
            self.running.pop(worker.cell, None)
            out.append(FailCell(worker.cell, f"worker lost: {reason}", "worker_lost"))
            worker.cell = None

    def _record_usage(self, worker: Worker, now: float, out: list[Instruction]) -> None:
        if worker.session is not None and worker.assigned_at is not None:
            key = (worker.session, worker.pool)
            self.usage[key] = self.usage.get(key, 0.0) + (now - worker.assigned_at)
            out.append(UsageRecorded(worker.session, worker.pool, worker.id, worker.assigned_at, now))
            worker.assigned_at = None

    def _worker_gone(self, worker_id: str, now: float, reason: str, out: list[Instruction]) -> None:
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return
        if worker.state is not WorkerState.RELEASING:
            self._record_usage(worker, now, out)
        if worker.cell is not None:
            self.running.pop(worker.cell, None)
            out.append(FailCell(worker.cell, f"worker lost: {reason}", "worker_lost"))
        if worker.state is WorkerState.STARTING and worker.session is not None:
            # A worker that never came up: fail the session's waiting cells rather than relaunch forever.
            queue = self.queues[worker.pool]
            for cell in [c for c in queue if c.session == worker.session]:
                queue.remove(cell)
                self.cold_cells.discard(cell.cell_id)
                out.append(FailCell(cell.cell_id, f"worker failed to start: {reason}", "worker_lost"))
        self._pump(worker.pool, now, out)

    def _tick(self, now: float, out: list[Instruction]) -> None:
        for worker in list(self.workers.values()):
            if worker.state is not WorkerState.IDLE:
                continue
            idle = now - worker.last_active
            if worker.session is not None and idle >= worker.idle_timeout:
                self._terminate(worker, now, f"idle for {worker.idle_timeout:g}s", out)
            elif worker.session is None and idle >= worker.idle_timeout:
                spare = sum(1 for w in self.workers.values() if w.pool == worker.pool and w.session is None
                            and w.state is WorkerState.IDLE)
                if spare > self.pools[worker.pool].min_warm:
                    self._terminate(worker, now, f"idle for {worker.idle_timeout:g}s", out)
        for pool in self.pools:
            self._pump(pool, now, out)

"""The broker's scheduler as a pure state machine: events in, instructions out, no I/O inside."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Union

TIMEOUT_GRACE_S = 5.0       # a cell that ignores its --timeout interrupt this long loses its worker
DISCONNECT_GRACE_S = 3.0    # a launched worker's dropped stream waits this long for its provisioner's reason


def timeout_reason(timeout: float) -> str:
    """The line a user reads when a cell ran past its --timeout (its worker's own error text is replaced)."""
    return f"the cell ran past its --timeout of {timeout:g}s and was stopped"


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
    memory_limit_mb: int = 0       # a worker whose heartbeat reports more RSS is stopped; 0: no limit


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
    launched: bool = False         # started by this broker (a provisioner knows why it ends), not joined by hand
    created: float = 0.0
    last_seen: float | None = None  # last message over its stream; None: not registered yet
    reachable: bool = True         # False: its stream dropped and the broker waits to learn why
    disconnected_at: float = 0.0


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
    timeout: float = 0.0           # --timeout in seconds; 0: none
    seq: int = 0                   # submission order, kept when an undelivered cell goes back to its queue
    started: float = 0.0           # when it was dispatched
    interrupted_at: float | None = None  # when its timeout's interrupt went out


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
    timeout: float = 0.0           # --timeout: interrupted after this, its worker stopped a grace later
    stimulus_id: str = ""


@dataclass(frozen=True)
class CellFinished:
    cell_id: str
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class LaneCellStarted:
    """A cell came to a session's warm worker over its direct lane: the worker is busy until CellFinished."""

    cell_id: str
    worker_id: str
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class CellWithdrawn:
    """The client cancelled a cell or went away before it finished."""

    cell_id: str
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class WorkerReady:
    """A launched worker registered and can take work."""

    worker_id: str
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class WorkerJoined:
    """A worker nobody launched here (`gpucell worker` by hand) registered for a pool."""

    worker_id: str
    pool: str
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class WorkerGone:
    worker_id: str
    now: float
    reason: str = "worker lost"
    stimulus_id: str = ""


@dataclass(frozen=True)
class ReleaseRequested:
    session: str
    now: float
    pool: str | None = None
    worker_id: str | None = None
    stimulus_id: str = ""


@dataclass(frozen=True)
class SessionClosed:
    session: str
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class WorkerHeartbeat:
    """A message came over a worker's stream (any message is a sign of life); heartbeats carry its RSS."""

    worker_id: str
    now: float
    rss: int = 0                   # bytes; 0: not a heartbeat
    stimulus_id: str = ""


@dataclass(frozen=True)
class WorkerDisconnected:
    """A worker's stream ended. A hand-started one is gone; a launched one gets a grace for its provisioner's reason."""

    worker_id: str
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class CellUndelivered:
    """A Dispatch found no stream to its worker: the cell goes back to its queue and the worker is unreachable."""

    cell_id: str
    worker_id: str
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class UsageRestored:
    """Worker-seconds from an earlier run of the broker (the journal): (session, pool, seconds) each."""

    usage: tuple[tuple[str, str, float], ...]
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class Tick:
    """Time passed. It yields the events below when they are due, each with its own stimulus id."""

    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class CellTimedOut:
    """A cell ran past its --timeout: the worker is asked to interrupt it."""

    cell_id: str
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class CellIgnoredInterrupt:
    """A timed-out cell still runs a grace after its interrupt: it fails and its worker is stopped."""

    cell_id: str
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class WorkerSilent:
    """No message from a registered worker for heartbeat_timeout."""

    worker_id: str
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class WorkerStartTimedOut:
    """A launched worker did not register within start_timeout."""

    worker_id: str
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class WorkerOverMemory:
    """A heartbeat reported more RSS than its pool's memory_limit_mb."""

    worker_id: str
    now: float
    rss: int
    stimulus_id: str = ""


@dataclass(frozen=True)
class WorkerDisconnectGraceOver:
    """A launched worker's stream dropped and its provisioner gave no reason within the grace."""

    worker_id: str
    now: float
    stimulus_id: str = ""


Event = Union[CellSubmitted, CellFinished, LaneCellStarted, CellWithdrawn, WorkerReady, WorkerJoined, WorkerGone,
              ReleaseRequested, SessionClosed, WorkerHeartbeat, WorkerDisconnected, CellUndelivered, UsageRestored,
              Tick, CellTimedOut, CellIgnoredInterrupt, WorkerSilent, WorkerStartTimedOut, WorkerOverMemory,
              WorkerDisconnectGraceOver]

# ---------------------------------------------------------------- instructions


@dataclass(frozen=True)
class Launch:
    worker_id: str
    pool: str
    stimulus_id: str = ""


@dataclass(frozen=True)
class Dispatch:
    cell_id: str
    worker_id: str
    cold: bool
    stimulus_id: str = ""


@dataclass(frozen=True)
class Terminate:
    worker_id: str
    reason: str
    stimulus_id: str = ""


@dataclass(frozen=True)
class FailCell:
    cell_id: str
    reason: str
    kind: str                      # "worker_lost", "cancelled", "rejected", "timeout"
    stimulus_id: str = ""


@dataclass(frozen=True)
class QueuePosition:
    cell_id: str
    position: int
    pool: str
    stimulus_id: str = ""


@dataclass(frozen=True)
class Assigned:
    """A worker now belongs to a session (for good): the start of its metered interval."""

    worker_id: str
    session: str
    pool: str
    now: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class UsageRecorded:
    session: str
    pool: str
    worker_id: str
    start: float
    end: float
    stimulus_id: str = ""


@dataclass(frozen=True)
class WorkerStarting:
    """A cell now waits for a worker that is starting for it (the user sees "starting a T4 worker")."""

    cell_id: str
    worker_id: str
    pool: str
    stimulus_id: str = ""


@dataclass(frozen=True)
class InterruptCell:
    """Ask the worker to interrupt a cell that ran past its --timeout; from now on it fails with `reason`."""

    cell_id: str
    worker_id: str
    reason: str
    stimulus_id: str = ""


@dataclass(frozen=True)
class WorkerLost:
    """The scheduler counts this worker gone (its cells already failed): drop its stream, note why, and stop
    its process within stop_grace_s (None: leave the process to its provisioner, which is asked why it ended)."""

    worker_id: str
    reason: str
    stop_grace_s: float | None
    stimulus_id: str = ""


Instruction = Union[Launch, Dispatch, Terminate, FailCell, QueuePosition, Assigned, UsageRecorded, WorkerStarting,
                    InterruptCell, WorkerLost]


@dataclass
class Scheduler:
    """Pools of workers, a FIFO queue per pool, session affinity and idle release.

    Invariants (property-tested in tests/test_scheduler.py): a worker serves at most one session
    in its life; a pool never has more than max_workers processes (releasing ones included, until
    they are gone); every queued cell is eventually dispatched or failed with a reason; a session
    worker idle past its timeout is released by the next Tick; cells waiting for capacity get it
    in submission order; usage is the sum of the assignment intervals; a cell past its --timeout is
    interrupted once and, a grace later, failed once; a silent, never-registering or over-memory worker
    is declared lost and its cell fails with that reason.
    """

    pools: dict[str, PoolLimits]
    heartbeat_timeout: float = 0.0     # seconds without a message before a worker is lost; 0: never
    start_timeout: float = 0.0         # seconds a launched worker may take to register; 0: forever
    timeout_grace: float = TIMEOUT_GRACE_S
    disconnect_grace: float = DISCONNECT_GRACE_S
    workers: dict[str, Worker] = field(default_factory=dict)
    queues: dict[str, deque[PendingCell]] = field(default_factory=dict)
    running: dict[str, str] = field(default_factory=dict)          # cell -> worker
    dispatched: dict[str, PendingCell] = field(default_factory=dict)  # running cells the broker dispatched
    cold_cells: set[str] = field(default_factory=set)              # cells that waited for a launch
    usage: dict[tuple[str, str], float] = field(default_factory=dict)  # (session, pool) -> seconds
    _next_id: int = 0
    _seen_ids: set[str] = field(default_factory=set)               # never reuse a worker id
    _next_seq: int = 0

    def __post_init__(self) -> None:
        for name in self.pools:
            self.queues.setdefault(name, deque())

    # ------------------------------------------------------------ entry point

    def handle(self, event: Event) -> list[Instruction]:
        """The instructions an event causes, each carrying the stimulus id of the event that caused it."""
        out: list[Instruction] = []
        self._handle(event, out)
        return out

    def _handle(self, event: Event, out: list[Instruction]) -> None:
        mine: list[Instruction] = []
        if isinstance(event, CellSubmitted):
            if event.pool not in self.pools:
                mine.append(FailCell(event.cell_id, f"no pool serves {event.pool!r}", "rejected"))
            else:
                self._next_seq += 1
                self.queues[event.pool].append(PendingCell(event.cell_id, event.session, event.pool,
                                                           event.now, event.fresh, event.idle_timeout,
                                                           owner=event.owner or event.session,
                                                           timeout=event.timeout, seq=self._next_seq))
                self._pump(event.pool, event.now, mine)
        elif isinstance(event, CellFinished):
            self._finish_cell(event.cell_id, event.now, mine)
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
            self._withdraw(event.cell_id, event.now, mine)
        elif isinstance(event, WorkerReady):
            worker = self.workers.get(event.worker_id)
            if worker is not None and (worker.state is WorkerState.STARTING or not worker.reachable):
                if worker.state is WorkerState.STARTING:
                    worker.state = WorkerState.IDLE
                    worker.last_active = event.now
                worker.reachable, worker.last_seen = True, event.now
                self._pump(worker.pool, event.now, mine)
        elif isinstance(event, WorkerJoined):
            self._join(event, mine)
        elif isinstance(event, WorkerGone):
            self._worker_gone(event.worker_id, event.now, event.reason, mine)
        elif isinstance(event, ReleaseRequested):
            for worker in list(self.workers.values()):
                if worker.session != event.session or worker.state is WorkerState.RELEASING:
                    continue
                if event.pool and worker.pool != event.pool:
                    continue
                if event.worker_id and worker.id != event.worker_id:
                    continue
                self._terminate(worker, event.now, "released by the user", mine)
            for pool in self.pools:
                self._pump(pool, event.now, mine)
        elif isinstance(event, SessionClosed):
            for queue in self.queues.values():
                for cell in [c for c in queue if c.session == event.session]:
                    queue.remove(cell)
                    self.cold_cells.discard(cell.cell_id)
                    mine.append(FailCell(cell.cell_id, "session closed", "cancelled"))
            self._handle(ReleaseRequested(event.session, event.now), mine)
        elif isinstance(event, WorkerHeartbeat):
            self._heard(event, out)
        elif isinstance(event, WorkerDisconnected):
            worker = self.workers.get(event.worker_id)
            if worker is not None:
                self._disconnect(worker, event.now, mine)
        elif isinstance(event, CellUndelivered):
            self._undelivered(event, mine)
        elif isinstance(event, UsageRestored):
            for session, pool, seconds in event.usage:
                self.usage[(session, pool)] = self.usage.get((session, pool), 0.0) + max(0.0, seconds)
        elif isinstance(event, Tick):
            for due in self._due(event.now):
                self._handle(due, out)
            self._tick(event.now, mine)
        elif isinstance(event, CellTimedOut):
            self._timed_out(event.cell_id, event.now, mine)
        elif isinstance(event, CellIgnoredInterrupt):
            self._ignored_interrupt(event.cell_id, event.now, mine)
        elif isinstance(event, WorkerSilent):
            worker = self.workers.get(event.worker_id)
            if worker is not None and worker.reachable and worker.state is not WorkerState.STARTING:
                self._lose(worker, event.now, f"no heartbeat for {self.heartbeat_timeout:g}s", 0.5, mine)
        elif isinstance(event, WorkerStartTimedOut):
            worker = self.workers.get(event.worker_id)
            if worker is not None and worker.state is WorkerState.STARTING:
                self._lose(worker, event.now, f"did not register within {self.start_timeout:g}s", 0.5, mine)
        elif isinstance(event, WorkerOverMemory):
            worker = self.workers.get(event.worker_id)
            if worker is not None:
                limit = self.pools[worker.pool].memory_limit_mb
                self._lose(worker, event.now, f"worker exceeded its memory limit ({event.rss / 1e6:.0f} MB > "
                           f"{limit} MB, memory_limit_mb of pool {worker.pool}) and was stopped", 0.0, mine)
        elif isinstance(event, WorkerDisconnectGraceOver):
            worker = self.workers.get(event.worker_id)
            if worker is not None and not worker.reachable:
                self._lose(worker, event.now, "worker disconnected", None, mine)
        out.extend(i if i.stimulus_id else replace(i, stimulus_id=event.stimulus_id) for i in mine)

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

    def open_intervals(self, now: float) -> list[tuple[str, str, str, float]]:
        """(session, pool, worker, seconds so far) for every worker still assigned: what a checkpoint keeps."""
        return [(w.session, w.pool, w.id, now - w.assigned_at) for w in self.workers.values()
                if w.session is not None and w.assigned_at is not None and w.state is not WorkerState.RELEASING]

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
                                               event.now, limits.idle_timeout, created=event.now,
                                               last_seen=event.now)
        self._pump(event.pool, event.now, out)

    def _pool_size(self, pool: str) -> int:
        return sum(1 for w in self.workers.values() if w.pool == pool)

    def _held_by(self, owner: str, pool: str) -> int:
        return sum(1 for w in self.workers.values()
                   if w.pool == pool and w.owner == owner and w.state is not WorkerState.RELEASING)

    def _launch(self, pool: str, session: str | None, now: float, out: list[Instruction]) -> Worker:
        # A cell's --idle applies when it is dispatched (_dispatch), not to a launch it may never use.
        worker = Worker(self._new_worker_id(pool), pool, WorkerState.STARTING, None, now,
                        self.pools[pool].idle_timeout, launched=True, created=now)
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
        cell.started, cell.interrupted_at = now, None
        self.dispatched[cell.cell_id] = cell
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
                if worker.state is WorkerState.IDLE and worker.reachable:
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
            reserve = next((w for w in self.workers.values() if w.pool == pool and w.session is None and w.reachable
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

    def _end_cell(self, cell_id: str) -> str | None:
        """Forget a running cell; its worker's id, if it had one."""
        self.dispatched.pop(cell_id, None)
        return self.running.pop(cell_id, None)

    def _finish_cell(self, cell_id: str, now: float, out: list[Instruction]) -> None:
        worker_id = self._end_cell(cell_id)
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
            self._end_cell(worker.cell)
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
            self._end_cell(worker.cell)
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

    # ------------------------------------------------------------ timeouts, silence, memory, dropped streams

    def _due(self, now: float) -> list[Event]:
        """What time alone has made happen by `now`, in a fixed order (cells, then workers)."""
        due: list[Event] = []
        for cell in self.dispatched.values():
            if cell.timeout > 0 and cell.interrupted_at is None and now >= cell.started + cell.timeout:
                due.append(CellTimedOut(cell.cell_id, now, stimulus_id=f"cell-timeout-{cell.cell_id}"))
            elif cell.interrupted_at is not None and now >= cell.interrupted_at + self.timeout_grace:
                due.append(CellIgnoredInterrupt(cell.cell_id, now, stimulus_id=f"timeout-grace-{cell.cell_id}"))
        for worker in self.workers.values():
            if worker.state is WorkerState.STARTING:
                if self.start_timeout > 0 and now - worker.created > self.start_timeout:
                    due.append(WorkerStartTimedOut(worker.id, now, stimulus_id=f"start-timeout-{worker.id}"))
            elif not worker.reachable:
                if now >= worker.disconnected_at + self.disconnect_grace:
                    due.append(WorkerDisconnectGraceOver(worker.id, now, stimulus_id=f"disconnected-{worker.id}"))
            elif (self.heartbeat_timeout > 0 and worker.last_seen is not None
                  and now - worker.last_seen > self.heartbeat_timeout):
                due.append(WorkerSilent(worker.id, now, stimulus_id=f"silent-{worker.id}"))
        return due

    def _timed_out(self, cell_id: str, now: float, out: list[Instruction]) -> None:
        cell = self.dispatched.get(cell_id)
        worker_id = self.running.get(cell_id)
        if cell is None or worker_id is None or cell.interrupted_at is not None:
            return
        cell.interrupted_at = now
        out.append(InterruptCell(cell_id, worker_id, timeout_reason(cell.timeout)))

    def _ignored_interrupt(self, cell_id: str, now: float, out: list[Instruction]) -> None:
        cell = self.dispatched.get(cell_id)
        worker = self.workers.get(self.running.get(cell_id, ""))
        if cell is None or cell.interrupted_at is None or worker is None:
            return
        self._end_cell(cell_id)
        if worker.cell == cell_id:
            worker.cell = None
        out.append(FailCell(cell_id, timeout_reason(cell.timeout), "timeout"))
        self._terminate(worker, now, f"cell {cell_id} ran past its --timeout of {cell.timeout:g}s "
                        f"and ignored the interrupt for {self.timeout_grace:g}s", out)
        self._pump(worker.pool, now, out)

    def _heard(self, event: WorkerHeartbeat, out: list[Instruction]) -> None:
        worker = self.workers.get(event.worker_id)
        if worker is None:
            return
        worker.last_seen = event.now
        limit = self.pools[worker.pool].memory_limit_mb
        if limit and event.rss > limit * 1_000_000:
            self._handle(WorkerOverMemory(worker.id, event.now, event.rss, stimulus_id=f"over-memory-{worker.id}"),
                         out)

    def _lose(self, worker: Worker, now: float, reason: str, stop_grace_s: float | None,
              out: list[Instruction]) -> None:
        out.append(WorkerLost(worker.id, reason, stop_grace_s))
        self._worker_gone(worker.id, now, reason, out)

    def _disconnect(self, worker: Worker, now: float, out: list[Instruction]) -> None:
        if not worker.launched:
            # Nobody else can say why a hand-started worker went: its stream was all there was.
            self._lose(worker, now, "worker disconnected", None, out)
        elif worker.reachable:
            worker.reachable, worker.disconnected_at = False, now

    def _undelivered(self, event: CellUndelivered, out: list[Instruction]) -> None:
        cell = self.dispatched.get(event.cell_id)
        worker = self.workers.get(event.worker_id)
        if cell is None or self.running.get(event.cell_id) != event.worker_id:
            return
        self._end_cell(event.cell_id)
        cell.position = 0
        queue = self.queues[cell.pool]
        # Back to its place in submission order: its session's later cells must not overtake it.
        index = next((i for i, other in enumerate(queue) if other.seq > cell.seq), len(queue))
        queue.insert(index, cell)
        if worker is not None:
            if worker.cell == event.cell_id:
                worker.state, worker.cell, worker.last_active = WorkerState.IDLE, None, event.now
            self._disconnect(worker, event.now, out)
        self._pump(cell.pool, event.now, out)

"""Fan-out: one function over many items, in adaptive batches, across fresh workers (one session per slot)."""

from __future__ import annotations

import operator
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import cloudpickle

from gpucell.client.broker_client import BrokerClient
from gpucell.client.fanout_queue import (LOST_RETRIES, RECONNECT_WINDOW_S, Batch, FanoutQueue, Read, Wait,
                                         retry_delay)
from gpucell.namespace.fanout_runner import NO_TASK, CellBody, Task
from gpucell.client.session import CellOptions, Session
from gpucell.client.sink import ForwardingSink, Sink, first_phase
from gpucell.errors import (BrokerError, BrokerGoneError, BrokerUnavailableError, CellGoneError, GpucellError, RemoteError,
                            SerializationError, WorkerLostError)

# Which item runs where, retries and result order are the queue's (fanout_queue.py, a pure state
# machine, with the batch sizing and fault limits); this module holds the threads and the I/O around it.
DEPTH = 2                        # cells in flight per slot: the next batch waits at the broker, not here
CELL_TIMEOUT_SLACK_S = 60.0

SETUP_SOURCE = "_gpucell_fn = _gpucell_task\n"
BATCH_SOURCE = ("from gpucell.namespace.fanout_runner import run_batch as _gpucell_run\n"
                "_gpucell_out = _gpucell_run(globals().get('_gpucell_fn'), _gpucell_items)\n")
_SETUP_SKIP = {"_gpucell_fn"}
_BATCH_SKIP = {"_gpucell_fn", "_gpucell_run"}


# =============================================================== client side


@dataclass
class FanoutOptions:
    hardware: str = ""
    workers: int = 1
    retries: int = 0
    ordered: bool = True
    return_exceptions: bool = False
    progress: bool = False
    description: str = "gpucell.map"
    label_items: bool = True     # name the item in the error (a map), or not (a single .remote call)
    env: dict[str, str] = field(default_factory=dict)
    owner: str = ""              # the notebook session the map's workers count against (quotas)


class StreamSink(Sink):
    """Item output into this process's stdout/stderr (already prefixed with the item's index); rich output
    is dropped (the magic passes a sink that shows it)."""

    def __init__(self) -> None:
        self.notices: set[str] = set()

    def phase(self, text: str) -> None:
        if first_phase(self.notices, text):  # queue positions show in the progress bar; a notice once per map
            super().phase(text)


class _Slot:
    """One fan-out worker: its own session id, so the broker gives it its own fresh worker."""

    def __init__(self, number: int, client: BrokerClient, session_name: str, owner: str = "") -> None:
        self.number = number
        self.session_id = uuid.uuid4().hex
        # One Session object per runner thread (same session id): a Session keeps per-request state.
        self.sessions = [Session(client, session_id=self.session_id, session_name=session_name)
                         for _ in range(DEPTH)]
        for session in self.sessions:
            session.synced = None   # each batch is a namespace of its own: nothing is held in place across them
        for session in self.sessions:
            session.owner = owner
        self.ready = threading.Event()
        self.queued = False
        self.busy: list[bool] = [False] * DEPTH


class Fanout:
    """Runs `task` over an iterable; `results()` yields outcomes, in input order unless ordered=False."""

    def __init__(self, client: BrokerClient, task: Task, options: FanoutOptions,
                 sink: Sink | None = None) -> None:
        self.client = client
        self.task = task
        self.options = options
        if not options.owner:
            options.owner = uuid.uuid4().hex  # outside a notebook, a map's workers count together
        self.sink: Sink = sink or StreamSink()
        self._cv = threading.Condition()
        self._slots: list[_Slot] = []
        self._threads: list[threading.Thread] = []
        self._source: Iterator[Any] = iter(())
        # Everything about the items lives in the queue, touched only under self._cv.
        self._queue = FanoutQueue(max(1, options.workers), retries=options.retries, ordered=options.ordered,
                                  return_exceptions=options.return_exceptions, label_items=options.label_items,
                                  depth=DEPTH, reconnect_window_s=RECONNECT_WINDOW_S)
        self._closed = False
        self._bar: Any = None

    # Counters for progress and for tests (derived from the items' states in the queue).

    @property
    def done(self) -> int:
        return self._queue.done

    @property
    def failed(self) -> int:
        return self._queue.failed

    @property
    def retrying(self) -> int:
        return self._queue.retrying

    @property
    def lost_batches(self) -> int:
        return self._queue.lost_batches

    @property
    def reconnects(self) -> int:
        return self._queue.reconnects

    # ------------------------------------------------------------ public

    def results(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Yield each item's result (or RemoteError with return_exceptions); stops everything on exit."""
        try:
            total = operator.length_hint(iterable, -1)
        except Exception:  # noqa: BLE001 - a broken __length_hint__ only costs us the tail balancing
            total = -1
        self._queue.total = total if total >= 0 else None
        self._source = iter(iterable)
        self._start()
        clean = False
        try:
            while True:
                with self._cv:
                    outcome = self._queue.next_result()
                    while outcome is None:
                        if self._queue.fatal is not None:
                            raise self._queue.fatal
                        if self._closed:
                            raise GpucellError("the map was cancelled")
                        if self._queue.finished:
                            clean = True
                            return
                        self._cv.wait(0.25)
                        self._show_progress()
                        outcome = self._queue.next_result()
                    self._cv.notify_all()   # the window moved: runners may read more input
                self._show_progress()
                yield outcome.value
        finally:
            self.shutdown(cancel=not clean)

    def cancel(self) -> None:
        """Stop every outstanding batch on every worker and release the workers (from any thread)."""
        self.shutdown(cancel=True)

    # ------------------------------------------------------------ lifecycle

    def _start(self) -> None:
        name = getattr(getattr(self.task, "fn", None), "__name__", "fn")
        count = max(1, self.options.workers)
        if self.options.progress:
            from tqdm.auto import tqdm  # noqa: PLC0415 - tqdm.auto picks widget vs text at first use
            self._bar = tqdm(total=self._queue.total, desc=self.options.description, unit="item", leave=True)
        for number in range(count):
            slot = _Slot(number, self.client, f"map {name} [{number + 1}/{count}]", self.options.owner)
            self._slots.append(slot)
            for lane in range(DEPTH):
                thread = threading.Thread(target=self._runner, args=(slot, lane), daemon=True,
                                          name=f"gpucell-map-{number}.{lane}")
                self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    def shutdown(self, cancel: bool) -> None:
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._queue.stop()
            self._cv.notify_all()
        if cancel:
            for slot in self._slots:
                for lane, session in enumerate(slot.sessions):
                    report = session.last_report
                    if slot.busy[lane] and report is not None:
                        try:
                            self.client.cancel(slot.session_id, report.cell_id)
                        except GpucellError:
                            pass
        # Closing a slot's session fails its queued cells and releases its worker: billing stops now.
        for slot in self._slots:
            slot.sessions[0].close()
        deadline = time.monotonic() + 10.0
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._show_progress()
        if self._bar is not None:
            self._bar.close()

    # ------------------------------------------------------------ consumer side (under the lock)

    def _show_progress(self) -> None:
        bar = self._bar
        if bar is None:
            return
        with self._cv:
            done, failed, retrying = self._queue.done, self._queue.failed, self._queue.retrying
            queued = sum(1 for s in self._slots if s.queued and not s.ready.is_set())
        if done + failed > bar.n:
            bar.update(done + failed - bar.n)
        postfix = {"done": done, "failed": failed, "retrying": retrying}
        if queued:
            postfix["queued workers"] = queued
        bar.set_postfix(postfix, refresh=False)

    # ------------------------------------------------------------ runners (one thread per slot lane)

    def _runner(self, slot: _Slot, lane: int) -> None:
        session = slot.sessions[lane]
        try:
            if lane == 0:
                if not self._setup(slot, session):
                    return
            else:
                while not slot.ready.wait(0.25):
                    if self._queue.stopping:
                        return
            while True:
                batch = self._take(slot)
                if batch is None:
                    return
                self._run_batch(slot, lane, session, batch)
        except BaseException as exc:  # noqa: BLE001 - any surprise here must reach the consumer, not vanish
            self._fail_all(exc)

    def _options(self, batch_len: int) -> CellOptions:
        timeout = self.task.timeout_s * batch_len + CELL_TIMEOUT_SLACK_S if self.task.timeout_s > 0 else 0.0
        # No direct lane: a slot pipelines two batches per worker, and only the broker's queue knows
        # which of them a dead worker had started (the other is re-run elsewhere, not counted lost).
        return CellOptions(hardware=self.options.hardware, timeout_s=timeout, env=self.options.env,
                           return_limit=1 << 62, lane=False)

    def _setup(self, slot: _Slot, session: Session) -> bool:
        """Bind the task on the slot's worker, once; a slot takes items only once it has a worker."""
        sink = _SlotSink(self.sink, slot)
        lost = 0
        while True:
            try:
                session.run_cell(SETUP_SOURCE, {"_gpucell_task": self.task}, self._options(0), sink,
                                 skip=_SETUP_SKIP)
                break
            except KeyboardInterrupt:   # cancelled (the map ended while this slot still waited for a worker)
                return False
            except GpucellError as exc:
                kind = fault_kind(exc)
                lost += kind == "lost"
                if self._queue.stopping:
                    return False
                delay = self._fault_delay(exc, kind, lost)
                if delay is None:
                    self._fail_all(_setup_error(exc))
                    return False
                with self._cv:      # backoff, cut short when the map ends
                    self._cv.wait_for(lambda: self._queue.stopping, timeout=delay)
        self._reachable()
        with self._cv:
            self._queue.slot_ready(slot.number)
        slot.ready.set()
        return True

    def _run_batch(self, slot: _Slot, lane: int, session: Session, batch: Batch) -> None:
        try:
            payload = cloudpickle.dumps((batch.indices, batch.items), protocol=5)
        except Exception as exc:  # noqa: BLE001 - an item that cannot travel stops the map, naming it
            self._fail_all(SerializationError(f"cannot send items {batch.indices[0]}..{batch.indices[-1]}: {exc}"))
            return
        ns: dict[str, Any] = {"_gpucell_items": payload}
        sink = _SlotSink(self.sink, slot)
        slot.busy[lane] = True
        try:
            source = BATCH_SOURCE
            while True:
                try:
                    session.run_cell(source, ns, self._options(len(batch.items)), sink, skip=_BATCH_SKIP)
                    # The batch's pickled results, or NO_TASK; absent when the worker's _gpucell_out was already
                    # NO_TASK (a name that did not change does not come back), which means the same.
                    out: Any = ns.get("_gpucell_out", NO_TASK)
                    if out == NO_TASK and source is BATCH_SOURCE:
                        # A replacement worker: the task and the batch again, in one cell (two cells with two
                        # namespaces would each look to the session as if the other's names were deleted).
                        ns["_gpucell_task"] = self.task
                        source = SETUP_SOURCE + BATCH_SOURCE
                        continue
                except KeyboardInterrupt:
                    self._report(self._queue.batch_failed, batch, WorkerLostError("the batch was cancelled"))
                    return
                except GpucellError as exc:
                    kind = fault_kind(exc)
                    self._report(self._queue.batch_failed if kind is None else
                                 self._queue.batch_unreachable if kind == "unreachable" else
                                 self._queue.batch_lost, batch, exc)
                    return
                break
        finally:
            slot.busy[lane] = False
        self._reachable()
        values, failures, compute_s = pickle.loads(out)
        hardware = session.last_report.hardware if session.last_report else ""
        errors = {pos: RemoteError(ename, evalue, tb, hardware=hardware)
                  for pos, (ename, evalue, tb) in failures.items()}
        with self._cv:
            self._queue.deliver(batch, values, errors, compute_s, len(payload) + len(out), time.monotonic())
            self._cv.notify_all()

    def _report(self, event: Callable[[Batch, BaseException, float], None], batch: Batch, exc: BaseException) -> None:
        with self._cv:
            event(batch, exc, time.monotonic())
            self._cv.notify_all()

    def _fault_delay(self, exc: GpucellError, kind: str | None, lost: int) -> float | None:
        """The backoff before the next try of a slot's setup; None: give up (the map stops)."""
        if kind is None or lost > LOST_RETRIES:
            return None
        if kind == "lost":
            return retry_delay(lost)
        with self._cv:     # an unreachable broker pauses every lane, not just this one
            delay = self._queue.broker_unreachable(exc, time.monotonic())
            self._cv.notify_all()
            return delay

    def _reachable(self) -> None:
        with self._cv:
            self._queue.broker_reachable()

    def _take(self, slot: _Slot) -> Batch | None:
        with self._cv:
            while True:
                now = time.monotonic()
                step = self._queue.take(slot.number, now)
                while isinstance(step, Read):
                    self._read(step.count)
                    step = self._queue.take(slot.number, now)   # the same instant: the batch it planned
                if not isinstance(step, Wait):
                    return step
                self._cv.wait(step.seconds)

    def _read(self, count: int) -> None:
        """Up to `count` items of the user's iterable into the queue (under the lock)."""
        try:
            items = list(islice(self._source, count))
        except BaseException as exc:  # noqa: BLE001 - the user's iterable failed: the map stops
            self._queue.source_failed(exc)
            self._cv.notify_all()
            return
        self._queue.admit(items, exhausted=len(items) < count)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cv:
            if not self._queue.stopping:
                self._queue.fail(exc)
            self._cv.notify_all()


class _SlotSink(ForwardingSink):
    """Per-slot view of the sink: notes whether the slot's worker is still queued."""

    def __init__(self, sink: Sink, slot: _Slot) -> None:
        super().__init__(sink)
        self._slot = slot

    def phase(self, text: str) -> None:
        if text.startswith("queued:"):
            self._slot.queued = True
        self.sink.phase(text)


def fault_kind(exc: GpucellError) -> str | None:
    """'lost': the worker died under the cell; 'unreachable': the broker is down, restarting, or restarted
    and no longer knows the cell; None: the cell's own outcome (a user error, a timeout, a bad request)."""
    if isinstance(exc, BrokerGoneError):
        return "unreachable"    # the broker went away mid-cell: wait for it, as for any unreachable broker
    if isinstance(exc, WorkerLostError):
        return "lost"
    # CellGoneError: a dropped stream re-attached to a broker that restarted meanwhile. BrokerError: a stream
    # cut with another status than UNAVAILABLE (INTERNAL, UNKNOWN) while the broker went down.
    if isinstance(exc, (BrokerUnavailableError, CellGoneError, BrokerError)):
        return "unreachable"
    return None


def _setup_error(exc: GpucellError) -> GpucellError:
    if isinstance(exc, RemoteError):
        exc.args = (f"the function could not be set up on the worker: {exc}",)
    return exc


__all__ = ["CellBody", "Fanout", "FanoutOptions", "StreamSink", "Task", "fault_kind"]

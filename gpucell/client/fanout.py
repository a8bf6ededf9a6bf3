"""Fan-out: one function over many items, in adaptive batches, across fresh workers (one session per slot)."""

from __future__ import annotations

import heapq
import math
import operator
import pickle
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from gpucell.client.broker_client import BrokerClient
from gpucell.client.fanout_runner import NO_TASK, CellBody, Task
from gpucell.client.session import CellOptions, OutputSink, Session
from gpucell.errors import (BrokerUnavailableError, ConfigError, GpucellError, RemoteError, SerializationError,
                            WorkerLostError)

# Batches aim at this much work on the worker: long enough that the per-cell cost (~1-2 ms on the
# worker, more on the client, hidden by pipelining) is noise, short enough that slow items still
# spread over every worker and results stream back often.
TARGET_BATCH_S = 0.2
FIRST_BATCH = 2
GROWTH = 4                       # a batch is at most this many times the slot's previous one
MAX_BATCH = 4096
MAX_BATCH_BYTES = 8 << 20        # pickled items per batch
WINDOW_BYTES = 256 << 20         # items read but not yet yielded, inputs and results together (estimated)
WINDOW_MIN = 64
WINDOW_MAX = 65536
DEPTH = 2                        # cells in flight per slot: the next batch waits at the broker, not here
RETRY_BASE_S = 0.1
RETRY_MAX_S = 10.0
CELL_TIMEOUT_SLACK_S = 60.0
# Faults that are not the item's doing cost it nothing from `retries`: a worker that died under a batch
# re-runs the batch's items on a fresh worker (an item lost twice runs alone, so a poison item that kills
# its worker is found; lost more than LOST_RETRIES times, it fails with the reason); a broker that cannot
# be reached (down, restarting) pauses the map with backoff and resubmits, for up to RECONNECT_WINDOW_S.
LOST_RETRIES = 3
SOLO_AFTER_LOST = 2
RECONNECT_WINDOW_S = 60.0
RECONNECT_BASE_S = 0.2
RECONNECT_MAX_S = 2.0

SETUP_SOURCE = "_gpucell_fn = _gpucell_task\n"
BATCH_SOURCE = ("from gpucell.client.fanout_runner import run_batch as _gpucell_run\n"
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


class StreamSink:
    """Item output into this process's stdout/stderr (already prefixed with the item's index)."""

    def __init__(self) -> None:
        self.notices: set[str] = set()

    def stream(self, name: str, text: str) -> None:
        out = sys.stdout if name == "stdout" else sys.stderr
        out.write(text)
        out.flush()

    def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool) -> None:
        pass  # rich output of items has no place outside a notebook; the magic passes a sink that shows it

    def phase(self, text: str) -> None:
        if text.startswith("queued:") or text in self.notices:
            return  # queue positions show in the progress bar; a notice once per map
        self.notices.add(text)
        sys.stderr.write(text + "\n")


@dataclass
class _Batch:
    indices: list[int]
    items: list[Any]


class _Slot:
    """One fan-out worker: its own session id, so the broker gives it its own fresh worker."""

    def __init__(self, number: int, client: BrokerClient, session_name: str, owner: str = "") -> None:
        self.number = number
        self.session_id = uuid.uuid4().hex
        # One Session object per runner thread (same session id): a Session keeps per-request state.
        self.sessions = [Session(client, session_id=self.session_id, session_name=session_name)
                         for _ in range(DEPTH)]
        for session in self.sessions:
            session.owner = owner
        self.ready = threading.Event()
        self.queued = False
        self.per_item_s: float | None = None
        self.last_size = 0
        self.busy: list[bool] = [False] * DEPTH


class Fanout:
    """Runs `task` over an iterable; `results()` yields outcomes, in input order unless ordered=False."""

    def __init__(self, client: BrokerClient, task: Task, options: FanoutOptions,
                 sink: OutputSink | None = None) -> None:
        self.client = client
        self.task = task
        self.options = options
        if not options.owner:
            options.owner = uuid.uuid4().hex  # outside a notebook, a map's workers count together
        self.sink: OutputSink = sink or StreamSink()
        self._cv = threading.Condition()
        self._slots: list[_Slot] = []
        self._threads: list[threading.Thread] = []
        self._source: Iterator[Any] = iter(())
        self._total: int | None = None
        self._next_index = 0
        self._exhausted = False
        self._retry: list[tuple[float, int, Any]] = []
        self._attempts: dict[int, int] = {}
        self._in_flight = 0
        self._ready: dict[int, tuple[bool, Any]] = {}      # ordered: index -> outcome, not yet yielded
        self._ready_queue: deque[tuple[int, bool, Any]] = deque()   # unordered
        self._next_yield = 0
        self._yielded = 0
        self._bytes_per_item = 0.0
        self.done = 0
        self.failed = 0
        self.retrying = 0
        self._lost: dict[int, int] = {}                    # index -> times its worker died under it
        self._down_since: float | None = None              # when the broker became unreachable
        self._down_streak = 0
        self._paused_until = 0.0
        self.lost_batches = 0
        self.reconnects = 0
        self._fatal: BaseException | None = None
        self._stopping = False
        self._closed = False
        self._bar: Any = None

    # ------------------------------------------------------------ public

    def results(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Yield each item's result (or RemoteError with return_exceptions); stops everything on exit."""
        try:
            total = operator.length_hint(iterable, -1)
        except Exception:  # noqa: BLE001 - a broken __length_hint__ only costs us the tail balancing
            total = -1
        self._total = total if total >= 0 else None
        self._source = iter(iterable)
        self._start()
        clean = False
        try:
            while True:
                with self._cv:
                    outcome = self._next_outcome()
                    while outcome is None:
                        if self._fatal is not None:
                            raise self._fatal
                        if self._closed:
                            raise GpucellError("the map was cancelled")
                        if self._finished():
                            clean = True
                            return
                        self._cv.wait(0.25)
                        self._show_progress()
                        outcome = self._next_outcome()
                    self._yielded += 1
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
            self._bar = tqdm(total=self._total, desc=self.options.description, unit="item", leave=True)
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
            self._stopping = True
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

    def _next_outcome(self) -> Any | None:
        if self.options.ordered:
            if self._next_yield in self._ready:
                ok, value = self._ready.pop(self._next_yield)
                self._next_yield += 1
                return _Outcome(value)
            return None
        if self._ready_queue:
            return _Outcome(self._ready_queue.popleft()[2])
        return None

    def _finished(self) -> bool:
        return self._exhausted and self._yielded == self._next_index

    def _show_progress(self) -> None:
        bar = self._bar
        if bar is None:
            return
        with self._cv:
            done, failed, retrying = self.done, self.failed, self.retrying
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
                    if self._stopping:
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
                if self._stopping:
                    return False
                delay = self._note_fault(exc, kind, lost) if kind is not None and lost <= LOST_RETRIES else None
                if delay is None:
                    self._fail_all(_setup_error(exc))
                    return False
                with self._cv:      # backoff, cut short when the map ends
                    self._cv.wait_for(lambda: self._stopping, timeout=delay)
        self._reachable()
        slot.ready.set()
        return True

    def _run_batch(self, slot: _Slot, lane: int, session: Session, batch: _Batch) -> None:
        try:
            payload = cloudpickle.dumps((batch.indices, batch.items), protocol=5)
        except Exception as exc:  # noqa: BLE001 - an item that cannot travel stops the map, naming it
            self._fail_all(SerializationError(f"cannot send items {batch.indices[0]}..{batch.indices[-1]}: {exc}"))
            return
        ns: dict[str, Any] = {"_gpucell_items": payload}
        sink = _SlotSink(self.sink, slot)
        slot.busy[lane] = True
        try:
            while True:
                try:
                    session.run_cell(BATCH_SOURCE, ns, self._options(len(batch.items)), sink, skip=_BATCH_SKIP)
                    out = ns.get("_gpucell_out")
                    if out == NO_TASK:  # a replacement worker: bind the task there, then run the batch again
                        session.run_cell(SETUP_SOURCE, {"_gpucell_task": self.task}, self._options(0), sink,
                                         skip=_SETUP_SKIP)
                        continue
                except KeyboardInterrupt:
                    self._batch_failed(batch, WorkerLostError("the batch was cancelled"))
                    return
                except GpucellError as exc:
                    kind = fault_kind(exc)
                    if kind is None:
                        self._batch_failed(batch, exc)
                    else:
                        self._batch_lost(batch, exc, kind)
                    return
                break
        finally:
            slot.busy[lane] = False
        self._reachable()
        values, failures, compute_s = pickle.loads(out)
        hardware = session.last_report.hardware if session.last_report else ""
        self._deliver(slot, batch, values, failures, compute_s, len(payload) + len(out), hardware)

    # ------------------------------------------------------------ the shared work queue (under the lock)

    def _batch_size(self, slot: _Slot) -> int:
        if slot.per_item_s is None:
            size = FIRST_BATCH
        else:
            by_time = TARGET_BATCH_S / max(slot.per_item_s, 1e-7)
            size = int(min(by_time, slot.last_size * GROWTH, MAX_BATCH))
        if self._bytes_per_item > 0:
            size = min(size, int(MAX_BATCH_BYTES / self._bytes_per_item))
        if self._total is not None:
            # The tail: never take more than a share of what is left, so the last items spread out.
            ready = sum(1 for s in self._slots if s.ready.is_set()) or 1
            left = max(0, self._total - self._next_index) + len(self._retry)
            size = min(size, math.ceil(left / (2 * ready)))
        return max(1, size)

    def _window(self) -> int:
        by_bytes = WINDOW_BYTES / self._bytes_per_item if self._bytes_per_item > 0 else WINDOW_MAX
        return int(max(WINDOW_MIN, 2 * DEPTH * len(self._slots), min(WINDOW_MAX, by_bytes)))

    def _take(self, slot: _Slot) -> _Batch | None:
        with self._cv:
            while True:
                if self._stopping:
                    return None
                now = time.monotonic()
                if now < self._paused_until:     # the broker is unreachable: wait for the backoff to pass
                    self._cv.wait(self._paused_until - now)
                    continue
                size = self._batch_size(slot)
                batch = _Batch([], [])
                while self._retry and self._retry[0][0] <= now and len(batch.indices) < size:
                    if self._lost.get(self._retry[0][1], 0) >= SOLO_AFTER_LOST:
                        # A suspect (its worker died under it more than once): alone, so it hurts no other item.
                        if not batch.indices:
                            _, index, item = heapq.heappop(self._retry)
                            batch.indices.append(index)
                            batch.items.append(item)
                        size = len(batch.indices)
                        break
                    _, index, item = heapq.heappop(self._retry)
                    batch.indices.append(index)
                    batch.items.append(item)
                window = self._window()
                while (len(batch.indices) < size and not self._exhausted
                       and self._next_index - self._yielded < window):
                    try:
                        item = next(self._source)
                    except StopIteration:
                        self._exhausted = True
                        break
                    except BaseException as exc:  # noqa: BLE001 - the user's iterable failed: the map stops
                        self._exhausted = True
                        self._fatal_error(exc)
                        return None
                    batch.indices.append(self._next_index)
                    batch.items.append(item)
                    self._next_index += 1
                if batch.indices:
                    self._in_flight += len(batch.indices)
                    slot.last_size = max(slot.last_size, len(batch.indices)) if slot.per_item_s is None \
                        else len(batch.indices)
                    return batch
                if self._exhausted and not self._retry and self._in_flight == 0:
                    return None
                wait = self._retry[0][0] - now if self._retry else 1.0
                self._cv.wait(max(0.001, min(wait, 1.0)))

    def _deliver(self, slot: _Slot, batch: _Batch, values: list[Any], failures: dict[int, tuple[str, str, list[str]]],
                 compute_s: float, nbytes: int, hardware: str) -> None:
        with self._cv:
            per_item = compute_s / max(1, len(values))
            slot.per_item_s = per_item if slot.per_item_s is None else 0.5 * slot.per_item_s + 0.5 * per_item
            sample = nbytes / max(1, len(batch.items))
            self._bytes_per_item = sample if self._bytes_per_item == 0 else 0.8 * self._bytes_per_item + 0.2 * sample
            self._in_flight -= len(batch.indices)
            for pos, index in enumerate(batch.indices):
                if pos >= len(values):       # not started: the batch ended at a failure; back to the queue
                    heapq.heappush(self._retry, (0.0, index, batch.items[pos]))
                elif pos in failures:
                    ename, evalue, tb = failures[pos]
                    self._item_failed(index, batch.items[pos], RemoteError(ename, evalue, tb, hardware=hardware))
                else:
                    self._item_done(index, True, values[pos])
            self._cv.notify_all()

    def _batch_failed(self, batch: _Batch, exc: BaseException) -> None:
        with self._cv:
            self._in_flight -= len(batch.indices)
            if self._stopping:
                self._cv.notify_all()
                return
            name = type(exc).__name__
            for index, item in zip(batch.indices, batch.items):
                self._item_failed(index, item, RemoteError(name, str(exc)))
            self._cv.notify_all()

    def _batch_lost(self, batch: _Batch, exc: GpucellError, kind: str) -> None:
        """The batch's worker died, or the broker went away: its items go back to the queue at no cost to
        their `retries` (bounded: see LOST_RETRIES and RECONNECT_WINDOW_S)."""
        with self._cv:
            self._in_flight -= len(batch.indices)
            if self._stopping:
                self._cv.notify_all()
                return
            now = time.monotonic()
            if kind == "unreachable":
                # Every lane pauses (see _take); the items wait in the queue, ready as soon as it is back.
                if self._note_fault(exc, kind, 0) is not None:
                    for index, item in zip(batch.indices, batch.items):
                        heapq.heappush(self._retry, (now, index, item))
                self._cv.notify_all()
                return
            self.lost_batches += 1
            for index, item in zip(batch.indices, batch.items):
                count = self._lost.get(index, 0) + 1
                if count > LOST_RETRIES:
                    self._set_lost(index, 0)
                    self._item_failed(index, item, RemoteError(
                        "WorkerLostError", f"{exc} (the item's worker was lost {count} times)"))
                    continue
                self._set_lost(index, count)
                delay = min(RETRY_MAX_S, RETRY_BASE_S * (2 ** (count - 1)))
                heapq.heappush(self._retry, (now + delay, index, item))
            self._cv.notify_all()

    def _note_fault(self, exc: GpucellError, kind: str, lost: int) -> float | None:
        """The backoff before the next try after a fault; None (and the map stops) when the broker stayed
        unreachable past RECONNECT_WINDOW_S. An unreachable broker pauses every lane, not just this one."""
        with self._cv:
            now = time.monotonic()
            if kind == "lost":
                return min(RETRY_MAX_S, RETRY_BASE_S * (2 ** max(0, lost - 1)))
            if self._down_since is None:
                self._down_since = now
            elif now - self._down_since > RECONNECT_WINDOW_S:
                self._fatal_error(BrokerUnavailableError(
                    f"the map stopped: the broker stayed unreachable for {RECONNECT_WINDOW_S:g}s ({exc})"))
                return None
            self._down_streak += 1
            delay = min(RECONNECT_MAX_S, RECONNECT_BASE_S * (2 ** min(self._down_streak - 1, 8)))
            self._paused_until = max(self._paused_until, now + delay)
            self.reconnects += 1
            return self._paused_until - now

    def _reachable(self) -> None:
        """A cell came back: the broker is there (again); the next outage starts its own window."""
        if self._down_since is not None or self._down_streak:
            with self._cv:
                self._down_since = None
                self._down_streak = 0

    def _set_lost(self, index: int, count: int) -> None:
        before = index in self._lost or index in self._attempts
        if count:
            self._lost[index] = count
        else:
            self._lost.pop(index, None)
        self.retrying += (index in self._lost or index in self._attempts) - before

    def _item_done(self, index: int, ok: bool, value: Any) -> None:
        self._set_lost(index, 0)
        if self._attempts.pop(index, 0):
            self.retrying -= 1
        if ok:
            self.done += 1
        else:
            self.failed += 1
        if self.options.ordered:
            self._ready[index] = (ok, value)
        else:
            self._ready_queue.append((index, ok, value))

    def _item_failed(self, index: int, item: Any, error: RemoteError) -> None:
        attempt = self._attempts.get(index, 0)
        if attempt < self.options.retries and not self._stopping:
            if attempt == 0 and index not in self._lost:
                self.retrying += 1
            self._attempts[index] = attempt + 1
            delay = min(RETRY_MAX_S, RETRY_BASE_S * (2 ** attempt))
            heapq.heappush(self._retry, (time.monotonic() + delay, index, item))
            return
        error.index = index  # type: ignore[attr-defined]
        if self.options.label_items:
            error.args = (f"item {index} failed: {error}",)
        if self.options.return_exceptions:
            self._item_done(index, False, error)
            return
        if self._attempts.pop(index, 0):
            self.retrying -= 1
        self.failed += 1
        self._fatal_error(error)

    def _fatal_error(self, error: BaseException) -> None:
        if self._fatal is None:
            # What completed but was not yet yielded stays reachable on the error.
            so_far = {i: v for i, (ok, v) in self._ready.items() if ok}
            so_far.update((i, v) for i, ok, v in self._ready_queue if ok)
            error.results_so_far = dict(sorted(so_far.items()))  # type: ignore[attr-defined]
            self._fatal = error
        self._stopping = True
        self._cv.notify_all()

    def _fail_all(self, exc: BaseException) -> None:
        with self._cv:
            if not self._stopping:
                self._fatal_error(exc)


@dataclass
class _Outcome:
    value: Any


class _SlotSink:
    """Per-slot view of the sink: notes whether the slot's worker is still queued."""

    def __init__(self, sink: OutputSink, slot: _Slot) -> None:
        self._sink = sink
        self._slot = slot

    def stream(self, name: str, text: str) -> None:
        self._sink.stream(name, text)

    def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool) -> None:
        self._sink.display(data, metadata, execute_result)

    def phase(self, text: str) -> None:
        if text.startswith("queued:"):
            self._slot.queued = True
        self._sink.phase(text)


def fault_kind(exc: GpucellError) -> str | None:
    """'lost': the worker died under the cell; 'unreachable': the broker is down, restarting, or restarted
    and no longer knows the cell; None: the cell's own outcome (a user error, a timeout, a bad request)."""
    if isinstance(exc, WorkerLostError):
        return "lost"
    if isinstance(exc, BrokerUnavailableError):
        return "unreachable"
    if isinstance(exc, ConfigError) and " is gone (" in str(exc):
        # A dropped stream re-attached (CellAttach: NOT_FOUND) to a broker that restarted meanwhile.
        return "unreachable"
    if type(exc) is GpucellError and str(exc).startswith("broker error ("):
        # A stream cut with another status than UNAVAILABLE (INTERNAL, UNKNOWN) while the broker went down.
        return "unreachable"
    return None


def _setup_error(exc: GpucellError) -> GpucellError:
    if isinstance(exc, RemoteError):
        exc.args = (f"the function could not be set up on the worker: {exc}",)
    return exc


__all__ = ["CellBody", "Fanout", "FanoutOptions", "StreamSink", "Task", "fault_kind"]

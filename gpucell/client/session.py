"""A session (one notebook kernel): sends a cell with the values it reads, applies what comes back."""

from __future__ import annotations

import json
import platform
import time
import uuid
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gpucell.client.broker_client import BrokerClient
from gpucell.client.errors_table import CELL_ERRORS
from gpucell.client.lane import Lane, LaneClosed, LaneLost
from gpucell.errors import (ConfigError, DataPathError, GpucellError, RemoteError,
                            RemoteRefError, SerializationError, UnknownHardwareError, WorkerLostError)
from gpucell.namespace import serialize, transfer
from gpucell.namespace.analysis import CellSyntaxError, analyze
from gpucell.namespace.remote_ref import RemoteRef
from gpucell.protocol import gpucell_pb2 as pb

CANCEL_DRAIN_S = 10.0
LOST_REASON_WAIT_S = 8.0  # the broker may take a few seconds to learn why a worker died
INLINE_LIMIT = 1 << 20   # larger inputs wait until the worker says it lacks them, then go by raw TCP


class OutputSink(Protocol):
    """Where a cell's live output goes (the magics write to the notebook)."""

    def stream(self, name: str, text: str) -> None: ...

    def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool) -> None: ...

    def phase(self, text: str) -> None: ...


@dataclass
class CellOptions:
    hardware: str = ""
    timeout_s: float = 0.0
    idle_s: float = 0.0
    fresh: bool = False
    env: dict[str, str] = field(default_factory=dict)
    pull: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    retries: int = 0
    strict: bool = False
    return_limit: int = 0
    lane: bool = True    # warm cells may go straight to the worker (a map pipelines through the broker)


@dataclass
class CellReport:
    """What happened, for the caller (and tests): where it ran and what it cost in time and bytes."""

    cell_id: str
    hardware: str = ""
    worker_id: str = ""
    cold: bool = False
    queue_positions: list[int] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    finished: pb.Finished | None = None
    assigned: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    kept_remote: list[str] = field(default_factory=list)  # one line per output left remote: it cannot load here
    lane: bool = False                 # went straight to the warm worker, not through the broker


class Session:
    """The client side of one notebook kernel's remote session."""

    def __init__(self, client: BrokerClient, *, session_id: str | None = None, session_name: str = "") -> None:
        self.client = client
        self.session_id = session_id or uuid.uuid4().hex
        self.session_name = session_name
        self.default_hardware = ""
        self.owner = ""
        self.max_blob_bytes = 0  # from the catalog: the broker's per-value limit (0: none)          # set on a fan-out slot: the notebook session it works for (quotas)
        self.refs: dict[str, RemoteRef] = {}
        self.workers: dict[str, str] = {}      # pool -> the worker that holds this session's state
        self._known_labels: list[str] | None = None
        self._prices: dict[str, float] | None = None
        self.last_report: CellReport | None = None
        self._notices_shown: set[str] = set()
        self._pending: dict[str, serialize.Packed] = {}
        self._requested_hardware = ""
        self.worker_versions: dict[str, dict[str, str]] = {}   # requested label -> last worker's versions
        self.lanes: dict[str, Lane] = {}       # requested hardware -> the direct lane to its warm worker
        self._lane_cell: Lane | None = None    # the lane the running cell went over, if any

    # ------------------------------------------------------------ checks before sending

    def known_labels(self) -> list[str]:
        if self._known_labels is None:
            catalog = self.client.catalog_pb()
            self._known_labels = list(catalog.known_labels)
            self.max_blob_bytes = catalog.max_blob_bytes
        return self._known_labels

    def check_hardware(self, hardware: str) -> str:
        spec = hardware.strip()
        if not spec:
            return ""
        base, _, count = spec.partition(":")
        if count and (not count.isdigit() or int(count) < 1):
            raise ConfigError(f"bad hardware {spec!r}: the count after ':' must be a positive integer")
        known = self.known_labels()
        if base.lower() not in {label.lower() for label in known}:
            raise UnknownHardwareError(f"no pool serves {spec!r} (known: {', '.join(known)})")
        return spec

    def build_request(self, source: str, user_ns: MutableMapping[str, Any], options: CellOptions,
                      skip: set[str], execution_count: int = 0) -> pb.CellExecuteRequest:
        """Everything that can go wrong locally goes wrong here, before anything is sent."""
        try:
            names = analyze(source)
        except CellSyntaxError as exc:
            raise ConfigError(f"syntax error in the cell, {exc}") from None
        hardware = self.check_hardware(options.hardware or self.default_hardware)
        request = pb.CellExecuteRequest(
            session_id=self.session_id, cell_id=uuid.uuid4().hex, hardware=hardware, source=source,
            execution_count=execution_count, session_name=self.session_name, owner=self.owner,
            assigns=[n for n in names.assigns if n not in skip], deletes=list(names.deletes),
            options=pb.CellOptions(timeout_s=options.timeout_s, idle_s=options.idle_s, fresh=options.fresh,
                                   env=options.env, pull=options.pull, keep=options.keep, retries=options.retries,
                                   strict=options.strict, return_limit=options.return_limit),
            client_boot_id=transfer.boot_id() if transfer.shm_enabled() else "")
        self._pending = {}
        inline_bytes = 0  # the request stays small; the rest goes over the data path on demand
        for name in names.reads:
            if name in skip or name not in user_ns:
                continue
            value = user_ns[name]
            if isinstance(value, RemoteRef):
                if value.lost:
                    raise RemoteRefError(value.lost_message())
                request.refs.append(name)
                continue
            statement = serialize.module_import(name, value)
            if statement is not None:
                request.imports.append(statement)
                continue
            packed = serialize.pack(name, value)
            if self.max_blob_bytes and packed.size > self.max_blob_bytes:
                raise SerializationError(f"cannot send {name!r} ({packed.type_name}, {packed.size / 1e6:.1f} MB): "
                                         f"larger than the broker's limit of {self.max_blob_bytes / 1e6:g} MB "
                                         "per value (max_blob_mb)")
            self._check_versions(name, value, hardware)
            request.inputs.append(pb.NamedValue(name=name, hash=packed.hash, type_name=packed.type_name,
                                                size=packed.size))
            if packed.hash in self._pending:
                continue
            self._pending[packed.hash] = packed
            if packed.size + inline_bytes <= INLINE_LIMIT:
                inline_bytes += packed.size
                request.blobs.append(pb.Blob(hash=packed.hash, data=packed.header,
                                             buffers=[bytes(b) for b in packed.buffers]))
        return request

    def _check_versions(self, name: str, value: Any, hardware: str) -> None:
        """A function pickled by value only loads on the same Python minor version: say so before sending."""
        if not callable(value) or getattr(value, "__module__", None) not in ("__main__", None):
            return
        worker = self.worker_versions.get(hardware or self.default_hardware or "")
        if not worker or "python" not in worker:
            return
        ours = ".".join(platform.python_version().split(".")[:2])
        theirs = ".".join(worker["python"].split(".")[:2])
        if ours != theirs:
            raise SerializationError(f"cannot send {name!r} (a function defined in this notebook): this kernel runs "
                                     f"Python {ours} but the {hardware or 'default'} worker runs Python {theirs}; "
                                     "by-value functions need the same minor version")

    # ------------------------------------------------------------ running

    def run_cell(self, source: str, user_ns: MutableMapping[str, Any], options: CellOptions, sink: OutputSink,
                 *, skip: set[str] | None = None, execution_count: int = 0) -> CellReport:
        """Run one cell remotely; with options.retries, a lost worker means another try on a new one."""
        for attempt in range(options.retries + 1):
            try:
                return self._run_once(source, user_ns, options, sink, skip, execution_count)
            except WorkerLostError as exc:
                if attempt == options.retries:
                    raise
                sink.phase(f"gpucell: {exc}; retrying ({attempt + 1}/{options.retries})")
                time.sleep(min(0.2 * 2 ** attempt, 5.0))  # backoff between tries, not synchronisation
        raise AssertionError("unreachable")

    def _run_once(self, source: str, user_ns: MutableMapping[str, Any], options: CellOptions, sink: OutputSink,
                  skip: set[str] | None, execution_count: int) -> CellReport:
        request = self.build_request(source, user_ns, options, skip or set(), execution_count)
        self._requested_hardware = request.hardware
        report = CellReport(cell_id=request.cell_id)
        self.last_report = report
        result: pb.Result | None = None
        error: pb.Error | None = None
        events = self._events(request, options)
        try:
            for event in events:
                kind = event.WhichOneof("kind")
                if kind == "stream":
                    sink.stream(event.stream.name, event.stream.text)
                elif kind == "display":
                    sink.display(json.loads(event.display.data_json), json.loads(event.display.metadata_json or "{}"),
                                 event.display.execute_result)
                elif kind == "queued" and event.queued.position == 0:
                    _status(sink, f"gpucell: starting a {event.queued.hardware} worker…")
                elif kind == "queued":
                    report.queue_positions.append(event.queued.position)
                    sink.phase(f"queued: #{event.queued.position} for {event.queued.hardware}")
                elif kind == "started":
                    report.lane = self._lane_cell is not None
                    self._on_started(report, event.started)
                    _status(sink, f"gpucell: running on {event.started.hardware} worker {event.started.worker_id}"
                                  f"{' (cold start)' if event.started.cold else ''}")
                elif kind == "notice":
                    report.notices.append(event.notice.text)
                    if event.notice.text not in self._notices_shown:  # one line, once per session
                        self._notices_shown.add(event.notice.text)
                        sink.phase(event.notice.text)
                elif kind == "transfer":
                    self._send_inputs(request, event.transfer, events)
                elif kind == "result":
                    result = event.result
                elif kind == "error":
                    error = event.error
                elif kind == "finished":
                    report.finished = event.finished
                    _status(sink, self._done_line(report), final=True)
                    break
        except KeyboardInterrupt:
            self._interrupt(request.cell_id, events)
            raise
        self._pending = {}
        if error is not None:
            raise self._error(error, request, report)
        if result is None:
            raise WorkerLostError("the cell ended without a result (broker or worker went away)")
        self._apply(result, user_ns, report, execution_count)
        for note in report.kept_remote:
            sink.phase(note)
        return report

    def _send_inputs(self, request: pb.CellExecuteRequest, ask: pb.Transfer, events: Iterator[pb.CellEvent]) -> None:
        """The worker asks for the inputs it lacks; if they cannot reach it, the cell is stopped there (it
        would wait for them) and the error names them."""
        try:
            transfer.put(ask.address, ask.ticket, [self._pending[h] for h in ask.hashes if h in self._pending])
        except (OSError, ValueError) as exc:
            self._interrupt(request.cell_id, events)
            asked = set(ask.hashes)
            names = ", ".join(sorted(repr(v.name) for v in request.inputs if v.hash in asked))
            raise DataPathError(f"cannot send {names} to the worker: {_unreachable(ask.address, exc)}") from None

    def _events(self, request: pb.CellExecuteRequest, options: CellOptions) -> Iterator[pb.CellEvent]:
        """A warm cell goes straight to its worker over the lane; anything else (a first cell, --fresh,
        --timeout, --idle, a lane that is gone) through the broker, which then offers a lane."""
        self._lane_cell = None
        lane = self.lanes.get(request.hardware)
        if (lane is not None and options.lane and lane.usable()
                and not (options.fresh or options.timeout_s or options.idle_s)):
            try:
                self._lane_cell = lane
                yield from lane.execute(request)
                return
            except LaneClosed:
                self._lane_cell = None
                self._drop_lane(lane)
            except LaneLost:
                self._drop_lane(lane)
                yield from self._lost_on_lane(request, lane)
                return
        for event in self.client.execute(request):
            if event.WhichOneof("kind") == "started" and event.started.lane_address and options.lane:
                self._drop_lane(self.lanes.get(request.hardware))
                self.lanes[request.hardware] = Lane(event.started)
            elif event.WhichOneof("kind") == "finished" and request.hardware in self.lanes:
                self.lanes[request.hardware].last_active = time.monotonic()
            yield event

    def _lost_on_lane(self, request: pb.CellExecuteRequest, lane: Lane) -> Iterator[pb.CellEvent]:
        """The worker went away mid-cell: the broker failed the cell with the reason (killed, out of
        memory, node died); read it from there, or say what we know."""
        try:
            for event in self.client.attach(self.session_id, request.cell_id, LOST_REASON_WAIT_S, lane.worker_id):
                if event.WhichOneof("kind") in ("error", "finished"):
                    yield event
        except GpucellError:
            yield pb.CellEvent(cell_id=request.cell_id, error=pb.Error(
                evalue=f"worker lost: {lane.worker_id}'s connection closed mid-cell", kind=pb.Error.WORKER_LOST))
            yield pb.CellEvent(cell_id=request.cell_id, finished=pb.Finished(ok=False))

    def _drop_lane(self, lane: Lane | None) -> None:
        if lane is None:
            return
        lane.close()
        for key in [k for k, v in self.lanes.items() if v is lane]:
            del self.lanes[key]

    def price_per_hour(self, pool: str) -> float:
        if self._prices is None:
            try:
                self._prices = {e.label: e.price_per_hour for e in self.client.catalog_pb().entries}
            except GpucellError:
                return 0.0  # a price is not worth failing a cell that ran
        return self._prices.get(pool, 0.0)

    def _done_line(self, report: CellReport) -> str:
        finished = report.finished
        assert finished is not None
        wall = finished.queue_s + finished.cold_start_s + finished.run_s
        outcome = "done" if finished.ok else "failed"
        cost = finished.run_s * self.price_per_hour(report.hardware) / 3600.0
        where = f" on {report.hardware} worker {report.worker_id}" if report.worker_id else ""
        return f"gpucell: {outcome} in {wall:.2f}s{where} · ${cost:.4f}"

    def _on_started(self, report: CellReport, started: pb.Started) -> None:
        report.hardware = started.hardware
        report.worker_id = started.worker_id
        report.cold = started.cold
        previous = self.workers.get(started.hardware)
        if previous and previous != started.worker_id:
            self.mark_lost(previous)
        self.workers[started.hardware] = started.worker_id
        self.worker_versions[self._requested_hardware] = dict(started.versions)

    def _interrupt(self, cell_id: str, events: Any) -> None:
        """Ctrl-C / kernel interrupt: stop the cell on the worker, wait (bounded) for it to end."""
        if self._lane_cell is not None:
            self._lane_cell.cancel(self.session_id, cell_id)
            return
        try:
            self.client.cancel(self.session_id, cell_id)
        except GpucellError:
            return
        deadline = time.monotonic() + CANCEL_DRAIN_S
        try:
            for event in events:
                if event.WhichOneof("kind") == "finished" or time.monotonic() > deadline:
                    break
        except (GpucellError, KeyboardInterrupt):
            pass

    def _error(self, error: pb.Error, request: pb.CellExecuteRequest, report: CellReport) -> BaseException:
        cls = CELL_ERRORS.get(error.kind)
        if cls is KeyboardInterrupt:
            return KeyboardInterrupt()
        if cls is not None:
            if issubclass(cls, WorkerLostError):
                self.mark_lost(report.worker_id)
            return cls(error.evalue)
        if error.ename == "RemoteRefError":
            for name in request.refs:
                ref = self.refs.get(name)
                if ref is not None and ref.worker_id != report.worker_id:
                    self.mark_lost(ref.worker_id)  # the cell ran elsewhere: that worker is gone
            lost = [self.refs[n] for n in request.refs if n in self.refs and self.refs[n].lost]
            return RemoteRefError(lost[0].lost_message() if lost else error.evalue)
        return RemoteError(error.ename, error.evalue, list(error.traceback), hardware=report.hardware)

    def _apply(self, result: pb.Result, user_ns: MutableMapping[str, Any], report: CellReport,
               execution_count: int) -> None:
        """Update the local namespace all at once, only after every value has been loaded (one that cannot be
        loaded here, e.g. from a module only the worker has, stays there as a RemoteRef)."""
        parts: dict[str, tuple[bytes, list[Any]]] = {b.hash: (b.data, [bytearray(x) for x in b.buffers])
                                                     for b in result.blobs}
        to_fetch = [v.hash for v in result.outputs if v.fetch]
        if to_fetch:
            try:
                parts.update(transfer.get(result.data_address, result.ticket, to_fetch))
            except (OSError, ValueError) as exc:
                names = ", ".join(repr(v.name) for v in result.outputs if v.fetch)
                raise DataPathError(f"the cell ran, but {names} could not be fetched: "
                                    f"{_unreachable(result.data_address, exc)}; the local namespace is unchanged "
                                    "(the worker still has them)") from None
        updates: dict[str, Any] = {}
        infos = list(result.refs)
        for value in result.outputs:
            try:
                updates[value.name] = serialize.unpack(*parts[value.hash])
            except Exception as exc:  # noqa: BLE001 - e.g. a module only the worker has: it stays usable there
                reason = f"cannot be loaded here: {_one_line(exc)}"
                infos.append(pb.RemoteRefInfo(name=value.name, type_name=value.type_name, size=value.size,
                                              reason=reason))
                report.kept_remote.append(f"gpucell: {value.name!r} ({value.type_name}) stays on the worker as a "
                                          f"RemoteRef: it {reason}")
        for info in infos:
            ref = RemoteRef(info.name, info.type_name, info.size, info.hardware or report.hardware,
                            info.worker_id or report.worker_id, info.reason, info.summary, execution_count)
            updates[info.name] = ref
            self.refs[info.name] = ref
        for name in updates:
            if name in self.refs and not isinstance(updates[name], RemoteRef):
                del self.refs[name]
        user_ns.update(updates)
        for name in result.deleted:
            user_ns.pop(name, None)
            self.refs.pop(name, None)
        report.assigned = [v.name for v in result.outputs if not isinstance(updates.get(v.name), RemoteRef)]
        report.refs = [r.name for r in infos]

    def mark_lost(self, worker_id: str) -> None:
        if not worker_id:
            return
        for lane in [v for v in self.lanes.values() if v.worker_id == worker_id]:
            self._drop_lane(lane)
        for ref in self.refs.values():
            if ref.worker_id == worker_id:
                ref.lost = True
        for pool, held in list(self.workers.items()):
            if held == worker_id:
                del self.workers[pool]

    def release(self, hardware: str = "") -> list[str]:
        released = self.client.release(self.session_id, hardware=hardware)
        for worker_id in released:
            self.mark_lost(worker_id)
        return released

    def close(self) -> None:
        for lane in list(self.lanes.values()):
            self._drop_lane(lane)
        try:
            self.client.close_session(self.session_id)
        except GpucellError:
            pass


def _status(sink: OutputSink, text: str, final: bool = False) -> None:
    """The cell's phase line, for sinks that show one (the notebook updates a single line in place)."""
    status = getattr(sink, "status", None)
    if status is not None:
        status(text, final)


def _unreachable(address: str, exc: BaseException) -> str:
    """Why the worker's data server failed us, in one line, with what a user on another machine must set."""
    host = transfer.parse_address(address)[0]
    return (f"the worker's data server at {host} failed ({_one_line(exc)}); a worker on another machine "
            "must set GPUCELL_DATA_HOST to an address this machine can reach")


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())

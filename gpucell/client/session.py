"""A session (one notebook kernel): runs a cell remotely, from its request to its namespace update.

The parts are elsewhere, one job each: request.py builds the request (pure), routes.py carries it (the
lane or the broker), namespace_update.py turns the result into the local namespace's new names (pure).
This module runs them in order, turns events into output and the report, and keeps the session's state."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from gpucell.client.broker_client import BrokerClient
from gpucell.client.errors_table import CELL_ERRORS
from gpucell.client.lane import Lanes
from gpucell.client.modules import NotebookModules
from gpucell.client.namespace_sync import Synced
from gpucell.client.namespace_update import (NamespaceUpdate, Parts, apply_update, inline_parts, one_line,
                                             plan_update, to_fetch)
from gpucell.client.process_state import ProcessStates
from gpucell.client.request import CellOptions, OutgoingCell, build_request, cell_names
from gpucell.client.routes import BrokerRoute, LaneRoute, Route, lane_takes
from gpucell.client.remote_errors import remote_error, remote_interrupt
from gpucell.client.sink import Sink, relay_display
from gpucell.client.stdin import answer_input
from gpucell.errors import (ConfigError, DataPathError, GpucellError,
                            RemoteRefError, UnknownHardwareError, WorkerLostError)
from gpucell.hardware import split_spec
from gpucell.namespace import serialize, transfer
from gpucell.namespace.remote_ref import RemoteRef
from gpucell.protocol import gpucell_pb2 as pb


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
        self.owner = ""          # set on a fan-out slot: the notebook session it works for (quotas)
        self.max_blob_bytes = 0  # from the catalog: the broker's per-value limit (0: none)
        self.refs: dict[str, RemoteRef] = {}
        self.workers: dict[str, str] = {}      # pool -> the worker that holds this session's state
        self._known_labels: list[str] | None = None
        self._prices: dict[str, float] | None = None
        self.last_report: CellReport | None = None
        self._notices_shown: set[str] = set()
        self.worker_versions: dict[str, dict[str, str]] = {}   # requested label -> last worker's versions
        self.lanes = Lanes()                   # requested hardware -> the direct lane to its warm worker
        # Names the worker holds as this notebook does: used in place there. None: every cell sends what it
        # reads (a fan-out slot, whose cells each bring a namespace of their own).
        self.synced: Synced | None = Synced()
        self._broker_route = BrokerRoute(client, self.lanes)
        self._lane_route = LaneRoute(self.lanes, self._broker_route)
        self.states = ProcessStates()          # the notebook's process state each worker has (RNGs, rcParams, ...)
        self.modules = NotebookModules()       # the notebook's own modules: a worker reloads those edited

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
        try:
            base, _count = split_spec(spec)
        except ValueError as exc:
            raise ConfigError(f"bad hardware {spec!r}: {exc}") from None
        known = self.known_labels()
        if base.lower() not in {label.lower() for label in known}:
            raise UnknownHardwareError(f"no pool serves {spec!r} (known: {', '.join(known)})")
        return spec

    def build_request(self, source: str, user_ns: MutableMapping[str, Any], options: CellOptions,
                      skip: set[str], execution_count: int = 0) -> OutgoingCell:
        """Everything that can go wrong locally goes wrong here, before anything is sent."""
        names = cell_names(source)
        hardware = self.check_hardware(options.hardware or self.default_hardware)
        worker = self.worker_versions.get(hardware or self.default_hardware or "")
        return build_request(source, names, user_ns, options, skip, session_id=self.session_id, hardware=hardware,
                             session_name=self.session_name, owner=self.owner, execution_count=execution_count,
                             max_blob_bytes=self.max_blob_bytes, worker_python=worker.get("python", "") if worker else "",
                             client_boot_id=transfer.boot_id() if transfer.shm_enabled() else "",
                             synced=self.synced)

    # ------------------------------------------------------------ running

    def run_cell(self, source: str, user_ns: MutableMapping[str, Any], options: CellOptions, sink: Sink,
                 *, skip: set[str] | None = None, execution_count: int = 0, cell_filename: str = "") -> CellReport:
        """Run one cell remotely; with options.retries, a lost worker means another try on a new one.
        `cell_filename`: the file name the notebook's kernel gives the cell (tracebacks, warnings)."""
        for attempt in range(options.retries + 1):
            try:
                return self._run_once(source, user_ns, options, sink, skip, execution_count, cell_filename)
            except WorkerLostError as exc:
                if attempt == options.retries:
                    raise
                sink.phase(f"gpucell: {exc}; retrying ({attempt + 1}/{options.retries})")
                time.sleep(min(0.2 * 2 ** attempt, 5.0))  # backoff between tries, not synchronisation
        raise AssertionError("unreachable")

    def _route(self, request: pb.CellExecuteRequest, options: CellOptions) -> Route:
        """A warm cell goes straight to its worker over the lane; anything else (a first cell, --fresh,
        --timeout, --idle, --strict on a lane a CPU fallback opened, a lane that is gone) through the broker,
        which then offers a lane."""
        lane = self.lanes.get(request.hardware)
        if lane is not None and options.lane and lane.usable() and lane_takes(lane, options):
            return self._lane_route.take(lane)
        return self._broker_route

    def _run_once(self, source: str, user_ns: MutableMapping[str, Any], options: CellOptions, sink: Sink,
                  skip: set[str] | None, execution_count: int, cell_filename: str = "") -> CellReport:
        outgoing = self.build_request(source, user_ns, options, skip or set(), execution_count)
        request = outgoing.request
        request.cell_filename = cell_filename
        request.modules.extend(self.modules.manifest(outgoing.uploads))   # the notebook's own modules, by content
        report = CellReport(cell_id=request.cell_id)
        self.last_report = report
        result: pb.Result | None = None
        error: pb.Error | None = None
        route = self._route(request, options)
        request.process_state = self.states.outgoing(route.worker_id)
        events = route.events(request, options)
        try:
            for event in events:
                kind = event.WhichOneof("kind")
                if kind == "stream":
                    sink.stream(event.stream.name, event.stream.text)
                elif kind == "display":
                    relay_display(sink, event.display)
                elif kind == "queued" and event.queued.position == 0:
                    sink.status(f"gpucell: starting a {event.queued.hardware} worker…")
                elif kind == "queued":
                    report.queue_positions.append(event.queued.position)
                    sink.phase(f"queued: #{event.queued.position} for {event.queued.hardware}")
                elif kind == "started":
                    report.lane = route.direct
                    self.states.started(event.started.worker_id)
                    self._on_started(report, event.started, request.hardware)
                    sink.status(f"gpucell: running on {event.started.hardware} worker {event.started.worker_id}"
                                f"{' (cold start)' if event.started.cold else ''}")
                elif kind == "notice":
                    report.notices.append(event.notice.text)
                    if event.notice.text not in self._notices_shown:  # one line, once per session
                        self._notices_shown.add(event.notice.text)
                        sink.phase(event.notice.text)
                elif kind == "transfer":
                    self._send_inputs(outgoing, event.transfer, route, events)
                elif kind == "input_request":
                    route.answer_input(answer_input(event.input_request, request.session_id, request.cell_id))
                elif kind == "process_state":
                    for line in self.states.incoming(report.worker_id, event.process_state.data):
                        sink.phase(line)
                elif kind == "result":
                    result = event.result
                elif kind == "error":
                    error = event.error
                elif kind == "finished":
                    report.finished = event.finished
                    sink.status(self._done_line(report), final=True)
                    break
        except KeyboardInterrupt:
            route.cancel(request, events)
            raise
        if error is not None and result is not None:   # what the cell bound before it failed is bound here too
            self._land(result, outgoing, user_ns, report, execution_count)
        if error is not None:
            raise self._error(error, request, report, user_ns)
        if result is None:
            raise WorkerLostError("the cell ended without a result (broker or worker went away)")
        update = self._land(result, outgoing, user_ns, report, execution_count)
        report.assigned, report.refs, report.kept_remote = update.assigned, update.refs, update.kept_remote
        for note in report.kept_remote:
            sink.phase(note)
        for note in filter(None, (self.refs[n].kept_notice() for n in update.refs if n in self.refs)):
            sink.phase(note)   # it cannot travel: say so once, where it was made, not when it is next touched
        out = f"_{execution_count}"   # the cell's value comes back under the name a kernel gives it
        if execution_count and (out in update.assigned or out in update.refs):
            report.assigned = [n for n in update.assigned if n != out]
            report.refs = [n for n in update.refs if n != out]
            sink.result(user_ns[out])
        return report

    def _send_inputs(self, outgoing: OutgoingCell, ask: pb.Transfer, route: Route,
                     events: Iterator[pb.CellEvent]) -> None:
        """The worker asks for the inputs it lacks; if they cannot reach it, the cell is stopped there (it
        would wait for them) and the error names them."""
        try:
            transfer.put(ask.address, ask.ticket, [outgoing.uploads[h] for h in ask.hashes if h in outgoing.uploads])
        except (OSError, ValueError) as exc:
            route.cancel(outgoing.request, events)
            asked = set(ask.hashes)
            names = ", ".join(sorted(repr(v.name) for v in outgoing.request.inputs if v.hash in asked))
            raise DataPathError(f"cannot send {names} to the worker: {_unreachable(ask.address, exc)}") from None

    def _land(self, result: pb.Result, outgoing: OutgoingCell, user_ns: MutableMapping[str, Any],
              report: CellReport, execution_count: int) -> NamespaceUpdate:
        """The cell's changes, into the local namespace; the worker now holds what was sent and came back."""
        with serialize.session_namespace(user_ns):   # notebook functions from the worker run in this namespace
            update = plan_update(result, self._parts(result), hardware=report.hardware,
                                 worker_id=report.worker_id, execution_count=execution_count)
        if self.synced is not None:
            self.synced.on_worker(report.worker_id)
        apply_update(update, user_ns, self.refs, self.synced, outgoing.sent, outgoing.skip)
        return update

    def _parts(self, result: pb.Result) -> dict[str, Parts]:
        """The result's values as packed parts: those inline, and those too large for it from the worker."""
        parts = inline_parts(result)
        fetch = to_fetch(result)
        if fetch:
            try:
                parts.update(transfer.get(result.data_address, result.ticket, fetch))
            except (OSError, ValueError) as exc:
                names = ", ".join(repr(v.name) for v in result.outputs if v.fetch)
                raise DataPathError(f"the cell ran, but {names} could not be fetched: "
                                    f"{_unreachable(result.data_address, exc)}; the local namespace is unchanged "
                                    "(the worker still has them)") from None
        return parts

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

    def _on_started(self, report: CellReport, started: pb.Started, requested_hardware: str) -> None:
        report.hardware = started.hardware
        report.worker_id = started.worker_id
        report.cold = started.cold
        previous = self.workers.get(started.hardware)
        if previous and previous != started.worker_id:
            self.mark_lost(previous)
        self.workers[started.hardware] = started.worker_id
        self.worker_versions[requested_hardware] = dict(started.versions)

    def _error(self, error: pb.Error, request: pb.CellExecuteRequest, report: CellReport,
               user_ns: MutableMapping[str, Any]) -> BaseException:
        cls = CELL_ERRORS.get(error.kind)
        if cls is KeyboardInterrupt:
            return remote_interrupt(error)
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
        return remote_error(error, report.hardware, user_ns)

    def mark_lost(self, worker_id: str) -> None:
        if not worker_id:
            return
        self.lanes.drop_worker(worker_id)
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
        self.lanes.close()
        try:
            self.client.close_session(self.session_id)
        except GpucellError:
            pass


def _unreachable(address: str, exc: BaseException) -> str:
    """Why the worker's data server failed us, in one line, with what a user on another machine must set."""
    host = transfer.parse_address(address)[0]
    return (f"the worker's data server at {host} failed ({one_line(exc)}); a worker on another machine "
            "must set GPUCELL_DATA_HOST to an address this machine can reach")



__all__ = ["CellOptions", "CellReport", "Session"]   # CellOptions lives in request.py; callers import it here

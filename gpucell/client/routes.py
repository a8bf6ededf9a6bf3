"""How a cell reaches its worker: straight over the session's lane, or through the broker's gRPC stream.

A session keeps one route of each kind for its whole life and picks one per cell, so a warm cell costs
no allocation here; the route holds what it needs to know about the cell in flight (one at a time)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator

from gpucell.client.broker_client import BrokerClient
from gpucell.client.lane import Lane, LaneClosed, LaneLost, Lanes
from gpucell.client.request import CellOptions
from gpucell.errors import BrokerUnavailableError, GpucellError
from gpucell.hardware import split_spec
from gpucell.protocol import gpucell_pb2 as pb

CANCEL_DRAIN_S = 10.0
LOST_REASON_WAIT_S = 8.0  # the broker may take a few seconds to learn why a worker died


def lane_takes(lane: Lane, options: CellOptions) -> bool:
    """Whether a warm cell may go over `lane` and still be checked as the broker checks it: every option
    gives the same result on either route. The broker's own options (--fresh, --timeout, --idle) go there;
    --strict may take the lane only when the lane's worker is the hardware asked for (a lane opened by a
    CPU fallback cell would run a strict cell on the CPU), else the broker refuses it as it refuses a cold
    one."""
    if options.fresh or options.timeout_s or options.idle_s:
        return False
    return lane.exact or not options.strict


def exact_pool(requested: str, pool: str, strict: bool) -> bool:
    """The pool is the hardware asked for (a strict cell's is, or the broker would have refused it)."""
    if strict:
        return True
    try:
        base = split_spec(requested)[0] if requested.strip() else ""
    except ValueError:
        return False
    return bool(base) and base.lower() == pool.lower()


class Route(ABC):
    """One interface for both ways a cell's request goes out and its events come back."""

    direct = False   # the cell in flight went straight to its worker (CellReport.lane)
    worker_id = ""   # the worker the cell goes to, when known before it is sent (a lane's)

    @abstractmethod
    def events(self, request: pb.CellExecuteRequest, options: CellOptions) -> Iterator[pb.CellEvent]:
        """The cell's events, `started` before its output and `finished` last."""

    @abstractmethod
    def cancel(self, request: pb.CellExecuteRequest, events: Iterator[pb.CellEvent]) -> None:
        """Ctrl-C / kernel interrupt: stop the cell on the worker, wait (bounded) for it to end."""

    @abstractmethod
    def answer_input(self, reply: pb.CellInputRequest) -> None:
        """The notebook's answer to the cell's input request (input(), getpass, sys.stdin)."""


class BrokerRoute(Route):
    """Through the broker: a first cell, --fresh, --timeout, --idle, a lane that is gone. When the worker
    takes lanes, the broker's `started` offers one and the next warm cell uses it."""

    def __init__(self, client: BrokerClient, lanes: Lanes) -> None:
        self.client = client
        self.lanes = lanes

    def events(self, request: pb.CellExecuteRequest, options: CellOptions) -> Iterator[pb.CellEvent]:
        for event in self.client.execute(request):
            kind = event.WhichOneof("kind")
            if kind == "started" and event.started.lane_address and options.lane:
                self.lanes.offer(request.hardware, event.started,
                                 exact_pool(request.hardware, event.started.hardware, options.strict))
            elif kind == "finished" and request.hardware in self.lanes:
                self.lanes[request.hardware].last_active = time.monotonic()
            yield event

    def cancel(self, request: pb.CellExecuteRequest, events: Iterator[pb.CellEvent]) -> None:
        try:
            self.client.cancel(request.session_id, request.cell_id)
        except GpucellError:
            return
        deadline = time.monotonic() + CANCEL_DRAIN_S
        try:
            for event in events:
                if event.WhichOneof("kind") == "finished" or time.monotonic() > deadline:
                    break
        except (GpucellError, KeyboardInterrupt):
            pass

    def answer_input(self, reply: pb.CellInputRequest) -> None:
        self.client.input_reply(reply)


class LaneRoute(Route):
    """Straight to the warm worker over the lane `take` gave it. A lane that fails before the worker took
    the cell sends it through the broker after all (`direct` turns False); one that fails after asks the
    broker what became of the cell."""

    def __init__(self, lanes: Lanes, broker: BrokerRoute) -> None:
        self.lanes = lanes
        self.broker = broker
        self._lane: Lane | None = None

    def take(self, lane: Lane) -> LaneRoute:
        """This route, for the next cell, over `lane`."""
        self._lane = lane
        self.direct = True
        self.worker_id = lane.worker_id
        return self

    def events(self, request: pb.CellExecuteRequest, options: CellOptions) -> Iterator[pb.CellEvent]:
        lane = self._lane
        assert lane is not None, "LaneRoute.take() chooses the lane first"
        try:
            yield from lane.execute(request, gone=lambda: self._worker_gone(request.session_id, lane.worker_id))
            return
        except LaneClosed:
            self.direct = False
            self.lanes.drop(lane)
        except LaneLost:
            self.lanes.drop(lane)
            yield from self._lost(request, lane)
            return
        yield from self.broker.events(request, options)

    def cancel(self, request: pb.CellExecuteRequest, events: Iterator[pb.CellEvent]) -> None:
        if not self.direct:
            self.broker.cancel(request, events)
        elif self._lane is not None:
            self._lane.cancel(request.session_id, request.cell_id)

    def answer_input(self, reply: pb.CellInputRequest) -> None:
        if not self.direct:
            self.broker.answer_input(reply)
        elif self._lane is not None:
            self._lane.send_input(reply)

    def _worker_gone(self, session_id: str, worker_id: str) -> bool:
        """Asked while the lane is silent: the broker no longer lists the worker (it dropped it)."""
        try:
            status = self.broker.client.status_pb(session_id)
        except GpucellError:
            return False   # the broker cannot say: keep waiting on the lane
        return not any(w.id == worker_id for pool in status.pools for w in pool.workers)

    def _lost(self, request: pb.CellExecuteRequest, lane: Lane) -> Iterator[pb.CellEvent]:
        """The worker went away mid-cell: the broker failed the cell with the reason (killed, out of
        memory, node died); read it from there, or say what we know."""
        try:
            for event in self.broker.client.attach(request.session_id, request.cell_id, LOST_REASON_WAIT_S,
                                                   lane.worker_id):
                if event.WhichOneof("kind") in ("error", "finished"):
                    yield event
        except BrokerUnavailableError:
            # No broker to ask: it went away, and the worker with it (workers die with their broker).
            raise self.broker.client.broker_gone() from None
        except GpucellError:
            yield pb.CellEvent(cell_id=request.cell_id, error=pb.Error(
                evalue=f"worker lost: {lane.worker_id}'s connection closed mid-cell", kind=pb.Error.WORKER_LOST))
            yield pb.CellEvent(cell_id=request.cell_id, finished=pb.Finished(ok=False))


__all__ = ["BrokerRoute", "LaneRoute", "Route", "exact_pool", "lane_takes"]

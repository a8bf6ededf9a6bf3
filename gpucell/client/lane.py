"""The client's end of the direct lane to its own warm worker (see gpucell/protocol/lane.py for why)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import BinaryIO

from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol import lane

# The broker releases an idle worker at its timeout; a lane cell sent just then could reach a worker
# on its way out. Closer than this to the timeout, the cell goes through the broker instead.
IDLE_MARGIN_S = 0.5


class LaneClosed(Exception):
    """The lane failed before the worker took the cell: sending it through the broker is still safe."""


class LaneLost(Exception):
    """The lane closed after the worker took the cell: the broker knows what happened to it."""


class Lane:
    """One TCP connection to one worker, used for one cell at a time by one Session."""

    def __init__(self, started: pb.Started, exact: bool = False) -> None:
        self.pool = started.hardware
        # The broker served the requested hardware itself, or checked --strict for it: not a CPU fallback.
        self.exact = exact
        self.worker_id = started.worker_id
        self.address = started.lane_address
        self.ticket = started.lane_ticket
        self.idle_timeout_s = started.idle_timeout_s
        self.last_active = time.monotonic()
        self._sock: socket.socket | None = None
        self._reader: BinaryIO | None = None

    def usable(self) -> bool:
        return time.monotonic() - self.last_active < self.idle_timeout_s - IDLE_MARGIN_S

    def execute(self, request: pb.CellExecuteRequest) -> Iterator[pb.CellEvent]:
        """The cell's events, `started` first and `finished` last; LaneClosed before it was taken,
        LaneLost after."""
        try:
            if self._sock is None:
                self._sock = lane.connect(self.address, self.ticket)
                self._reader = self._sock.makefile("rb")
            self._sock.sendall(lane.frame(pb.LaneRequest(execute=request)))
            first = lane.read(self._reader, pb.CellEvent())  # type: ignore[arg-type]
        except (OSError, ConnectionError) as exc:
            self.close()
            raise LaneClosed(str(exc)) from None
        if first is None or first.WhichOneof("kind") != "started":
            self.close()
            raise LaneClosed("the worker closed the lane")
        first.started.hardware = self.pool   # the pool's name, as the broker would say it
        yield first
        while True:
            try:
                event = lane.read(self._reader, pb.CellEvent())  # type: ignore[arg-type]
            except (OSError, ConnectionError):
                event = None
            if event is None:
                self.close()
                raise LaneLost("the worker's lane closed mid-cell")
            yield event
            if event.WhichOneof("kind") == "finished":
                self.last_active = time.monotonic()
                return

    def send_input(self, reply: pb.CellInputRequest) -> None:
        """The line the cell's input() waits for; a lane that failed shows as LaneLost on the next read."""
        try:
            if self._sock is not None:
                self._sock.sendall(lane.frame(pb.LaneRequest(input=reply)))
        except OSError:
            pass

    def cancel(self, session_id: str, cell_id: str) -> None:
        """Interrupt the cell, then drop the connection: an interrupted read may have left half a message."""
        try:
            if self._sock is not None:
                self._sock.sendall(lane.frame(pb.LaneRequest(cancel=pb.CellCancelRequest(
                    session_id=session_id, cell_id=cell_id))))
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Lanes(dict[str, Lane]):
    """One session's lanes: requested hardware -> the direct lane to its warm worker."""

    def offer(self, hardware: str, started: pb.Started, exact: bool = False) -> None:
        """The broker started a cell on a worker that takes lanes: the next warm cell goes there."""
        self.drop(self.get(hardware))
        self[hardware] = Lane(started, exact)

    def drop(self, lane: Lane | None) -> None:
        if lane is None:
            return
        lane.close()
        for key in [k for k, v in self.items() if v is lane]:
            del self[key]

    def drop_worker(self, worker_id: str) -> None:
        for gone in [v for v in self.values() if v.worker_id == worker_id]:
            self.drop(gone)

    def close(self) -> None:
        for each in list(self.values()):
            self.drop(each)

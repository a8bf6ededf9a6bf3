"""The client's end of the direct lane to its own warm worker (see gpucell/protocol/lane.py for why)."""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable, Iterator

from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol import lane

# The broker releases an idle worker at its timeout; a lane cell sent just then could reach a worker
# on its way out. Closer than this to the timeout, the cell goes through the broker instead.
IDLE_MARGIN_S = 0.5


class LaneClosed(Exception):
    """The lane failed before the worker took the cell: sending it through the broker is still safe."""


class LaneLost(Exception):
    """The lane closed after the worker took the cell: the broker knows what happened to it."""


# Liveness: a worker sends an empty event every second while a lane cell runs (remote_kernel/lane.py).
# A stopped node or a silent network leaves the socket open, so after SUSPECT_S without a byte the client
# asks the broker, every POLL_S, whether the worker is still there: the broker drops a silent worker at its
# heartbeat_timeout and fails its cell, and the cell learns it as fast as one on the broker's path. A
# worker that keeps the lane alive but stays silent past GIVE_UP_S is given up on regardless.
SUSPECT_S = 2.0
POLL_S = 0.5
GIVE_UP_S = 60.0
_LEN = struct.Struct("!I")


class _Frames:
    """Length-prefixed messages off a socket, with a bounded wait between bytes (a buffered file object
    cannot time out and stay consistent)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()
        self.keeps_alive = False       # the worker sends keepalives (a newer worker): silence means trouble

    def read(self, message: pb.CellEvent, gone: Callable[[], bool] | None) -> pb.CellEvent | None:
        """The next event that is not a keepalive; None at a clean end of stream; LaneLost when `gone`
        says the worker went while the lane was silent."""
        while True:
            if len(self._buf) >= _LEN.size:
                (size,) = _LEN.unpack_from(self._buf)
                if size > lane.MAX_FRAME:
                    raise ConnectionError(f"lane message of {size} bytes is over the limit")
                if len(self._buf) >= _LEN.size + size:
                    message.ParseFromString(bytes(self._buf[_LEN.size:_LEN.size + size]))
                    del self._buf[:_LEN.size + size]
                    if message.WhichOneof("kind") is None:   # a keepalive
                        self.keeps_alive = True
                        continue
                    return message
            chunk = self._recv(gone)
            if not chunk:
                if self._buf:
                    raise ConnectionError("lane closed mid-message")
                return None
            self._buf += chunk

    def _recv(self, gone: Callable[[], bool] | None) -> bytes:
        silent_since = time.monotonic()
        wait = SUSPECT_S
        while True:
            ready, _, _ = select.select([self._sock], [], [], wait)
            if ready:
                return self._sock.recv(1 << 20)
            silent = time.monotonic() - silent_since
            if gone is not None and gone():
                raise LaneLost(f"no word on the lane for {silent:.0f}s and the broker has dropped the worker")
            if self.keeps_alive and silent >= GIVE_UP_S:
                raise LaneLost(f"no word on the lane for {silent:.0f}s")
            wait = POLL_S


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
        self._reader: _Frames | None = None

    def usable(self) -> bool:
        return time.monotonic() - self.last_active < self.idle_timeout_s - IDLE_MARGIN_S

    def execute(self, request: pb.CellExecuteRequest,
                gone: Callable[[], bool] | None = None) -> Iterator[pb.CellEvent]:
        """The cell's events, `started` first and `finished` last; LaneClosed before it was taken,
        LaneLost after (or when the lane falls silent and `gone`, asking the broker, says the worker went)."""
        try:
            if self._sock is None:
                self._sock = lane.connect(self.address, self.ticket)
                self._reader = _Frames(self._sock)
            reader = self._reader
            assert reader is not None
            self._sock.sendall(lane.frame(pb.LaneRequest(execute=request)))
            first = reader.read(pb.CellEvent(), gone)
        except LaneLost:
            self.close()
            raise
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
                event = reader.read(pb.CellEvent(), gone)
            except LaneLost:
                self.close()
                raise
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

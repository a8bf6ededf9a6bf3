"""The worker's end of the direct lane: its owner's warm cells arrive here instead of via the broker."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from google.protobuf.message import DecodeError

from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol import lane
from gpucell.protocol.listener import Listener

# While a lane cell runs, the worker sends an empty event this often: a client that hears nothing for
# longer asks the broker whether its worker still lives (a stopped node or a silent network leaves the
# socket open; see gpucell/client/lane.py).
KEEPALIVE_S = 1.0
KEEPALIVE = lane.frame(pb.CellEvent())


class LaneHost(Protocol):
    def submit_lane(self, request: pb.CellExecuteRequest, out: LaneOut) -> None: ...

    def cancel(self, cell_id: str) -> None: ...

    def input_reply(self, reply: pb.CellInputRequest) -> None: ...


class LaneOut:
    """Events back to one lane client. Output from user code (prints, displays) is queued and sent by
    its own thread, so user code never blocks on the socket, and consecutive chunks of a stream are
    merged when they pile up; `started` and `finished` go on the caller's thread with whatever is queued
    (no thread hand-off on the round trip)."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._cond = threading.Condition()      # guards _items and _closing
        self._send_lock = threading.Lock()      # whoever takes events from _items sends them before letting go
        self._items: list[pb.CellEvent] = []
        self._closing = False
        self._alive = True
        self._running = False                   # a cell is between its `started` and `finished`: keep alive
        threading.Thread(target=self._send_loop, daemon=True, name="gpucell-lane-out").start()

    def put(self, event: pb.CellEvent) -> None:
        with self._cond:
            self._items.append(event)
            self._cond.notify()

    def send_now(self, event: pb.CellEvent) -> bool:
        """Send what is queued, then this event; False if the client is gone. `started` is sent so before
        user code runs: the client must know the cell was taken, and a cell whose client is gone is not run."""
        with self._send_lock:
            with self._cond:
                batch, self._items = self._items, []
                kind = event.WhichOneof("kind")
                if kind in ("started", "finished"):
                    self._running = kind == "started"
            return self._send([*batch, event])

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def _send(self, batch: list[pb.CellEvent]) -> bool:
        if self._alive and batch:
            try:
                self._conn.sendall(b"".join(lane.frame(e) for e in _merge(batch)))
            except OSError:
                self._alive = False  # the client went away: the cell runs on, its events are dropped
        return self._alive

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    if not self._cond.wait(KEEPALIVE_S) and self._running and not self._items:
                        break
            with self._send_lock:
                with self._cond:
                    batch, self._items = self._items, []
                    closing = self._closing
                    keepalive = not batch and self._running and not closing
                if keepalive:
                    self._keepalive()
                self._send(batch)
                if closing:
                    self._conn.close()
                    return

    def _keepalive(self) -> None:
        if self._alive:
            try:
                self._conn.sendall(KEEPALIVE)
            except OSError:
                self._alive = False


def _merge(events: list[pb.CellEvent]) -> list[pb.CellEvent]:
    out: list[pb.CellEvent] = []
    for event in events:
        last = out[-1] if out else None
        if (last is not None and event.WhichOneof("kind") == "stream" and last.WhichOneof("kind") == "stream"
                and last.cell_id == event.cell_id and last.stream.name == event.stream.name):
            last.stream.text += event.stream.text
        else:
            out.append(event)
    return out


class LaneServer:
    """Listens beside the data server; only a client showing the ticket (the owner) gets in."""

    def __init__(self, host: str, worker: LaneHost) -> None:
        self.ticket = secrets.token_urlsafe(18)
        self._worker = worker
        sock = socket.create_server((host, 0))
        self.address = f"{host}:{sock.getsockname()[1]}"
        # The ticket line within 5 s, no thread before it (protocol/listener.py).
        self._listener = Listener(sock, self._handle, name="gpucell-lane", line_limit=256)

    def _handle(self, conn: socket.socket, line: bytes) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = conn.makefile("rb")
        out: LaneOut | None = None
        try:
            if not secrets.compare_digest(line.strip(), self.ticket.encode()):
                return
            conn.sendall(lane.WELCOME)
            out = LaneOut(conn)
            while True:
                request = lane.read(reader, pb.LaneRequest())
                if request is None:
                    return
                kind = request.WhichOneof("kind")
                if kind == "execute":
                    self._worker.submit_lane(request.execute, out)
                elif kind == "cancel":
                    self._worker.cancel(request.cancel.cell_id)
                elif kind == "input":
                    self._worker.input_reply(request.input)
        except (OSError, ConnectionError, DecodeError):
            return
        finally:
            reader.close()
            if out is not None:
                out.close()  # its thread sends what is queued, then ends; the socket closes with it
            else:
                conn.close()

    def close(self) -> None:
        self._listener.close()


class LaneActivityReporter:
    """Tells the broker when lane cells run, off the round trip: a cell is reported as started only once it
    has run for REPORT_AFTER_S (a short cell is reported once, when it ends: the broker treats that as
    started-and-finished). The client never sends a lane cell within 0.5 s of the idle timeout, so the
    broker cannot release the worker under a cell it has not heard of yet."""

    REPORT_AFTER_S = 0.05

    def __init__(self, send: Callable[[pb.LaneActivity], None]) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._current: tuple[str, str, float] | None = None   # session, cell, when to report it started
        threading.Thread(target=self._loop, daemon=True, name="gpucell-lane-activity").start()

    def started(self, session_id: str, cell_id: str) -> None:
        with self._lock:
            self._current = (session_id, cell_id, time.monotonic() + self.REPORT_AFTER_S)

    def finished(self, session_id: str, cell_id: str, ok: bool) -> None:
        with self._lock:
            self._current = None
        self._send(pb.LaneActivity(session_id=session_id, cell_id=cell_id, finished=True, ok=ok))

    def _loop(self) -> None:
        while True:
            time.sleep(self.REPORT_AFTER_S)  # a 20 Hz check: waking this thread per cell would cost the round trip
            with self._lock:
                current = self._current
                if current is not None and time.monotonic() >= current[2]:
                    self._send(pb.LaneActivity(session_id=current[0], cell_id=current[1]))
                    self._current = None

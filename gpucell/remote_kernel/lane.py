"""The worker's end of the direct lane: its owner's warm cells arrive here instead of via the broker."""

from __future__ import annotations

import queue
import secrets
import socket
import threading
from typing import Protocol

from google.protobuf.message import DecodeError

from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol import lane


class LaneHost(Protocol):
    def submit_lane(self, request: pb.CellExecuteRequest, out: LaneOut) -> None: ...

    def cancel(self, cell_id: str) -> None: ...


class LaneOut:
    """Events back to one lane client, sent by their own thread so user code never blocks on the socket;
    consecutive output chunks of a stream are merged when they pile up (a print loop)."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[pb.CellEvent | None] = queue.SimpleQueue()
        threading.Thread(target=self._send_loop, daemon=True, name="gpucell-lane-out").start()

    def put(self, event: pb.CellEvent) -> None:
        self._queue.put(event)

    def send_now(self, event: pb.CellEvent) -> bool:
        """Send on the caller's thread (`started`, before user code runs): the client must know the cell
        was taken before anything can happen to it, and a cell whose client is gone is not run."""
        with self._lock:
            try:
                self._conn.sendall(lane.frame(event))
                return True
            except OSError:
                return False

    def close(self) -> None:
        self._queue.put(None)

    def _send_loop(self) -> None:
        alive = True
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done = None in batch
            if alive:
                data = b"".join(lane.frame(e) for e in _merge([e for e in batch if e is not None]))
                with self._lock:
                    try:
                        self._conn.sendall(data)
                    except OSError:
                        alive = False  # the client went away: the cell runs on, its events are dropped
            if done:
                self._conn.close()
                return


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
        self._sock = socket.create_server((host, 0))
        self.address = f"{host}:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True, name="gpucell-lane").start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True, name="gpucell-lane-conn").start()

    def _handle(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = conn.makefile("rb")
        out: LaneOut | None = None
        try:
            if not secrets.compare_digest(reader.readline(256).strip(), self.ticket.encode()):
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
        except (OSError, ConnectionError, DecodeError):
            return
        finally:
            reader.close()
            if out is not None:
                out.close()  # its thread sends what is queued, then ends; the socket closes with it
            else:
                conn.close()

    def close(self) -> None:
        self._sock.close()

"""The bulk data path: raw TCP between client and worker for large blobs, beside the gRPC control path.

gRPC moves ~0.5 GB/s here while loopback TCP moves several GB/s, and a protobuf message means
more copies. Frames are a little JSON header ({"hash", "type_name", "sizes"}) and the raw parts:
the pickle, then each out-of-band buffer, sent from the user's memory with no copy and received
into one buffer per part (numpy arrays are rebuilt on those buffers in place).
"""

from __future__ import annotations

import json
import mmap
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any

from gpucell.namespace.serialize import Packed

_LEN = struct.Struct("!Q")
CHUNK = 4 * 1024 * 1024
MMAP_MIN = 1 << 20


def _buffer(size: int) -> bytearray | mmap.mmap:
    """A writable buffer to receive into. Large ones are anonymous mappings: the kernel supplies zeroed
    pages on first write, so the data is written once (a bytearray is memset first: a second pass,
    which on this VM's cold memory costs ~0.8 s per GB)."""
    return mmap.mmap(-1, size) if size >= MMAP_MIN else bytearray(size)


def _recv_exact(sock: socket.socket, size: int) -> bytearray | mmap.mmap:
    buf = _buffer(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], min(size - got, CHUNK * 4))
        if n == 0:
            raise ConnectionError("data connection closed mid-frame")
        got += n
    view.release()
    return buf


def _recv_line(sock: socket.socket, limit: int = 65536) -> str:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("data connection closed")
        data += chunk
        if len(data) > limit:
            raise ConnectionError("request line too long")
    return data.decode().strip()


def send_frames(sock: socket.socket, values: Iterable[Packed]) -> int:
    sent = 0
    for packed in values:
        head = json.dumps({"hash": packed.hash, "type_name": packed.type_name,
                           "sizes": [len(packed.header), *[b.nbytes for b in packed.buffers]]}).encode()
        sock.sendall(_LEN.pack(len(head)) + head)
        sock.sendall(packed.header)
        for buf in packed.buffers:
            sock.sendall(buf)
        sent += packed.size
    sock.sendall(_LEN.pack(0))
    return sent


def recv_frames(sock: socket.socket, max_bytes: int = 0) -> list[tuple[str, str, bytes, list[Any]]]:
    """(hash, type_name, pickle, buffers) for each frame until the end marker; a frame over max_bytes
    is refused before anything is allocated for it."""
    out = []
    while True:
        (size,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
        if size == 0:
            return out
        head = json.loads(bytes(_recv_exact(sock, size)))
        sizes = head["sizes"]
        if max_bytes and sum(sizes) > max_bytes:
            raise ValueError(f"a value of {sum(sizes)} bytes is over this worker's limit of {max_bytes}")
        header = bytes(_recv_exact(sock, sizes[0]))
        buffers = [_recv_exact(sock, n) for n in sizes[1:]]
        out.append((head["hash"], head.get("type_name", ""), header, buffers))


class DataServer:
    """The worker's side: accepts PUT (client → worker) and GET (worker → client) of blobs by hash."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.ticket = secrets.token_urlsafe(18)
        self.max_bytes = int(float(os.environ.get("GPUCELL_MAX_BLOB_MB", "0") or 0) * 1_000_000)
        self._sock = socket.create_server((host, 0))
        self.address = f"{host}:{self._sock.getsockname()[1]}"
        self.received: dict[str, tuple[bytes, list[Any]]] = {}
        self.outgoing: dict[str, Packed] = {}
        self.changed = threading.Condition()
        self.bytes_in = 0
        threading.Thread(target=self._serve, daemon=True, name="gpucell-data").start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                verb, ticket, *rest = _recv_line(conn).split(" ")
                if not secrets.compare_digest(ticket, self.ticket):
                    conn.sendall(b"DENIED\n")
                    return
                if verb == "PUT":
                    frames = recv_frames(conn, self.max_bytes)
                    with self.changed:
                        for digest, _type, header, buffers in frames:
                            self.received[digest] = (header, buffers)
                            self.bytes_in += len(header) + sum(len(b) for b in buffers)
                        self.changed.notify_all()
                    conn.sendall(b"OK\n")
                elif verb == "GET":
                    wanted = rest[0].split(",") if rest else []
                    with self.changed:
                        values = [self.outgoing[h] for h in wanted if h in self.outgoing]
                    send_frames(conn, values)
            except (ConnectionError, OSError, ValueError, KeyError):
                return

    def take(self, digest: str) -> tuple[bytes, list[Any]] | None:
        with self.changed:
            return self.received.pop(digest, None)

    def wait_for(self, hashes: set[str], timeout: float, cancelled: Any) -> bool:
        """Block until every hash has arrived; False on timeout or when cancelled() turns true."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not hashes <= self.received.keys():
                if cancelled() or time.monotonic() >= deadline:
                    return False
                self.changed.wait(0.1)  # woken by each arrival; the timeout only re-checks cancelled()
            return True

    def close(self) -> None:
        self._sock.close()


def _connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def put(address: str, ticket: str, values: list[Packed]) -> int:
    with _connect(address) as sock:
        sock.sendall(f"PUT {ticket}\n".encode())
        sent = send_frames(sock, values)
        if _recv_line(sock) != "OK":
            raise ConnectionError(f"the worker's data server at {address} refused the upload")
    return sent


def get(address: str, ticket: str, hashes: list[str]) -> dict[str, tuple[bytes, list[Any]]]:
    with _connect(address) as sock:
        sock.sendall(f"GET {ticket} {','.join(hashes)}\n".encode())
        return {digest: (header, buffers) for digest, _t, header, buffers in recv_frames(sock)}

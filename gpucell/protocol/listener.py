"""The accept loop of a worker port (lane, data path): nobody gets a thread before their opening line.

A worker's lane and data ports take TCP connections from whoever can reach them; only the opening line
(a ticket) says whether the caller is the worker's owner. One selector thread accepts and reads those
lines, so an idle connection costs a descriptor, not a thread: it must complete its line within
OPENING_TIMEOUT_S, and past MAX_PENDING unauthenticated connections the oldest is closed (so a flood can
delay, but not lock out, the owner). A connection whose line is complete is handed to `handle` on a
thread of its own. `accept()` failing for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
ENOMEM) is logged and retried after a backoff, never the end of the port.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger(__name__)

OPENING_TIMEOUT_S = 5.0
MAX_PENDING = 128
# accept() errors that say "not now" (out of descriptors, buffers, memory): back off and try again.
TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
BACKOFF_S = (0.05, 1.0)

Handler = Callable[[socket.socket, bytes], None]


class _Pending:
    __slots__ = ("conn", "deadline", "data", "handshaken")

    def __init__(self, conn: socket.socket, deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.data = b""
        self.handshaken = False


class Listener:
    """Serves `sock` until close(): `handle(conn, line)` runs on its own thread for each connection that
    sent its opening line (without the newline; `conn` is blocking, positioned just after it). With `tls`,
    each connection is TLS, its handshake done here too (within the same 5 s), and `conn` an SSLSocket."""

    def __init__(self, sock: socket.socket, handle: Handler, *, name: str, line_limit: int,
                 timeout: float = OPENING_TIMEOUT_S, max_pending: int = MAX_PENDING,
                 tls: ssl.SSLContext | None = None) -> None:
        self._sock = sock
        self._tls = tls
        self._handle = handle
        self._name = name
        self._line_limit = line_limit
        self._timeout = timeout
        self._max_pending = max_pending
        self._pending: OrderedDict[socket.socket, _Pending] = OrderedDict()   # oldest first
        self._closed = False
        self.accept_errors = 0
        sock.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=name)
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(5)  # the port is closed when this returns: a later connect is refused

    # ------------------------------------------------------------ the selector thread

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        sel.register(self._sock, selectors.EVENT_READ)
        listening, resume_at, backoff = True, 0.0, BACKOFF_S[0]
        try:
            while not self._closed:
                now = time.monotonic()
                if not listening and now >= resume_at:
                    sel.register(self._sock, selectors.EVENT_READ)
                    listening = True
                waits = [p.deadline for p in self._pending.values()][:1] + ([] if listening else [resume_at])
                timeout = max(0.0, min(waits) - now) if waits else None
                for key, _ in sel.select(timeout):
                    if key.fileobj is self._wake_r:
                        continue
                    if key.fileobj is self._sock:
                        if self._accept(sel):
                            backoff = BACKOFF_S[0]
                        elif not self._closed:
                            # Out of descriptors (or memory): stop watching the port for a while, then retry.
                            sel.unregister(self._sock)
                            listening, resume_at = False, time.monotonic() + backoff
                            backoff = min(BACKOFF_S[1], backoff * 2)
                    else:
                        self._read_line(sel, key.fileobj)  # type: ignore[arg-type]
                self._expire(sel)
        finally:
            for conn in list(self._pending):
                conn.close()
            self._pending.clear()
            sel.close()
            self._sock.close()
            self._wake_r.close()
            self._wake_w.close()

    def _accept(self, sel: selectors.BaseSelector) -> bool:
        """Take every waiting connection; False when accept() failed for want of resources."""
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return True
            except OSError as exc:
                if exc.errno in TRANSIENT:
                    self.accept_errors += 1
                    log.warning("%s: accept() failed (%s); backing off", self._name, exc.strerror)
                    return False
                if not self._closed:
                    log.warning("%s: accept() failed (%s); retrying", self._name, exc.strerror)
                return True
            conn.setblocking(False)
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            if len(self._pending) >= self._max_pending:
                oldest, _ = self._pending.popitem(last=False)
                self._drop(sel, oldest)
            self._pending[conn] = _Pending(conn, time.monotonic() + self._timeout)
            sel.register(conn, selectors.EVENT_READ)

    def _read_line(self, sel: selectors.BaseSelector, conn: socket.socket) -> None:
        pending = self._pending.get(conn)
        if pending is None:
            return
        if isinstance(conn, ssl.SSLSocket):
            self._read_tls_line(sel, conn, pending)
            return
        try:
            # Peek, then take exactly the line: what follows it (frames, descriptors on a Unix socket) is the
            # handler's to read.
            peek = conn.recv(self._line_limit + 1 - len(pending.data), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            peek = b""
        if not peek:
            del self._pending[conn]
            self._drop(sel, conn)
            return
        end = peek.find(b"\n")
        take = end + 1 if end >= 0 else len(peek)
        try:
            pending.data += conn.recv(take)
        except OSError:
            del self._pending[conn]
            self._drop(sel, conn)
            return
        if end < 0:
            if len(pending.data) > self._line_limit:
                del self._pending[conn]
                self._drop(sel, conn)
            return
        self._hand_off(sel, conn, pending)

    def _read_tls_line(self, sel: selectors.BaseSelector, conn: ssl.SSLSocket, pending: _Pending) -> None:
        """The handshake, then the line a byte at a time (no peeking under TLS: what follows stays in the
        SSL object's buffer for the handler); each step as far as the bytes that have come allow."""
        try:
            if not pending.handshaken:
                conn.do_handshake()
                pending.handshaken = True
            while not pending.data.endswith(b"\n"):
                byte = conn.recv(1)
                if not byte or len(pending.data) >= self._line_limit:
                    raise ConnectionError("closed, or a line too long")
                pending.data += byte
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (OSError, ValueError):   # ssl.SSLError is an OSError: not TLS, or not ours
            del self._pending[conn]
            self._drop(sel, conn)
            return
        self._hand_off(sel, conn, pending)

    def _hand_off(self, sel: selectors.BaseSelector, conn: socket.socket, pending: _Pending) -> None:
        del self._pending[conn]
        sel.unregister(conn)
        conn.setblocking(True)
        threading.Thread(target=self._run, args=(conn, pending.data[:-1]), daemon=True,
                         name=f"{self._name}-conn").start()

    def _run(self, conn: socket.socket, line: bytes) -> None:
        try:
            self._handle(conn, line)
        except Exception:  # a handler's bug must not take the port with it; the connection goes
            log.exception("%s: a connection failed", self._name)
            conn.close()

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        while self._pending:
            conn, pending = next(iter(self._pending.items()))
            if pending.deadline > now:
                return
            del self._pending[conn]
            self._drop(sel, conn)

    @staticmethod
    def _drop(sel: selectors.BaseSelector, conn: socket.socket) -> None:
        try:
            sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    @property
    def pending(self) -> int:
        return len(self._pending)

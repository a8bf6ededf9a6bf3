"""The bulk data path: shared memory (memfd) on the same host, raw TCP otherwise, beside the gRPC control path.

gRPC moves ~0.5 GB/s here while loopback TCP moves several GB/s, and a protobuf message means
more copies. Frames are a little JSON header ({"hash", "type_name", "sizes"}) and the raw parts:
the pickle, then each out-of-band buffer, sent from the user's memory with no copy and received
into one buffer per part (numpy arrays are rebuilt on those buffers in place).

Same kernel (same boot id, and the worker's abstract Unix socket answers): the sender writes each
value once into a sealed memfd and passes the descriptor (SCM_RIGHTS); the receiver maps it privately
and unpickles on views of the mapping. One copy instead of TCP's two, and the receiver allocates
nothing. `GPUCELL_SHM=0` forces TCP. A worker whose client said it shares the kernel (CellExecuteRequest
.client_boot_id) writes large outputs into memfds as the cell ends (SharedCopy) and moves its own copy of
a returned array onto those pages, so the value is in memory once on the host, not twice.

Address format: "HOST:PORT" or "HOST:PORT;uds=NAME;boot=BOOT_ID" (NAME in the abstract namespace).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import mmap
import os
import secrets
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gpucell import settings
from gpucell.namespace import data_tls
from gpucell.namespace.serialize import Packed, content_hash
from gpucell.protocol.listener import Listener

_LEN = struct.Struct("!Q")
CHUNK = 4 * 1024 * 1024
MMAP_MIN = 1 << 20
# A value larger than this travels over this path, not inside a gRPC message (client inputs, worker outputs alike).
INLINE_LIMIT = 1 << 20
ALIGN = 64            # each part starts 64-byte aligned in shared memory: numpy's and SIMD's preference
PAGE = mmap.PAGESIZE
WRITE_CHUNK = 64 << 20
WRITERS = max(1, min(4, os.cpu_count() or 1))
MIN_PIECE = 16 << 20  # below this a second writer thread costs more than it saves
MAX_FDS = 16          # descriptors a receiver accepts in one message (a frame carries one per piece)
MAP_FIXED = 0x10      # Linux; the mmap module does not export it
HEAD_LIMIT = 1 << 20  # a frame's JSON head: a hash, a type name and a few numbers
TICKET_TTL_S = 600.0  # a ticket not used by then is gone (the client uses it at once)
MAX_TICKETS = 256     # and past this many unused ones, the oldest is gone
# The sender can no longer resize or write the memfd once sealed: the receiver's private mapping cannot
# change under it or fault with SIGBUS, whatever the sender does afterwards.
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL if hasattr(
    fcntl, "F_SEAL_SHRINK") else 0
SHM_SUPPORTED = sys.platform.startswith("linux") and hasattr(os, "memfd_create") and hasattr(socket, "send_fds") \
    and bool(SEALS)

Frame = tuple[str, str, bytes, list[Any]]
Accept = Any  # Callable[[str], bool] | None: whether a frame of this hash may be received at all


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


def _head(packed: Packed) -> dict[str, Any]:
    return {"hash": packed.hash, "type_name": packed.type_name,
            "sizes": [len(packed.header), *[b.nbytes for b in packed.buffers]]}


def _check_size(sizes: list[int], max_bytes: int) -> None:
    if not isinstance(sizes, list) or not sizes or any(type(n) is not int or n < 0 for n in sizes):
        raise ValueError("bad frame sizes")
    if max_bytes and sum(sizes) > max_bytes:
        raise ValueError(f"a value of {sum(sizes)} bytes is over this worker's limit of {max_bytes}")


def send_frames(sock: socket.socket, values: Iterable[Packed]) -> int:
    sent = 0
    for packed in values:
        head = json.dumps(_head(packed)).encode()
        sock.sendall(_LEN.pack(len(head)) + head)
        sock.sendall(packed.header)
        for buf in packed.buffers:
            sock.sendall(buf)
        sent += packed.size
    sock.sendall(_LEN.pack(0))
    return sent


def _read_head(data: bytes, accept: Accept) -> dict[str, Any]:
    head = json.loads(data)
    if not isinstance(head, dict) or not isinstance(head.get("hash"), str):
        raise ValueError("a malformed frame head")
    if accept is not None and not accept(head["hash"]):
        raise ValueError(f"nobody asked for a value of hash {head['hash'][:32]!r}")
    return head


def _head_size(size: int) -> int:
    if size > HEAD_LIMIT:
        raise ValueError(f"a frame head of {size} bytes (the limit is {HEAD_LIMIT})")
    return size


def recv_frames(sock: socket.socket, max_bytes: int = 0, accept: Accept = None) -> list[Frame]:
    """(hash, type_name, pickle, buffers) for each frame until the end marker; a frame over max_bytes, or
    of a hash `accept` refuses, is refused before anything is allocated for it."""
    out: list[Frame] = []
    while True:
        (size,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
        if size == 0:
            return out
        head = _read_head(bytes(_recv_exact(sock, _head_size(size))), accept)
        sizes = head["sizes"]
        _check_size(sizes, max_bytes)
        header = bytes(_recv_exact(sock, sizes[0]))
        buffers = [_recv_exact(sock, n) for n in sizes[1:]]
        out.append((head["hash"], head.get("type_name", ""), header, buffers))


# ------------------------------------------------------------------ same-host shared memory

def _layout(sizes: list[int]) -> tuple[list[int], int]:
    """Offsets of each part in the shared memory, and its length (whole pages)."""
    offsets, end = [], 0
    for n in sizes:
        offsets.append(end)
        end = (end + n + ALIGN - 1) // ALIGN * ALIGN
    return offsets, max(PAGE, (end + PAGE - 1) // PAGE * PAGE)


def _pieces(length: int) -> list[int]:
    """Sizes of the memfds a value is split into (whole pages). Writes to one memfd take its inode lock, so
    one writer thread per memfd is what lets two cores fill fresh memory (~1.7x faster here for 1 GB)."""
    count = max(1, min(WRITERS, length // MIN_PIECE))
    bounds = [length * i // count // PAGE * PAGE for i in range(count)] + [length]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def _write_piece(fd: int, parts: list[tuple[int, memoryview]], lo: int, hi: int) -> None:
    """pwrite the bytes of [lo, hi) into this piece: the kernel allocates each page and copies into it once
    (no zero-fill, no page fault per page), ~2x faster here than copying into a mapping of it."""
    for offset, view in parts:
        start, stop = max(lo, offset), min(hi, offset + len(view))
        while start < stop:
            start += os.pwrite(fd, view[start - offset:min(stop, start + WRITE_CHUNK) - offset], start - lo)


def _memfds_of(packed: Packed) -> tuple[list[int], dict[str, Any]]:
    """Sealed memfds holding the value's pickle and buffers, and the frame head that describes them."""
    head = _head(packed)
    offsets, length = _layout(head["sizes"])
    pieces = _pieces(length)
    blobs: list[bytes | memoryview] = [packed.header, *packed.buffers]
    parts = [(o, memoryview(p).cast("B")) for o, p in zip(offsets, blobs)]
    fds: list[int] = []
    try:
        for size in pieces:
            fds.append(os.memfd_create(f"gpucell-{packed.hash[:12]}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING))
            os.ftruncate(fds[-1], size)
        bounds = [sum(pieces[:i]) for i in range(len(pieces) + 1)]
        jobs = [(fd, parts, bounds[i], bounds[i + 1]) for i, fd in enumerate(fds)]
        if len(jobs) == 1:
            _write_piece(*jobs[0])
        else:
            list(_writer_pool().map(lambda job: _write_piece(*job), jobs))
        for fd in fds:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    head["offsets"] = offsets
    head["length"] = length
    head["pieces"] = pieces
    return fds, head


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _writer_pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(WRITERS, thread_name_prefix="gpucell-shm-write")
        return _POOL


class SharedCopy:
    """A value already written into sealed memfds, and the writer's own private mapping of them: the writer
    can hold its copy of the value on the same pages as every receiver's (copy-on-write for each)."""

    def __init__(self, packed: Packed) -> None:
        self.fds, self.head = _memfds_of(packed)
        try:
            _hash, _type, self.header, self.buffers = _map_frame(self.head, self.fds, 0)
        except BaseException:
            self.close()
            raise

    def packed(self, like: Packed) -> Packed:
        """The same value, its buffers now views of the shared pages (what a TCP receiver is sent from)."""
        return Packed(like.hash, self.header, list(self.buffers), like.type_name)

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)


def _send_head(sock: socket.socket, head: dict[str, Any], fds: list[int]) -> None:
    data = json.dumps(head).encode()
    msg = _LEN.pack(len(data)) + data
    n = socket.send_fds(sock, [msg], fds)
    if n < len(msg):
        sock.sendall(msg[n:])


def send_fd_frames(sock: socket.socket, values: Iterable[Packed],
                   shared: dict[str, tuple[list[int], dict[str, Any]]] | None = None) -> int:
    """Each value as a length-prefixed head with its memfds attached. Values in `shared` (hash -> descriptors
    the caller owns, and their head) go as they are; the others are written into memfds here, and those
    descriptors are closed once sent, so nothing here can touch the memory again (it is sealed anyway)."""
    sent = 0
    for packed in values:
        if shared and packed.hash in shared:
            _send_head(sock, shared[packed.hash][1], shared[packed.hash][0])
        else:
            fds, head = _memfds_of(packed)
            try:
                _send_head(sock, head, fds)
            finally:
                for fd in fds:
                    os.close(fd)
        sent += packed.size
    sock.sendall(_LEN.pack(0))
    return sent


def _recv_with_fds(sock: socket.socket, size: int, fds: list[int]) -> bytes:
    """Exactly size bytes; descriptors that come with them are appended to fds (to be closed by the caller)."""
    data = bytearray()
    while len(data) < size:
        chunk, got, flags, _ = socket.recv_fds(sock, size - len(data), MAX_FDS)
        fds.extend(got)
        if flags & socket.MSG_CTRUNC:
            raise ConnectionError("too many descriptors in one message")
        if not chunk:
            raise ConnectionError("data connection closed mid-frame")
        data += chunk
    return bytes(data)


def _libc_mmap() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.mmap
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    return fn


_MMAP: Any = _libc_mmap() if SHM_SUPPORTED else None


def _check_layout(sizes: list[int], offsets: Any, length: Any, pieces: Any, fds: int) -> None:
    """Every number of a shared-memory head, before anything is mapped: the parts where _layout puts them,
    the pieces positive, whole pages but the last, one per descriptor and summing to the reservation. A
    piece past the reservation would be mapped over whatever follows it (MAP_FIXED), and crash the process."""
    bad = "a malformed shared-memory frame: "
    if not isinstance(pieces, list) or any(type(p) is not int for p in pieces) or type(length) is not int \
            or not isinstance(offsets, list):
        raise ValueError(bad + "pieces, offsets and length must be integers")
    want_offsets, want_length = _layout(sizes)
    if offsets != want_offsets or length != want_length:
        raise ValueError(bad + f"a length of {length} bytes for parts that take {want_length}")
    if len(pieces) != fds or not pieces:
        raise ValueError(bad + f"{len(pieces)} pieces for {fds} descriptors")
    if any(p <= 0 for p in pieces) or any(p % PAGE for p in pieces[:-1]):
        raise ValueError(bad + "each piece must be positive, and all but the last whole pages")
    if sum(pieces) != length:
        raise ValueError(bad + f"its pieces add up to {sum(pieces)} bytes, not its length {length}")


def _map_frame(head: dict[str, Any], fds: list[int], max_bytes: int) -> Frame:
    """Views into one private mapping of the sender's sealed memfds: copy-on-write for the receiver, who may
    mutate the arrays; the sender can no longer write or shrink them. The size check comes before any map."""
    sizes, offsets, length, pieces = head["sizes"], head["offsets"], head["length"], head["pieces"]
    _check_size(sizes, max_bytes)
    _check_layout(sizes, offsets, length, pieces, len(fds))
    for fd, size in zip(fds, pieces):
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS != SEALS:
            raise ValueError("the shared memory is not sealed")
        if os.fstat(fd).st_size < size:
            raise ValueError("the shared memory is smaller than its frame")
    # An anonymous reservation owned by a Python mmap (it unmaps the whole range when the last view is gone),
    # then each memfd mapped over its part of it: one contiguous buffer, and no descriptor kept open.
    mem = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    anchor = ctypes.c_char.from_buffer(mem)
    base = ctypes.addressof(anchor)
    del anchor
    at = 0
    for fd, size in zip(fds, pieces):
        got = _MMAP(base + at, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | MAP_FIXED, fd, 0)
        if got != base + at:
            mem.close()
            raise OSError(ctypes.get_errno(), "cannot map the shared memory")
        at += size
    view = memoryview(mem)
    header = bytes(view[offsets[0]:offsets[0] + sizes[0]])
    # The views keep the mapping alive; it is unmapped when the last array built on it is gone.
    buffers = [view[o:o + n] for o, n in zip(offsets[1:], sizes[1:])]
    return head["hash"], head.get("type_name", ""), header, buffers


def recv_fd_frames(sock: socket.socket, max_bytes: int = 0, accept: Accept = None) -> list[Frame]:
    out: list[Frame] = []
    while True:
        fds: list[int] = []
        try:
            (size,) = _LEN.unpack(_recv_with_fds(sock, _LEN.size, fds))
            if size == 0:
                if fds:
                    raise ConnectionError("a descriptor with the end marker")
                return out
            head = _read_head(_recv_with_fds(sock, _head_size(size), fds), accept)
            out.append(_map_frame(head, fds, max_bytes))
        finally:
            for fd in fds:  # a mapping does not need its descriptor
                os.close(fd)


_BOOT_ID: str | None = None


def boot_id() -> str:
    """This kernel's boot id: two processes share memory only if they run on the same kernel."""
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _BOOT_ID = f.read().strip()
        except OSError:
            _BOOT_ID = ""
    return _BOOT_ID


def shm_enabled() -> bool:
    return SHM_SUPPORTED and bool(settings.get("shm"))


def parse_address(address: str) -> tuple[str, dict[str, str]]:
    """'HOST:PORT' and the options after it ('uds', 'boot')."""
    tcp, *rest = address.split(";")
    options = dict(part.split("=", 1) for part in rest if "=" in part)
    return tcp, options


# ------------------------------------------------------------------ the worker's server


class _Grant:
    """What one ticket lets its holder do, once: PUT these hashes (those the worker asked for) or GET them."""
    __slots__ = ("verb", "hashes", "expires")

    def __init__(self, verb: str, hashes: Iterable[str]) -> None:
        self.verb = verb
        self.hashes = frozenset(hashes)
        self.expires = time.monotonic() + TICKET_TTL_S


class DataServer:
    """The worker's side: accepts PUT (client → worker) and GET (worker → client) of blobs by hash. Each
    transfer has its own one-time ticket, bound to the hashes it may move (expect(), ticket_for()); an
    upload is taken only for a hash asked for, and only if its content has that hash."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._grants: dict[str, _Grant] = {}
        self.max_bytes = int(settings.get("max_blob_mb")) * 1_000_000  # the broker passes its max_blob_mb
        sock = socket.create_server((host, 0))
        self.address = f"{host}:{sock.getsockname()[1]}"
        tls = None
        if settings.get("tls_ca"):   # the broker's port has TLS: so has this one (data_tls.py says how)
            tls, pin = data_tls.server_context()
            self.address += f";tls={pin}"
        self._uds: socket.socket | None = None
        if SHM_SUPPORTED and boot_id():
            name = f"gpucell-data-{secrets.token_hex(12)}"
            try:
                uds = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                uds.bind("\0" + name)  # abstract: no file to clean up, gone with the process
                uds.listen(16)
                self._uds = uds
                self.address += f";uds={name};boot={boot_id()}"
            except OSError:
                uds.close()
        self.received: dict[str, tuple[bytes, list[Any]]] = {}
        self.outgoing: dict[str, Packed] = {}
        self._offers: dict[str, int] = {}      # outgoing hash -> GETs still expected
        self._shared: dict[str, SharedCopy] = {}  # outgoing hash -> its memfds, written when offered
        self.changed = threading.Condition()
        self.bytes_in = 0
        # The request line within 5 s, no thread before it, and an accept loop that outlives EMFILE.
        self._listeners = [Listener(sock, lambda c, line: self._handle(c, line, False), name="gpucell-data",
                                    line_limit=65536, tls=tls)]
        if self._uds is not None:
            self._listeners.append(Listener(self._uds, lambda c, line: self._handle(c, line, True),
                                            name="gpucell-data-shm", line_limit=65536))

    # ------------------------------------------------------------ tickets

    def _issue(self, verb: str, hashes: Iterable[str]) -> str:
        ticket = secrets.token_urlsafe(18)
        with self.changed:
            now = time.monotonic()
            for old in [t for t, g in self._grants.items() if g.expires <= now]:
                del self._grants[old]
            while len(self._grants) >= MAX_TICKETS:
                del self._grants[next(iter(self._grants))]
            self._grants[ticket] = _Grant(verb, hashes)
        return ticket

    def expect(self, hashes: Iterable[str]) -> str:
        """A one-time ticket to upload these values (the inputs a cell lacks): no other hash is taken with it."""
        return self._issue("PUT", hashes)

    def ticket_for(self, hashes: Iterable[str]) -> str:
        """A one-time ticket to fetch these offered values."""
        return self._issue("GET", hashes)

    def _redeem(self, ticket: str, verb: str) -> _Grant | None:
        with self.changed:
            for known, grant in self._grants.items():  # compare_digest on each: no timing tells a near miss
                if secrets.compare_digest(known, ticket):
                    del self._grants[known]
                    return grant if grant.verb == verb and grant.expires > time.monotonic() else None
        return None

    # ------------------------------------------------------------ connections

    def _handle(self, conn: socket.socket, line: bytes, local: bool) -> None:
        with conn:
            try:
                conn.settimeout(60)   # an owner who stalls mid-transfer does not hold a thread for ever
                verb, ticket, *rest = line.decode().strip().split(" ")
                shm = local and verb.endswith("FD")
                verb = verb.removesuffix("FD") if local else verb
                grant = self._redeem(ticket, verb)
                if grant is None:
                    conn.sendall(b"DENIED\n")
                    return
                if verb == "PUT":
                    self._receive(conn, shm, grant)
                elif verb == "GET":
                    wanted = [h for h in (rest[0].split(",") if rest else []) if h in grant.hashes]
                    with self.changed:
                        values = [self.outgoing[h] for h in wanted if h in self.outgoing]
                        # our own descriptors: a withdraw may close the offer's while this GET sends
                        shared = {v.hash: ([os.dup(fd) for fd in self._shared[v.hash].fds], self._shared[v.hash].head)
                                  for v in values if shm and v.hash in self._shared}
                    try:
                        if shm:
                            send_fd_frames(conn, values, shared)
                        else:
                            send_frames(conn, values)
                    finally:
                        for fds, _head in shared.values():
                            for fd in fds:
                                os.close(fd)
                    self._fetched([v.hash for v in values])
            except (ConnectionError, OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
                return

    def _receive(self, conn: socket.socket, shm: bool, grant: _Grant) -> None:
        """One upload: only hashes the ticket names, each once, each checked against its content. A refused
        frame is answered `ERROR <why>` (what was taken before it stays)."""
        arrived: set[str] = set()

        def accept(digest: str) -> bool:
            if digest in arrived or digest not in grant.hashes:
                return False
            arrived.add(digest)
            return True

        try:
            frames = (recv_fd_frames if shm else recv_frames)(conn, self.max_bytes, accept)
            for digest, _type, header, buffers in frames:
                if content_hash(header, [memoryview(b) for b in buffers]) != digest:
                    raise ValueError(f"the content of {digest[:32]!r} does not have that hash")
        except ValueError as exc:
            try:
                conn.sendall(f"ERROR {exc}\n".encode())
            except OSError:
                pass
            return
        with self.changed:
            for digest, _type, header, buffers in frames:
                self.received[digest] = (header, buffers)
                self.bytes_in += len(header) + sum(len(b) for b in buffers)
            self.changed.notify_all()
        conn.sendall(b"OK\n")

    @property
    def shares_memory(self) -> bool:
        """Whether a client on this kernel can be handed memfds (see SharedCopy)."""
        return self._uds is not None and shm_enabled()

    def offer(self, packed: Packed, shared: SharedCopy | None = None) -> None:
        """A cell's large output, for its client to GET once (a pipelined client may hold two offers of it).
        With `shared`, the value is already in memfds: a same-host GET sends those (this server owns them now)."""
        with self.changed:
            self.outgoing[packed.hash] = packed
            self._offers[packed.hash] = self._offers.get(packed.hash, 0) + 1
            if shared is not None:
                old = self._shared.pop(packed.hash, None)
                self._shared[packed.hash] = shared
                if old is not None:
                    old.close()

    def _drop(self, digest: str) -> None:
        self.outgoing.pop(digest, None)
        self._offers.pop(digest, None)
        shared = self._shared.pop(digest, None)
        if shared is not None:
            shared.close()   # the pages live on in the mappings (the worker's copy, the client's)

    def withdraw(self, digest: str) -> None:
        with self.changed:
            self._drop(digest)

    def _fetched(self, digests: list[str]) -> None:
        # Fetched: let go of it at once, so the memory is free (and warm) for the next cell's values.
        with self.changed:
            for digest in digests:
                left = self._offers.get(digest, 1) - 1
                if left <= 0:
                    self._drop(digest)
                else:
                    self._offers[digest] = left

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
        for listener in self._listeners:
            listener.close()
        with self.changed:
            self.received.clear()
            for digest in list(self.outgoing):
                self._drop(digest)


# ------------------------------------------------------------------ the client's side


def _connect(address: str) -> tuple[socket.socket, bool]:
    """A connection to the data server, and whether it is the same-host one (descriptors may pass)."""
    tcp, options = parse_address(address)
    if shm_enabled() and options.get("uds") and options.get("boot") and options["boot"] == boot_id():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(60)
        try:
            sock.connect("\0" + options["uds"])
            return sock, True
        except OSError:  # another network namespace (a container) or the server is gone: TCP decides
            sock.close()
    if not options.get("tls") and settings.get("tls_ca"):
        raise ConnectionError(f"TLS is configured (GPUCELL_TLS_CA) but the worker's data server at {tcp} has none")
    host, _, port = tcp.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if options.get("tls"):
        try:
            sock = data_tls.client_wrap(sock, options["tls"], tcp)
        except BaseException:
            sock.close()
            raise
    return sock, False


def put(address: str, ticket: str, values: list[Packed]) -> int:
    sock, shm = _connect(address)
    with sock:
        sock.sendall(f"PUT{'FD' if shm else ''} {ticket}\n".encode())
        sent = (send_fd_frames if shm else send_frames)(sock, values)
        answer = _recv_line(sock)
        if answer.startswith("ERROR "):
            raise ValueError(f"the worker's data server refused the upload: {answer.removeprefix('ERROR ')}")
        if answer != "OK":
            raise ConnectionError(f"the worker's data server at {address} refused the upload")
    return sent


def get(address: str, ticket: str, hashes: list[str]) -> dict[str, tuple[bytes, list[Any]]]:
    sock, shm = _connect(address)
    with sock:
        sock.sendall(f"GET{'FD' if shm else ''} {ticket} {','.join(hashes)}\n".encode())
        frames = recv_fd_frames(sock) if shm else recv_frames(sock)
        return {digest: (header, buffers) for digest, _t, header, buffers in frames}

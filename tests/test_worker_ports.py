"""A worker's lane and data ports under attack by a token holder: idle floods, EMFILE, crafted frames, replays."""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import resource
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell

from conftest import magics_of, wait_for
from gpucell.errors import DataPathError
from gpucell.namespace import serialize, transfer
from gpucell.namespace.serialize import Packed

needs_shm = pytest.mark.skipif(not transfer.SHM_SUPPORTED, reason="memfd and SCM_RIGHTS are Linux-only")

# What a cell on the worker can see of its own ports (a user's cell runs in the worker's process).
PORTS = ("import gc as _gc\n"
         "_found = {type(o).__name__: o for o in _gc.get_objects() if type(o).__name__ in ('DataServer', 'LaneServer')}\n"
         "data_address, lane_address = _found['DataServer'].address, _found['LaneServer'].address\n"
         "import os\npid = os.getpid()\n")


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _tcp(address: str) -> tuple[str, int]:
    host, _, port = transfer.parse_address(address)[0].rpartition(":")
    return host, int(port)


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.fixture
def many_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_thousand_idle_connections_are_closed_and_cells_keep_running(shell: InteractiveShell,
                                                                        many_fds: None) -> None:
    shell.run_cell_magic("gpu", "cpu", PORTS)
    shell.run_cell_magic("gpu", "cpu", "x = 1\n")   # the lane is open: its connection counts in the baseline
    pid, ns = shell.user_ns["pid"], shell.user_ns
    baseline = _threads(pid)
    idle: list[socket.socket] = []
    try:
        for address in (ns["lane_address"], ns["data_address"]):
            for _ in range(1000):
                idle.append(socket.create_connection(_tcp(address), timeout=5))
        # Cells keep running meanwhile, on the lane and over the data path (8 MB each way).
        shell.user_ns["big"] = np.arange(1_000_000, dtype=np.float64)
        shell.run_cell_magic("gpu", "cpu", "total = float(big.sum())\nback = big * 2\n")
        assert magics_of(shell).session.last_report.lane
        assert ns["total"] == float(np.arange(1_000_000).sum()) and ns["back"][-1] == 2 * 999_999
        assert _threads(pid) <= baseline + 4   # no thread per connection (a transfer's own may linger)
        for sock in idle:
            sock.setblocking(False)
        wait_for(lambda: all(_closed_by_peer(s) for s in idle), timeout=10, what="the worker to close them all")
        wait_for(lambda: _threads(pid) <= baseline, timeout=5, what="the worker's threads to be back to baseline")
    finally:
        for sock in idle:
            sock.close()
    shell.run_cell_magic("gpu", "cpu", "x += 1\n")
    assert ns["x"] == 2 and magics_of(shell).session.last_report.lane


def test_a_silent_connection_gets_five_seconds(shell: InteractiveShell) -> None:
    shell.run_cell_magic("gpu", "cpu", PORTS)
    for address in (shell.user_ns["lane_address"], shell.user_ns["data_address"]):
        with socket.create_connection(_tcp(address), timeout=10) as sock:
            sock.sendall(b"half a ticket")   # and never the newline
            assert sock.recv(1) == b""       # closed by the worker, well before our 10 s


def test_out_of_descriptors_the_data_port_backs_off_and_accepts_again(shell: InteractiveShell) -> None:
    """A cell lowers the worker's RLIMIT_NOFILE, idle connections use up the rest: accept() fails with EMFILE.
    Once descriptors are free again, the port accepts again and a large value travels as before."""
    shell.run_cell_magic("gpu", "cpu", PORTS + (
        "import resource\n"
        "_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir('/proc/self/fd')) + 6, _hard))\n"))
    flood = [socket.create_connection(_tcp(shell.user_ns["data_address"]), timeout=5) for _ in range(40)]
    try:
        def accept_failed() -> bool:
            shell.run_cell_magic("gpu", "cpu", "failures = sum(l.accept_errors for l in _found['DataServer']"
                                               "._listeners)\n")
            return bool(shell.user_ns["failures"])
        wait_for(accept_failed, timeout=10, interval=0.2, what="accept() to fail with EMFILE")
    finally:
        for sock in flood:
            sock.close()
    shell.run_cell_magic("gpu", "cpu", "resource.setrlimit(resource.RLIMIT_NOFILE, (_soft, _hard))\n")
    shell.user_ns["big"] = np.arange(1_000_000, dtype=np.float64)
    shell.run_cell_magic("gpu", "cpu", "back = big + 1\n")
    assert shell.user_ns["back"][0] == 1.0


def _sealed_memfd(size: int) -> int:
    fd = os.memfd_create("crafted", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, transfer.SEALS)
    return fd


def _crafted_upload(address: str, ticket: str, digest: str) -> str:
    """A shared-memory PUT whose pieces reach past the reservation: the last one is negative."""
    page = mmap.PAGESIZE
    head = {"hash": digest, "type_name": "bytes", "sizes": [16], "offsets": [0], "length": page,
            "pieces": [3 * page, -2 * page]}
    fds = [_sealed_memfd(3 * page), _sealed_memfd(page)]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.connect("\0" + transfer.parse_address(address)[1]["uds"])
        sock.sendall(f"PUTFD {ticket}\n".encode())
        data = json.dumps(head).encode()
        socket.send_fds(sock, [len(data).to_bytes(8, "big") + data], fds)
        sock.sendall((0).to_bytes(8, "big"))
        return transfer._recv_line(sock)
    finally:
        sock.close()
        for fd in fds:
            os.close(fd)


@needs_shm
def test_a_crafted_shared_memory_frame_gets_a_clear_error_and_no_crash(shell: InteractiveShell,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    shell.run_cell_magic("gpu", "cpu", PORTS)
    pid = shell.user_ns["pid"]
    answers: list[str] = []

    def attack(address: str, ticket: str, values: list[Packed]) -> int:
        answers.append(_crafted_upload(address, ticket, values[0].hash))
        raise ValueError(answers[-1])

    monkeypatch.setattr(transfer, "put", attack)
    shell.user_ns["big"] = np.arange(1_000_000, dtype=np.float64)
    with pytest.raises(DataPathError, match="malformed shared-memory frame"):
        shell.run_cell_magic("gpu", "cpu", "total = float(big.sum())\n")
    assert answers and answers[0].startswith("ERROR a malformed shared-memory frame")
    monkeypatch.undo()
    shell.run_cell_magic("gpu", "cpu", "same = os.getpid()\ntotal = float(big.sum())\n")
    assert shell.user_ns["same"] == pid and shell.user_ns["total"] == float(np.arange(1_000_000).sum())


@needs_shm
def test_a_client_refuses_a_crafted_frame_from_a_hijacked_worker(tmp_path: Path) -> None:
    page = mmap.PAGESIZE
    name = f"gpucell-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            transfer._recv_line(conn)
            head = json.dumps({"hash": "h", "type_name": "bytes", "sizes": [16], "offsets": [0], "length": page,
                               "pieces": [3 * page, -2 * page]}).encode()
            fds = [_sealed_memfd(3 * page), _sealed_memfd(page)]
            socket.send_fds(conn, [len(head).to_bytes(8, "big") + head], fds)
            for fd in fds:
                os.close(fd)
            conn.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(ValueError, match="malformed shared-memory frame: each piece must be positive"):
            transfer.get(f"127.0.0.1:1;uds={name};boot={transfer.boot_id()}", "t", ["h"])
    finally:
        server.close()
        thread.join(5)


def test_data_tickets_are_one_time_and_uploads_only_what_was_asked(shell: InteractiveShell,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[tuple[str, str, Any]] = []
    real_put, real_get = transfer.put, transfer.get

    def put(address: str, ticket: str, values: list[Packed]) -> int:
        used.append((address, ticket, values))
        return real_put(address, ticket, values)

    def get(address: str, ticket: str, hashes: list[str]) -> Any:
        used.append((address, ticket, hashes))
        return real_get(address, ticket, hashes)

    monkeypatch.setattr(transfer, "put", put)
    monkeypatch.setattr(transfer, "get", get)
    shell.user_ns["big"] = np.arange(1_000_000, dtype=np.float64)
    shell.run_cell_magic("gpu", "cpu", "back = big * 3\n")
    assert shell.user_ns["back"][1] == 3.0
    (put_address, put_ticket, sent), (get_address, get_ticket, fetched) = used
    assert put_ticket != get_ticket
    # Replayed, either ticket is refused: one transfer each.
    with pytest.raises(OSError):
        real_put(put_address, put_ticket, sent)
    with pytest.raises(OSError):
        real_get(get_address, get_ticket, fetched)
    monkeypatch.undo()

    def lying_put(kind: str) -> Any:
        def put(address: str, ticket: str, values: list[Packed]) -> int:
            asked = values[0]
            other = serialize.pack("x", np.zeros(1_000_000))
            forged = Packed(asked.hash, other.header, other.buffers, other.type_name) if kind == "content" else other
            return real_put(address, ticket, [forged])
        return put

    for kind, why in (("content", "does not have that hash"), ("hash", "nobody asked for")):
        shell.user_ns["big"] = np.arange(1_000_000, dtype=np.float64) + len(kind)   # a value the worker lacks
        monkeypatch.setattr(transfer, "put", lying_put(kind))
        with pytest.raises(DataPathError, match=why):
            shell.run_cell_magic("gpu", "cpu", "seen = float(big[0])\n")
        monkeypatch.undo()
        assert "seen" not in shell.user_ns
    shell.run_cell_magic("gpu", "cpu", "seen = float(big[0])\n")
    assert shell.user_ns["seen"] == 4.0

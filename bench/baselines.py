"""Physical floors measured in the same run: process start, fork, gRPC, loopback TCP, memory copies."""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial

import grpc
import numpy as np

from harness import GB, MB, Profile, Sample, repeat_ms, timed
from systems.base import System

WORKER_MODULE = "gpucell.remote_kernel.worker"
# What the worker imports, until the worker module exists.
WORKER_STAND_IN = "import IPython, grpc, cloudpickle, numpy"

# A gRPC server with a generic handler (bytes in, bytes out, no proto): Echo returns the request,
# Sink returns nothing. It prints its port, then serves until its stdin closes.
GRPC_SERVER = r"""
import sys, grpc
from concurrent import futures
opts = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=opts)
handlers = {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req),
            "Sink": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"")}
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Loop", handlers)])
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
sys.stdin.read()
server.stop(0)
"""


class BaselineSystem(System):
    """Not a system under test: the limits of this machine that the metrics are bounded by."""

    name = "baseline"

    def __init__(self, profile: Profile) -> None:
        super().__init__(profile)
        self.running = False

    def close(self) -> None:
        pass

    def _starts(self, code: str, count: int) -> list[float]:
        def run() -> None:
            subprocess.run([sys.executable, "-c", code], check=True)
        return repeat_ms(run, count, 1)

    def m_python_start_ms(self) -> Iterator[Sample]:
        count = 2 if self.p.name == "smoke" else 5
        yield self.sample("python_start_ms", self._starts("pass", count), "bare")
        if importlib.util.find_spec("gpucell.remote_kernel") and importlib.util.find_spec(WORKER_MODULE):
            code, note = f"import {WORKER_MODULE}", f"python -c 'import {WORKER_MODULE}'"
        else:
            code, note = WORKER_STAND_IN, f"{WORKER_MODULE} missing; stand-in: {WORKER_STAND_IN}"
        yield self.sample("python_start_ms", self._starts(code, count), "worker_imports", note=note)

    def m_fork_ready_ms(self) -> Iterator[Sample]:
        """os.fork of this warm process (numpy, grpc imported) until the child says it is ready."""
        def fork_once() -> None:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.write(w, b"r")
                os._exit(0)
            os.read(r, 1)
            os.close(r)
            os.close(w)
            os.waitpid(pid, 0)
        yield self.sample("fork_ready_ms", repeat_ms(fork_once, 20, 3), note="pipe handshake")

    def _grpc_server(self) -> tuple[subprocess.Popen[str], grpc.Channel]:
        proc = subprocess.Popen([sys.executable, "-c", GRPC_SERVER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        opts = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        return proc, grpc.insecure_channel(f"127.0.0.1:{port}", options=opts)

    def _stop_server(self, proc: subprocess.Popen[str], channel: grpc.Channel) -> None:
        channel.close()
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def m_grpc_unary_rtt_ms(self) -> Iterator[Sample]:
        proc, channel = self._grpc_server()
        try:
            echo = channel.unary_unary("/bench.Loop/Echo")
            yield self.sample("grpc_unary_rtt_ms", repeat_ms(lambda: echo(b"x"), self.p.rtt_n, self.p.rtt_warmup),
                              note="sync unary call, 1 byte, server in another process")
        finally:
            self._stop_server(proc, channel)

    def m_grpc_stream_gb_per_s(self) -> Iterator[Sample]:
        proc, channel = self._grpc_server()
        try:
            sink = channel.unary_unary("/bench.Loop/Sink")
            chunk = min(64 * MB, self.p.baseline_bytes)
            payload = bytes(chunk)
            sink(payload)
            count = max(1, self.p.baseline_bytes // 4 // chunk)
            secs = timed(lambda: [sink(payload) for _ in range(count)])
            yield self.sample("grpc_stream_gb_per_s", [count * chunk / secs / GB],
                              note=f"{count} unary messages of {chunk // MB} MB")
        finally:
            self._stop_server(proc, channel)

    def m_tcp_loopback_gb_per_s(self) -> Iterator[Sample]:
        chunk = min(16 * MB, self.p.tcp_bytes)
        total = self.p.tcp_bytes
        out: list[float] = []
        for _ in range(3):
            out.append(total / _tcp_transfer(chunk, total) / GB)
        yield self.sample("tcp_loopback_gb_per_s", out, note=f"{total // MB} MB, one connection")

    def m_memcpy_1gb_s(self) -> Iterator[Sample]:
        n = self.p.baseline_bytes
        src = np.ones(n, dtype=np.uint8)
        dst = np.zeros(n, dtype=np.uint8)
        dst.fill(2)  # touched before timing: this is the copy, not page faults
        out = [timed(partial(np.copyto, dst, src)) for _ in range(3)]
        del src, dst
        yield self.sample("memcpy_1gb_s", out, note="np.copyto between touched buffers")

    def m_memtouch_1gb_s(self) -> Iterator[Sample]:
        n = self.p.baseline_bytes
        out: list[float] = []
        for _ in range(2):
            holder: list[np.ndarray] = []
            out.append(timed(lambda: holder.append(np.ones(n, dtype=np.uint8))))
            holder.clear()  # frees the array before the next round (a `del` would undefine the lambda's name)
        yield self.sample("memtouch_1gb_s", out, note="fresh allocation, first write of every page")


def _tcp_transfer(chunk: int, total: int) -> float:
    """Seconds to move total bytes over one loopback TCP connection (sender in a thread)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    send_buf = np.ones(chunk, dtype=np.uint8)
    recv_buf = bytearray(chunk)
    recv_view = memoryview(recv_buf)
    recv_view[:] = b"\x01" * chunk  # touched before timing

    def sender() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            left = total
            while left > 0:
                n = min(left, chunk)
                s.sendall(memoryview(send_buf)[:n])
                left -= n

    conn_holder: list[socket.socket] = []
    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    conn, _ = listener.accept()
    conn_holder.append(conn)

    def receive() -> None:
        got = 0
        while got < total:
            n = conn.recv_into(recv_view, min(chunk, total - got))
            if n == 0:
                raise ConnectionError("sender closed early")
            got += n

    secs = timed(receive)
    thread.join(timeout=30)
    conn.close()
    listener.close()
    return secs


BASELINE_METRICS = ["python_start_ms", "fork_ready_ms", "grpc_unary_rtt_ms", "grpc_stream_gb_per_s",
                    "tcp_loopback_gb_per_s", "memcpy_1gb_s", "memtouch_1gb_s"]

"""A fork server for local workers: a warm template process (imports done) forks each new worker in ~ms."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import importlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from gpucell.process import die_with_parent

log = logging.getLogger("gpucell.broker.forkserver")

# What every worker needs before it can run a cell; importing these is most of a cold start.
BASE_PRELOAD = ("IPython", "grpc", "cloudpickle", "numpy", "gpucell.remote_kernel.worker")
READY_TIMEOUT_S = 120.0


# ================================================================ broker side


@dataclass
class ForkedWorker:
    """A worker the template forked: not the broker's child, so it is watched through a pidfd and the template."""

    worker_id: str
    pid: int
    pidfd: int = -1
    exit_reason: str | None = None

    def signal(self, sig: int) -> None:
        if self.exit_reason is not None:
            return
        try:
            if self.pidfd >= 0:
                signal.pidfd_send_signal(self.pidfd, sig)  # immune to pid reuse
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def alive(self) -> bool:
        if self.exit_reason is not None:
            return False
        if self.pidfd >= 0:
            readable, _, _ = select.select([self.pidfd], [], [], 0)
            return not readable  # a pidfd turns readable when its process exits
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


@dataclass
class ForkServer:
    """One template process per preload list; talks newline-delimited JSON over a socketpair."""

    preload: tuple[str, ...]
    log_path: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    workers: dict[str, ForkedWorker] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dead: str | None = None                         # why the template is gone, once it is
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None
    _pending: dict[str, asyncio.Future[int]] = field(default_factory=dict)
    _ready: asyncio.Future[dict[str, Any]] | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start the template and wait until its imports are done (called from the broker's loop thread)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        args = [sys.executable, "-m", "gpucell.broker.provisioners.forkserver", "--parent-pid", str(os.getpid()),
                "--fd", str(theirs.fileno()), "--preload", ",".join(self.preload)]
        with open(self.log_path, "ab") as logf:
            # Started from the event loop's thread: the template's PR_SET_PDEATHSIG is tied to it, and the
            # template's own children die with the template, so nothing outlives the broker.
            self.process = subprocess.Popen(args, pass_fds=[theirs.fileno()], env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=logf, stderr=logf, start_new_session=True)
        theirs.close()
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if nobody waits
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(sock=ours, limit=1 << 20)
            self._task = loop.create_task(self._read_loop())
            hello = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise RuntimeError(f"the fork server did not become ready within {timeout:g}s (log: {self.log_path})") \
                from None
        except BaseException:
            self.process.kill()  # cancelled (the broker is stopping) or broken: leave no template behind
            self.process.wait(5)
            raise
        self.loaded = list(hello.get("loaded", []))
        self.missing = list(hello.get("missing", []))

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                self._on_message(json.loads(line))
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            log.warning("fork server connection broke: %s", exc)
        finally:
            self._on_dead()

    def _on_message(self, msg: dict[str, Any]) -> None:
        if "ready" in msg:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(msg)
        elif "forked" in msg:
            worker = ForkedWorker(msg["forked"], int(msg["pid"]))
            with contextlib.suppress(OSError, AttributeError):
                worker.pidfd = os.pidfd_open(worker.pid)  # Linux 5.3+; else kill(pid, 0) and reports
            self.workers[worker.worker_id] = worker
            future = self._pending.pop(worker.worker_id, None)
            if future is not None and not future.done():
                future.set_result(worker.pid)
        elif "exited" in msg:
            worker = self.workers.get(msg["exited"])
            if worker is not None:
                worker.exit_reason = msg["reason"]
                worker.close()
        elif "error" in msg:
            future = self._pending.pop(msg["error"], None)
            if future is not None and not future.done():
                future.set_exception(RuntimeError(f"fork server: {msg['message']}"))

    def _on_dead(self) -> None:
        code = self.process.poll() if self.process else None
        self.dead = self.dead or (f"fork server exited with status {code}" if code is not None
                                  else "fork server connection lost")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RuntimeError(self.dead))
        self._pending.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(RuntimeError(f"{self.dead} before it was ready (log: {self.log_path})"))

    async def fork(self, worker_id: str, argv: dict[str, str], env: dict[str, str], log_path: str) -> int:
        """Ask the template for a worker; returns its pid once forked."""
        if self.dead is not None or self._writer is None:
            raise RuntimeError(self.dead or "fork server not started")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[worker_id] = future
        request = {"op": "fork", "worker_id": worker_id, "argv": argv, "env": env, "log": log_path}
        self._writer.write(json.dumps(request).encode() + b"\n")
        await self._writer.drain()
        return await asyncio.wait_for(future, 30.0)

    def poll(self, worker_id: str) -> str | None:
        worker = self.workers.get(worker_id)
        if worker is None:
            return "unknown worker"
        if worker.exit_reason is not None:
            self.workers.pop(worker_id, None)
            return worker.exit_reason
        if self.dead is not None and not worker.alive():
            # The template is gone (its workers die with it): nobody will report this exit.
            self.workers.pop(worker_id, None)
            worker.close()
            return f"worker process gone ({self.dead})"
        return None

    def terminate(self, worker_id: str, grace_s: float) -> None:
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        worker.signal(signal.SIGTERM)
        # Reaped by the template; SIGKILL if it ignores SIGTERM past the grace.
        asyncio.get_running_loop().call_later(grace_s, worker.signal, signal.SIGKILL)

    async def close(self, timeout: float = 3.0) -> None:
        """Stop every worker, then the template (it also stops its workers when our end closes)."""
        for worker in self.workers.values():
            worker.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(w.alive() for w in self.workers.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # polling the exits the template reports, with a deadline
        for worker in self.workers.values():
            worker.signal(signal.SIGKILL)
        if self._writer is not None:
            self._writer.close()  # EOF: the template stops what is left and exits
        if self.process is not None:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, self.process.wait, timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()  # its workers follow it (PR_SET_PDEATHSIG)
                await loop.run_in_executor(None, self.process.wait, timeout)
        if self._task is not None:
            self._task.cancel()
        for worker in self.workers.values():
            worker.close()
        self.workers.clear()


# ================================================================ template side


def _preload(names: list[str]) -> tuple[list[str], list[str]]:
    loaded, missing = [], []
    for name in names:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except ImportError:
            missing.append(name)  # optional extras (torch on a CPU box): the worker imports on demand
    return loaded, missing


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall(json.dumps(msg).encode() + b"\n")


def _exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"worker process killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"worker process exited with status {os.waitstatus_to_exitcode(status)}"


def _read_request(fd: int) -> dict[str, Any] | None:
    """The spare's wait: one request, then EOF; EOF alone means the template discards us."""
    data = b""
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return json.loads(data) if data else None


def _child(request_fd: int, template_pid: int, close_fds: list[int]) -> int:
    """In a forked spare: become a clean, separate process, wait for a request, then run the worker."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    os.setsid()
    from gpucell.remote_kernel.worker import run_worker  # noqa: PLC0415 - preloaded: a dict lookup

    # Our parent is the template, which itself dies with the broker: the chain leaves no orphan.
    die_with_parent(template_pid)
    request = _read_request(request_fd)
    if request is None:
        return 0
    out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if request["log"] else \
        os.open(os.devnull, os.O_WRONLY)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.close(null)
    os.environ.clear()
    os.environ.update(request["env"])  # the worker token, GPUCELL_HARDWARE/WORKER_ID, CUDA_VISIBLE_DEVICES, ...
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # a fresh process would seed from the OS; every fork must not share a stream
    argv = request["argv"]
    sys.argv = ["gpucell-worker", "--hardware", argv["hardware"], "--worker-id", argv["worker_id"]]
    return run_worker(argv["broker"], argv["hardware"], argv["worker_id"])


@dataclass
class Spare:
    """A child forked ahead of time and blocked on its pipe: a launch costs a write, not a fork."""

    pid: int
    request_w: int


def _fork_spare(close_in_child: list[int]) -> Spare:
    request_r, request_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    template_pid = os.getpid()  # not getppid() in the child: we may already be gone by then
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _child(request_r, template_pid, [*close_in_child, request_w, signal.set_wakeup_fd(-1)])
        except BaseException:  # noqa: BLE001 - the worker's log (or the template's) is the only place for it
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    os.close(request_r)
    return Spare(pid, request_w)


def _hand_over(spare: Spare, request: dict[str, Any]) -> None:
    try:
        os.write(spare.request_w, json.dumps(request).encode())  # a few kB: fits the pipe buffer
    finally:
        os.close(spare.request_w)


def _reap(sock: socket.socket, children: dict[int, str], spare: Spare | None) -> Spare | None:
    """Report the workers that exited; returns the spare, or None if it died unused."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return spare
        if pid == 0:
            return spare
        worker_id = children.pop(pid, None)
        if worker_id is not None:
            _send(sock, {"exited": worker_id, "pid": pid, "reason": _exit_reason(status)})
        elif spare is not None and pid == spare.pid:
            os.close(spare.request_w)
            spare = None


def _shutdown(children: dict[int, str], spare: Spare | None, grace_s: float = 2.0) -> None:
    if spare is not None:
        with contextlib.suppress(OSError):
            os.close(spare.request_w)  # EOF: the spare exits
        children[spare.pid] = ""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while children and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            children.pop(pid, None)
        else:
            time.sleep(0.02)  # polling exits with a deadline; the broker is already gone
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def serve(fd: int, parent_pid: int, preload: list[str]) -> int:
    """The template's loop: preload, say ready, then hand out forked workers and report exits until the broker leaves."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the broker's terminal is not for us
    loaded, missing = _preload(list(dict.fromkeys([*BASE_PRELOAD, *preload])))
    # The IPython shell is a singleton: built here once, every fork inherits a fresh copy of it.
    from gpucell.remote_kernel.shell import _NullEmitter, make_shell  # noqa: PLC0415

    shell = make_shell(_NullEmitter())
    # One throwaway cell pays IPython's first-run costs (lazy imports, caches) once, here.
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        shell.run_cell("pass", store_history=False)
    # Out of the collector's sight: a child's first GC would otherwise touch (copy) every inherited page.
    gc.collect()
    gc.freeze()
    import threading  # noqa: PLC0415

    if threading.active_count() != 1:
        # fork() copies only the calling thread; gRPC (or a preload) must not have started any.
        print(f"gpucell fork server: threads running before fork: {threading.enumerate()}", file=sys.stderr)
    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so SIGCHLD reaches the wakeup fd
    children: dict[int, str] = {}
    inherited = [sock.fileno(), wake_r]
    spare: Spare | None = _fork_spare(inherited)
    _send(sock, {"ready": True, "pid": os.getpid(), "loaded": loaded, "missing": missing})
    buffer = b""
    try:
        while True:
            try:
                readable, _, _ = select.select([sock, wake_r], [], [])
            except InterruptedError:
                continue
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                spare = _reap(sock, children, spare)
            if sock in readable:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    return 0  # the broker closed its end (or died): stop our workers
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    request = json.loads(line)
                    try:
                        if spare is None:
                            spare = _fork_spare(inherited)
                        taken, spare = spare, None
                        children[taken.pid] = request["worker_id"]
                        _hand_over(taken, request)
                        _send(sock, {"forked": request["worker_id"], "pid": taken.pid})
                        spare = _fork_spare(inherited)  # the next launch's, while this one starts
                    except OSError as exc:
                        _send(sock, {"error": request.get("worker_id", ""), "message": str(exc)})
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
            raise
        return 0
    finally:
        _shutdown(children, spare)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gpucell fork server (started by the broker)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--preload", default="")
    args = parser.parse_args(argv)
    return serve(args.fd, args.parent_pid, [m for m in args.preload.split(",") if m])


if __name__ == "__main__":
    raise SystemExit(main())

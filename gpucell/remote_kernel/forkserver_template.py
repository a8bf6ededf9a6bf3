"""The fork server's template process: imports done once, it forks each new worker in ~ms (started by the broker's ForkServer)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from gpucell.process import die_with_parent
from gpucell.remote_kernel.shell import _NullEmitter, make_shell
from gpucell.remote_kernel.worker import run_worker

# What every worker needs before it can run a cell; importing these is most of a cold start.
BASE_PRELOAD = ("IPython", "grpc", "cloudpickle", "numpy", "gpucell.remote_kernel.worker")


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
    shell = make_shell(_NullEmitter())
    # One throwaway cell pays IPython's first-run costs (lazy imports, caches) once, here.
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        shell.run_cell("pass", store_history=False)
    # Out of the collector's sight: a child's first GC would otherwise touch (copy) every inherited page.
    gc.collect()
    gc.freeze()
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

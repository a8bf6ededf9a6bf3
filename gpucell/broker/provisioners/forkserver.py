"""A fork server for local workers, the broker's side: it starts the template (gpucell.remote_kernel.forkserver_template)
and asks it for workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from gpucell.broker.private_files import open_private_append

log = logging.getLogger("gpucell.broker.forkserver")

READY_TIMEOUT_S = 120.0




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
        args = [sys.executable, "-m", "gpucell.remote_kernel.forkserver_template", "--parent-pid", str(os.getpid()),
                "--fd", str(theirs.fileno()), "--preload", ",".join(self.preload)]
        with open_private_append(self.log_path) as logf:
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

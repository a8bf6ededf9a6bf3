"""The embedded broker: a `gpucell broker` child process on 127.0.0.1 that lives and dies with its parent."""

from __future__ import annotations

import os
import secrets
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gpucell.errors import BrokerUnavailableError
from gpucell.settings import ENV_CONFIG, ENV_TOKEN

READY_PREFIX = "gpucell broker listening on "


@dataclass
class EmbeddedBroker:
    address: str
    token: str
    process: subprocess.Popen[bytes]
    log_path: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker and, through it, every worker it started."""
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()  # EOF: the broker shuts down cleanly
            except OSError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for stream in (self.process.stdout,):
            if stream is not None:
                stream.close()


def start_embedded_broker(config_path: str | None = None, timeout: float = 30.0) -> EmbeddedBroker:
    token = secrets.token_urlsafe(24)
    env = dict(os.environ)
    env[ENV_TOKEN] = token
    env["GPUCELL_WORKER_TOKEN"] = secrets.token_urlsafe(24)
    env["PYTHONUNBUFFERED"] = "1"
    if config_path:
        env[ENV_CONFIG] = config_path
    log_dir = tempfile.mkdtemp(prefix="gpucell-embedded-")
    log_path = os.path.join(log_dir, "broker.log")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gpucell.broker", "--embedded", "--parent-pid", str(os.getpid()),
             "--state-dir", log_dir],
            # Its own session: a kernel interrupted by jupyter_client gets SIGINT sent to its whole process
            # group, which must reach the cell (through gpucell's cancel), not the broker and its workers.
            # It still dies with the kernel: stdin EOF, and PR_SET_PDEATHSIG through --parent-pid.
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True)
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, remaining))
        if not ready:
            process.kill()
            process.wait(5)
            raise BrokerUnavailableError(f"the embedded broker did not start within {timeout:g}s (log: {log_path})")
        chunk = os.read(process.stdout.fileno(), 1)
        if not chunk:
            process.wait(5)
            tail = Path(log_path).read_text(errors="replace")[-500:].strip().splitlines()
            raise BrokerUnavailableError(f"the embedded broker exited: {tail[-1] if tail else 'no output'} "
                                         f"(log: {log_path})")
        line += chunk
    text = line.decode().strip()
    if not text.startswith(READY_PREFIX):
        process.kill()
        raise BrokerUnavailableError(f"unexpected output from the embedded broker: {text!r}")
    return EmbeddedBroker(text[len(READY_PREFIX):], token, process, log_path)

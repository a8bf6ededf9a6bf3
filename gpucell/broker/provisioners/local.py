"""The default provisioner: worker subprocesses on this machine."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from gpucell.broker.provisioners import LaunchSpec, Provisioner
from gpucell.config import ENV_WORKER_TOKEN


def worker_command(spec: LaunchSpec) -> list[str]:
    return [sys.executable, "-m", "gpucell.remote_kernel", "--broker", spec.broker_address,
            "--hardware", spec.pool.label, "--worker-id", spec.worker_id, "--parent-pid", str(os.getpid())]


def worker_env(spec: LaunchSpec) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GPUCELL_TOKEN", None)  # a worker holds the worker token only, never the client's
    env.update(spec.env)
    env[ENV_WORKER_TOKEN] = spec.worker_token  # in the environment, never on a command line
    env["GPUCELL_HARDWARE"] = spec.pool.label
    env["GPUCELL_WORKER_ID"] = spec.worker_id
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class LocalProvisioner(Provisioner):
    """Each worker is a child process of the broker; it dies with the broker (PR_SET_PDEATHSIG)."""

    def __init__(self) -> None:
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    async def launch(self, spec: LaunchSpec) -> None:
        log = subprocess.DEVNULL
        if spec.log_dir:
            Path(spec.log_dir).mkdir(parents=True, exist_ok=True)
            log = open(Path(spec.log_dir) / f"{spec.worker_id}.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            # Popen from the event loop's (main) thread: PR_SET_PDEATHSIG in the child is tied to it.
            self._procs[spec.worker_id] = subprocess.Popen(
                worker_command(spec), env=worker_env(spec), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()

    def pid(self, worker_id: str) -> int | None:
        proc = self._procs.get(worker_id)
        return proc.pid if proc else None

    async def poll(self, worker_id: str) -> str | None:
        proc = self._procs.get(worker_id)
        if proc is None:
            return "unknown worker"
        code = proc.poll()
        if code is None:
            return None
        self._procs.pop(worker_id, None)
        if code < 0:
            return f"worker process killed by signal {signal.Signals(-code).name}"
        return f"worker process exited with status {code}"

    async def terminate(self, worker_id: str, grace_s: float = 2.0) -> None:
        proc = self._procs.get(worker_id)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        # Reaped by poll() from the broker's tick; SIGKILL if it ignores SIGTERM past the grace.
        asyncio.get_running_loop().call_later(grace_s, _kill_if_alive, proc)

    async def close(self) -> None:
        for proc in list(self._procs.values()):
            if proc.poll() is None:
                proc.terminate()
        for proc in list(self._procs.values()):
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3)
        self._procs.clear()


def _kill_if_alive(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()

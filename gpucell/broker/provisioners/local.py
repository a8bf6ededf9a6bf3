"""The default provisioner: worker processes on this machine, forked from a warm template or started fresh."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from gpucell import settings
from gpucell.broker.config import BrokerConfig
from gpucell.broker.private_files import open_private_append, private_dir
from gpucell.broker.provisioners import LaunchSpec, Provisioner
from gpucell.broker.provisioners.forkserver import ForkServer
from gpucell.hardware import GpuAllocator, cuda_visible_devices, nvml_inventory
from gpucell.process import secret_pipe
from gpucell.settings import ENV_TOKEN, ENV_WORKER_TOKEN

log = logging.getLogger("gpucell.broker.local")


def worker_command(spec: LaunchSpec) -> list[str]:
    return [sys.executable, "-m", "gpucell.remote_kernel", "--broker", spec.broker_address,
            "--hardware", spec.pool.label, "--worker-id", spec.worker_id, "--parent-pid", str(os.getpid())]


def base_env() -> dict[str, str]:
    """What every local worker inherits from the broker, minus what it must never hold."""
    env = dict(os.environ)
    env.pop(ENV_TOKEN, None)  # a worker holds the worker token only, never the client's
    env.pop(ENV_WORKER_TOKEN, None)  # the fork server template holds no token at all
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    env["PYTHONUNBUFFERED"] = "1"
    # A worker forks for `!cmd` (and the template forks workers): gRPC's fork handlers then run in a
    # child that only wants to exec, and its poller dies on the parent's epoll fd ("Bad file descriptor"),
    # losing the command's output. Nothing in a worker needs gRPC across a fork.
    env["GRPC_ENABLE_FORK_SUPPORT"] = "0"
    return env


def worker_env(spec: LaunchSpec) -> dict[str, str]:
    env = base_env()
    env.update(spec.env)
    # Never on a command line. The fork server hands this to its child, which takes it out of os.environ before
    # any cell runs (its exec-time environment is the template's, which holds no token); Popen uses a pipe.
    env[ENV_WORKER_TOKEN] = spec.worker_token
    env[settings.env_var("hardware")] = spec.pool.label
    env[settings.env_var("worker_id")] = spec.worker_id
    return env


class LocalProvisioner(Provisioner):
    """Each worker dies with the broker: a subprocess through PR_SET_PDEATHSIG, a forked one through its template.

    With `fork_server` on (the default; `GPUCELL_FORK_SERVER=0` or `[broker] fork_server = false` turns it
    off), a template process per preload list is started on first use and forks each worker.
    """

    def __init__(self, fork_server: bool | None = None) -> None:
        # The broker's config (its GPUCELL_FORK_SERVER included) comes with configure().
        self.fork_server = settings.default("fork_server") if fork_server is None else fork_server
        self.log_dir = ""
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._servers: dict[tuple[str, ...], ForkServer] = {}
        self._starting: dict[tuple[str, ...], asyncio.Task[ForkServer]] = {}
        self._broken: dict[tuple[str, ...], str] = {}
        self._forked: dict[str, ForkServer] = {}
        self._launching: set[str] = set()     # poll() may come while launch() still waits for the template
        self.gpus = GpuAllocator(nvml_inventory())

    def configure(self, config: BrokerConfig) -> None:
        """Broker settings (called by the broker right after construction)."""
        self.fork_server = config.fork_server

    # ------------------------------------------------------------ launching

    async def launch(self, spec: LaunchSpec) -> None:
        self._launching.add(spec.worker_id)
        try:
            self._pin_devices(spec)
            await self._launch(spec)
        except BaseException:
            self.gpus.free(spec.worker_id)
            raise
        finally:
            self._launching.discard(spec.worker_id)

    def _pin_devices(self, spec: LaunchSpec) -> None:
        """A real GPU pool's worker gets its own devices through CUDA_VISIBLE_DEVICES, never shared."""
        pool = spec.pool
        if pool.simulate or pool.gpus <= 0 or pool.label.lower() == "cpu":
            return
        label = pool.label.split(":", 1)[0]
        devices = self.gpus.allocate(spec.worker_id, label, pool.gpus)
        if devices is None:
            raise RuntimeError(f"no {pool.gpus} free {label} device(s) on this host "
                               f"({self.gpus.free_count(label)} free)")
        if devices:
            spec.env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(devices)
            spec.env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"

    async def _launch(self, spec: LaunchSpec) -> None:
        if spec.log_dir:
            private_dir(spec.log_dir)
            self.log_dir = self.log_dir or spec.log_dir
        if self.fork_server:
            key = tuple(spec.pool.preload)
            server = await self._server(key, spec.log_dir)
            if server is not None:
                log_path = str(Path(spec.log_dir) / f"{spec.worker_id}.log") if spec.log_dir else ""
                argv = {"broker": spec.broker_address, "hardware": spec.pool.label, "worker_id": spec.worker_id}
                try:
                    await server.fork(spec.worker_id, argv, worker_env(spec), log_path)
                    self._forked[spec.worker_id] = server
                    return
                except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
                    log.warning("fork server failed for %s (%s); starting a fresh process", spec.worker_id, exc)
        self._popen(spec)

    async def _server(self, key: tuple[str, ...], log_dir: str) -> ForkServer | None:
        """The template for this preload list, started on first use; None if it cannot run here."""
        server = self._servers.get(key)
        if server is not None and server.dead is None:
            return server
        if key in self._broken:
            return None
        task = self._starting.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._start_server(key, log_dir))
            self._starting[key] = task  # concurrent launches wait for the same template
        try:
            return await asyncio.shield(task)
        except Exception as exc:  # noqa: BLE001 - any failure: fall back to plain subprocesses, say why once
            self._broken[key] = str(exc)
            log.warning("fork server unavailable (%s); workers start as fresh processes", exc)
            return None
        finally:
            if task.done():
                self._starting.pop(key, None)

    async def _start_server(self, key: tuple[str, ...], log_dir: str) -> ForkServer:
        directory = log_dir or os.environ.get("TMPDIR", "/tmp")
        name = "forkserver" + ("-" + "-".join(key) if key else "") + ".log"
        server = ForkServer(key, str(Path(directory) / name), base_env())
        await server.start()
        old = self._servers.get(key)
        if old is not None:
            await old.close()
        self._servers[key] = server
        if server.missing:
            log.info("fork server: not installed, imported on demand instead: %s", ", ".join(server.missing))
        return server

    def _popen(self, spec: LaunchSpec) -> None:
        log_file = subprocess.DEVNULL
        if spec.log_dir:
            log_file = open_private_append(Path(spec.log_dir) / f"{spec.worker_id}.log")  # closed below: the child's
        env = worker_env(spec)
        # The credential goes on a pipe: an exec-time environment stays readable in /proc/PID/environ.
        token_fd = secret_pipe(env.pop(ENV_WORKER_TOKEN))
        env[settings.env_var("worker_token_fd")] = str(token_fd)
        try:
            # Popen from the event loop's thread: PR_SET_PDEATHSIG in the child is tied to it.
            self._procs[spec.worker_id] = subprocess.Popen(
                worker_command(spec), env=env, stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=log_file, start_new_session=True, pass_fds=(token_fd,))
        finally:
            os.close(token_fd)
            if log_file is not subprocess.DEVNULL:
                log_file.close()

    # ------------------------------------------------------------ watching and stopping

    def pid(self, worker_id: str) -> int | None:
        proc = self._procs.get(worker_id)
        if proc is not None:
            return proc.pid
        server = self._forked.get(worker_id)
        worker = server.workers.get(worker_id) if server else None
        return worker.pid if worker else None

    def forked(self, worker_id: str) -> bool:
        """Whether this worker came from the fork server (for tests and the bench)."""
        return worker_id in self._forked

    def template_pids(self) -> list[int]:
        return [s.process.pid for s in self._servers.values() if s.process is not None]

    async def poll(self, worker_id: str) -> str | None:
        if worker_id in self._launching:
            return None
        server = self._forked.get(worker_id)
        if server is not None:
            reason = server.poll(worker_id)
            if reason is not None:
                self._forked.pop(worker_id, None)
                self.gpus.free(worker_id)
            return reason
        proc = self._procs.get(worker_id)
        if proc is None:
            self.gpus.free(worker_id)
            return "unknown worker"
        code = proc.poll()
        if code is None:
            return None
        self._procs.pop(worker_id, None)
        self.gpus.free(worker_id)  # the process is gone, so are its CUDA contexts
        if code < 0:
            return f"worker process killed by signal {signal.Signals(-code).name}"
        return f"worker process exited with status {code}"

    async def terminate(self, worker_id: str, grace_s: float = 2.0) -> None:
        server = self._forked.get(worker_id)
        if server is not None:
            server.terminate(worker_id, grace_s)
            return
        proc = self._procs.get(worker_id)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        # Reaped by poll() from the broker's tick; SIGKILL if it ignores SIGTERM past the grace.
        asyncio.get_running_loop().call_later(grace_s, _kill_if_alive, proc)

    async def close(self) -> None:
        for task in self._starting.values():
            task.cancel()
        for proc in list(self._procs.values()):
            if proc.poll() is None:
                proc.terminate()
        await asyncio.gather(*(server.close() for server in self._servers.values()))
        for proc in list(self._procs.values()):
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3)
        self._procs.clear()
        self._servers.clear()
        self._forked.clear()


def _kill_if_alive(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()

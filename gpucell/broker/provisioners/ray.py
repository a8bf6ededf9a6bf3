"""The `ray` provisioner: each worker is a Ray actor that runs `gpucell worker` on a node with the pool's GPUs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from gpucell import settings
from gpucell.broker.config import PoolConfig
from gpucell.broker.provisioners import LaunchSpec, Provisioner
from gpucell.errors import ConfigError
from gpucell.hardware import parse_spec
from gpucell.process import secret_pipe
from gpucell.settings import ENV_TOKEN, ENV_WORKER_TOKEN

try:
    import ray
    import ray.exceptions
except ImportError:  # pragma: no cover - depends on the install
    ray = None  # type: ignore[assignment]

log = logging.getLogger("gpucell.broker.ray")

NAMESPACE = "gpucell"
# Ray's own convention (`@ray.remote(accelerator_type="A100")`): a node advertises
# `accelerator_type:A100` = 1 and a task or actor asks for 0.001 of it. Asking for a token amount
# keeps it a placement *constraint* rather than a capacity: how many workers fit on a node is
# decided by num_gpus (8 A100s → 8 `A100` workers), and the autoscaler reads the request as
# "a node of this type", exactly as it does for Ray's own option.
ACCELERATOR_SHARE = 0.001
# A worker's Python process is mostly idle or waiting on its GPU; reserving a whole CPU per worker
# would let CPU, not GPU, decide how many workers fit on a GPU node. Overridable per pool.
DEFAULT_NUM_CPUS = 0.1
STDERR_TAIL_BYTES = 2000
STDERR_TAIL_LINES = 5          # of a worker that exited: what it last printed, in the cell's error
# A worker whose node died before it started is placed again (a fresh actor, the same worker id and
# one-time secret, which it has not used): the cell never started, so it does not fail.
RELAUNCHES = 2


@dataclass(frozen=True)
class Placement:
    """What one worker actor asks Ray for."""

    num_cpus: float
    num_gpus: float
    resources: dict[str, float]


def placement(pool: PoolConfig) -> Placement:
    """Ray resources for one worker of `pool`: `A100:2` → 2 GPUs on a node with `accelerator_type:A100`.

    Simulated pools (CPU workers that only advertise a label) ask for no GPU, so a cluster of
    CPU nodes with the custom resource can stand in for GPU nodes in tests.
    """
    options = pool.options
    try:
        spec = parse_spec(pool.label, extra_labels=[pool.label.split(":", 1)[0]])
    except ValueError as exc:
        raise ConfigError(f"[pools.{pool.label}]: {exc}") from None
    accelerator = str(options.get("accelerator_type", spec.label))
    resources = {str(k): float(v) for k, v in dict(options.get("resources", {})).items()}
    if not spec.is_cpu and accelerator:
        resources.setdefault(f"accelerator_type:{accelerator}", ACCELERATOR_SHARE)
    num_gpus = 0.0 if pool.simulate or spec.is_cpu else float(options.get("num_gpus", spec.count))
    return Placement(float(options.get("num_cpus", DEFAULT_NUM_CPUS)), num_gpus, resources)


class WorkerActor:
    """Runs on a Ray node: starts the worker process and waits for it (the actor's life is the worker's)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = ""

    def start(self, args: list[str], env: dict[str, str]) -> tuple[str, int]:
        """Start `python -m gpucell.remote_kernel ARGS`; returns (Ray node id, worker pid)."""
        node_id = ray.get_runtime_context().get_node_id()
        child_env = dict(os.environ)  # keeps CUDA_VISIBLE_DEVICES, which Ray set for this actor's GPUs
        child_env.pop(ENV_TOKEN, None)
        child_env.update(env)
        child_env[settings.env_var("node")] = node_id
        # The worker's data server and lane listen on, and advertise, the address Ray reaches this node by
        # (clients connect there directly); a pool's env or the node's own environment may say otherwise.
        child_env.setdefault(settings.env_var("data_host"), ray.util.get_node_ip_address())
        child_env["PYTHONUNBUFFERED"] = "1"
        fd, self._log_path = tempfile.mkstemp(prefix="gpucell-worker-", suffix=".log")
        # The credential goes on a pipe: an exec-time environment stays readable in /proc/PID/environ.
        token_fd = secret_pipe(child_env.pop(ENV_WORKER_TOKEN, ""))
        child_env[settings.env_var("worker_token_fd")] = str(token_fd)
        try:
            # --parent-pid: the worker dies with this actor (PR_SET_PDEATHSIG), so `ray.kill`,
            # a lost node or a stopped broker (which owns the actor) leaves no process behind.
            # Sync actor methods run on the process's main thread, which lives as long as it does.
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "gpucell.remote_kernel", *args, "--parent-pid", str(os.getpid())],
                env=child_env, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True,
                pass_fds=(token_fd,))
        finally:
            os.close(fd)
            os.close(token_fd)
        return node_id, self._proc.pid

    def wait(self) -> tuple[int, str]:
        """Block until the worker exits: (exit status, the tail of what it printed before its shell took over)."""
        assert self._proc is not None
        code = self._proc.wait()
        tail = ""
        try:
            with open(self._log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - STDERR_TAIL_BYTES))
                tail = f.read().decode(errors="replace").strip()
            os.unlink(self._log_path)
        except OSError:
            pass
        return code, tail


@dataclass
class RayWorker:
    """The broker's record of one worker actor."""

    worker_id: str
    actor: Any
    started: concurrent.futures.Future[Any]
    exited: concurrent.futures.Future[Any]
    reason: str | None = None
    killed: bool = False
    explaining: bool = False
    node_id: str = ""
    spec: LaunchSpec | None = None
    relaunches: int = 0


def exit_reason(code: int, tail: str) -> str:
    if code < 0:
        reason = f"worker process killed by signal {signal.Signals(-code).name}"
    else:
        reason = f"worker process exited with status {code}"
    last = [line for line in tail.strip().splitlines() if line.strip()][-STDERR_TAIL_LINES:] if code else []
    return f"{reason}: " + "\n".join(last) if last else reason


class RayProvisioner(Provisioner):
    """Workers as Ray actors; every Ray call runs in a thread so the broker's event loop never blocks.

    The pool's `options` table: `address` (the Ray cluster, default "auto"), `num_cpus`,
    `num_gpus` (default: the label's count), `accelerator_type` (default: the label),
    `resources` (extra custom resources), `broker_address` (the address workers dial, when the
    broker binds 0.0.0.0 or sits behind a Service), `runtime_env` (passed to the actor).
    """

    def __init__(self) -> None:
        if ray is None:
            raise ConfigError("the ray provisioner needs Ray: pip install 'gpucell[ray]'")
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="gpucell-ray")
        self._init_lock = threading.Lock()
        self._address: str | None = None
        self._owns_connection = False
        self._actor_class: Any = None
        self._workers: dict[str, RayWorker] = {}
        self._launching: set[str] = set()   # the broker polls these before their actor exists
        self._cancelled: set[str] = set()   # terminated while launching: kill once the actor exists
        # Worker ids are only unique within one broker; the tag keeps two brokers (or a restarted
        # one) on the same Ray cluster from colliding on actor names.
        self._tag = secrets.token_hex(3)

    # ------------------------------------------------------------ helpers (run in the executor)

    def actor_name(self, worker_id: str) -> str:
        """The worker's actor name in the `gpucell` Ray namespace (`ray list actors` shows it)."""
        return f"gpucell-{worker_id}-{self._tag}"

    def _connect(self, pool: PoolConfig) -> None:
        address = str(pool.options.get("address", "auto"))
        with self._init_lock:
            if self._address is not None:
                if address != self._address:
                    raise ConfigError(f"[pools.{pool.label}]: one broker talks to one Ray cluster "
                                      f"({self._address}), not also {address}")
                return
            if ray.is_initialized():
                # The hosting process already has a Ray connection (a notebook server, a test): share it.
                self._owns_connection = False
            else:
                ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                         configure_logging=False)
                self._owns_connection = True
            self._actor_class = ray.remote(WorkerActor)
            self._address = address

    def _create(self, spec: LaunchSpec, attempt: int = 0) -> RayWorker:
        self._connect(spec.pool)
        where = placement(spec.pool)
        options: dict[str, Any] = {
            "name": self.actor_name(spec.worker_id) + (f"-{attempt}" if attempt else ""), "namespace": NAMESPACE,
            "num_cpus": where.num_cpus, "num_gpus": where.num_gpus, "resources": where.resources,
            "max_restarts": 0, "max_task_retries": 0,
        }
        if "runtime_env" in spec.pool.options:
            options["runtime_env"] = dict(spec.pool.options["runtime_env"])
        actor = self._actor_class.options(**options).remote()
        broker = str(spec.pool.options.get("broker_address", spec.broker_address))
        args = ["--broker", broker, "--hardware", spec.pool.label, "--worker-id", spec.worker_id]
        env = dict(spec.env)
        # The token travels in the actor call's arguments and the worker's environment, never argv.
        env[ENV_WORKER_TOKEN] = spec.worker_token
        env[settings.env_var("hardware")] = spec.pool.label
        env[settings.env_var("worker_id")] = spec.worker_id
        env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        started = actor.start.remote(args, env).future()
        exited = actor.wait.remote().future()
        return RayWorker(spec.worker_id, actor, started, exited, spec=spec, relaunches=attempt)

    def _explain(self, record: RayWorker) -> str:
        """Why a worker's actor is gone, in words a notebook user can act on."""
        try:
            code, tail = record.exited.result(timeout=0)
            return exit_reason(code, tail)
        except ray.exceptions.RayActorError as exc:
            if record.killed:
                return "worker actor killed"
            if record.started.done() and record.started.exception() is None:
                record.node_id = record.started.result()[0]
            if record.node_id and not _node_alive(record.node_id):
                return "node died"
            if "node" in str(exc).lower() and "died" in str(exc).lower():
                return "node died"
            if record.node_id and not _raylet_answers(record.node_id):
                # Ray marks a node dead only after its health checks fail (seconds); a raylet that no
                # longer accepts connections is gone now.
                return "node died"
            return f"worker actor died: {_first_line(exc)}"
        except Exception as exc:  # noqa: BLE001 - any other Ray failure is reported, not raised
            return f"worker actor failed: {_first_line(exc)}"

    def _kill(self, record: RayWorker, grace_s: float) -> None:
        # The broker has already asked the worker to shut down over its stream: give it the grace
        # to exit cleanly, then kill the actor (and, through PDEATHSIG, anything left of the worker).
        try:
            record.exited.result(timeout=grace_s)
        except Exception:  # noqa: BLE001 - timeout or a dead actor: kill regardless
            pass
        try:
            ray.kill(record.actor, no_restart=True)
        except Exception:  # already gone; logged with its traceback
            log.debug("ray.kill(%s) failed", record.worker_id, exc_info=True)

    # ------------------------------------------------------------ Provisioner

    async def launch(self, spec: LaunchSpec) -> None:
        loop = asyncio.get_running_loop()
        # Submitting an actor returns at once; Ray (and its autoscaler) places it when it can, and
        # the worker registers with the broker by itself once it runs.
        self._launching.add(spec.worker_id)
        try:
            self._workers[spec.worker_id] = await loop.run_in_executor(self._executor, self._create, spec)
        finally:
            self._launching.discard(spec.worker_id)
        if spec.worker_id in self._cancelled:
            self._cancelled.discard(spec.worker_id)
            await self.terminate(spec.worker_id, grace_s=0)

    async def poll(self, worker_id: str) -> str | None:
        record = self._workers.get(worker_id)
        if record is None:
            return None if worker_id in self._launching else "unknown worker"
        if record.reason is None:
            if not record.exited.done() or record.explaining:
                return None
            record.explaining = True
            loop = asyncio.get_running_loop()
            try:
                record.reason = await loop.run_in_executor(self._executor, self._explain, record)
                lost_placement = record.reason == "node died" or record.reason.startswith("worker actor died")
                if (lost_placement and not record.killed and record.spec is not None
                        and record.relaunches < RELAUNCHES and not _worker_started(record)):
                    log.info("worker %s: its node died before it started; placing it again", worker_id)
                    self._workers[worker_id] = await loop.run_in_executor(
                        self._executor, self._create, record.spec, record.relaunches + 1)
                    return None
            finally:
                record.explaining = False
        self._workers.pop(worker_id, None)
        return record.reason

    async def terminate(self, worker_id: str, grace_s: float = 2.0) -> None:
        record = self._workers.get(worker_id)
        if record is None and worker_id in self._launching:
            self._cancelled.add(worker_id)
            return
        if record is None or record.killed:
            return
        record.killed = True
        # Not awaited: the broker's tick must not wait out the grace period.
        self._executor.submit(self._kill, record, grace_s)

    def node_of(self, worker_id: str) -> str:
        """The Ray node id a worker runs on, once its actor has started ("" before)."""
        record = self._workers.get(worker_id)
        if record is None or not record.started.done() or record.started.exception() is not None:
            return ""
        return str(record.started.result()[0])

    async def close(self) -> None:
        records = list(self._workers.values())
        self._workers.clear()
        loop = asyncio.get_running_loop()
        if records:
            for record in records:
                record.killed = True
            await loop.run_in_executor(self._executor, _kill_all, records)
        if self._owns_connection:
            await loop.run_in_executor(self._executor, ray.shutdown)
            self._owns_connection = False
        self._address = None
        self._executor.shutdown(wait=False)


def _kill_all(records: list[RayWorker]) -> None:
    for record in records:
        try:
            ray.kill(record.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
    # Wait (bounded) until Ray reports them dead, so "the broker stopped" means "the workers are gone".
    for record in records:
        try:
            record.exited.result(timeout=10)
        except Exception:  # noqa: BLE001 - the expected outcome is RayActorError
            pass


def _node_alive(node_id: str) -> bool:
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return bool(node.get("Alive"))
    return False


def _worker_started(record: RayWorker) -> bool:
    """The actor started the worker process (it may have registered and taken a cell: not placed again)."""
    return record.started.done() and record.started.exception() is None


def _raylet_answers(node_id: str) -> bool:
    """The node's raylet still accepts a connection on its port (a killed raylet's port is closed)."""
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            try:
                socket.create_connection((node["NodeManagerAddress"], int(node["NodeManagerPort"])), timeout=2).close()
            except (OSError, KeyError, ValueError):
                return False
            return True
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

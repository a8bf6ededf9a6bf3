"""The broker's batch jobs: a `gpucell run` subprocess per job, kept in the broker's journal so a restart still lists them."""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from gpucell.broker.journal import JOB_COLUMNS, Journal
from gpucell.broker.private_files import job_file_name, open_private_append, write_private
from gpucell.settings import ENV_BROKER, ENV_TOKEN

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
CANCEL_GRACE_S = 10.0
LOG_POLL_S = 0.2


@dataclass
class Job:
    """One row of the journal's jobs table (its fields in JOB_COLUMNS order)."""

    id: str
    notebook: str
    state: str
    hardware: str
    submitted: float
    started: float
    finished: float
    cost: float
    error: str
    dir: str
    pid: int
    session_name: str

    @property
    def log_path(self) -> Path:
        return Path(self.dir) / "output.log"

    @property
    def output_path(self) -> Path:
        return Path(self.dir) / "output.ipynb"


assert tuple(f.name for f in fields(Job)) == JOB_COLUMNS, "Job and the journal's jobs table disagree"


@dataclass
class JobRequest:
    notebook_name: str
    notebook: bytes
    parameters: list[str]
    hardware: str
    timeout_s: float
    workdir: str


class JobManager:
    """Starts, watches, cancels and lists jobs. Every call runs on the broker's event loop."""

    def __init__(self, state_dir: str, journal: Journal, broker_address: Callable[[], str], token: str,
                 cost_of: Callable[[str], float]) -> None:
        self.state_dir = Path(state_dir)
        self._journal = journal
        self.broker_address = broker_address
        self.token = token
        self.cost_of = cost_of
        self.jobs: dict[str, Job] = {}
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.cancelling: set[str] = set()
        self._loaded = False
        self._opening = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def journal(self) -> Journal:
        """The journal, once the previous broker's jobs are loaded from it (on first use)."""
        async with self._opening:
            if not self._loaded:
                await asyncio.to_thread(self._journal.mark_jobs_interrupted, time.time())
                for row in await asyncio.to_thread(self._journal.jobs):
                    job = Job(*row)
                    self.jobs[job.id] = job
                self._loaded = True
            return self._journal

    async def _save(self, job: Job) -> None:
        await asyncio.to_thread((await self.journal()).put_job, astuple(job))

    def live_cost(self, job: Job) -> float:
        return job.cost if job.state in TERMINAL else self.cost_of(job.session_name)

    async def list(self) -> list[Job]:
        await self.journal()
        return sorted(self.jobs.values(), key=lambda j: j.submitted)

    async def get(self, job_id: str) -> Job | None:
        await self.journal()
        return self.jobs.get(job_id)

    async def submit(self, request: JobRequest, token: str = "") -> Job:
        """Start a job; its notebook's cells reach the broker with `token` (its owner's, minted for it)."""
        await self.journal()
        job_id = f"job-{secrets.token_hex(4)}"
        job_dir = self.state_dir / "jobs" / job_id
        name = job_file_name(request.notebook_name)   # the service has refused a name without one
        input_path = job_dir / name
        now = time.time()
        job = Job(job_id, request.notebook_name or name, "running", request.hardware, now, now, 0.0, 0.0, "",
                  str(job_dir), 0, f"job {job_id}: {name}")
        await asyncio.to_thread(_write_input, input_path, request.notebook)
        cmd = [sys.executable, "-m", "gpucell.cli", "run", str(input_path), "-o", str(job.output_path),
               "--parent-pid", str(os.getpid())]
        for pair in request.parameters:
            cmd += ["-p", pair]
        if request.hardware:
            cmd += ["--gpu", request.hardware]
        if request.timeout_s > 0:
            cmd += ["--timeout", f"{request.timeout_s:g}"]
        workdir = request.workdir if request.workdir and os.path.isdir(request.workdir) else str(job_dir)
        cmd += ["--cwd", workdir]
        env = {**os.environ, ENV_BROKER: self.broker_address(), ENV_TOKEN: token or self.token,
               "JPY_SESSION_NAME": job.session_name, "PYTHONUNBUFFERED": "1"}
        log = await asyncio.to_thread(open_private_append, job.log_path)
        try:
            proc = await asyncio.create_subprocess_exec(*cmd, stdin=subprocess.DEVNULL, stdout=log,
                                                        stderr=subprocess.STDOUT, env=env, cwd=str(job_dir),
                                                        start_new_session=True)
        finally:
            log.close()
        job.pid = proc.pid
        self.jobs[job_id] = job
        self.procs[job_id] = proc
        await self._save(job)
        task = asyncio.get_running_loop().create_task(self._watch(job, proc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _watch(self, job: Job, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.procs.pop(job.id, None)
        meta = await asyncio.to_thread(_notebook_meta, job.output_path)
        if job.id in self.cancelling:
            job.state = "cancelled"
        elif code == 0:
            job.state = "succeeded"
        else:
            job.state = "failed"
        failed = meta.get("failed_cell")
        error = meta.get("error") or ("" if code == 0 else f"the runner exited with status {code}")
        job.error = f"cell {failed}: {error}" if failed is not None and error else error
        job.finished = time.time()
        job.cost = self.cost_of(job.session_name)
        await self._save(job)

    async def cancel(self, job_id: str) -> bool:
        proc = self.procs.get(job_id)
        if proc is None or proc.returncode is not None:
            return False
        self.cancelling.add(job_id)
        # The runner saves its notebook and shuts its kernel down on SIGTERM; SIGKILL if it does not.
        proc.send_signal(signal.SIGTERM)
        asyncio.get_running_loop().call_later(CANCEL_GRACE_S, self._kill_group, proc)
        return True

    @staticmethod
    def _kill_group(proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def logs(self, job: Job, offset: int, follow: bool) -> AsyncIterator[str]:
        """The job's output from byte `offset`; with follow, until the job has ended and all is read."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # chunks may split a character
        while True:
            ended = job.state in TERMINAL  # read before the file, so the last chunk is never missed
            chunk = await asyncio.to_thread(_read_from, job.log_path, offset)
            if chunk:
                offset += len(chunk)
                text = decoder.decode(chunk)
                if text:
                    yield text
                continue
            if ended or not follow:
                tail = decoder.decode(b"", final=True)
                if tail:
                    yield tail
                return
            await asyncio.sleep(LOG_POLL_S)  # a poll interval on a growing file, not synchronisation

    async def fetch(self, job: Job) -> bytes:
        return await asyncio.to_thread(_read_all, job.output_path)

    async def close(self) -> None:
        for job_id in list(self.procs):
            await self.cancel(job_id)


def _write_input(path: Path, data: bytes) -> None:
    write_private(path, data)   # its directories 0700, the file 0600


def _read_from(path: Path, offset: int, limit: int = 1 << 20) -> bytes:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(limit)
    except FileNotFoundError:
        return b""


def _read_all(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _notebook_meta(path: Path) -> dict[str, object]:
    try:
        return dict(json.loads(path.read_text()).get("metadata", {}).get("gpucell", {}))
    except (OSError, ValueError):
        return {}

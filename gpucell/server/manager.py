"""What the sidebar's REST API does, over the shared broker client; plain blocking Python, no Tornado."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from gpucell.client.jobs_client import JobsClient
from gpucell.client import BrokerClient
from gpucell.errors import BrokerUnavailableError, ConfigError, NotFoundError


class BrokerCalls(Protocol):
    """The part of gpucell.client.BrokerClient the manager uses."""

    def catalog(self) -> dict[str, Any]: ...

    def status(self, session_id: str | None = None) -> dict[str, Any]: ...

    def release(self, session_id: str, hardware: str = "", worker_id: str = "") -> list[str]: ...

    def close(self) -> None: ...


class JobCalls(Protocol):
    """The part of gpucell.client.jobs_client.JobsClient the manager uses."""

    def submit(self, notebook_name: str, notebook: bytes, parameters: list[str], hardware: str = "",
               timeout_s: float = 0.0, workdir: str = "") -> dict[str, Any]: ...

    def list(self) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class GpuCellManager:
    """Catalog with live counts, status with cost per notebook, releasing one worker, and batch jobs.

    It raises gpucell.errors only; the handlers map their classes to HTTP codes in one table.
    """

    def __init__(
        self,
        address: str,
        token: str,
        client_factory: Callable[[str, str], BrokerCalls] = BrokerClient,
        notebook_root: str = "",
        jobs_factory: Callable[[str, str], JobCalls] = JobsClient,
    ) -> None:
        self.address = address
        self.notebook_root = notebook_root
        self._client = client_factory(address, token)
        self._jobs = jobs_factory(address, token)

    def catalog(self) -> dict[str, Any]:
        """The broker's catalog; each entry also says how many workers are warm and how many could start."""
        catalog = self._call(self._client.catalog)
        pools = self._call(self._client.status)["pools"]
        entries = []
        for entry in catalog["entries"]:
            pool = pools.get(entry.get("served_by") or entry["label"], {})
            workers = pool.get("workers", [])
            idle = [w for w in workers if w["state"] == "idle"]
            unassigned_idle = [w for w in idle if not w.get("session")]
            live = [w for w in workers if w["state"] != "releasing"]
            max_workers = int(pool.get("max_workers", entry.get("max_workers", 0)))
            # A new session can take an idle worker nobody owns, or a slot under the cap.
            available = max(0, max_workers - len(live)) + len(unassigned_idle)
            entries.append({**entry, "warm": len(idle), "available": available})
        return {**catalog, "entries": entries, "broker": self.address}

    def status(self) -> dict[str, Any]:
        """Every session's workers and queues, plus usage summed per notebook (sessions of one notebook add up)."""
        status = self._call(self._client.status)
        for pool in status["pools"].values():
            for worker in pool.get("workers", []):
                worker["session_name"] = self.notebook_name(worker.get("session_name", ""))
        usage = status.get("usage", {})
        for record in usage.get("sessions", []):
            record["session_name"] = self.notebook_name(record.get("session_name", ""))
        by_notebook: dict[str, dict[str, Any]] = {}
        for record in usage.get("sessions", []):
            name = record.get("session_name") or record.get("session", "")
            row = by_notebook.setdefault(name, {"notebook": name, "worker_seconds": 0.0, "cost": 0.0})
            row["worker_seconds"] += float(record.get("worker_seconds", 0.0))
            row["cost"] += float(record.get("cost", 0.0))
        usage = {
            "sessions": usage.get("sessions", []),
            "by_notebook": sorted(by_notebook.values(), key=lambda row: (-row["cost"], row["notebook"])),
            "total_cost": float(usage.get("total_cost", sum(r["cost"] for r in by_notebook.values()))),
        }
        return {**status, "usage": usage, "broker": self.address}

    def release(self, worker_id: str) -> dict[str, Any]:
        """Release one worker now, on behalf of the session that holds it."""
        session = self._session_of(worker_id)
        released = self._call(lambda: self._client.release(session, worker_id=worker_id))
        return {"released": list(released)}

    def submit_job(self, path: str, hardware: str = "", parameters: list[str] | None = None) -> dict[str, Any]:
        """Submit the notebook at `path` (as the file browser names it) as a detached job on the broker.

        The job is named by the notebook's absolute path and runs in its folder, so relative file
        reads in the notebook work as they do in Lab; the broker runs on this machine when the server
        embeds it. The notebook's bytes travel in the request, so a remote broker needs no shared disk.
        """
        # nbformat comes with this lazily: the batch module is only needed once someone submits.
        from gpucell.batch.params import parse_parameters  # noqa: PLC0415

        pairs = [p.strip() for p in parameters or [] if p.strip()]
        try:
            parse_parameters(pairs)  # a typo fails here, not in a job that runs for an hour first
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("-p ", "parameter ", 1)) from None
        notebook = self.resolve_notebook(path)
        try:
            data = notebook.read_bytes()
        except OSError as exc:
            raise NotFoundError(f"cannot read {path}: {exc.strerror or exc}") from None
        # An unknown hardware label or an empty notebook comes back as a ConfigError: the request is at fault.
        job = self._call(lambda: self._jobs.submit(str(notebook), data, pairs, hardware, 0.0, str(notebook.parent)))
        return self._job_json(job)

    def jobs(self) -> dict[str, Any]:
        """The broker's jobs, newest first, each with its notebook as Lab names it and its duration so far."""
        jobs = [self._job_json(job) for job in self._call(self._jobs.list)]
        jobs.sort(key=lambda job: -float(job["submitted"]))
        return {"jobs": jobs, "broker": self.address}

    def resolve_notebook(self, path: str) -> Path:
        """The absolute path of a notebook named relative to the server's root; never outside that root."""
        root = Path(os.path.realpath(self.notebook_root or os.getcwd()))
        if not path.endswith(".ipynb"):
            raise ConfigError(f"{path!r} is not a notebook (.ipynb)")
        # Lab names files with "/" and no leading slash; an absolute or ".." path must still land under root,
        # and so must a symbolic link once followed (realpath, not abspath: a link may lead anywhere).
        candidate = Path(os.path.realpath(root / path.lstrip("/")))
        if os.path.commonpath([root, candidate]) != str(root):
            raise ConfigError(f"{path!r} is outside the server's root")
        if not candidate.is_file():
            raise NotFoundError(f"no notebook {path!r} under {root}")
        return candidate

    def close(self) -> None:
        self._client.close()
        self._jobs.close()

    def notebook_name(self, session_name: str) -> str:
        """A notebook path as JupyterLab shows it: relative to the server's root when it lies inside it.

        Jupyter server hands kernels the absolute path in JPY_SESSION_NAME; the sidebar lists the path
        the user sees in the file browser.
        """
        if not self.notebook_root or not os.path.isabs(session_name):
            return session_name
        root = os.path.abspath(self.notebook_root)
        path = os.path.abspath(session_name)
        if os.path.commonpath([root, path]) != root:
            return session_name
        return Path(os.path.relpath(path, root)).as_posix()

    def _job_json(self, job: dict[str, Any]) -> dict[str, Any]:
        started, finished = float(job.get("started", 0.0)), float(job.get("finished", 0.0))
        end = finished or time.time()  # a running job's duration grows until it ends
        return {**job, "notebook": self.notebook_name(str(job.get("notebook", ""))),
                "duration_s": max(0.0, end - started) if started else 0.0}

    def _session_of(self, worker_id: str) -> str:
        for pool in self._call(self._client.status)["pools"].values():
            for worker in pool.get("workers", []):
                if worker["id"] == worker_id:
                    return str(worker.get("session", ""))
        raise NotFoundError(f"no worker {worker_id!r} at broker {self.address}")

    def _call(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except BrokerUnavailableError as exc:
            raise BrokerUnavailableError(f"broker unreachable at {self.address}: {exc}") from exc

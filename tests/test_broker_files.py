"""What the broker writes is its own (0700/0600 under any umask), and a job's name cannot point elsewhere."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest import Cluster, RecordingSink, make_cluster, wait_for
from gpucell.client.jobs_client import JobsClient
from gpucell.client.session import CellOptions, Session
from gpucell.errors import BrokerError, ConfigError

POOLS = """
[pools.cpu]
simulate = true
max_workers = 1
idle_timeout = 300
"""


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_jobs_logs_and_journal_are_private_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    with make_cluster(tmp_path, pools=POOLS) as cluster:
        state = tmp_path / "state"
        data = nbformat.writes(new_notebook(cells=[new_code_cell("print('private')")])).encode()
        jobs = JobsClient(cluster.address, cluster.token)
        try:
            job = jobs.submit("/somewhere/mine.ipynb", data, [])

            def ended() -> bool:
                (listed,) = [j for j in jobs.list() if j["id"] == job["id"]]
                return listed["state"] != "running"

            wait_for(ended, timeout=120, what="the job to end")
        finally:
            jobs.close()
        _run_one_cell(cluster)   # a worker, so its log is written too
        job_dir = state / "jobs" / job["id"]
        for directory in (state, state / "jobs", job_dir):
            assert _mode(directory) == 0o700, directory
        written = [job_dir / "mine.ipynb", job_dir / "output.log", state / "journal.sqlite",
                   *state.glob("journal.sqlite-*"), *state.glob("*.log")]
        assert any(p.name.startswith("w") or "forkserver" in p.name for p in state.glob("*.log"))
        for path in written:
            assert _mode(path) == 0o600, path


def _run_one_cell(cluster: Cluster) -> None:
    client = cluster.client()
    session = Session(client, session_name="files")
    try:
        ns: dict[str, object] = {}
        session.run_cell("x = 1\n", ns, CellOptions(hardware="cpu"), RecordingSink())
        assert ns["x"] == 1
    finally:
        session.close()
        client.close()


@pytest.mark.parametrize("name", [".", "..", "a/..", "dir/", "evil\\..\\x.ipynb"])
def test_a_job_name_that_is_not_a_file_name_is_refused_clearly(cluster: Cluster, name: str) -> None:
    data = nbformat.writes(new_notebook(cells=[new_code_cell("1")])).encode()
    jobs = JobsClient(cluster.address, cluster.token)
    try:
        with pytest.raises(ConfigError, match="does not end in a file name") as refused:
            jobs.submit(name, data, [])
        assert not isinstance(refused.value, BrokerError) and "jobs" not in str(refused.value)
        assert jobs.list() == []
    finally:
        jobs.close()

"""`gpucell run`: parameters, live output, partial notebooks, --resume, detached jobs, and the example notebooks."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from conftest import Cluster, make_cluster, pid_alive, wait_for
from gpucell.client.jobs_client import JobsClient
from gpucell.batch.params import INJECTED_TAG, resolve_type
from gpucell.batch.resume import cells_to_rerun

ROOT = Path(__file__).resolve().parent.parent
GPUCELL = [sys.executable, "-m", "gpucell.cli"]
RUN_TIMEOUT = 180


def local_env() -> dict[str, str]:
    """No broker: these notebooks never load gpucell, so nothing remote is involved."""
    return {k: v for k, v in os.environ.items() if k not in ("GPUCELL_BROKER", "GPUCELL_TOKEN")}


def write_nb(path: Path, *cells: Any) -> Path:
    nbformat.write(new_notebook(cells=list(cells)), path)
    return path


def gpucell(*args: str, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GPUCELL, *args], env=env or local_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def wait_for_file_cell(path: Path) -> str:
    # A bounded wait inside the notebook: the test decides when the cell may finish.
    return (f"import os, time\ndeadline = time.monotonic() + 120\n"
            f"while not os.path.exists({str(path)!r}):\n"
            f"    assert time.monotonic() < deadline, 'the test never released this cell'\n"
            f"    time.sleep(0.05)\nprint('released')")


def without_banner(nb: Any) -> Any:
    """The notebook less papermill's error banner cells (what --resume works on)."""
    nb.cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
    return nb


def outputs_text(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


# ---------------------------------------------------------------- parameters


def test_values_are_typed_as_papermill_does() -> None:
    assert [resolve_type(v) for v in ["3", "-2", "0.5", "1e3", "True", "False", "None", "hello", "3x", ""]] == \
        [3, -2, 0.5, 1000.0, True, False, None, "hello", "3x", ""]


def test_parameters_injected_after_the_parameters_cell(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "p.ipynb",
                  new_markdown_cell("# sweep"),
                  new_code_cell("lr = 1\nname = 'default'\nepochs = 2", metadata={"tags": ["parameters"]}),
                  new_code_cell("print(repr(lr), repr(name), repr(epochs), repr(flag), repr(nothing), repr(quote))"))
    out = tmp_path / "out.ipynb"
    done = gpucell("run", str(nb), "-o", str(out), "-p", "lr=0.01", "-p", "name=run 7", "-p", "flag=True",
                   "-p", "nothing=None", "-p", "quote=it's \"x\"")
    assert done.returncode == 0, done.stderr
    assert "0.01 'run 7' 2 True None 'it\\'s \"x\"'" in done.stdout
    # What a new user reads first is gpucell's own output, not ipykernel's transport warning.
    assert "WARNING" not in done.stderr and done.stdout.startswith("--- cell"), (done.stdout[:200], done.stderr)
    result = nbformat.read(out, as_version=4)
    assert result.cells[2].metadata["tags"] == [INJECTED_TAG]
    assert "lr = 0.01" in result.cells[2].source and "flag = True" in result.cells[2].source
    assert result.metadata["gpucell"]["parameters"]["lr"] == 0.01
    assert result.metadata["gpucell"]["status"] == "succeeded"


def test_bad_parameter_is_refused_before_running(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "p.ipynb", new_code_cell("print('ran')"))
    done = gpucell("run", str(nb), "-o", str(tmp_path / "o.ipynb"), "-p", "not-a-name=1")
    assert done.returncode != 0 and "KEY=VALUE" in done.stderr and "ran" not in done.stdout


# ---------------------------------------------------------------- live output


def test_output_streams_while_the_notebook_runs(tmp_path: Path) -> None:
    release = tmp_path / "release"
    nb = write_nb(tmp_path / "live.ipynb", new_code_cell("print('first cell says hi', flush=True)"),
                  new_code_cell(wait_for_file_cell(release)))
    proc = subprocess.Popen([*GPUCELL, "run", str(nb), "-o", str(tmp_path / "out.ipynb")], env=local_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        seen = b""
        while b"first cell says hi" not in seen:
            ready, _, _ = select.select([proc.stdout], [], [], RUN_TIMEOUT)
            assert ready, f"no output from gpucell run; got {seen!r}"
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"gpucell run ended early; got {seen!r}"
            seen += chunk
        # The last cell cannot end before this file exists: the first output came while it ran.
        assert not release.exists() and proc.poll() is None
        release.touch()
        rest = proc.stdout.read()
        assert proc.wait(RUN_TIMEOUT) == 0
        assert b"released" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- failure and resume


def test_failure_leaves_partial_notebook_and_resume_finishes_it(tmp_path: Path) -> None:
    flag = tmp_path / "fail-once"
    flag.touch()
    trace = tmp_path / "trace"
    log = f"open({str(trace)!r}, 'a').write"
    nb = write_nb(
        tmp_path / "job.ipynb",
        new_code_cell(f"x = 41\n{log}('A')"),                               # 0: defines x, read later
        new_code_cell(f"print('unrelated')\n{log}('B')"),                   # 1: touches nothing needed later
        new_code_cell(f"import os\nif os.path.exists({str(flag)!r}):\n    raise RuntimeError('flag present')\n"
                      f"y = x + 1"),                                        # 2: fails while the flag exists
        new_code_cell("print('answer', y)"))                               # 3
    out = tmp_path / "out.ipynb"
    failed = gpucell("run", str(nb), "-o", str(out))
    assert failed.returncode != 0
    assert "cell 2" in failed.stderr and "RuntimeError: flag present" in failed.stderr
    partial = nbformat.read(out, as_version=4)
    # papermill's banner: a red line at the top, and an anchor just before the failing cell.
    assert "An Exception was encountered" in partial.cells[0].source
    assert "Execution using papermill encountered an exception here" in partial.cells[3].source
    partial = without_banner(partial)
    assert outputs_text(partial.cells[1]) == "unrelated\n"
    assert any(o.output_type == "error" and o.ename == "RuntimeError" for o in partial.cells[2].outputs)
    assert partial.cells[3].outputs == [] and partial.cells[3].execution_count is None
    assert partial.metadata["gpucell"]["failed_cell"] == 2

    flag.unlink()
    resumed = gpucell("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "answer 42" in resumed.stdout
    # Cell 0 ran again (it defines x for cell 2); cell 1 did not (it defines nothing needed).
    assert trace.read_text() == "ABA"
    done = nbformat.read(out, as_version=4)
    assert done.metadata["gpucell"]["status"] == "succeeded"
    assert outputs_text(done.cells[1]) == "unrelated\n"  # kept from the first run
    assert "answer 42" in outputs_text(done.cells[3])


def test_resume_keeps_what_later_cells_need_transitively() -> None:
    cells = [new_code_cell("%load_ext gpucell"), new_code_cell("a = 1"), new_code_cell("b = a + 1"),
             new_code_cell("c = 5"), new_code_cell("items = []"), new_code_cell("items.append(b)"),
             new_code_cell("%%gpu A100\nd = b * 2"), new_code_cell("print(d, items)")]
    # Failing at 7: d (6) needs b (2) needs a (1); items is mutated by 5; c (3) is not needed; %load_ext always.
    assert cells_to_rerun(cells, 7) == [0, 1, 2, 4, 5, 6]


# ---------------------------------------------------------------- detached jobs


@pytest.fixture
def jobs_cluster(tmp_path: Path) -> Iterator[Cluster]:
    with make_cluster(tmp_path) as cluster:
        yield cluster


def jobs_json(env: dict[str, str]) -> list[dict[str, Any]]:
    done = gpucell("jobs", "--json", env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def job_state(env: dict[str, str], job_id: str) -> str:
    # Polled in-process through the real client: a CLI process per poll is slow on a loaded machine.
    client = JobsClient(env["GPUCELL_BROKER"], env["GPUCELL_TOKEN"])
    try:
        return next(j["state"] for j in client.list() if j["id"] == job_id)
    finally:
        client.close()


def job_log(env: dict[str, str], job_id: str) -> str:
    client = JobsClient(env["GPUCELL_BROKER"], env["GPUCELL_TOKEN"])
    try:
        return "".join(client.logs(job_id))
    finally:
        client.close()


def test_detached_job_outlives_its_client(jobs_cluster: Cluster, tmp_path: Path) -> None:
    release = tmp_path / "release"
    nb = write_nb(tmp_path / "detached.ipynb",
                  new_code_cell("n = 2", metadata={"tags": ["parameters"]}),
                  new_code_cell("%load_ext gpucell"),
                  new_code_cell("%%gpu\nimport os\nprint('on', os.environ['GPUCELL_HARDWARE'], 'n', n)"),
                  new_code_cell(wait_for_file_cell(release)))
    env = jobs_cluster.env()
    submitter = subprocess.Popen([*GPUCELL, "run", str(nb), "--detach", "--gpu", "T4", "-p", "n=5"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert submitter.stdout is not None
    job_id = submitter.stdout.readline().strip()
    submitter.send_signal(signal.SIGKILL)  # the client goes away; the job must not notice
    submitter.wait(30)
    assert job_id.startswith("job-"), submitter.stderr.read() if submitter.stderr else ""
    wait_for(lambda: "on T4 n 5" in job_log(env, job_id), timeout=RUN_TIMEOUT,
             what="the job's %%gpu cell output in its log")
    assert job_state(env, job_id) == "running"
    release.touch()
    follow = gpucell("logs", job_id, "-f", env=env)  # returns once the job has ended
    assert follow.returncode == 0 and "released" in follow.stdout
    wait_for(lambda: job_state(env, job_id) == "succeeded", timeout=30, what="the job to be recorded as done")
    job = next(j for j in jobs_json(env) if j["id"] == job_id)
    assert job["hardware"] == "T4" and job["cost"] > 0 and job["finished"] >= job["started"]
    fetched = tmp_path / "fetched.ipynb"
    assert gpucell("fetch", job_id, "-o", str(fetched), env=env).returncode == 0
    out = nbformat.read(fetched, as_version=4)
    assert "on T4 n 5" in outputs_text(out.cells[3]) and "released" in outputs_text(out.cells[4])


def test_cancel_stops_a_detached_job(jobs_cluster: Cluster, tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "stuck.ipynb", new_code_cell("print('started', flush=True)"),
                  new_code_cell(wait_for_file_cell(tmp_path / "never")))
    env = jobs_cluster.env()
    job_id = gpucell("run", str(nb), "--detach", env=env).stdout.strip()
    wait_for(lambda: "started" in job_log(env, job_id), timeout=RUN_TIMEOUT, what="job start")
    cancelled = gpucell("cancel", job_id, env=env)
    assert cancelled.returncode == 0 and "cancelling" in cancelled.stdout
    wait_for(lambda: job_state(env, job_id) == "cancelled", timeout=60, what="the job to stop")
    assert gpucell("fetch", job_id, "-o", str(tmp_path / "o.ipynb"), env=env).returncode == 0


def start_broker(config: Path, token: str) -> tuple[subprocess.Popen[str], str]:
    env = {**local_env(), "GPUCELL_CONFIG": str(config), "GPUCELL_TOKEN": token}
    proc = subprocess.Popen([*GPUCELL, "broker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("gpucell broker listening on "), line
    return proc, line.rsplit(" ", 1)[1].strip()


def stop_broker(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_jobs_are_listed_after_a_broker_restart(tmp_path: Path) -> None:
    config = tmp_path / "gpucell.toml"
    config.write_text(f'[broker]\nhost = "127.0.0.1"\nport = 0\nstate_dir = "{tmp_path / "state"}"\n')
    nb = write_nb(tmp_path / "quick.ipynb", new_code_cell("print('quick job')"))
    token = "restart-test-token"
    broker, address = start_broker(config, token)
    try:
        env = {**local_env(), "GPUCELL_BROKER": address, "GPUCELL_TOKEN": token}
        job_id = gpucell("run", str(nb), "--detach", env=env).stdout.strip()
        wait_for(lambda: job_state(env, job_id) == "succeeded", timeout=RUN_TIMEOUT, what="the job to finish")
    finally:
        stop_broker(broker)
    assert (tmp_path / "state" / "journal.sqlite").exists()
    broker, address = start_broker(config, token)
    try:
        env = {**local_env(), "GPUCELL_BROKER": address, "GPUCELL_TOKEN": token}
        jobs = jobs_json(env)
        assert [(j["id"], j["state"], j["notebook"]) for j in jobs] == [(job_id, "succeeded", str(nb))]
        assert "quick job" in gpucell("logs", job_id, env=env).stdout
    finally:
        stop_broker(broker)
    assert not pid_alive(broker.pid)


# ---------------------------------------------------------------- the example notebooks


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_example_notebook_runs(notebook: Path, jobs_cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / notebook.name
    done = gpucell("run", str(notebook), "-o", str(out), env=jobs_cluster.env(), cwd=notebook.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    result = nbformat.read(out, as_version=4)
    errors = [o for c in result.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors and result.metadata["gpucell"]["status"] == "succeeded"

"""`gpucell run` as a papermill user meets it: papermill's options, `papermill -e gpucell`, and issue 22's bugs."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest import Cluster, make_cluster, wait_for
from test_batch import GPUCELL, RUN_TIMEOUT, gpucell, job_log, job_state, local_env, outputs_text, without_banner

PAPERMILL = [sys.executable, "-m", "papermill"]


def write_nb(path: Path, *cells: Any, kernel: str | None = None) -> Path:
    nb = new_notebook(cells=list(cells))
    if kernel:
        nb.metadata.kernelspec = {"name": kernel, "display_name": kernel, "language": "python"}
    nbformat.write(nb, path)
    return path


def params_nb(path: Path) -> Path:
    return write_nb(path, kernel="python3", *(
                    new_code_cell("lr = 0.1\nlayers = [1]\nname = 'x'\nflag = False", metadata={"tags": ["parameters"]}),
                    new_code_cell("print(repr(lr), repr(layers), repr(name), repr(flag))"),
                    new_code_cell("print(sorted(k for k in dir() if k.startswith('PAPERMILL')))")))


def stream_texts(nb: Any) -> list[str]:
    return [outputs_text(c) for c in nb.cells if c.cell_type == "code"]


# ---------------------------------------------------------------- papermill's options, both front doors


def test_papermill_cli_and_gpucell_run_give_the_same_notebook(tmp_path: Path) -> None:
    nb = params_nb(tmp_path / "p.ipynb")
    (tmp_path / "params.yaml").write_text("name: from-file\n")
    b64 = base64.b64encode(b"flag: true\n").decode()
    options = ["-p", "lr", "0.5", "-y", "layers: [128, 64]", "-f", str(tmp_path / "params.yaml"), "-b", b64,
               "-r", "raw", "007", "--report-mode", "--inject-paths", "--log-output"]
    pm_out, gc_out = tmp_path / "pm.ipynb", tmp_path / "gc.ipynb"
    pm = subprocess.run([*PAPERMILL, "--engine", "gpucell", str(nb), str(pm_out), *options, "--no-progress-bar"],
                        env=local_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert pm.returncode == 0, pm.stderr
    gc = gpucell("run", str(nb), str(gc_out), *options)
    assert gc.returncode == 0, gc.stderr
    # Live output from the gpucell engine under papermill's own CLI too.
    assert "0.5 [128, 64] 'from-file' True" in pm.stdout and "0.5 [128, 64] 'from-file' True" in gc.stdout
    a, b = nbformat.read(pm_out, as_version=4), nbformat.read(gc_out, as_version=4)
    assert stream_texts(a) == stream_texts(b)
    assert "['PAPERMILL_INPUT_PATH', 'PAPERMILL_OUTPUT_PATH']" in stream_texts(b)[-1]
    for nb_ in (a, b):
        meta = nb_.metadata.papermill
        assert meta["parameters"]["layers"] == [128, 64] and meta["parameters"]["raw"] == "007"
        assert meta["input_path"] == str(nb) and meta["duration"] is not None
        assert all(c.metadata.jupyter.source_hidden for c in nb_.cells if c.cell_type == "code")
        assert nb_.metadata.gpucell["status"] == "succeeded"
        assert [c.metadata.papermill["status"] for c in nb_.cells] == ["completed"] * len(nb_.cells)


def test_typed_parameters_warnings_and_help(tmp_path: Path) -> None:
    nb = params_nb(tmp_path / "p.ipynb")
    done = gpucell("run", str(nb), "-o", str(tmp_path / "o.ipynb"), "-p", "layers=[128,64,32]", "-p", "lrr", "1")
    assert done.returncode == 0, done.stderr
    assert "0.1 [128, 64, 32] 'x' False" in done.stdout                  # a list, as with -y
    assert "warning: Passed unknown parameter: lrr" in done.stderr       # the typo is not silent
    helped = gpucell("run", str(nb), "--help-notebook")
    assert helped.returncode == 0 and "lr: Unknown type (default 0.1)" in helped.stdout and "layers" in helped.stdout


def test_prepare_only_and_stdin_to_stdout(tmp_path: Path) -> None:
    nb = params_nb(tmp_path / "p.ipynb")
    prepared = tmp_path / "prepared.ipynb"
    assert gpucell("run", str(nb), str(prepared), "-p", "lr", "2", "--prepare-only").returncode == 0
    out = nbformat.read(prepared, as_version=4)
    assert "lr = 2" in out.cells[1].source and stream_texts(out) == ["", "", "", ""]
    piped = subprocess.run([*GPUCELL, "run", "-", "-", "-p", "lr", "3"], input=nb.read_text(), env=local_env(),
                           capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert piped.returncode == 0, piped.stderr
    result = nbformat.reads(piped.stdout, as_version=4)    # stdout is the notebook alone; live output went to stderr
    assert "3 [1] 'x' False" in stream_texts(result)[2] and "3 [1] 'x' False" in piped.stderr


def test_the_notebooks_own_kernel_runs_it(tmp_path: Path) -> None:
    kernels = tmp_path / "share" / "kernels" / "marked"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "marked",
        "language": "python", "env": {"KERNEL_MARK": "the marked kernel"}}))
    nb = write_nb(tmp_path / "k.ipynb", new_code_cell("import os\nprint(os.environ.get('KERNEL_MARK', 'python3'))"),
                  kernel="marked")
    env = {**local_env(), "JUPYTER_PATH": str(tmp_path / "share")}
    own = gpucell("run", str(nb), "-o", str(tmp_path / "o.ipynb"), env=env)
    assert own.returncode == 0 and "the marked kernel" in own.stdout, own.stderr
    chosen = gpucell("run", str(nb), "-o", str(tmp_path / "o.ipynb"), "-k", "python3", env=env)
    assert chosen.returncode == 0 and "python3" in chosen.stdout, chosen.stderr


def test_python_api_mirrors_papermill(tmp_path: Path) -> None:
    nb = params_nb(tmp_path / "p.ipynb")
    code = (f"import gpucell.batch as b\nprint(sorted(b.inspect_notebook({str(nb)!r})))\n"
            f"out = b.execute_notebook({str(nb)!r}, {str(tmp_path / 'api.ipynb')!r}, parameters={{'layers': [9]}})\n"
            "print(out.metadata.papermill['parameters'])")
    done = subprocess.run([sys.executable, "-c", code], env=local_env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert "['flag', 'layers', 'lr', 'name']" in done.stdout and "{'layers': [9]}" in done.stdout


# ---------------------------------------------------------------- issue 22's bugs


def test_resume_reruns_cells_that_change_process_state_through_modules(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "helper.py").write_text("VALUE = 7\n")
    flag = tmp_path / "flag"
    flag.touch()
    nb = write_nb(tmp_path / "m.ipynb",
                  new_code_cell("import os, sys\nsys.path.insert(0, os.path.abspath('lib'))\nos.chdir('lib')"),
                  new_code_cell(f"import os\nassert not os.path.exists({str(flag)!r}), 'flag'\n"
                                "import helper\nprint('helper', helper.VALUE, os.path.basename(os.getcwd()))"))
    out = tmp_path / "o.ipynb"
    assert gpucell("run", str(nb), "-o", str(out), cwd=tmp_path).returncode == 1
    flag.unlink()
    resumed = gpucell("run", "--resume", str(out), "--cwd", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert "helper 7 lib" in resumed.stdout


@pytest.mark.parametrize("with_notebook", [False, True], ids=["output-only", "notebook-too"])
def test_resume_with_a_new_parameter_starts_at_the_failed_cell(tmp_path: Path, with_notebook: bool) -> None:
    flag = tmp_path / "flag"
    flag.touch()
    nb = write_nb(tmp_path / "r.ipynb",
                  new_code_cell("n = 1", metadata={"tags": ["parameters"]}),
                  new_code_cell("print('before, unrelated')"),
                  new_code_cell(f"import os\nassert not os.path.exists({str(flag)!r}), 'flag'\nprint('n is', n)"))
    out = tmp_path / "o.ipynb"
    assert gpucell("run", str(nb), "-o", str(out)).returncode == 1
    flag.unlink()
    args = ["run", str(nb), "--resume", str(out)] if with_notebook else ["run", "--resume", str(out)]
    resumed = gpucell(*args, "-p", "n", "5")
    assert resumed.returncode == 0, resumed.stderr
    assert "n is 5" in resumed.stdout and "before, unrelated" not in resumed.stdout   # not one cell early
    done = without_banner(nbformat.read(out, as_version=4))
    assert outputs_text(done.cells[2]) == "before, unrelated\n"   # kept from the failed run, after the new cell


def test_detach_with_output_and_bad_cwd_are_refused_in_one_line(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "a.ipynb", new_code_cell("print('ran')"))
    out = tmp_path / "o.ipynb"
    assert gpucell("run", str(nb), "-o", str(out)).returncode == 0
    before = out.read_bytes()
    for extra in (["--cwd", str(tmp_path / "missing")], ["--detach", "--cwd", str(tmp_path / "missing")],
                  ["--detach"]):
        done = gpucell("run", str(nb), "-o", str(out), *extra)
        assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr and "ran" not in done.stdout
    assert "--cwd" in gpucell("run", str(nb), "--cwd", str(tmp_path / "missing")).stderr
    assert "gpucell fetch" in gpucell("run", str(nb), "-o", str(out), "--detach").stderr
    assert out.read_bytes() == before       # the previous output is untouched


def test_sigterm_exits_143_and_saves(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "s.ipynb", new_code_cell("print('started', flush=True)"),
                  new_code_cell("import time\nwhile True:\n    time.sleep(0.05)"))
    out = tmp_path / "o.ipynb"
    proc = subprocess.Popen([*GPUCELL, "run", str(nb), "-o", str(out)], env=local_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        while "--- cell 1" not in proc.stdout.readline():   # cell 0 is saved, cell 1 runs
            assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(RUN_TIMEOUT) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved = nbformat.read(out, as_version=4)
    assert saved.metadata.gpucell["status"] == "cancelled" and "started" in outputs_text(saved.cells[0])


def test_timed_out_cell_prints_no_zmq_noise(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "t.ipynb", new_code_cell("import time\ntime.sleep(60)"))
    done = gpucell("run", str(nb), "-o", str(tmp_path / "o.ipynb"), "--timeout", "2")
    assert done.returncode == 1 and "CellTimeoutError" in done.stderr
    assert "ZMQError" not in done.stderr and "zmq" not in done.stderr.lower(), done.stderr


# ---------------------------------------------------------------- sweeps


def test_sweep_of_four_points_over_two_workers(tmp_path: Path) -> None:
    nb = params_nb(tmp_path / "s.ipynb")
    done = gpucell("run", str(nb), "--sweep", "lr=[0.1,0.01]", "--sweep", "layers=[[64],[128,64]]",
                   "--workers", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    outs = sorted(p.name for p in tmp_path.glob("s.*.out.ipynb"))
    assert outs == ["s.lr=0.01,layers=128-64.out.ipynb", "s.lr=0.01,layers=64.out.ipynb",
                    "s.lr=0.1,layers=128-64.out.ipynb", "s.lr=0.1,layers=64.out.ipynb"]
    one = nbformat.read(tmp_path / "s.lr=0.01,layers=128-64.out.ipynb", as_version=4)
    assert "0.01 [128, 64] 'x' False" in outputs_text(one.cells[2])
    assert "4/4" in done.stderr and "4 succeeded" in done.stderr
    # Without -o, plain runs with other parameters do not overwrite one another either.
    for lr in ("1", "2"):
        assert gpucell("run", str(nb), "-p", "lr", lr, cwd=tmp_path).returncode == 0
    assert (tmp_path / "s.lr=1.out.ipynb").exists() and (tmp_path / "s.lr=2.out.ipynb").exists()


@pytest.fixture
def jobs_cluster(tmp_path: Path) -> Any:
    with make_cluster(tmp_path) as cluster:
        yield cluster


def test_failed_job_hint_points_at_fetch_and_resume(jobs_cluster: Cluster, tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "f.ipynb", new_code_cell("raise RuntimeError('boom')"))
    env = jobs_cluster.env()
    job_id = gpucell("run", str(nb), "--detach", "-p", "layers=[1,2]", env=env).stdout.splitlines()[0].strip()
    wait_for(lambda: job_state(env, job_id) == "failed", timeout=RUN_TIMEOUT, what="the job to fail")
    log = job_log(env, job_id)
    assert f"gpucell fetch {job_id} -o OUT.ipynb" in log and "--resume OUT.ipynb" in log
    assert "state" not in log.split("partial output in", 1)[1].splitlines()[0]

"""Interrupting a kernel as Jupyter does (SIGINT to its process group) with the embedded and a standalone broker.

jupyter_client interrupts a kernel that leads its own process group with killpg(SIGINT): the embedded
broker and its workers must not be in that group, the cell must end with KeyboardInterrupt, the worker
must keep its state, and whatever the cell started (pool workers, subprocesses) must not outlive the kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from jupyter_client.manager import KernelManager

from conftest import pid_alive, wait_for


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {p for p in found if pid_alive(p)}


class Kernel:
    """A real ipykernel driven as a notebook frontend drives it (execute, watch iopub, interrupt)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env)
        self.client = self.km.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return self.km.provisioner.pid  # type: ignore[union-attr]

    def run(self, code: str, *, interrupt_on: str = "", timeout: float = 120) -> tuple[str, str, str]:
        """(status, stream text, error name) of one cell; with interrupt_on, the kernel is interrupted as soon
        as that text has been printed by the cell."""
        msg_id = self.client.execute(code)
        text, ename, interrupted = "", "", False
        while True:
            msg = self.client.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                text += content["text"]
                if interrupt_on and interrupt_on in text and not interrupted:
                    interrupted = True
                    self.km.interrupt_kernel()
            elif kind == "error":
                ename = content["ename"]
            elif kind == "status" and content["execution_state"] == "idle":
                break
        reply = self.client.get_shell_msg(timeout=timeout)
        return reply["content"]["status"], text, ename

    def shutdown(self) -> None:
        self.client.stop_channels()
        if self.km.is_alive():
            self.km.shutdown_kernel(now=False)


@pytest.fixture(params=["embedded", "standalone"])
def kernel(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kernel]:
    env = {k: v for k, v in os.environ.items() if k not in ("GPUCELL_BROKER", "GPUCELL_TOKEN", "GPUCELL_CONFIG")}
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    broker: subprocess.Popen[str] | None = None
    if request.param == "standalone":
        config = tmp_path / "gpucell.toml"
        config.write_text('[broker]\nhost = "127.0.0.1"\nport = 0\n[pools.cpu]\nsimulate = true\nmax_workers = 2\n')
        env.update(GPUCELL_TOKEN="interrupt-test-token", GPUCELL_CONFIG=str(config))
        broker = subprocess.Popen([sys.executable, "-m", "gpucell.cli", "broker", "--state-dir", str(tmp_path / "s")],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert broker.stdout is not None
        line = broker.stdout.readline()
        assert line.startswith("gpucell broker listening on "), line
        env["GPUCELL_BROKER"] = line.split()[-1]
        env.pop("GPUCELL_CONFIG")
    k = Kernel(env)
    try:
        yield k
    finally:
        k.shutdown()
        if broker is not None:
            broker.terminate()
            broker.wait(30)


def _ok(result: tuple[str, str, str]) -> str:
    status, text, ename = result
    assert status == "ok" and not ename, result
    return text


def test_interrupt_ends_the_cell_and_keeps_broker_worker_and_state(kernel: Kernel) -> None:
    _ok(kernel.run("%load_ext gpucell"))
    _ok(kernel.run("%%gpu cpu\nimport os\nstate = 41\nworker_pid = os.getpid()"))
    status, _, ename = kernel.run("%%gpu cpu\nimport time\nprint('looping', flush=True)\nwhile True:\n"
                                  "    time.sleep(0.05)", interrupt_on="looping")
    assert (status, ename) == ("error", "KeyboardInterrupt")
    # The next cell runs on the same worker, with what the session built before the interrupt.
    text = _ok(kernel.run("%%gpu cpu\nimport os\nprint(state + 1, os.getpid() == worker_pid)"))
    assert text.split()[-2:] == ["42", "True"]
    # The notebook's own cells were interrupted only once: a local cell still runs.
    assert _ok(kernel.run("print('local', 6 * 7)")).strip() == "local 42"


def test_interrupted_pool_and_subprocesses_end_and_nothing_outlives_the_kernel(kernel: Kernel,
                                                                               tmp_path: Path) -> None:
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    _ok(kernel.run("%load_ext gpucell"))
    _ok(kernel.run(f"%%gpu cpu\nimport os, subprocess, time, multiprocessing as mp\nstate = 'kept'\n"
                   f"PIDS = {str(pids_dir)!r}\n"
                   "def slow(i):\n"
                   "    open(os.path.join(PIDS, f'pool-{os.getpid()}'), 'w').close()\n"
                   "    time.sleep(600)\n"
                   "    return i\n"
                   # Started in one cell and left running, as a notebook leaves a server that ignores SIGINT.
                   "background = subprocess.Popen(['sh', '-c', 'trap \"\" INT; sleep 600'])"))
    # A pool kept in the namespace, interrupted mid-map: its workers get the interrupt, as they would locally.
    status, _, ename = kernel.run(
        "%%gpu cpu\npool = mp.Pool(2)\nresult = pool.map_async(slow, range(4))\n"
        "while len(os.listdir(PIDS)) < 2:\n    time.sleep(0.01)\nprint('mapping', flush=True)\nresult.get()",
        interrupt_on="mapping")
    assert (status, ename) == ("error", "KeyboardInterrupt")
    assert _ok(kernel.run("%%gpu cpu\nprint(state)")).strip() == "kept"
    # A `with` pool interrupted mid-map: the worker stays, with its state. (The interrupt comes once both pool
    # workers run a task: one that reaches a worker waiting for a task can hang the pool, locally as well.)
    status, _, ename = kernel.run(
        "%%gpu cpu\nwith mp.Pool(2) as p:\n    result = p.map_async(slow, range(4))\n"
        "    while len(os.listdir(PIDS)) < 4:\n        time.sleep(0.01)\n    print('mapping', flush=True)\n"
        "    result.get()", interrupt_on="mapping")
    assert (status, ename) == ("error", "KeyboardInterrupt")
    assert _ok(kernel.run("%%gpu cpu\nprint(state)")).strip() == "kept"

    # What is left running: the background server and the kept pool's (replaced) workers, as a local kernel keeps.
    text = _ok(kernel.run("%%gpu cpu\nprint(*[p.pid for p in pool._pool], background.pid, background.poll())"))
    *left, returncode = text.split()
    assert returncode == "None", text   # the server that ignores SIGINT runs on; the pool replaces its workers
    started = {int(name.split("-")[1]) for name in os.listdir(pids_dir)}
    owned = {int(p) for p in left} | started | descendants(kernel.pid)
    assert pid_alive(int(left[-1]))
    kernel.shutdown()
    for pid in owned:
        wait_for(lambda pid=pid: not pid_alive(pid), timeout=5, what=f"process {pid} to end with the kernel")


def test_a_killed_worker_leaves_no_process_of_its_cells(kernel: Kernel, tmp_path: Path) -> None:
    """A worker killed outright (SIGKILL: no chance to clean up) still takes what its cells started with it."""
    _ok(kernel.run("%load_ext gpucell"))
    text = _ok(kernel.run("%%gpu cpu\nimport os, subprocess\nchild = subprocess.Popen(['sleep', '600'])\n"
                          "print(os.getpid(), child.pid)"))
    worker_pid, child_pid = (int(p) for p in text.split()[-2:])
    assert pid_alive(child_pid)
    os.kill(worker_pid, 9)
    wait_for(lambda: not pid_alive(child_pid), timeout=5, what="the cell's subprocess to end with its worker")


def test_a_released_worker_takes_what_its_cells_started(shell: InteractiveShell) -> None:
    shell.run_cell_magic("gpu", "cpu", "import subprocess\nchild = subprocess.Popen(['sh', '-c', 'trap \"\" TERM INT; "
                                       "sleep 600'])\nchild_pid = child.pid")
    child_pid = shell.user_ns["child_pid"]
    assert pid_alive(child_pid)
    shell.run_line_magic("gpu_release", "")
    wait_for(lambda: not pid_alive(child_pid), timeout=5, what="the cell's subprocess to end with the release")

"""Warm pools, scale to zero, queues, usage and the fork server, through the magics and `gpucell status --json`."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from conftest import Cluster, RecordingSink, loaded_shell, magics_of, make_cluster, pid_alive, wait_for
from gpucell.client.embedded import start_embedded_broker
from gpucell.client import BrokerClient
from gpucell.client.session import CellOptions, CellReport, Session

POOLS = """
[pools.cpu]
simulate = true
max_workers = 2
idle_timeout = 300

[pools.T4]
simulate = true
max_workers = 1
idle_timeout = 300
price_per_hour = 0.5

[pools.A100]
simulate = true
min_warm = 1
max_workers = 3
idle_timeout = 300
price_per_hour = 3.0
preload = ["decimal", "gpucell_no_such_module"]

[pools.L4]
simulate = true
max_workers = 2
idle_timeout = 3
price_per_hour = 1.0
"""


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One broker for the module (starting one costs a fork-server template); each test has its own session."""
    with make_cluster(tmp_path_factory.mktemp("pools"), POOLS) as cluster:
        yield cluster


@pytest.fixture
def psh(pools: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    with loaded_shell(pools, monkeypatch) as sh:
        yield sh
    wait_for(lambda: not _session_workers(pools), timeout=10, what="the test's workers to go")


def _session_workers(cluster: Cluster) -> list[dict[str, Any]]:
    return [w for p in cluster.status()["pools"].values() for w in p["workers"] if w["session"]]


def status_json(cluster: Cluster) -> dict[str, Any]:
    """What `gpucell status --json` prints (the real CLI, a subprocess)."""
    done = cluster.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def workers_of(status: dict[str, Any], label: str, session: str | None = None) -> list[dict[str, Any]]:
    return [w for w in status["pools"][label]["workers"] if session is None or w["session"] == session]


def gpu(sh: InteractiveShell, line: str, cell: str) -> None:
    sh.run_cell_magic("gpu", line, cell)


def session_of(sh: InteractiveShell) -> str:
    return magics_of(sh).session.session_id


# ---------------------------------------------------------------- affinity, persistence, release


def test_a_session_keeps_its_worker_and_its_state(psh: InteractiveShell, pools: Cluster) -> None:
    gpu(psh, "T4", "import os, sys\nsys.gpucell_marker = 'kept'\nfirst = os.environ['GPUCELL_WORKER_ID'], os.getpid()\n")
    gpu(psh, "T4", "import os, sys\nsecond = os.environ['GPUCELL_WORKER_ID'], os.getpid()\nmarker = sys.gpucell_marker\n")
    assert psh.user_ns["first"] == psh.user_ns["second"]
    assert psh.user_ns["marker"] == "kept"  # set by the first cell, in the process only
    status = status_json(pools)
    (mine,) = workers_of(status, "T4", session_of(psh))
    assert mine["id"] == psh.user_ns["first"][0] and mine["pid"] == psh.user_ns["first"][1]
    assert mine["state"] == "idle" and 0 < mine["release_in_s"] <= 300


def test_idle_worker_is_released_at_the_pool_timeout_down_to_zero(psh: InteractiveShell, pools: Cluster) -> None:
    gpu(psh, "L4", "import os\npid = os.getpid()\n")
    pid = psh.user_ns["pid"]
    status = pools.status()
    (mine,) = workers_of(status, "L4", session_of(psh))
    assert status["pools"]["L4"]["idle_timeout"] == 3 and mine["release_in_s"] <= 3
    wait_for(lambda: not pools.status()["pools"]["L4"]["workers"], timeout=15, what="L4 to scale to zero")
    assert status_json(pools)["pools"]["L4"]["workers"] == []  # the zero-worker state, as the CLI shows it
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the released worker to exit")
    # The next cell starts a new worker from zero.
    gpu(psh, "L4", "import os\npid2 = os.getpid()\n")
    assert psh.user_ns["pid2"] != pid and magics_of(psh).session.last_report.cold


def test_idle_option_sets_this_sessions_timeout(psh: InteractiveShell, pools: Cluster) -> None:
    gpu(psh, "T4 --idle 2", "import os\npid = os.getpid()\n")
    (mine,) = workers_of(pools.status(), "T4", session_of(psh))
    assert mine["release_in_s"] <= 2  # the pool says 300
    wait_for(lambda: not workers_of(pools.status(), "T4"), timeout=15, what="the --idle release")
    wait_for(lambda: not pid_alive(psh.user_ns["pid"]), timeout=10, what="the worker to exit")


def test_gpu_release_releases_now(psh: InteractiveShell, pools: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    gpu(psh, "T4", "import os\npid = os.getpid()\nx = 5\n")
    (mine,) = workers_of(pools.status(), "T4", session_of(psh))
    capsys.readouterr()
    psh.run_line_magic("gpu_release", "T4")
    assert f"released {mine['id']}" in capsys.readouterr().out
    wait_for(lambda: not workers_of(pools.status(), "T4"), timeout=10, what="the released worker to be gone")
    wait_for(lambda: not pid_alive(psh.user_ns["pid"]), timeout=10, what="the released worker to exit")
    gpu(psh, "T4", "import os\npid2 = os.getpid()\ny = x + 1\n")  # x travels again from here
    assert psh.user_ns["pid2"] != psh.user_ns["pid"] and psh.user_ns["y"] == 6
    capsys.readouterr()
    psh.run_line_magic("gpu_release", "")
    psh.run_line_magic("gpu_release", "")
    assert capsys.readouterr().out.splitlines()[-1] == "no workers to release"


def test_min_warm_reserve_is_taken_at_once_and_refilled(psh: InteractiveShell, pools: Cluster) -> None:
    def reserves() -> list[dict[str, Any]]:
        return [w for w in workers_of(pools.status(), "A100") if not w["session"] and w["state"] == "idle"]

    (reserve,) = wait_for(reserves, timeout=30, what="a warm A100 reserve")
    gpu(psh, "A100", "import os, sys\nwid = os.environ['GPUCELL_WORKER_ID']\npreloaded = 'decimal' in sys.modules\n")
    report = magics_of(psh).session.last_report
    assert psh.user_ns["wid"] == reserve["id"] and not report.cold  # a running kernel, at once
    assert psh.user_ns["preloaded"]  # the pool's preload list, imported by the fork-server template
    (refill,) = wait_for(reserves, timeout=30, what="min_warm to be refilled")
    assert refill["id"] != reserve["id"]
    (mine,) = workers_of(pools.status(), "A100", session_of(psh))
    assert mine["id"] == reserve["id"]


# ---------------------------------------------------------------- queueing


class Background:
    """A second notebook session (its own client) running one cell in a thread."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.session = Session(BrokerClient(cluster.address, cluster.token), session_name=name)
        self.sink = RecordingSink()
        self.ns: dict[str, Any] = {}
        self.report: CellReport | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def start(self, source: str, hardware: str) -> "Background":
        def run() -> None:
            try:
                self.report = self.session.run_cell(source, self.ns, CellOptions(hardware=hardware), self.sink)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the test through join()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def phases(self) -> list[str]:
        return [text for _, name, text in self.sink.items if name == "phase"]

    def join(self, timeout: float = 60) -> CellReport:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the cell did not finish"
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join(30)
        self.session.close()
        self.session.client.close()


def test_a_full_pool_queues_the_next_session_in_order(psh: InteractiveShell, pools: Cluster) -> None:
    gpu(psh, "T4", "import os\nholder = os.environ['GPUCELL_WORKER_ID']\n")  # T4 has max_workers = 1
    b = Background(pools, "second").start("import os\nb_worker = os.environ['GPUCELL_WORKER_ID']\nprint('b ran')\n", "T4")
    c = Background(pools, "third")
    try:
        wait_for(lambda: "queued: #1 for T4" in b.phases(), timeout=15, what="b's queue position")
        c.start("print('c ran')\n", "T4")
        wait_for(lambda: "queued: #2 for T4" in c.phases(), timeout=15, what="c's queue position")
        status = status_json(pools)
        assert status["pools"]["T4"]["queued"] == 2 and len(status["pools"]["T4"]["workers"]) == 1
        assert b.thread is not None and b.thread.is_alive()
        psh.run_line_magic("gpu_release", "T4")  # the worker frees: b is first in line
        report = b.join()
        assert b.sink.text() == "b ran\n" and report.cold and report.queue_positions == [1]
        assert b.ns["b_worker"] != psh.user_ns["holder"]
        # c moved up, and says so; it runs once b's worker goes.
        wait_for(lambda: "queued: #1 for T4" in c.phases(), timeout=15, what="c to move up")
        assert c.thread is not None and c.thread.is_alive()
        b.session.release("T4")
        c.join()
        assert c.sink.text() == "c ran\n"
        assert [p for p in c.phases() if p.startswith("queued")] == ["queued: #2 for T4", "queued: #1 for T4"]
    finally:
        b.close()
        c.close()


# ---------------------------------------------------------------- usage


def test_usage_adds_up_to_the_assignment_intervals(psh: InteractiveShell, pools: Cluster) -> None:
    me = session_of(psh)

    def my_usage() -> dict[str, dict[str, Any]]:
        return {u["hardware"]: u for u in pools.status()["usage"]["sessions"] if u["session"] == me}

    before_t4 = time.monotonic()
    gpu(psh, "T4", "a = 1\n")
    after_t4 = time.monotonic()
    gpu(psh, "cpu", "b = 2\n")
    growing = my_usage()["T4"]["worker_seconds"]
    wait_for(lambda: my_usage()["T4"]["worker_seconds"] > growing, timeout=10, what="open intervals to grow")
    release_start = time.monotonic()
    psh.run_line_magic("gpu_release", "T4")
    release_end = time.monotonic()
    usage = my_usage()
    seconds = usage["T4"]["worker_seconds"]
    # Assigned between submitting the cell and its end; released while %gpu_release ran.
    assert release_start - after_t4 - 0.01 <= seconds <= release_end - before_t4 + 0.01
    assert usage["T4"]["cost"] == pytest.approx(seconds * 0.5 / 3600, abs=1e-6)
    total = status_json(pools)["usage"]
    cli = {u["hardware"]: u for u in total["sessions"] if u["session"] == me}
    assert cli["T4"]["worker_seconds"] == seconds  # the meter stopped at the release; the CLI says the same
    assert cli["cpu"]["cost"] == 0.0 and cli["cpu"]["worker_seconds"] > usage["cpu"]["worker_seconds"]
    assert total["total_cost"] == pytest.approx(sum(u["cost"] for u in total["sessions"]), abs=1e-5)


# ---------------------------------------------------------------- the fork server


def test_workers_are_forked_from_the_template_with_their_own_environment(psh: InteractiveShell,
                                                                         pools: Cluster) -> None:
    provisioner = pools.broker.service.provisioners["local"]
    gpu(psh, "cpu", "import os, numpy as np\nenv = dict(os.environ)\nppid = os.getppid()\nr = int(np.random.randint(1 << 30))\n")
    assert provisioner.forked(psh.user_ns["env"]["GPUCELL_WORKER_ID"])
    gpu(psh, "cpu --fresh", "import os, numpy as np\nenv2 = dict(os.environ)\nr2 = int(np.random.randint(1 << 30))\n")
    env, env2 = psh.user_ns["env"], psh.user_ns["env2"]
    assert psh.user_ns["ppid"] in provisioner.template_pids() and psh.user_ns["ppid"] != os.getpid()
    assert env["GPUCELL_HARDWARE"] == "cpu" and env["GPUCELL_WORKER_ID"] != env2["GPUCELL_WORKER_ID"]
    # No credential where user code looks (issue 18): the worker took its own out of os.environ before the cell.
    assert "GPUCELL_WORKER_TOKEN" not in env and "GPUCELL_TOKEN" not in env
    assert psh.user_ns["r"] != psh.user_ns["r2"]  # each fork reseeds numpy, as a fresh process would


def test_fork_server_off_starts_plain_subprocesses(tmp_path: Path) -> None:
    with make_cluster(tmp_path, "[pools.T4]\nsimulate = true\nmax_workers = 1\n", broker="fork_server = false") as c:
        session = Session(c.client())
        try:
            ns: dict[str, Any] = {}
            session.run_cell("import os\nppid = os.getppid()\nwid = os.environ['GPUCELL_WORKER_ID']\n", ns,
                             CellOptions(hardware="T4"), RecordingSink())
            provisioner = c.broker.service.provisioners["local"]
            assert ns["ppid"] == os.getpid() and not provisioner.forked(ns["wid"])
            assert provisioner.template_pids() == []
        finally:
            session.close()
            session.client.close()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited while we looked
            if ppid == pid:
                found.append(int(entry.name))
    return found


def test_forked_workers_die_when_the_broker_is_killed(tmp_path: Path) -> None:
    config = tmp_path / "pools.toml"
    config.write_text("[pools.T4]\nsimulate = true\nmax_workers = 2\nmin_warm = 1\n")
    broker = start_embedded_broker(str(config))
    try:
        session = Session(BrokerClient(broker.address, broker.token))
        ns: dict[str, Any] = {}
        session.run_cell("import os\npid = os.getpid()\nppid = os.getppid()\n", ns, CellOptions(hardware="T4"),
                         RecordingSink())
        templates = _children(broker.pid)
        assert ns["ppid"] in templates  # forked by the template, not started by the broker
        reserve = wait_for(lambda: [w["pid"] for w in session.client.status()["pools"]["T4"]["workers"]
                                    if not w["session"] and w["pid"]], timeout=30, what="the min_warm reserve")
        session.client.close()
        doomed = [ns["pid"], *reserve, *templates, *(p for t in templates for p in _children(t))]  # + the spare
        assert len(doomed) >= 5
        os.kill(broker.pid, signal.SIGKILL)
        broker.process.wait(10)
        for pid in doomed:
            wait_for(lambda pid=pid: not pid_alive(pid), timeout=10, what=f"process {pid} to die with the broker")
    finally:
        broker.stop()

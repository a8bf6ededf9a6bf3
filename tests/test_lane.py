"""The direct lane: a session's warm cells go straight to its worker, and the broker still knows all."""

from __future__ import annotations

import _thread
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from conftest import Cluster, RecordingSink, magics_of, make_cluster, wait_for
from gpucell.client.session import CellOptions, CellReport, Session
from gpucell.errors import WorkerLostError
from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol import lane


def run(session: Session, source: str, ns: dict[str, Any] | None = None, sink: RecordingSink | None = None,
        **options: Any) -> CellReport:
    return session.run_cell(source, ns if ns is not None else {}, CellOptions(hardware="cpu", **options),
                            sink or RecordingSink())


def _workers(cluster: Cluster) -> list[dict[str, Any]]:
    return [w for p in cluster.status()["pools"].values() for w in p["workers"]]


def test_warm_cells_take_the_lane_and_options_that_need_the_broker_do_not(shell: InteractiveShell) -> None:
    session = magics_of(shell).session
    shell.run_cell_magic("gpu", "cpu", "import os\npid = os.getpid()\nstate = 41\n")
    assert not session.last_report.lane                        # the first cell: the broker assigns a worker
    shell.run_cell_magic("gpu", "cpu", "state += 1\nsame = os.getpid() == pid\n")
    assert session.last_report.lane and shell.user_ns["state"] == 42 and shell.user_ns["same"] is True
    shell.run_cell_magic("gpu", "cpu --timeout 30", "state += 1\n")   # the broker enforces --timeout
    assert not session.last_report.lane and shell.user_ns["state"] == 43
    shell.run_cell_magic("gpu", "cpu", "state += 1\n")
    assert session.last_report.lane and shell.user_ns["state"] == 44


def test_a_lane_cell_keeps_its_worker_busy_past_the_idle_timeout(tmp_path: Path) -> None:
    pools = "[pools.cpu]\nsimulate = true\nmax_workers = 1\nidle_timeout = 2\n"
    with make_cluster(tmp_path, pools) as cluster:
        session = Session(cluster.client())
        first = run(session, "import os\npid = os.getpid()\n")
        sink = RecordingSink()
        seen: list[str] = []

        def shows_busy() -> bool:
            """Once the cell has printed, the worker's state as the broker reports it (kept in `seen`)."""
            if not sink.text():
                return False
            seen.append(_workers(cluster)[0]["state"])
            return seen[-1] == "busy"

        # While the lane cell sleeps past the 2 s timeout, the broker shows the worker busy, not idle.
        watcher = threading.Thread(target=lambda: wait_for(shows_busy, 30, what="the worker to show busy"))
        ns: dict[str, Any] = {}
        watcher.start()
        report = run(session, "import os, time\nprint('sleeping', flush=True)\ntime.sleep(3)\np = os.getpid()\n",
                     ns, sink)
        watcher.join(30)
        assert report.lane and report.worker_id == first.worker_id and report.finished.ok  # type: ignore[union-attr]
        assert "busy" in seen
        # ... and it was not released under the cell; it goes at its idle timeout after the cell.
        wait_for(lambda: _workers(cluster) == [], 30, what="the idle release")
        session.close()


def test_interrupting_a_lane_cell_keeps_the_worker_and_its_state(shell: InteractiveShell, cluster: Cluster) -> None:
    shell.run_cell_magic("gpu", "cpu", "import os\nstate = 'kept'\npid = os.getpid()\n")
    magics_of(shell).sink = RecordingSink(on_text=lambda text: _thread.interrupt_main() if "looping" in text else None)
    with pytest.raises(KeyboardInterrupt):
        shell.run_cell_magic("gpu", "cpu", "import time\nprint('looping', flush=True)\nwhile True:\n"
                                           "    time.sleep(0.01)\nafter = 1\n")
    assert magics_of(shell).session.last_report.lane and "after" not in shell.user_ns
    magics_of(shell).sink = RecordingSink()
    shell.run_cell_magic("gpu", "cpu", "import os\nsame = (os.getpid(), state)\n")
    assert shell.user_ns["same"] == (shell.user_ns["pid"], "kept") and magics_of(shell).session.last_report.lane
    wait_for(lambda: [w["state"] for w in _workers(cluster)] == ["idle"], 10, what="the worker to show idle")


def test_a_worker_killed_mid_lane_cell_fails_it_with_the_reason_and_is_replaced(cluster: Cluster) -> None:
    session = Session(cluster.client())
    run(session, "x = 1\n")
    pids: list[int] = []
    sink = RecordingSink(on_text=lambda text: pids.append(int(text.split()[1])) if text.startswith("pid") else None)
    killer = threading.Thread(target=lambda: (wait_for(lambda: pids, 60), os.kill(pids[0], signal.SIGKILL)))
    killer.start()
    with pytest.raises(WorkerLostError, match="worker lost: .*signal") as info:
        run(session, "import os, time\nprint('pid', os.getpid(), flush=True)\ntime.sleep(120)\n", sink=sink)
    killer.join(10)
    assert session.last_report.lane, info.value  # type: ignore[union-attr]
    report = run(session, "y = 2\n")
    assert report.cold and not report.lane
    session.close()


def test_a_worker_released_elsewhere_sends_the_next_cell_through_the_broker(cluster: Cluster) -> None:
    session = Session(cluster.client())
    ns: dict[str, Any] = {}
    first = run(session, "import os\npid = os.getpid()\n", ns)
    other = cluster.client()
    assert other.release(session.session_id, hardware="cpu") == [first.worker_id]  # e.g. the sidebar's Release
    other.close()
    wait_for(lambda: _workers(cluster) == [], 30, what="the release")
    report = run(session, "import os\npid2 = os.getpid()\n", ns)
    assert report.cold and not report.lane and ns["pid2"] != ns["pid"]
    session.close()


def test_the_lane_runs_nothing_without_the_ticket(cluster: Cluster) -> None:
    session = Session(cluster.client())
    ns: dict[str, Any] = {}
    run(session, "hits = 0\n", ns)
    address = session.lanes["cpu"].address
    with pytest.raises(ConnectionError, match="no gpucell lane"):
        lane.connect(address, "not-the-ticket")
    host, _, port = address.rpartition(":")
    request = pb.CellExecuteRequest(session_id=session.session_id, cell_id="intruder", hardware="cpu",
                                    source="hits = 100\n")
    with socket.create_connection((host, int(port))) as intruder:  # ignoring the refusal, sending anyway
        intruder.sendall(b"not-the-ticket\n" + lane.frame(pb.LaneRequest(execute=request)))
        with intruder.makefile("rb") as reader:
            try:
                assert reader.read() == b""  # closed on us: no welcome, no events
            except ConnectionResetError:
                pass
    run(session, "hits += 1\n", ns)
    assert ns["hits"] == 1 and session.last_report.lane  # type: ignore[union-attr]
    session.close()


def test_lane_output_arrives_complete_and_in_order(cluster: Cluster) -> None:
    session = Session(cluster.client())
    run(session, "pass\n")
    sink = RecordingSink()
    report = run(session, "import sys\nfor i in range(20000):\n    print(i)\nprint('err', file=sys.stderr)\n",
                 sink=sink)
    assert report.lane
    stdout = "".join(text for _, name, text in sink.items if name == "stdout")
    assert stdout == "".join(f"{i}\n" for i in range(20000))
    assert "err" in "".join(text for _, name, text in sink.items if name == "stderr")
    session.close()


def test_a_lane_cell_that_kills_its_worker_at_once_gets_the_reason(cluster: Cluster) -> None:
    # The broker hears of a short lane cell only when it ends; this one never ends, yet the user still
    # learns why the worker went.
    session = Session(cluster.client())
    run(session, "x = 1\n")
    with pytest.raises(WorkerLostError, match="worker lost: .*signal"):
        run(session, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert session.last_report.lane  # type: ignore[union-attr]
    assert run(session, "y = 2\n").cold
    session.close()

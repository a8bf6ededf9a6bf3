"""A warm (lane) cell learns that its worker is gone as fast as a cell on the broker's path (issue 23)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import RecordingSink, make_cluster, pid_alive, wait_for
from gpucell.client.session import CellOptions, CellReport, Session
from gpucell.errors import WorkerLostError

HEARTBEAT_TIMEOUT = 3.0
LONG_CELL = "import os, time\nprint('pid', os.getpid(), flush=True)\ntime.sleep(120)\n"


def stop_during_lane_cell(session: Session, hardware: str, stop: Callable[[int], None]) -> tuple[float, BaseException]:
    """Run a warm cell that prints its pid and sleeps; `stop(pid)` once it runs. (seconds from the stop to the
    cell's error, the error)."""
    ns: dict[str, Any] = {}
    session.run_cell("x = 1\n", ns, CellOptions(hardware=hardware), RecordingSink())   # the broker's path: a lane
    sink = RecordingSink()
    stopped_at: list[float] = []

    def stopper() -> None:
        found = wait_for(lambda: re.search(r"pid (\d+)\n", sink.text()), 60, what="the lane cell to start")
        stop(int(found.group(1)))
        stopped_at.append(time.monotonic())

    thread = threading.Thread(target=stopper, daemon=True)
    thread.start()
    with pytest.raises(WorkerLostError) as info:
        session.run_cell(LONG_CELL, ns, CellOptions(hardware=hardware), sink)
    ended = time.monotonic()
    thread.join(10)
    report = session.last_report
    assert isinstance(report, CellReport) and report.lane, "the cell did not take the lane"
    return ended - stopped_at[0], info.value


def test_a_stopped_worker_fails_a_lane_cell_within_the_heartbeat_timeout(tmp_path: Path) -> None:
    with make_cluster(tmp_path, broker=f"heartbeat_timeout = {HEARTBEAT_TIMEOUT}") as cluster:
        session = Session(cluster.client())
        stopped: list[int] = []

        def stop(pid: int) -> None:
            stopped.append(pid)
            os.kill(pid, signal.SIGSTOP)

        try:
            elapsed, error = stop_during_lane_cell(session, "cpu", stop)
            assert f"worker lost: no heartbeat for {HEARTBEAT_TIMEOUT:g}s" in str(error), error
            assert elapsed <= HEARTBEAT_TIMEOUT + 1.0, f"{elapsed:.2f}s"
            # The next cell gets a fresh worker through the broker.
            ns: dict[str, Any] = {}
            session.run_cell("y = 2\n", ns, CellOptions(hardware="cpu"), RecordingSink())
            assert ns["y"] == 2 and session.last_report.cold  # type: ignore[union-attr]
        finally:
            for pid in stopped:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGCONT)
            session.close()

"""Process state travels with a cell, every option is checked on every route, and a RemoteRef says how to pull it.

Each behaviour is checked on both routes a cell takes: through the broker (a first cell, or `--timeout`) and
over the lane (a warm cell)."""

from __future__ import annotations

import os
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell

from conftest import RecordingSink, magics_of
from gpucell.errors import GpucellError, RemoteRefError
from gpucell.namespace import state

ROUTES = {"broker": "cpu --timeout 60", "lane": "cpu"}


def gpu(shell: InteractiveShell, line: str, source: str) -> Any:
    return shell.run_cell_magic("gpu", line, source)


def warm(shell: InteractiveShell, route: str) -> str:
    """The option line for `route`; a lane cell needs a warm worker first."""
    gpu(shell, "cpu", "pass")
    return ROUTES[route]


@pytest.mark.parametrize("route", ROUTES)
def test_the_notebooks_rng_seeds_reach_the_worker_and_come_back(shell: InteractiveShell, route: str) -> None:
    line = warm(shell, route)
    np.random.seed(0)
    random.seed(1)
    expected_np = np.random.RandomState(0).rand(3).tolist()
    expected_random = random.Random(1).random()
    gpu(shell, line, "import numpy as np\nimport random\ndrawn = np.random.rand(3).tolist()\nr = random.random()\n")
    assert shell.user_ns["drawn"] == expected_np and shell.user_ns["r"] == expected_random
    # The worker's draws moved the generators: the notebook's are where a local cell would have left them.
    local = np.random.RandomState(0)
    local.rand(3)
    assert np.random.rand() == local.rand()
    # The worker seeds; the next local draw follows that seed.
    gpu(shell, line, "np.random.seed(7)\nrandom.seed(8)\n")
    assert np.random.rand() == np.random.RandomState(7).rand()
    assert random.random() == random.Random(8).random()


@pytest.mark.parametrize("route", ROUTES)
def test_rcparams_warnings_cwd_and_sys_path_travel(shell: InteractiveShell, route: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    line = warm(shell, route)
    above = Path(state.set_origin()).parent
    monkeypatch.chdir(above)   # relative to where the session started: ".." on both sides
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])
    monkeypatch.setitem(matplotlib.rcParams, "font.size", 14.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sink = RecordingSink()
        magics_of(shell).session.run_cell(
            "import os, sys, warnings, matplotlib\nwarnings.warn('hidden')\n"
            "size = matplotlib.rcParams['font.size']\nextra = sys.path[-1]\nwhere = os.getcwd()\n",
            shell.user_ns, magics_of(shell).parse_options(line), sink)
    assert "hidden" not in sink.text("stderr")
    assert shell.user_ns["size"] == 14.0 and shell.user_ns["extra"] == str(tmp_path)
    assert shell.user_ns["where"] == str(above)


@pytest.mark.parametrize("route", ROUTES)
def test_nothing_travels_when_nothing_changed(shell: InteractiveShell, route: str) -> None:
    line = warm(shell, route)
    session = magics_of(shell).session
    gpu(shell, line, "x = 1")
    worker = session.last_report.worker_id
    if route == "lane":
        assert session.last_report.lane
        assert session.states.outgoing(worker) == b""   # what the next warm cell would carry: nothing
    np.random.rand()   # the notebook's generator moves: the next cell carries it
    assert state.decode(session.states.outgoing(worker)).keys() >= {"numpy.random"}


def test_strict_is_checked_on_the_lane_as_on_the_broker(shell: InteractiveShell) -> None:
    session = magics_of(shell).session
    with pytest.raises(GpucellError, match="strict mode is on"):   # broker route: a first cell
        gpu(shell, "H100 --strict", "x = 1")
    gpu(shell, "H100", "import os\npid = os.getpid()")            # a CPU fallback: the lane is the cpu worker's
    gpu(shell, "H100", "same = os.getpid() == pid")
    assert session.last_report.lane and shell.user_ns["same"] is True
    with pytest.raises(GpucellError, match="strict mode is on"):   # warm: the lane would run it on the CPU
        gpu(shell, "H100 --strict", "ran = True")
    assert "ran" not in shell.user_ns
    # A lane to the hardware asked for stays a lane for a strict cell.
    gpu(shell, "cpu", "y = 1")
    gpu(shell, "cpu --strict", "y += 1")
    assert session.last_report.lane and shell.user_ns["y"] == 2


@pytest.mark.parametrize("route", ROUTES)
def test_a_value_that_cannot_travel_is_named_and_refuses_use_with_the_pull_hint(shell: InteractiveShell,
                                                                                route: str) -> None:
    line = warm(shell, route)
    sink = RecordingSink()
    session = magics_of(shell).session
    session.run_cell("gen = (i for i in range(3))\n", shell.user_ns, magics_of(shell).parse_options(line), sink)
    notices = [t for _, kind, t in sink.items if kind == "phase"]
    assert "gpucell: gen stays on the worker (a generator cannot be pickled); %gpu_pull gen brings a copy if it can" \
        in notices
    gen = shell.user_ns["gen"]
    for use in (lambda: next(gen), lambda: len(gen), lambda: gen + 1, lambda: gen[0], lambda: list(gen),
                lambda: -gen, lambda: 1 in gen, lambda: float(gen)):
        with pytest.raises(RemoteRefError, match=r"^'gen' is a RemoteRef .*%gpu_pull gen") as caught:
            use()
        assert isinstance(caught.value, TypeError) and "\n" not in str(caught.value)
    gpu(shell, line, "first = next(gen)")   # used in place on the worker
    assert shell.user_ns["first"] == 0


def test_an_adapter_from_another_package_travels(shell: InteractiveShell) -> None:
    box: dict[str, Any] = {"value": "notebook"}
    adapter = state.StateAdapter("test.box", "", lambda: box["value"], lambda v: box.update(value=v))
    state.register(adapter)
    try:
        box["value"] = "set in the notebook"
        gpu(shell, "cpu", "x = 1")   # the worker has no such adapter: the state is skipped there, not an error
        assert shell.user_ns["x"] == 1
    finally:
        state.adapters().remove(adapter)


def test_an_adapter_whose_module_is_not_imported_costs_nothing() -> None:
    calls: list[str] = []
    adapter = state.StateAdapter("test.absent", "gpucell_no_such_module", lambda: calls.append("read"),
                                 lambda v: calls.append("apply"), lambda: calls.append("mark"))
    state.register(adapter)
    try:
        sync = state.StateSync()
        sync.baseline()
        sync.changed()
        assert calls == []
    finally:
        state.adapters().remove(adapter)


def test_cwd_state_is_relative_to_where_the_session_started() -> None:
    origin = state.set_origin()
    assert state.adapters()[[a.name for a in state.adapters()].index("cwd")].read() == os.path.relpath(
        os.getcwd(), origin).replace(os.sep, "/")

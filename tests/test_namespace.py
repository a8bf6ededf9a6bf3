"""Namespace semantics through the magics: sent once, never needlessly, mutations back, RemoteRefs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell

from conftest import magics_of
from gpucell import RemoteRef
from gpucell.errors import RemoteRefError, SerializationError


def run(sh: InteractiveShell, line: str, cell: str) -> Any:
    sh.run_cell_magic("gpu", line, cell)
    return magics_of(sh).session.last_report


def test_large_input_is_sent_once(shell: InteractiveShell) -> None:
    shell.user_ns["big"] = np.ones(300_000_000 // 8)  # 300 MB
    first = run(shell, "cpu", "total = float(big.sum())\n")
    second = run(shell, "cpu", "total2 = float(big[:10].sum())\n")
    assert shell.user_ns["total"] == 300_000_000 // 8 and shell.user_ns["total2"] == 10
    assert first.finished.bytes_in >= 300_000_000
    assert second.finished.bytes_in < 10_000  # content-addressed: the worker kept it


def test_unrelated_large_value_is_never_sent(shell: InteractiveShell) -> None:
    shell.user_ns["huge"] = np.zeros(2_000_000_000 // 8)  # 2 GB, never touched here
    shell.user_ns["small"] = 3
    report = run(shell, "cpu", "y = small * 2\n")
    assert shell.user_ns["y"] == 6
    assert report.finished.bytes_in < 10_000


@pytest.mark.parametrize("setup, cell, name, expected", [
    ("lst = [1, 2]", "lst.append(3)\n", "lst", [1, 2, 3]),
    ("d = {'a': 1}", "d['k'] = 'v'\n", "d", {"a": 1, "k": "v"}),
])
def test_in_place_mutation_comes_back(shell: InteractiveShell, setup: str, cell: str, name: str, expected: object) -> None:
    shell.run_cell(setup)
    run(shell, "cpu", cell)
    assert shell.user_ns[name] == expected


def test_array_mutated_in_place_comes_back(shell: InteractiveShell) -> None:
    shell.user_ns["arr"] = np.zeros(4)
    run(shell, "cpu", "arr[0] = 5\n")
    assert shell.user_ns["arr"].tolist() == [5, 0, 0, 0]


def test_large_result_comes_back_over_data_path(shell: InteractiveShell) -> None:
    report = run(shell, "cpu", "import numpy as np\nout = np.arange(5_000_000, dtype=np.int64)\n")
    assert shell.user_ns["out"][-1] == 4_999_999 and report.finished.bytes_out >= 40_000_000


def test_del_deletes_locally(shell: InteractiveShell) -> None:
    shell.user_ns["gone"] = 1
    run(shell, "cpu", "del gone\n")
    assert "gone" not in shell.user_ns


def test_over_limit_value_stays_remote_and_can_be_pulled(shell: InteractiveShell) -> None:
    magics_of(shell).settings.return_limit_mb = 1
    run(shell, "cpu", "import numpy as np\nbig = np.ones(500_000)\n")
    ref = shell.user_ns["big"]
    assert isinstance(ref, RemoteRef) and "return limit" in repr(ref) and "big" in repr(ref)
    with pytest.raises(RemoteRefError, match="gpu_pull big"):
        len(ref)
    with pytest.raises(RemoteRefError):
        ref + 1
    run(shell, "cpu", "s = float(big.sum())\n")  # used in place, no transfer
    assert shell.user_ns["s"] == 500_000.0
    shell.run_line_magic("gpu_pull", "big")
    assert isinstance(shell.user_ns["big"], np.ndarray) and shell.user_ns["big"].shape == (500_000,)


def test_device_bound_value_stays_remote(shell: InteractiveShell) -> None:
    run(shell, "cpu", "class Model:\n    __gpucell_device_bound__ = True\n    w = 3\nm = Model()\n")
    assert isinstance(shell.user_ns["m"], RemoteRef) and "device-bound" in repr(shell.user_ns["m"])
    run(shell, "cpu", "w = m.w\n")
    assert shell.user_ns["w"] == 3


def test_keep_and_pull_options(shell: InteractiveShell) -> None:
    run(shell, "cpu --keep a", "a = 1\nb = 2\n")
    assert isinstance(shell.user_ns["a"], RemoteRef) and shell.user_ns["b"] == 2
    magics_of(shell).settings.return_limit_mb = 1
    run(shell, "cpu --pull big", "import numpy as np\nbig = np.ones(500_000)\n")
    assert isinstance(shell.user_ns["big"], np.ndarray)


def test_lost_remote_ref_names_variable_and_cell(shell: InteractiveShell) -> None:
    shell.run_cell("%%gpu cpu\ngen = (i for i in range(3))\n")
    count = magics_of(shell).session.refs["gen"].execution_count
    shell.run_line_magic("gpu_release", "")
    with pytest.raises(RemoteRefError) as info:
        shell.run_cell_magic("gpu", "cpu", "x = next(gen)\n")
    assert "'gen'" in str(info.value) and f"In[{count}]" in str(info.value)


def test_module_travels_as_import(shell: InteractiveShell) -> None:
    shell.run_cell("import json as js\nfrom os import path as p\n")
    run(shell, "cpu", "out = js.dumps([1]) + p.sep\n")
    assert shell.user_ns["out"] == "[1]/"


def test_version_preflight_refuses_function_for_other_python(shell: InteractiveShell) -> None:
    shell.run_cell("def f(x):\n    return x + 1\n")
    run(shell, "cpu", "y = f(1)\n")
    session = magics_of(shell).session
    # What a worker on another Python reports at registration reaches the client with each cell.
    session.worker_versions["cpu"]["python"] = "3.99.0"
    with pytest.raises(SerializationError, match=r"'f'.*Python 3.99"):
        shell.run_cell_magic("gpu", "cpu", "z = f(2)\n")
    assert "z" not in shell.user_ns


def test_a_value_only_the_worker_can_load_stays_there(shell: InteractiveShell, tmp_path: Path) -> None:
    """A worker often has packages this kernel lacks: such a value stays remote as a RemoteRef that later
    cells use in place, while the cell's other outputs land here."""
    (tmp_path / "gpucell_worker_only.py").write_text("class Thing:\n    def __init__(self, n):\n        self.n = n\n")
    run(shell, "cpu", f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport gpucell_worker_only\n"
                      "thing = gpucell_worker_only.Thing(41)\nplain = 5\n")
    report = magics_of(shell).session.last_report
    ns = shell.user_ns
    assert ns["plain"] == 5
    thing = ns["thing"]
    assert isinstance(thing, RemoteRef) and "ModuleNotFoundError" in repr(thing)
    assert any("'thing'" in line and "stays on the worker" in line for line in report.kept_remote)
    with pytest.raises(RemoteRefError, match="'thing' is a RemoteRef"):
        thing.n  # noqa: B018
    run(shell, "cpu", "n = thing.n + 1\n")
    assert ns["n"] == 42

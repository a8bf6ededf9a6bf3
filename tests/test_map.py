"""Fan-out end to end: gpucell.map, @gpucell.function and %%gpu_map against a real broker and workers."""

from __future__ import annotations

import _thread
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

import gpucell
from conftest import Cluster, RecordingSink, magics_of, wait_for
from gpucell import RemoteError
from gpucell.client import BrokerClient


@pytest.fixture
def client(cluster: Cluster) -> Iterator[BrokerClient]:
    c = cluster.client()
    yield c
    c.close()


def _workers(cluster: Cluster) -> list[dict[str, Any]]:
    return [w for p in cluster.status()["pools"].values() for w in p["workers"]]


def _none_busy(cluster: Cluster) -> bool:
    return all(w["state"] != "busy" for w in _workers(cluster))


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_order_is_kept_when_durations_are_uneven(client: BrokerClient, cluster: Cluster) -> None:
    def work(x: int) -> int:
        time.sleep(0.03 * (x % 4 == 0))   # every fourth item is slow: results complete out of order
        return x * 10

    assert list(gpucell.map(work, range(40), gpu="cpu", workers=2, client=client)) == [x * 10 for x in range(40)]
    # Released when the map ends, not left idle on the pool's timeout.
    wait_for(lambda: all(w["state"] == "releasing" for w in _workers(cluster)), timeout=10, what="release")


def test_unordered_yields_as_completed(client: BrokerClient, tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    def work(x: int) -> int:
        if x == 0:   # item 0 finishes only after the caller has seen another item's result
            deadline = time.monotonic() + 30
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return x

    seen = []
    for value in gpucell.map(work, range(10), gpu="cpu", workers=2, ordered=False, client=client):
        seen.append(value)
        gate.touch()
    assert seen[0] != 0 and sorted(seen) == list(range(10))


def test_retries_recover_a_flaky_item(client: BrokerClient, tmp_path: Path) -> None:
    flag = tmp_path / "failed-once"

    def flaky(x: int) -> int:
        if x == 3 and not flag.exists():
            flag.touch()
            raise ConnectionError("transient")
        return x + 1

    assert list(gpucell.map(flaky, range(8), gpu="cpu", workers=2, retries=2, client=client)) == list(range(1, 9))
    assert flag.exists()


def test_return_exceptions_puts_errors_in_place(client: BrokerClient) -> None:
    def picky(x: int) -> int:
        if x % 4 == 1:
            raise ValueError(f"bad {x}")
        return x

    results = list(gpucell.map(picky, range(12), gpu="cpu", workers=2, return_exceptions=True, client=client))
    for x, value in enumerate(results):
        if x % 4 == 1:
            assert isinstance(value, RemoteError) and value.ename == "ValueError"
            assert f"bad {x}" in str(value) and value.index == x
            assert "in picky" in value.traceback_text and "fanout.py" not in value.traceback_text
        else:
            assert value == x


def test_a_fatal_failure_cancels_the_rest(client: BrokerClient, cluster: Cluster) -> None:
    def work(x: int) -> int:
        if x == 2:
            raise KeyError("missing")
        if x > 2:
            time.sleep(60)   # would hold the workers for a minute unless the map cancels them
        return x

    with pytest.raises(RemoteError) as info:
        list(gpucell.map(work, range(50), gpu="cpu", workers=2, client=client))
    error = info.value
    assert error.ename == "KeyError" and "missing" in str(error) and "item 2" in str(error)
    assert isinstance(error.results_so_far, dict)
    assert all(error.results_so_far[i] == i for i in error.results_so_far)
    wait_for(lambda: _none_busy(cluster), timeout=5, what="the map's workers to stop")


def test_interrupt_cancels_every_worker_and_releases_them(client: BrokerClient, cluster: Cluster) -> None:
    def slow(x: int) -> int:
        time.sleep(0.2)
        return x

    seen = []
    with pytest.raises(KeyboardInterrupt):
        for value in gpucell.map(slow, range(1000), gpu="cpu", workers=2, client=client):
            seen.append(value)
            if len(seen) == 3:
                _thread.interrupt_main()   # what Ctrl-C / the kernel's interrupt does, mid-map
    assert seen[:3] == [0, 1, 2]
    wait_for(lambda: _none_busy(cluster), timeout=5, what="no busy workers")
    # Released, not left idle on the pool's timeout: nothing is billed for them any more.
    wait_for(lambda: all(w["state"] == "releasing" for w in _workers(cluster)), timeout=10,
             what="the map's workers to be released")


def test_many_trivial_items_stream_with_bounded_memory(client: BrokerClient) -> None:
    n = 100_000
    before = _rss_mb()
    total = 0
    count = 0
    for value in gpucell.map(lambda x: x + 1, iter(range(n)), gpu="cpu", workers=2, client=client):
        total += value
        count += 1
    grown = _rss_mb() - before
    assert count == n and total == n * (n + 1) // 2
    assert grown < 200, f"client RSS grew by {grown:.0f} MB"


def test_function_remote_spawn_starmap(client: BrokerClient) -> None:
    offset = 100   # a closure variable travels with the function

    @gpucell.function(gpu="cpu", workers=2, client=client)
    def add(a: int, b: int = 0) -> int:
        return a + b + offset

    assert add.remote(1, b=2) == 103
    call = add.spawn(5)
    assert list(add.starmap([(1, 2), (3, 4)])) == [103, 107]
    assert call.get(timeout=60) == 105
    assert add(1) == 101   # still callable locally


def test_notebook_helpers_and_closures_work(shell: InteractiveShell) -> None:
    shell.run_cell("import gpucell\nscale = 3\ndef helper(x):\n    return x * scale\n"
                   "def make(k):\n    return lambda x: helper(x) + k\n")
    result = shell.run_cell("out = list(gpucell.map(make(1), range(6), gpu='cpu', workers=2))")
    result.raise_error()
    assert shell.user_ns["out"] == [x * 3 + 1 for x in range(6)]


def test_gpu_map_fills_into(shell: InteractiveShell) -> None:
    sink = RecordingSink()
    magics_of(shell).sink = sink
    shell.run_cell("import math\nbase = 10\ndef helper(x):\n    return x * 2\n")
    value = shell.run_cell_magic("gpu_map", "cpu --over range(6) --as i --into squares --workers 2",
                                 "print('item', i)\ny = helper(i) + base\nmath.sqrt(y * y)\n")
    assert shell.user_ns["squares"] == [float(2 * i + 10) for i in range(6)]
    assert value == shell.user_ns["squares"]
    assert "[4] item 4\n" in sink.text("stdout")
    assert "y" not in shell.user_ns   # a fan-out cell gives back only its per-item values

"""Load: 200 concurrent sessions x 20 trivial cells on a simulated pool; none lost; dispatch p99 and broker RSS.

The measuring code lives in bench/load.py (the bench reports the same figures); these tests assert on it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from gpucell.client import BrokerClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from load import _proc_status_mb, measure_load


@pytest.mark.slow
def test_200_sessions_of_20_cells_none_lost(tmp_path: Path) -> None:
    report = measure_load(sessions=200, cells=20, max_workers=8, timeout_s=240, state_dir=str(tmp_path))
    print("\nload:", {k: v for k, v in report.as_dict().items() if k != "buckets"})
    assert not report.errors, report.errors
    assert report.completed == 200 * 20 and report.duplicates == 0
    # Every cell that did not start a worker went through the broker's warm dispatch (a cell dispatched cold
    # is one per launch: a session's first, and one after a worker was replaced under load).
    assert report.dispatch_count >= 200 * 20 - report.worker_launches, report.worker_launches


def _worker_rss_mb(client: BrokerClient) -> float:
    pids = [w["pid"] for p in client.status()["pools"].values() for w in p["workers"]
            if w["pid"] and w["state"] != "releasing"]
    assert len(pids) == 1, pids
    return _proc_status_mb(pids[0], "VmRSS")


def _long_map_rss(tmp_path: Path, fn: Any, items: Any, total: int) -> list[float]:
    """The worker's RSS after each quarter of a one-worker map (read from /proc by the pid status gives)."""
    from conftest import make_cluster  # noqa: PLC0415 - tests/ is on the path only under pytest
    import gpucell  # noqa: PLC0415

    pools = "[pools.cpu]\nsimulate = true\nmax_workers = 1\nidle_timeout = 300\n"
    samples: list[float] = []
    with make_cluster(tmp_path, pools) as cluster:
        client = cluster.client()
        count = 0
        for count, _ in enumerate(gpucell.map(fn, items, gpu="cpu", workers=1, ordered=False, progress=False,
                                              client=client), start=1):
            if count % (total // 4) == 0 and count < total:
                samples.append(_worker_rss_mb(client))
        client.close()
    assert count == total and len(samples) == 3
    return samples


def test_a_long_map_does_not_grow_the_worker(tmp_path: Path) -> None:
    """200 MB of items through one worker: its RSS follows the live batch (Worker._trim_cache), not the
    map's history of inputs, outputs and cells."""
    total = 4000
    items = (bytes([i % 256]) * 50_000 for i in range(total))   # lazily: the client holds a window, not all
    samples = _long_map_rss(tmp_path, len, items, total)
    print(f"\nworker RSS (MB) after 1000/2000/3000 of 4000 items x 50 KB in: {samples}")
    assert samples[-1] - samples[0] < 64, samples          # 100 MB more items went through meanwhile


def test_a_long_map_with_large_results(tmp_path: Path) -> None:
    """Batches whose results exceed the inline limit go by the data path; the map pipelines two per worker."""
    total = 4000
    samples = _long_map_rss(tmp_path, lambda x: b"r" * 50_000, range(total), total)
    print(f"\nworker RSS (MB) after 1000/2000/3000 of 4000 items x 50 KB out: {samples}")
    assert samples[-1] - samples[0] < 64, samples


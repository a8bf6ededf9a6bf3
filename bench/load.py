"""The load measurement: N concurrent sessions x M trivial cells against a fresh broker subprocess.

Used by `bench/run.py` (metrics dispatch_p99_ms and broker_rss_mb, variant `load`) and by
tests/test_load.py (200 x 20, none lost). The broker runs in its own process, so its RSS is its alone.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpucell.client.embedded import start_embedded_broker
from gpucell.client import BrokerClient
from gpucell.client.session import CellOptions, Session
from gpucell.client.sink import Sink

LOAD_POOLS = """
[broker]
metrics_port = 0

[pools.cpu]
simulate = true
max_workers = {max_workers}
idle_timeout = 2
"""


class NullSink(Sink):
    """Output of load-generating sessions goes nowhere (trivial cells print nothing anyway)."""

    def stream(self, name: str, text: str) -> None:
        pass

    def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool) -> None:
        pass

    def phase(self, text: str) -> None:
        pass


@dataclass
class LoadReport:
    sessions: int
    cells_per_session: int
    max_workers: int
    completed: int                       # distinct (session, cell) results that came back right
    duplicates: int
    errors: list[str]
    wall_s: float
    cells_per_s: float
    dispatch_p50_s: float                # broker: warm cell submitted -> sent to its worker (Prometheus histogram)
    dispatch_p99_s: float
    dispatch_count: int
    cell_p50_s: float                    # client: run_cell round trip of warm cells (not a session's first)
    cell_p99_s: float
    broker_rss_mb: float                 # the broker process at the end of the run
    broker_peak_rss_mb: float            # VmHWM: its high-water mark over the run
    worker_launches: int
    buckets: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _proc_status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _histogram(body: str, name: str) -> tuple[list[tuple[float, float]], float]:
    """Cumulative buckets [(le, count)] summed over labels, and the total count, from a /metrics page."""
    by_le: dict[float, float] = {}
    pattern = re.compile(rf'^{name}_bucket\{{.*le="([^"]+)".*\}} ([0-9.e+-]+)$')
    for line in body.splitlines():
        match = pattern.match(line)
        if match:
            le = float("inf") if match.group(1) == "+Inf" else float(match.group(1))
            by_le[le] = by_le.get(le, 0.0) + float(match.group(2))
    buckets = sorted(by_le.items())
    return buckets, buckets[-1][1] if buckets else 0.0


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket that holds the q-th sample."""
    if not buckets or buckets[-1][1] == 0:
        return 0.0
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower_le
            return lower_le + (le - lower_le) * (rank - lower_count) / max(count - lower_count, 1e-12)
        lower_le, lower_count = le, count
    return buckets[-1][0]


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_load(sessions: int = 200, cells: int = 20, max_workers: int = 8, timeout_s: float = 600.0,
                 state_dir: str | None = None) -> LoadReport:
    """Run `sessions` threads, each its own Session, each `cells` trivial cells, against a fresh broker
    subprocess with a simulated `cpu` pool; every result is checked by (session, cell index)."""
    folder = state_dir or tempfile.mkdtemp(prefix="gpucell-load-")
    config = Path(folder) / "load.toml"
    config.write_text(LOAD_POOLS.format(max_workers=max_workers))
    broker = start_embedded_broker(str(config))
    client = BrokerClient(broker.address, broker.token)
    results: dict[tuple[int, int], int] = {}
    duplicates = 0
    errors: list[str] = []
    warm_latency: list[float] = []
    lock = threading.Lock()
    start_gate = threading.Event()

    def one_session(number: int) -> None:
        nonlocal duplicates
        session = Session(client, session_name=f"load-{number}")
        sink = NullSink()
        try:
            start_gate.wait()
            for index in range(cells):
                ns: dict[str, Any] = {"x": number * 1000 + index}
                began = time.perf_counter()
                # Through the broker every time (no direct lane): this measures the broker's dispatch.
                session.run_cell("y = x + 1\n", ns, CellOptions(hardware="cpu", lane=False), sink)
                took = time.perf_counter() - began
                with lock:
                    if index:
                        warm_latency.append(took)
                    if (number, index) in results:
                        duplicates += 1
                    results[(number, index)] = ns["y"]
        except Exception as exc:  # noqa: BLE001 - counted and reported, never lost
            with lock:
                errors.append(f"session {number}: {type(exc).__name__}: {exc}")
        finally:
            session.close()       # releases its worker now, not at the idle timeout

    threads = [threading.Thread(target=one_session, args=(n,), daemon=True, name=f"load-{n}")
               for n in range(sessions)]
    try:
        for thread in threads:
            thread.start()
        began = time.monotonic()
        start_gate.set()
        deadline = began + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        wall = time.monotonic() - began
        stuck = sum(thread.is_alive() for thread in threads)
        if stuck:
            errors.append(f"{stuck} sessions still running after {timeout_s:g}s")
        rss = _proc_status_mb(broker.pid, "VmRSS")
        peak = _proc_status_mb(broker.pid, "VmHWM")
        metrics_address = client.status_pb().metrics_address
        body = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10).read().decode()
    finally:
        client.close()
        broker.stop()
    buckets, count = _histogram(body, "gpucell_dispatch_seconds")
    cold, _ = _histogram(body, "gpucell_cold_start_seconds")
    completed = sum(1 for (number, index), y in results.items() if y == number * 1000 + index + 1)
    return LoadReport(
        sessions=sessions, cells_per_session=cells, max_workers=max_workers, completed=completed,
        duplicates=duplicates, errors=errors[:20], wall_s=round(wall, 2),
        cells_per_s=round(len(results) / wall, 1) if wall else 0.0,
        dispatch_p50_s=histogram_quantile(0.5, buckets), dispatch_p99_s=histogram_quantile(0.99, buckets),
        dispatch_count=int(count), cell_p50_s=_quantile(warm_latency, 0.5), cell_p99_s=_quantile(warm_latency, 0.99),
        broker_rss_mb=round(rss, 1), broker_peak_rss_mb=round(peak, 1),
        worker_launches=int(cold[-1][1]) if cold else 0,
        buckets={str(le): c for le, c in buckets})


if __name__ == "__main__":
    import json
    import os
    import sys

    sizes = [int(a) for a in sys.argv[1:3]] or [200, 20]
    print(json.dumps(measure_load(*sizes).as_dict(), indent=1))
    os._exit(0)

"""Timing, statistics, profiles and output for the benchmark harness (shared by run.py and agents)."""
from __future__ import annotations

import json
import math
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

MB = 1_000_000
GB = 1_000_000_000

# Metrics whose samples are individual latencies: pooled over rounds, reported with p99.
LATENCY_METRICS = {"cold_start_ms", "warm_rtt_ms", "stream_latency_ms", "grpc_unary_rtt_ms",
                   "fork_ready_ms", "python_start_ms"}

# The order of rows in tables; each entry is (metric, variant).
MAIN_METRICS: list[tuple[str, str]] = [
    ("cold_start_ms", ""),
    ("cold_start_ms", "no_forkserver"),
    ("cold_start_ms", "incl_broker"),
    ("cold_start_ms", "fork"),
    ("warm_rtt_ms", ""),
    ("map_tasks_per_s", "trivial"),
    ("map_tasks_per_s", "10ms"),
    ("send_100mb_s", ""),
    ("send_100mb_s", "tcp"),   # gpucell: the network data path (GPUCELL_SHM=0) with and without TLS
    ("send_100mb_s", "tls"),
    ("send_1gb_s", ""),
    ("resend_1gb_cached_s", ""),
    ("return_100mb_s", ""),
    ("stream_latency_ms", ""),
    ("stream_flood_s", ""),
    ("stream_flood_s", "local"),
    ("broker_rss_mb", ""),
    ("broker_rss_mb", "load"),
    ("dispatch_p99_ms", "load"),
    ("idle_release_error_s", ""),
]
METRIC_NAMES = sorted({m for m, _ in MAIN_METRICS})

UNITS = {
    "cold_start_ms": "ms", "warm_rtt_ms": "ms", "map_tasks_per_s": "items/s",
    "send_100mb_s": "s", "send_1gb_s": "s", "resend_1gb_cached_s": "s", "return_100mb_s": "s",
    "stream_latency_ms": "ms", "stream_flood_s": "s", "broker_rss_mb": "MB", "idle_release_error_s": "s", "dispatch_p99_ms": "ms",
    "python_start_ms": "ms", "fork_ready_ms": "ms", "grpc_unary_rtt_ms": "ms",
    "grpc_stream_gb_per_s": "GB/s", "tcp_loopback_gb_per_s": "GB/s", "memcpy_1gb_s": "s",
    "memtouch_1gb_s": "s",
}
HIGHER_IS_BETTER = {"map_tasks_per_s", "grpc_stream_gb_per_s", "tcp_loopback_gb_per_s"}


@dataclass(frozen=True)
class Profile:
    """Sizes and repetitions for one kind of run."""

    name: str
    rounds: int = 3              # each system is started this many times, interleaved with the others
    rtt_warmup: int = 20
    rtt_n: int = 200             # round trips per round
    cold_n: int = 5              # scale-from-zero samples per round where a system can repeat it cheaply
    map_trivial_n: int = 10_000
    map_slow_n: int = 1_000
    map_slow_s: float = 0.010
    send_small: int = 100 * MB
    send_big: int = 1 * GB
    return_bytes: int = 100 * MB
    stream_n: int = 20
    sessions_n: int = 1_000
    load_sessions: int = 200       # dispatch_p99_ms under load: concurrent sessions x trivial cells each
    load_cells: int = 20
    idle_timeout_s: float = 2.0
    agent_timeout_s: float = 900.0  # one system, one round
    baseline_bytes: int = 1 * GB
    tcp_bytes: int = 1 * GB

    def scaled_note(self, metric: str) -> str:
        """Says when a metric ran at a size other than its name claims."""
        sizes = {"send_100mb_s": (self.send_small, 100 * MB), "send_1gb_s": (self.send_big, GB),
                 "resend_1gb_cached_s": (self.send_big, GB), "return_100mb_s": (self.return_bytes, 100 * MB),
                 "memcpy_1gb_s": (self.baseline_bytes, GB), "memtouch_1gb_s": (self.baseline_bytes, GB)}
        if metric in sizes and sizes[metric][0] != sizes[metric][1]:
            return f"{self.name}: {human_bytes(sizes[metric][0])} instead of {human_bytes(sizes[metric][1])}"
        return ""


FULL = Profile("full")
QUICK = replace(FULL, name="quick", rounds=2, rtt_n=100, cold_n=3, map_trivial_n=2_000, map_slow_n=200,
                stream_n=10, sessions_n=1_000, agent_timeout_s=480.0)
SMOKE = replace(FULL, name="smoke", rounds=1, rtt_warmup=3, rtt_n=10, cold_n=2, map_trivial_n=50,
                map_slow_n=10, send_small=MB, send_big=4 * MB, return_bytes=MB, stream_n=3,
                sessions_n=20, load_sessions=10, load_cells=3, idle_timeout_s=1.0, agent_timeout_s=40.0, baseline_bytes=16 * MB,
                tcp_bytes=16 * MB)
PROFILES = {p.name: p for p in (FULL, QUICK, SMOKE)}


def human_bytes(n: int) -> str:
    """1000-based size, as the metric names use."""
    return f"{n / GB:g} GB" if n >= GB else f"{n / MB:g} MB"


# ---------------------------------------------------------------- samples and results


@dataclass
class Sample:
    """What an agent reports for one metric in one round: values, or why there are none."""

    system: str
    metric: str
    variant: str = ""
    values: list[float] = field(default_factory=list)
    note: str = ""
    unsupported: str = ""  # non-empty: the system cannot do this metric, and why

    def to_json(self) -> str:
        return json.dumps({"system": self.system, "metric": self.metric, "variant": self.variant,
                           "values": self.values, "note": self.note, "unsupported": self.unsupported})

    @classmethod
    def from_json(cls, line: str) -> Sample:
        d = json.loads(line)
        return cls(d["system"], d["metric"], d.get("variant", ""), [float(v) for v in d["values"]],
                   d.get("note", ""), d.get("unsupported", ""))


@dataclass
class Result:
    """One figure: a system's aggregated metric over all rounds."""

    system: str
    metric: str
    variant: str
    value: float | None
    unit: str
    n: int
    p99: float | None = None
    min: float | None = None
    max: float | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"system": self.system, "metric": self.metric}
        if self.variant:
            d["variant"] = self.variant
        d.update(value=_round(self.value), unit=self.unit, n=self.n)
        if self.value is not None:
            if self.p99 is not None:
                d["p99"] = _round(self.p99)
            d["min"], d["max"] = _round(self.min), _round(self.max)
        if self.note:
            d["note"] = self.note
        return d


def _round(v: float | None) -> float | None:
    if v is None:
        return None
    return float(f"{v:.4g}")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) — no interpolation, so p99 is a value that happened."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def aggregate(samples: list[Sample]) -> list[Result]:
    """Merges the rounds of each (system, metric, variant) into one Result."""
    groups: dict[tuple[str, str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.system, s.metric, s.variant), []).append(s)
    out: list[Result] = []
    for (system, metric, variant), group in groups.items():
        values = [v for s in group for v in s.values]
        notes = _unique(s.note for s in group if s.note)
        unit = UNITS.get(metric, "")
        if not values:
            why = _unique(s.unsupported for s in group if s.unsupported) or notes or ["no samples"]
            out.append(Result(system, metric, variant, None, unit, 0, note="unsupported: " + "; ".join(why)))
            continue
        failed = _unique(s.unsupported for s in group if s.unsupported)
        if failed:  # some rounds worked and some did not: say so beside the figure
            notes.append(f"{len(failed)} round(s) failed: " + "; ".join(failed))
        p99 = percentile(values, 99) if metric in LATENCY_METRICS else None
        out.append(Result(system, metric, variant, statistics.median(values), unit, len(values), p99,
                          min(values), max(values), "; ".join(notes)))
    return out


def _unique(items: Any) -> list[str]:
    seen: list[str] = []
    for i in items:
        if i not in seen:
            seen.append(i)
    return seen


# ---------------------------------------------------------------- timing helpers


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of fn takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def repeat_ms(fn: Callable[[], Any], n: int, warmup: int) -> list[float]:
    """Latencies in ms of n calls after warmup untimed calls."""
    for _ in range(warmup):
        fn()
    return [timed(fn) * 1000 for _ in range(n)]


def wait_for(cond: Callable[[], bool], timeout: float, what: str, poll: float = 0.002) -> None:
    """Waits on a condition with a bounded timeout (raises TimeoutError naming what it waited for)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


class OutputRecorder:
    """A stand-in for sys.stdout that notes when chosen text first arrives (thread safe)."""

    def __init__(self, sink: TextIO | None = None) -> None:
        self._lock = threading.Lock()
        self._buf: list[str] = []
        self._sink = sink
        self.writes: list[tuple[float, str]] = []  # (time.time(), text)

    def write(self, text: str) -> int:
        now = time.time()
        with self._lock:
            self.writes.append((now, text))
        if self._sink is not None:
            self._sink.write(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"

    def text(self) -> str:
        with self._lock:
            return "".join(t for _, t in self.writes)

    def first_time(self, predicate: Callable[[str], bool]) -> float | None:
        """time.time() of the write after which the text seen so far first satisfies predicate."""
        with self._lock:
            acc = ""
            for t, text in self.writes:
                acc += text
                if predicate(acc):
                    return t
        return None

    def clear(self) -> None:
        with self._lock:
            self.writes.clear()


@contextmanager
def capture_stdout(recorder: OutputRecorder, also_stderr: bool = False) -> Iterator[OutputRecorder]:
    """Routes sys.stdout (and optionally sys.stderr) through recorder for the duration."""
    old_out, old_err = sys.stdout, sys.stderr
    sys.stdout = recorder  # type: ignore[assignment]
    if also_stderr:
        sys.stderr = recorder  # type: ignore[assignment]
    try:
        yield recorder
    finally:
        sys.stdout, sys.stderr = old_out, old_err


STAMP = "@@t="


def stamped_lines(text: str) -> list[float]:
    """The remote timestamps printed as STAMP<float>@@ in text."""
    out: list[float] = []
    for part in text.split(STAMP)[1:]:
        head = part.split("@@", 1)[0]
        try:
            out.append(float(head))
        except ValueError:
            continue
    return out


def terminate_on_sigterm() -> None:
    """Turns SIGTERM into SystemExit so that finally blocks shut clusters down."""
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(143)
    signal.signal(signal.SIGTERM, handler)


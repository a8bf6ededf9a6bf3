"""The metrics interface every benchmarked system implements, with the generic measurement loops."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from harness import MB, OutputRecorder, Profile, Sample, capture_stdout, repeat_ms, stamped_lines, timed, wait_for


class Unsupported(Exception):
    """Raised by a metric a system cannot do; the message says why."""


class System:
    """A system under test: lifecycle plus the primitives the generic metric loops need.

    A subclass implements `start`, `stop` and the primitives; it overrides a metric method when its
    way of doing that metric differs (gpucell's cold start, for one).
    """

    name = ""

    def __init__(self, profile: Profile) -> None:
        self.p = profile
        self.running = False
        self._buffer: np.ndarray | None = None
        self.attempt_began = 0.0  # perf_counter() when the last (successful) start attempt began
        self.start_notes: list[str] = []

    # ------------------------------------------------------------ lifecycle and primitives

    def start(self) -> None:
        """Starts the system (2 workers on 127.0.0.1) and returns when it accepts tasks."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def noop(self) -> None:
        """One trivial task, round trip."""
        raise NotImplementedError

    def map(self, n: int, slow_s: float) -> int:
        """Maps over range(n) on both workers (each item sleeps slow_s if > 0); returns the count."""
        raise NotImplementedError

    def send(self, arr: np.ndarray) -> int:
        """Gets arr onto a worker and has a task there use it; returns the nbytes the worker saw."""
        raise NotImplementedError

    def resend(self, arr: np.ndarray) -> int:
        """Sends arr again, unchanged, as a user of this system would; by default like `send`."""
        return self.send(arr)

    def drop_sent(self) -> None:
        """Frees what `send` left on the worker."""

    def fetch(self, n: int) -> np.ndarray:
        """Has a worker make an n-byte array and brings it back."""
        raise NotImplementedError

    def stream_once(self, recorder: OutputRecorder) -> None:
        """Runs a task that prints a stamp (harness.STAMP) remotely; returns once the task is done."""
        raise NotImplementedError

    # ------------------------------------------------------------ driver

    def close(self) -> None:
        if self.running:
            self.running = False
            self.stop()

    def ensure_started(self) -> None:
        if not self.running:
            self.start()
            self.running = True
            self.noop()

    def measure(self, metric: str) -> Iterator[Sample]:
        """Yields the samples of one metric for this round."""
        method: Callable[[], Iterator[Sample]] | None = getattr(self, "m_" + metric, None)
        if method is None:
            yield self.unsupported(metric, "no such metric")
            return
        yield from method()

    def sample(self, metric: str, values: list[float], variant: str = "", note: str = "") -> Sample:
        notes = [n for n in (note, self.p.scaled_note(metric)) if n]
        return Sample(self.name, metric, variant, values, "; ".join(notes))

    def unsupported(self, metric: str, why: str, variant: str = "") -> Sample:
        return Sample(self.name, metric, variant, [], "", why)

    def buffer(self, n: int) -> np.ndarray:
        """A view of a payload buffer that was written once before any timing (first touch is slow here)."""
        size = max(n, self.p.send_big)
        if self._buffer is None or self._buffer.nbytes < size:
            self._buffer = np.ones(size, dtype=np.uint8)
        return self._buffer[:n]

    # ------------------------------------------------------------ metrics (generic loops)

    def m_cold_start_ms(self) -> Iterator[Sample]:
        """Cluster start to the first result of a trivial task."""
        if self.running:
            self.close()

        t0 = time.perf_counter()
        self.start_notes.clear()
        self.attempt_began = t0
        self.start()
        self.running = True
        self.noop()
        # a failed start that the system retried is not part of the figure; its note says it happened
        elapsed = time.perf_counter() - max(t0, self.attempt_began)
        yield self.sample("cold_start_ms", [elapsed * 1000],
                          note="; ".join(["cluster start to first result", *self.start_notes]))

    def m_warm_rtt_ms(self) -> Iterator[Sample]:
        self.ensure_started()
        yield self.sample("warm_rtt_ms", repeat_ms(self.noop, self.p.rtt_n, self.p.rtt_warmup))

    def m_map_tasks_per_s(self) -> Iterator[Sample]:
        self.ensure_started()
        self.map(min(100, self.p.map_trivial_n), 0.0)  # warm-up: workers leased, code shipped
        n = self.p.map_trivial_n
        yield self.sample("map_tasks_per_s", [n / timed(lambda: self.map(n, 0.0))], "trivial",
                          note=f"{n} trivial items")
        n = self.p.map_slow_n
        yield self.sample("map_tasks_per_s", [n / timed(lambda: self.map(n, self.p.map_slow_s))], "10ms",
                          note=f"{n} items of {self.p.map_slow_s * 1000:g} ms; 2-worker limit "
                               f"{2 / self.p.map_slow_s:g}/s")

    def _send_samples(self, n: int, count: int) -> list[float]:
        self.ensure_started()
        self.send(self.buffer(MB))  # warm-up of the path with a small payload
        self.drop_sent()
        arr = self.buffer(n)
        out: list[float] = []
        for k in range(count):
            arr[:8] = np.frombuffer(time.time_ns().to_bytes(8, "little"), dtype=np.uint8)  # new content
            seen = 0

            def go() -> None:
                nonlocal seen
                seen = self.send(arr)

            out.append(timed(go))
            self.drop_sent()
            if seen != n:
                raise RuntimeError(f"worker saw {seen} bytes, sent {n}")
        return out

    def m_send_100mb_s(self) -> Iterator[Sample]:
        yield self.sample("send_100mb_s", self._send_samples(self.p.send_small, 3))

    def m_send_1gb_s(self) -> Iterator[Sample]:
        yield self.sample("send_1gb_s", self._send_samples(self.p.send_big, 1))

    def m_resend_1gb_cached_s(self) -> Iterator[Sample]:
        self.ensure_started()
        arr = self.buffer(self.p.send_big)
        arr[:8] = np.frombuffer(time.time_ns().to_bytes(8, "little"), dtype=np.uint8)
        self.send(arr)  # the first send is not timed: only the unchanged resend is
        out = [timed(lambda: self.resend(arr)) for _ in range(2)]
        self.drop_sent()
        yield self.sample("resend_1gb_cached_s", out, note=self.resend_note())

    def resend_note(self) -> str:
        return "sent again in full (no cache)"

    def m_return_100mb_s(self) -> Iterator[Sample]:
        self.ensure_started()
        self.fetch(MB)
        n = self.p.return_bytes
        out: list[float] = []
        for _ in range(3):
            holder: list[Any] = []
            out.append(timed(lambda: holder.append(self.fetch(n))))
            if holder[0].nbytes != n:
                raise RuntimeError(f"got {holder[0].nbytes} bytes back, expected {n}")
            holder.clear()  # frees the array before the next round (a `del` would undefine the lambda's name)
        yield self.sample("return_100mb_s", out, note="includes making the array on the worker")

    def m_stream_latency_ms(self) -> Iterator[Sample]:
        self.ensure_started()
        out: list[float] = []
        for i in range(self.p.stream_n + 2):
            rec = OutputRecorder()
            with capture_stdout(rec, also_stderr=True):
                self.stream_once(rec)
                wait_for(lambda: bool(stamped_lines(rec.text())), 10.0, "the remote print to arrive")
            stamp = stamped_lines(rec.text())[0]
            arrived = rec.first_time(lambda text: bool(stamped_lines(text)))
            assert arrived is not None
            if i >= 2:  # two warm-up prints
                out.append((arrived - stamp) * 1000)
        yield self.sample("stream_latency_ms", out, note="remote print to its arrival in the client")

    def m_broker_rss_mb(self) -> Iterator[Sample]:
        yield self.unsupported("broker_rss_mb", "no broker with per-notebook sessions to compare")

    def m_stream_flood_s(self) -> Iterator[Sample]:
        yield self.unsupported("stream_flood_s", "gpucell only: a notebook cell against the same cell run locally")

    def m_dispatch_p99_ms(self) -> Iterator[Sample]:
        yield self.unsupported("dispatch_p99_ms", "no broker dispatching notebook sessions' cells", "load")
        yield self.unsupported("broker_rss_mb", "no broker with per-notebook sessions to compare", "load")

    def m_idle_release_error_s(self) -> Iterator[Sample]:
        yield self.unsupported("idle_release_error_s", "no per-session idle release of workers")

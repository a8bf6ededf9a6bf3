"""gpucell driven as a user drives it: a real InteractiveShell, `%load_ext gpucell`, `%%gpu cpu` cells."""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil
from IPython.core.interactiveshell import InteractiveShell

from harness import OutputRecorder, Profile, Sample, capture_stdout, wait_for
from systems.base import System, Unsupported
from load import NullSink, measure_load
from systems.gpucell_ray import ray_cold_starts
from systems.gpucell_tls import send_seconds

HW = "cpu"
FLOOD_LINES = 100_000   # stream_flood_s: the issue's `for i in range(100000): print(i)`
# The session's pool: no warm workers, so the first cell after a release is a true scale from zero.
CONFIG = """\
[broker]
host = "127.0.0.1"
port = 0

[pools.cpu]
simulate = true
min_warm = 0
max_workers = 2
idle_timeout = 120
price_per_hour = 0.0
"""
STREAM_CELL = "import time\nprint(f'@@t={time.time()!r}@@', flush=True)"


class GpucellSystem(System):
    name = "gpucell"

    def __init__(self, profile: Profile) -> None:
        super().__init__(profile)
        self.tmp = tempfile.mkdtemp(prefix="gpucell-bench-")
        self.config_path = os.path.join(self.tmp, "gpucell.toml")
        with open(self.config_path, "w") as f:
            f.write(CONFIG)
        os.environ["GPUCELL_CONFIG"] = self.config_path
        # the embedded broker, not one a developer's shell happens to point at
        os.environ.pop("GPUCELL_BROKER", None)
        os.environ.pop("GPUCELL_TOKEN", None)
        os.environ.setdefault("IPYTHONDIR", os.path.join(self.tmp, "ipython"))
        self.shell: InteractiveShell | None = None
        self.loaded = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.shell = InteractiveShell.instance()
        if not self.loaded:
            self.shell.run_line_magic("load_ext", "gpucell")
            self.loaded = True

    def stop(self) -> None:
        # One agent process is one round: the embedded broker and its workers go with the process,
        # so only this session's workers are released here.
        if self.shell is not None and self.loaded:
            self.shell.run_line_magic("gpu_release", HW)

    def close(self) -> None:
        super().close()
        if self.shell is not None and self.loaded:
            try:
                self.shell.run_line_magic("unload_ext", "gpucell")
            finally:
                self.loaded = False

    def cell(self, source: str, args: str = HW) -> Any:
        assert self.shell is not None
        return self.shell.run_cell_magic("gpu", args, source)

    @property
    def ns(self) -> dict[str, Any]:
        assert self.shell is not None
        return self.shell.user_ns

    # ------------------------------------------------------------ primitives

    def noop(self) -> None:
        self.cell("pass")

    def map(self, n: int, slow_s: float) -> int:
        import gpucell  # noqa: PLC0415 - the foundation may not be importable yet: then this metric is unsupported

        if slow_s:
            self._define(f"def bench_item(x):\n    import time\n    time.sleep({slow_s!r})\n    return x")
        else:
            self._define("def bench_item(x):\n    return x")
        results = gpucell.map(self.ns["bench_item"], range(n), gpu=HW, workers=2)
        return len(list(results))

    def m_map_tasks_per_s(self) -> Iterator[Sample]:
        # Fan-out workers are fresh: while this session holds its warm cell worker, a 2-worker map
        # in a 2-worker pool gets one slot, and waits for the other until that worker idles out.
        self.ensure_started()
        self.shell.run_line_magic("gpu_release", HW)  # type: ignore[union-attr]
        yield from super().m_map_tasks_per_s()

    def _define(self, source: str) -> None:
        """Defines a function in the notebook namespace, so it travels by value as a user's would."""
        assert self.shell is not None
        result = self.shell.run_cell(source, store_history=False)
        result.raise_error()

    def send(self, arr: np.ndarray) -> int:
        self.ns["bench_payload"] = arr
        self.cell("bench_n = int(bench_payload.nbytes)\nbench_head = bytes(bench_payload[:8])")
        if self.ns.get("bench_head") != bytes(arr[:8]):
            raise RuntimeError("the worker saw stale content: the changed array was not sent")
        return int(self.ns["bench_n"])

    def m_send_100mb_s(self) -> Iterator[Sample]:
        yield from super().m_send_100mb_s()
        # What TLS on the data path costs: its own broker and worker each, TCP both times (docs/protocol.md).
        for variant in ("tcp", "tls"):
            try:
                seconds = send_seconds(self.p.send_small, 3, tls=variant == "tls")
            except (RuntimeError, OSError) as exc:
                yield self.unsupported("send_100mb_s", str(exc), variant)
                continue
            yield self.sample("send_100mb_s", seconds, variant,
                              note="TCP data path (GPUCELL_SHM=0)" + (", TLS with a pinned worker certificate"
                                                                      if variant == "tls" else ", no TLS"))

    def resend_note(self) -> str:
        return "same cell, unchanged array: content-addressed cache"

    def drop_sent(self) -> None:
        if "bench_payload" in self.ns:
            self.cell("del bench_payload")
        self.ns.pop("bench_payload", None)

    def fetch(self, n: int) -> np.ndarray:
        self.cell(f"import numpy as np\nbench_ret = np.ones({n}, dtype=np.uint8)")
        value = self.ns.pop("bench_ret")
        if not isinstance(value, np.ndarray):
            raise RuntimeError(f"bench_ret came back as {type(value).__name__}, not an array")
        return value

    def stream_once(self, recorder: OutputRecorder) -> None:
        self.cell(STREAM_CELL)

    # ------------------------------------------------------------ gpucell-specific metrics

    def _first_output_ms(self, source: str, before: float | None = None) -> float:
        """ms from `before` (default: now) until the cell's first output line '1' arrives."""
        rec = OutputRecorder()
        with capture_stdout(rec):
            t0 = time.time() if before is None else before
            self.cell(source)
        first = rec.first_time(lambda text: "1" in text.split())
        if first is None:
            raise RuntimeError(f"the cell printed no '1' to sys.stdout (got {rec.text()[:80]!r})")
        return (first - t0) * 1000

    def m_cold_start_ms(self) -> Iterator[Sample]:
        if not self.loaded:
            # from nothing: %load_ext (embedded broker start) to the first output of print(1)
            t0 = time.time()
            self.shell = InteractiveShell.instance()
            self.shell.run_line_magic("load_ext", "gpucell")
            self.loaded = True
            self.running = True
            yield self.sample("cold_start_ms", [self._first_output_ms("print(1)", t0)], "incl_broker",
                              note="%load_ext (embedded broker) to first output of print(1)")
        self.ensure_started()
        out: list[float] = []
        for _ in range(self.p.cold_n):
            self._release_and_wait()
            out.append(self._first_output_ms("print(1)"))
        yield self.sample("cold_start_ms", out, note="broker up, pool at zero: %%gpu cpu print(1) to first output")
        if self.p.name == "smoke":  # seconds per sample without the fork server: too slow for the smoke run
            return
        # the same without the fork server: a broker started with GPUCELL_FORK_SERVER=0
        self._reload_extension({"GPUCELL_FORK_SERVER": "0"})
        try:
            out = []
            for _ in range(self.p.cold_n):
                self._release_and_wait()
                out.append(self._first_output_ms("print(1)"))
            yield self.sample("cold_start_ms", out, "no_forkserver",
                              note="as above, broker started with GPUCELL_FORK_SERVER=0")
        finally:
            self._reload_extension({"GPUCELL_FORK_SERVER": None})
        # the same through the ray provisioner (a 1-node local Ray cluster), beside the local one
        try:
            ray_ms = ray_cold_starts(self.p.cold_n)
        except Exception as exc:  # noqa: BLE001 - Ray's own start can time out on a loaded 2-core machine
            yield self.unsupported("cold_start_ms", f"failed: the local Ray cluster did not start: {exc}",
                                   "ray_provisioner")
            return
        yield self.sample("cold_start_ms", ray_ms, "ray_provisioner",
                          note="pool on a local Ray cluster: actor + worker process start, no fork server")

    def _reload_extension(self, env: dict[str, str | None]) -> None:
        """%unload_ext, change the environment, %load_ext: a fresh embedded broker, as a user would get."""
        assert self.shell is not None
        self.shell.run_line_magic("unload_ext", "gpucell")
        self.loaded = False
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.shell.run_line_magic("load_ext", "gpucell")
        self.loaded = True

    def _release_and_wait(self) -> None:
        assert self.shell is not None
        self.shell.run_line_magic("gpu_release", HW)
        wait_for(lambda: self._pool_workers() == 0, 30.0, "the cpu pool to reach zero workers", poll=0.01)

    def _client(self) -> Any:
        """The broker client the loaded extension uses (the magics own it: found, not made)."""
        assert self.shell is not None
        for magics in self.shell.magics_manager.registry.values():
            client = getattr(getattr(magics, "session", None), "client", None)
            if client is not None and hasattr(client, "status"):
                return client
        raise Unsupported("cannot find the extension's broker client to read the pool status")

    def _pool_workers(self) -> int:
        status = self._client().status()
        pool = status.get("pools", {}).get(HW, {})
        return sum(1 for w in pool.get("workers", []) if w.get("state") != "releasing")

    def m_stream_flood_s(self) -> Iterator[Sample]:
        """`for i in range(N): print(i)` as a %%gpu cell until its last line arrives, and the same cell run
        locally in the same shell, both printing into the same recorder (issue 25: within 2x)."""
        self.ensure_started()
        assert self.shell is not None
        n = FLOOD_LINES
        source = f"for i in range({n}):\n    print(i)"
        last = f"{n - 1}\n"
        remote: list[float] = []
        local: list[float] = []
        for _ in range(2):
            for where, out in (("remote", remote), ("local", local)):
                rec = OutputRecorder()
                with capture_stdout(rec):
                    t0 = time.perf_counter()
                    if where == "remote":
                        self.cell(source)
                    else:
                        self.shell.run_cell(source)
                    wait_for(lambda: rec.text().endswith(last), 60.0, "the last line of the flood")
                    out.append(time.perf_counter() - t0)
                if rec.text().count("\n") != n:
                    raise RuntimeError(f"{rec.text().count(chr(10))} lines arrived, {n} printed")
        yield self.sample("stream_flood_s", remote, note=f"{n} printed lines, %%gpu cell to the last line")
        yield self.sample("stream_flood_s", local, "local", note=f"the same {n} lines, the cell run locally")

    def m_idle_release_error_s(self) -> Iterator[Sample]:
        self.ensure_started()
        idle = self.p.idle_timeout_s
        out: list[float] = []
        for _ in range(1 if self.p.name == "smoke" else 2):
            self.cell("pass", f"{HW} --idle {idle:g}")
            done = time.time()
            wait_for(lambda: self._pool_workers() == 0, idle + 30.0, "the idle worker's release", poll=0.01)
            out.append(time.time() - done - idle)
        yield self.sample("idle_release_error_s", out,
                          note=f"--idle {idle:g}: time from cell end to the worker's release, minus {idle:g} s")

    def m_broker_rss_mb(self) -> Iterator[Sample]:
        """RSS of a broker after many sessions each ran a cell and went idle (their worker released)."""
        from gpucell.client.embedded import start_embedded_broker  # noqa: PLC0415 - only this metric needs them
        from gpucell.client import BrokerClient  # noqa: PLC0415
        from gpucell.client.session import CellOptions, Session  # noqa: PLC0415

        config_path = os.path.join(self.tmp, "rss.toml")
        with open(config_path, "w") as f:  # warm workers ready, so that a session costs no cold start
            f.write(CONFIG.replace("min_warm = 0", "min_warm = 2").replace("max_workers = 2", "max_workers = 4"))
        broker = start_embedded_broker(config_path)
        client = BrokerClient(broker.address, broker.token)
        try:
            proc = psutil.Process(broker.pid)
            Session(client).known_labels()
            before = proc.memory_info().rss / 1e6
            cap_s = {"smoke": 5.0, "quick": 30.0}.get(self.p.name, 120.0)
            deadline = time.monotonic() + cap_s
            sink = NullSink()
            count = 0
            while count < self.p.sessions_n and time.monotonic() < deadline:
                session = Session(client, session_name=f"bench-idle-{count}")
                session.run_cell("pass", {}, CellOptions(hardware=HW), sink)
                session.release()  # the session stays known to the broker, idle, with no worker
                count += 1
            after = proc.memory_info().rss / 1e6
        finally:
            client.close()
            broker.stop()
        per_session_kb = (after - before) * 1000 / max(count, 1)
        note = f"{count} sessions each ran `pass` then released its worker; {before:.0f} MB before them"
        if count < self.p.sessions_n:
            note += (f"; stopped at the {cap_s:g} s cap, not {self.p.sessions_n}: {per_session_kb:.1f} kB/session "
                     f"→ ~{before + per_session_kb * self.p.sessions_n / 1000:.0f} MB at {self.p.sessions_n} (extrapolated)")
        yield self.sample("broker_rss_mb", [after], note=note)


    def m_dispatch_p99_ms(self) -> Iterator[Sample]:
        """The broker under load: N concurrent sessions x M trivial cells, none lost (issue: reliability)."""
        report = measure_load(self.p.load_sessions, self.p.load_cells, max_workers=8, timeout_s=600.0)
        lost = self.p.load_sessions * self.p.load_cells - report.completed
        note = (f"{report.sessions} sessions x {report.cells_per_session} trivial cells, 8 workers: "
                f"{report.completed} done, {lost} lost, {report.duplicates} doubled, {report.cells_per_s:g} cells/s")
        if report.errors:
            note += f"; errors: {report.errors[0]}"
        yield self.sample("dispatch_p99_ms", [report.dispatch_p99_s * 1000], "load",
                          note=note + "; warm cells, from the broker's Prometheus histogram")
        yield self.sample("broker_rss_mb", [report.broker_peak_rss_mb], "load",
                          note=f"peak RSS (VmHWM) of the broker during the load above; {report.broker_rss_mb:g} MB at the end")

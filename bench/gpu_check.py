"""GPU check: drive %%gpu on the real local GPU through an embedded broker and print JSON metric lines.

Run by bench/gpu_check.sh (which builds the venv). Each step prints one JSON line on stdout,
`{"system": "gpucell", "metric": ..., "value": ..., "unit": ..., "n": ...}`, or
`{"system": "gpucell", "metric": ..., "error": "..."}` when the step fails, so that one missing
feature does not hide the figures of the others. Cell output goes to stderr.

Each phase runs in its own interpreter (a fresh IPython shell, a fresh embedded broker with its
own GPUCELL_CONFIG), so the fork server's preload setting can differ between phases and a phase
that hangs is killed without taking the rest down.

    python bench/gpu_check.py                # on a machine with an NVIDIA GPU
    python bench/gpu_check.py --cpu-dry-run  # here: cpu pool, no CUDA steps, smaller array
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
SYSTEM = "gpucell"
# Set per process from --card/--mode so that every line says where its figure came from.
CONTEXT: dict[str, Any] = {}
# Where the JSON lines go: the original stdout. Everything else printed to fd 1 (gpucell notices,
# a broker subprocess that inherits it) is moved to stderr by claim_stdout(), so stdout stays JSON.
JSON_OUT: Any = sys.stdout


def claim_stdout() -> None:
    global JSON_OUT
    JSON_OUT = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def emit(metric: str, value: Any = None, unit: str = "", n: int = 1, error: str | None = None,
         **extra: Any) -> None:
    line: dict[str, Any] = {"system": SYSTEM, "metric": metric}
    if error is not None:
        line["error"] = " ".join(error.split())[:500]  # one line, whatever the exception said
    else:
        line.update(value=value, unit=unit, n=n)
    line.update(extra)
    line.update(CONTEXT)
    print(json.dumps(line), file=JSON_OUT, flush=True)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class StepFailed(Exception):
    """A step's outcome was wrong (not an exception from gpucell itself)."""


def step(metric: str, fn: Callable[[], None]) -> bool:
    """Run one step; on any failure print its error line and carry on with the next step."""
    try:
        fn()
        return True
    except Exception as exc:  # noqa: BLE001 - the point is to report and continue
        log(f"--- step {metric} failed:\n{traceback.format_exc()}")
        emit(metric, error=one_line(exc))
        return False


# ---------------------------------------------------------------- the GPU, via NVML


def gpu_facts() -> dict[str, Any]:
    """Card name, label, UUID and memory of device 0; {} when there is no NVML GPU."""
    try:
        from gpucell.hardware import nvml_inventory  # noqa: PLC0415 - a missing part fails this step only
    except ImportError as exc:
        log(f"gpucell.hardware not importable: {exc}")
        return {}
    devices = nvml_inventory().devices()
    if not devices:
        return {}
    first = devices[0]
    return {"name": first.name, "label": first.label, "uuid": first.uuid,
            "memory_total": first.memory_total, "count": len(devices)}


def gpu_memory_used(uuid: str) -> int:
    from gpucell.hardware import device_stats  # noqa: PLC0415
    stats = device_stats([uuid])
    if not stats:
        raise StepFailed("NVML gave no reading for the device")
    return int(stats[0]["memory_used"])


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll a condition with a bounded timeout (GPU memory returning after a process exits)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


# ---------------------------------------------------------------- the IPython side


class Notebook:
    """A real InteractiveShell with gpucell loaded; runs cells and turns failures into exceptions."""

    def __init__(self) -> None:
        from IPython.core.interactiveshell import InteractiveShell  # noqa: PLC0415 - imported where used, as above
        from traitlets.config import Config  # noqa: PLC0415
        config = Config()
        config.HistoryManager.hist_file = ":memory:"  # nothing to keep, and no sqlite clashes between phases
        self.shell: Any = InteractiveShell.instance(config=config)  # IPython's own annotations are partial
        self.ns = self.shell.user_ns

    def run(self, source: str) -> float:
        """Run a cell; return its wall time in seconds; raise if it failed."""
        from IPython.utils.capture import capture_output  # noqa: PLC0415
        start = time.perf_counter()
        with capture_output() as captured:
            result = self.shell.run_cell(source, store_history=True)
        elapsed = time.perf_counter() - start
        shown = (captured.stdout + captured.stderr).strip()
        if shown:
            log(f"--- cell output ({source.splitlines()[0][:60]}):\n{shown[-4000:]}")
        error = result.error_before_exec or result.error_in_exec
        if error is not None:
            raise error
        return elapsed

    def load_gpucell(self) -> float:
        """%load_ext gpucell, failing loudly where IPython would only print a line."""
        start = time.perf_counter()
        outcome = self.shell.extension_manager.load_extension("gpucell")
        elapsed = time.perf_counter() - start
        if outcome == "no load function":
            raise StepFailed("gpucell has no load_ipython_extension (the magics are not there yet)")
        missing = [name for name in ("gpu",) if name not in self.shell.magics_manager.magics["cell"]]
        missing += [name for name in ("gpu_pull", "gpu_release") if name not in self.shell.magics_manager.magics["line"]]
        if missing:
            log(f"%load_ext gpucell registered no magic named {', '.join(missing)}")
        return elapsed

    def close(self) -> None:
        if "gpucell" not in self.shell.extension_manager.loaded:
            return
        try:
            self.shell.extension_manager.unload_extension("gpucell")
        except Exception as exc:  # noqa: BLE001 - the broker dies with this process anyway
            log(f"unload_ext gpucell: {one_line(exc)}")


def is_remote_ref(value: Any) -> bool:
    import gpucell  # noqa: PLC0415
    remote_ref = getattr(gpucell, "RemoteRef", None)
    if isinstance(remote_ref, type):
        return isinstance(value, remote_ref)
    return type(value).__name__ == "RemoteRef"  # the foundation does not export it yet


def write_config(directory: Path, label: str, preload: list[str], fork_server: bool) -> Path:
    """A broker config with one pool for the card's label (or cpu), and the fork server's preload."""
    path = directory / "gpucell.toml"
    pool_lines = [
        f'[pools."{label}"]',
        "min_warm = 0",
        # One worker: a single card cannot be partitioned further, and every cell should hit it.
        "max_workers = 1" if label != "cpu" else "max_workers = 2",
        "idle_timeout = 600",
        f"preload = {json.dumps(preload)}",
    ]
    path.write_text("\n".join(["[broker]", f"fork_server = {str(fork_server).lower()}", "", *pool_lines, ""]))
    return path


def show_worker_logs(state_dir: Path) -> None:
    for path in sorted(state_dir.rglob("*.log")):
        text = path.read_text(errors="replace")[-3000:]
        log(f"--- worker log {path.name}:\n{text}")


# ---------------------------------------------------------------- phases (one per interpreter)


def phase_main(args: argparse.Namespace) -> None:
    """RemoteRef on cuda, using it in place, %gpu_pull, the 1 GB round trip, memory after release."""
    hw = args.hardware
    gpu = not args.cpu_dry_run
    nb: Notebook | None = None
    baseline = 0
    if gpu:
        baseline = gpu_memory_used(args.uuid)

    def load() -> None:
        nonlocal nb
        nb = Notebook()
        emit("load_ext_s", round(nb.load_gpucell(), 4), "s", note="includes starting the embedded broker")

    if not step("load_ext_s", load) or nb is None:
        for metric in ("remote_ref_cell_s", "remote_ref_use_s", "gpu_pull_s", "roundtrip_array_s",
                       "gpu_memory_freed_gib"):
            emit(metric, error="not run: %load_ext gpucell failed")
        return
    notebook = nb

    if gpu:
        make_ref = (f"%%gpu {hw} --timeout 180\nimport torch\n"
                    "x = torch.ones(4096, 4096, device='cuda')\n")
    else:  # no device-bound value on a CPU: --keep asks for the same RemoteRef path
        make_ref = f"%%gpu {hw} --timeout 180 --keep x\nimport numpy as np\nx = np.ones((4096, 4096), dtype=np.float32)\n"

    def remote_ref() -> None:
        wall = notebook.run(make_ref)
        value = notebook.ns.get("x")
        if not is_remote_ref(value):
            raise StepFailed(f"x came back as {type(value).__name__}, not a RemoteRef")
        emit("remote_ref_cell_s", round(wall, 4), "s", note="first cell of the session: includes a cold start")

    def use_ref() -> None:
        source = f"%%gpu {hw} --timeout 120\ns = float(x.sum())\nwhere = str(getattr(x, 'device', 'cpu'))\n"
        wall = notebook.run(source)
        if notebook.ns.get("s") != 4096.0 * 4096.0:
            raise StepFailed(f"s = {notebook.ns.get('s')!r}, expected {4096 * 4096}")
        if gpu and not str(notebook.ns.get("where", "")).startswith("cuda"):
            raise StepFailed(f"x lives on {notebook.ns.get('where')!r}, not cuda")
        emit("remote_ref_use_s", round(wall, 4), "s")

    def pull() -> None:
        start = time.perf_counter()
        notebook.shell.run_line_magic("gpu_pull", "x")
        wall = time.perf_counter() - start
        value = notebook.ns.get("x")
        if is_remote_ref(value) or tuple(getattr(value, "shape", ())) != (4096, 4096):
            raise StepFailed(f"after %gpu_pull x is {type(value).__name__}")
        where = str(getattr(value, "device", "cpu"))
        if where != "cpu":
            raise StepFailed(f"%gpu_pull gave a tensor on {where}, expected a CPU copy")
        emit("gpu_pull_s", round(wall, 4), "s", bytes=4096 * 4096 * 4)

    step("remote_ref_cell_s", remote_ref)
    step("remote_ref_use_s", use_ref)
    step("gpu_pull_s", pull)

    def memory_freed() -> None:
        notebook.run(f"%%gpu {hw} --timeout 120\nimport torch\n"
                     f"big = torch.empty({args.big_gib} << 30, dtype=torch.uint8, device='cuda')\n"
                     "torch.cuda.synchronize()\n")
        peak = gpu_memory_used(args.uuid)
        if peak - baseline < (args.big_gib << 30):
            raise StepFailed(f"NVML shows only {(peak - baseline) / 2**30:.2f} GiB in use after allocating {args.big_gib} GiB")
        start = time.perf_counter()
        notebook.shell.run_line_magic("gpu_release", "")
        # The worker process must end for its CUDA context to go: wait for NVML to see it.
        freed = wait_for(lambda: gpu_memory_used(args.uuid) <= baseline + (64 << 20), timeout_s=60)
        after = gpu_memory_used(args.uuid)
        emit("gpu_memory_in_use_gib", round((peak - baseline) / 2**30, 3), "GiB",
             note=f"worker holding a {args.big_gib} GiB tensor plus its CUDA context")
        emit("gpu_memory_freed_gib", round((peak - after) / 2**30, 3), "GiB")
        emit("gpu_memory_residual_mib", round((after - baseline) / 2**20, 1), "MiB",
             note="NVML memory in use after release minus before the session")
        if not freed:
            raise StepFailed(f"GPU memory not back to baseline 60 s after %gpu_release "
                             f"({(after - baseline) / 2**20:.0f} MiB still in use)")
        emit("gpu_memory_free_s", round(time.perf_counter() - start, 3), "s",
             note="from %gpu_release until NVML shows the memory back")

    def lost_ref() -> None:
        # x was pulled; `big` stayed on the released worker: using it must fail clearly.
        try:
            notebook.run(f"%%gpu {hw} --timeout 60\nn = big.numel()\n")
        except Exception as exc:  # noqa: BLE001 - the failure is what we expect
            emit("lost_remote_ref_error", one_line(exc)[:200], "", note="using a RemoteRef of a released worker")
            return
        raise StepFailed("a cell using a RemoteRef of a released worker succeeded")

    def roundtrip() -> None:
        import numpy as np  # noqa: PLC0415 - only this step needs it
        count = args.array_bytes // 8
        notebook.ns["a"] = np.ones(count, dtype=np.float64)
        walls: list[float] = []
        for attempt in ("new", "cached"):
            left = args.deadline - time.time() - 5
            if attempt == "cached" and left < 1.5 * walls[0]:
                emit("roundtrip_array_cached_s", error=f"skipped: {left:.0f} s left in the phase")
                break
            # A bounded cell, so a slow transfer is reported here rather than by the phase's killer.
            source = f"%%gpu {hw} --timeout {max(10, int(left))} --pull b\nb = a + 1\n"
            walls.append(notebook.run(source))
            b = notebook.ns.get("b")
            if is_remote_ref(b) or getattr(b, "shape", None) != (count,) or float(b[0]) != 2.0:
                raise StepFailed(f"b came back as {type(b).__name__}")
            notebook.ns.pop("b", None)
            if attempt == "new":
                size_gb = count * 8 / 1e9
                emit("roundtrip_array_s", round(walls[0], 4), "s", bytes=count * 8,
                     note="send a (new), return b with --pull; the worker is warm")
                emit("roundtrip_array_gbps", round(2 * size_gb / walls[0], 3), "GB/s", bytes=count * 8,
                     note="bytes sent plus bytes returned, per second of cell wall time")
            else:
                emit("roundtrip_array_cached_s", round(walls[1], 4), "s", bytes=count * 8,
                     note="same cell again: a unchanged, so only b should travel")
        del notebook.ns["a"]

    # The GPU steps before the round trip: a slow 1 GB transfer must not eat their time.
    if gpu:
        if step("gpu_memory_freed_gib", memory_freed):
            step("lost_remote_ref_error", lost_ref)
    else:
        emit("gpu_memory_freed_gib", error="skipped: --cpu-dry-run has no GPU")

    # After a release the next cell starts a worker: warm it first so the figure is the transfer.
    def warmup() -> None:
        notebook.run(f"%%gpu {hw} --timeout 120\nwarm = 1\n")

    if step("roundtrip_warmup", warmup):
        step("roundtrip_array_s", roundtrip)
    notebook.close()


def phase_cold(args: argparse.Namespace) -> None:
    """Cold start of a worker: the first cell after a release, `--reps` times, on one broker config."""
    hw = args.hardware
    gpu = not args.cpu_dry_run
    metric = f"cold_start_{args.config}_s"
    notebook = Notebook()
    try:
        notebook.load_gpucell()
    except Exception as exc:  # noqa: BLE001
        emit(metric, error=one_line(exc))
        return
    if gpu:
        body = "import torch\ntorch.zeros(1, device='cuda')\ntorch.cuda.synchronize()\n"
        baseline = gpu_memory_used(args.uuid)
    else:
        body = "import numpy\nnumpy.zeros(1)\n"
        baseline = 0
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(args.reps):
        # Stop early rather than be killed with nothing reported: keep room for one more rep.
        if cold and args.deadline and args.deadline - time.time() < 2 * (cold[-1] + warm[-1]) + 5:
            break
        if gpu:  # a worker still holding the card would make the next cell queue, not cold-start
            if not wait_for(lambda: gpu_memory_used(args.uuid) <= baseline + (64 << 20), timeout_s=60):
                emit(metric, error="GPU memory of the last worker not freed within 60 s of %gpu_release")
                break
        try:
            cold.append(notebook.run(f"%%gpu {hw} --timeout 180\n{body}"))
            warm.append(notebook.run(f"%%gpu {hw} --timeout 60\n{body}"))
            notebook.shell.run_line_magic("gpu_release", "")
        except Exception as exc:  # noqa: BLE001
            emit(metric, error=one_line(exc))
            break
    if cold:
        note = f"first cell on a new worker (fork server preload: {args.preload or 'nothing'}, fork_server={args.fork_server})"
        emit(metric, round(statistics.median(cold), 4), "s", n=len(cold),
             values=[round(v, 4) for v in cold], note=note)
        emit(f"warm_cell_{args.config}_s", round(statistics.median(warm), 4), "s", n=len(warm),
             values=[round(v, 4) for v in warm], note="the same cell again on the warm worker")
    notebook.close()


# ---------------------------------------------------------------- the driver


def run_phase(args: argparse.Namespace, phase: str, config: str, preload: list[str], fork_server: bool,
              timeout_s: float) -> None:
    """Run one phase in a child interpreter with its own broker config; relay its JSON lines."""
    with tempfile.TemporaryDirectory(prefix=f"gpucell-check-{config}-") as tmp:
        state_dir = Path(tmp) / "state"
        state_dir.mkdir()
        env = dict(os.environ)
        for name in ("GPUCELL_BROKER", "GPUCELL_TOKEN"):  # always the embedded broker
            env.pop(name, None)
        env["GPUCELL_CONFIG"] = str(write_config(Path(tmp), args.hardware, preload, fork_server))
        env["GPUCELL_STATE_DIR"] = str(state_dir)
        env["GPUCELL_DEFAULT_HARDWARE"] = args.hardware
        env["IPYTHONDIR"] = str(Path(tmp) / "ipython")
        env["MPLBACKEND"] = "Agg"
        env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "-u", str(Path(__file__).resolve()), "--phase", phase,
                   "--config", config, "--preload", ",".join(preload),
                   "--fork-server", str(fork_server).lower(), "--deadline", str(time.time() + timeout_s),
                   *args.passthrough]
        # Own process group, so a phase that hangs is killed with everything it started.
        child = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        deadline = time.monotonic() + timeout_s
        timer_killed = False

        def kill_group(_signum: int = 0, _frame: Any = None) -> None:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        old_alarm = signal.signal(signal.SIGALRM, kill_group)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            for line in child.stdout:
                print(line, end="", file=JSON_OUT, flush=True)
            child.wait()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_alarm)
            timer_killed = time.monotonic() >= deadline
            kill_group()  # workers or a broker left behind by a crashed phase
        if timer_killed:
            emit(f"phase_{config}", error=f"timed out after {timeout_s:.0f} s and was killed")
        elif child.returncode != 0:
            emit(f"phase_{config}", error=f"phase exited with status {child.returncode}")
        if timer_killed or child.returncode != 0:
            show_worker_logs(state_dir)


def driver(args: argparse.Namespace) -> int:
    # `timeout` in gpu_check.sh sends SIGTERM: exit through the finally blocks that kill the phases.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    passthrough = ["--array-bytes", str(args.array_bytes), "--reps", str(args.reps), "--big-gib", str(args.big_gib)]
    started = time.perf_counter()
    if args.cpu_dry_run:
        facts: dict[str, Any] = {"name": f"cpu ({platform.processor() or platform.machine()})", "label": "cpu", "uuid": ""}
    else:
        facts = gpu_facts()
        if not facts:
            emit("card", error="no NVIDIA GPU seen through NVML (use --cpu-dry-run on a machine without one)")
            return 1
    CONTEXT.update(card=facts["name"], mode="cpu-dry-run" if args.cpu_dry_run else "gpu")
    extra = {}
    try:
        import torch  # noqa: PLC0415 - optional: reported when present
        extra["torch"] = torch.__version__
    except ImportError:
        extra["torch"] = None
    emit("card", facts["name"], "", n=facts.get("count", 0), label=facts["label"],
         memory_total_gib=round(facts.get("memory_total", 0) / 2**30, 1), python=platform.python_version(), **extra)
    passthrough += ["--hardware", facts["label"], "--uuid", facts["uuid"], "--card", facts["name"]]
    if args.cpu_dry_run:
        passthrough.append("--cpu-dry-run")
    args.passthrough = passthrough
    args.hardware = facts["label"]

    heavy = "numpy" if args.cpu_dry_run else "torch"
    if not args.cpu_dry_run and extra["torch"] is None:
        emit("torch", error="torch is not importable in this venv: CUDA steps will fail")
    run_phase(args, "main", "main", [heavy], True, timeout_s=args.main_timeout)
    for config, preload, fork_server in ((f"preload_{heavy}", [heavy], True), ("no_preload", [], True),
                                         ("no_fork_server", [], False)):
        run_phase(args, "cold", config, preload, fork_server, timeout_s=args.cold_timeout)
    emit("gpu_check_total_s", round(time.perf_counter() - started, 2), "s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="no GPU: cpu pool, skip CUDA steps")
    parser.add_argument("--array-bytes", type=int, default=None,
                        help="size of the CPU array round trip (default 1 GB; 64 MB with --cpu-dry-run)")
    parser.add_argument("--reps", type=int, default=3, help="cold starts measured per configuration")
    parser.add_argument("--big-gib", type=int, default=8, help="GiB the memory-release step allocates on the GPU")
    # Budgets that keep the whole script under 8 minutes with setup: 160 + 3 × 55 s.
    parser.add_argument("--main-timeout", type=float, default=160.0)
    parser.add_argument("--cold-timeout", type=float, default=55.0)
    # Set by the driver for its child phases.
    parser.add_argument("--phase", choices=["main", "cold"], help=argparse.SUPPRESS)
    parser.add_argument("--config", default="", help=argparse.SUPPRESS)
    parser.add_argument("--preload", default="", help=argparse.SUPPRESS)
    parser.add_argument("--fork-server", default="true", help=argparse.SUPPRESS)
    parser.add_argument("--hardware", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--uuid", default="", help=argparse.SUPPRESS)
    parser.add_argument("--card", default="", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)  # unix time
    args = parser.parse_args(argv)
    if args.array_bytes is None:
        args.array_bytes = 64_000_000 if args.cpu_dry_run else 1_000_000_000
    claim_stdout()
    if args.phase is None:
        return driver(args)
    CONTEXT.update(card=args.card, mode="cpu-dry-run" if args.cpu_dry_run else "gpu")
    if args.phase == "main":
        phase_main(args)
    else:
        phase_cold(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

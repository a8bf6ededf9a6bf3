"""Runs one system for one round in its own process and prints its samples (run.py starts it).

Usage: python bench/agent.py SYSTEM PROFILE METRIC[,METRIC...]

Each sample goes to the original stdout as one line `@@sample <json>`; anything else a library
prints is ignored by run.py. Exit status 3 means the harness itself is broken; any failure of the
system under test is reported as an unsupported sample instead.
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
# peer workers import systems.tasks by reference: they inherit this
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (BENCH_DIR, os.environ.get("PYTHONPATH", "")) if p)

from harness import PROFILES, Sample, terminate_on_sigterm  # noqa: E402

SYSTEMS = {
    "baseline": ("baselines", "BaselineSystem"),
    "gpucell": ("systems.gpucell_sys", "GpucellSystem"),
    "dask": ("systems.dask_sys", "DaskSystem"),
    "ray": ("systems.ray_sys", "RaySystem"),
    "ipyparallel": ("systems.ipp_sys", "IppSystem"),
}
HARNESS_BROKEN = 3
SAMPLE_PREFIX = "@@sample "


def emit(out: object, sample: Sample) -> None:
    out.write(SAMPLE_PREFIX + sample.to_json() + "\n")  # type: ignore[attr-defined]
    out.flush()  # type: ignore[attr-defined]


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return " ".join(text.split())[:300]


def main(argv: list[str]) -> int:
    system_name, profile_name, metric_list = argv
    profile = PROFILES[profile_name]
    metrics = [m for m in metric_list.split(",") if m]
    out = sys.stdout  # libraries may swap sys.stdout; samples always go here
    terminate_on_sigterm()
    module_name, class_name = SYSTEMS[system_name]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except Exception as exc:  # noqa: BLE001 - e.g. the peer is not installed, or gpucell's foundation is not there yet
        for m in metrics:
            emit(out, Sample(system_name, m, unsupported=f"cannot import: {describe(exc)}"))
        return 0
    system = cls(profile)
    try:
        for metric in metrics:
            try:
                for sample in system.measure(metric):
                    emit(out, sample)
            except Exception as exc:  # noqa: BLE001 - one broken metric is reported, the rest still run
                traceback.print_exc(file=sys.stderr)
                emit(out, Sample(system_name, metric, unsupported=f"failed: {describe(exc)}"))
    finally:
        try:
            system.close()
        except Exception:  # noqa: BLE001 - a failed close is printed; the samples are already out
            traceback.print_exc(file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - anything else means the harness itself is broken
        traceback.print_exc()
        sys.exit(HARNESS_BROKEN)

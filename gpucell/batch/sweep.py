"""`gpucell run --sweep`: every point of a parameter grid as its own run, N at a time, one notebook per point."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gpucell.batch.commands import submit_job
from gpucell.batch.execute import default_output, parameter_slug
from gpucell.errors import ConfigError


def point_output(notebook: str, output: str | None, point: dict[str, Any]) -> str:
    """-o with {KEY} placeholders is a template (papermill formats it); else -o is a folder; else here."""
    if output and "{" in output:
        return output
    return default_output(notebook, point, output)


def _passthrough(args: argparse.Namespace) -> list[str]:
    """The options every point shares, as `gpucell run` takes them."""
    extra: list[str] = []
    for flag, value in (("--gpu", args.gpu), ("--timeout", args.timeout), ("-k", args.kernel),
                        ("--cwd", args.cwd), ("--start-timeout", args.start_timeout)):
        if value is not None and value != "":
            extra += [flag, str(value)]
    for flag, on in (("--report-mode", args.report_mode), ("--log-output", args.log_output)):
        if on:
            extra.append(flag)
    return extra


def run_sweep(args: argparse.Namespace, notebook: str, output: str | None, params: dict[str, Any],
              points: list[dict[str, Any]]) -> int:
    """Run (or, with --detach, submit) each point; a progress bar counts them; exit 1 when any failed."""
    if not points:
        raise ConfigError("--sweep: the grid is empty")
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be at least 1")
    runs = [({**params, **point}, point) for point in points]
    if args.detach:
        for merged, point in runs:
            job_id = submit_job(notebook, merged, args.gpu or "", args.timeout or 0.0, args.cwd)
            print(f"{job_id}\t{parameter_slug(point)}")
        return 0
    if output and "{" not in output:
        Path(output).mkdir(parents=True, exist_ok=True)
    outputs = [point_output(notebook, output, point) for _, point in runs]
    if len(set(outputs)) != len(outputs):
        raise ConfigError("--sweep: two points would write the same output notebook; use {KEY} in -o")
    shared = _passthrough(args)
    failed: list[str] = []
    bar = tqdm(total=len(runs), unit="run", desc="sweep", file=sys.stderr)

    def one(index: int) -> tuple[int, int]:
        merged, _ = runs[index]
        target = outputs[index]
        log_path = Path(target.split("://")[-1]).with_suffix(".log") if "{" not in target else None
        cmd = [sys.executable, "-m", "gpucell.cli", "run", notebook, "-o", target, "-y", json.dumps(merged),
               *shared]
        if log_path is not None:
            with open(log_path, "w", encoding="utf-8") as log:
                code = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      env=os.environ.copy()).returncode
        else:
            code = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                  env=os.environ.copy()).returncode
        return index, code

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for index, code in pool.map(one, range(len(runs))):
            bar.update(1)
            status = "ok" if code == 0 else f"failed ({code})"
            bar.write(f"{parameter_slug(runs[index][1])}: {status} -> {outputs[index]}", file=sys.stderr)
            if code != 0:
                failed.append(outputs[index])
    bar.close()
    print(f"gpucell run: sweep of {len(runs)} points in {time.monotonic() - started:.0f}s, "
          f"{len(runs) - len(failed)} succeeded" + (f", failed: {', '.join(failed)}" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0

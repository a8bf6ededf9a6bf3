"""The batch subcommands of `gpucell`: run, jobs, logs, fetch, cancel."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from gpucell.client.jobs_client import JobsClient
from gpucell.errors import ConfigError
from gpucell.process import die_with_parent


def _default_output(notebook: str) -> str:
    return str(Path.cwd() / f"{Path(notebook).stem}.out.ipynb")


def _run(args: argparse.Namespace) -> int:
    # nbformat costs seconds to import: only `gpucell run` pays it, not status, release or workers.
    from gpucell.batch.params import parse_parameters  # noqa: PLC0415

    params = parse_parameters(args.parameters)  # bad -p fails here, before anything runs
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout:g}: must be positive")
    if args.detach:
        return _submit(args)
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    from gpucell.batch.runner import RunOptions, run_notebook  # noqa: PLC0415 - nbclient loads only for `run`

    if not args.notebook and not args.resume:
        raise ConfigError("gpucell run: give a NOTEBOOK (or --resume OUT.ipynb)")
    output = args.output or args.resume or _default_output(args.notebook)
    result = run_notebook(RunOptions(args.notebook, output, params, args.gpu or "", args.timeout,
                                     args.resume, args.cwd))
    return result.exit_code


def _submit(args: argparse.Namespace) -> int:
    if args.resume:
        raise ConfigError("--resume runs here; it cannot be combined with --detach")
    if not args.notebook:
        raise ConfigError("gpucell run --detach: a NOTEBOOK is required")
    try:
        data = Path(args.notebook).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no such notebook: {args.notebook}") from None
    client = JobsClient.from_env()
    try:
        job = client.submit(args.notebook, data, list(args.parameters), args.gpu or "", args.timeout or 0.0,
                            os.path.abspath(args.cwd or os.getcwd()))
    finally:
        client.close()
    print(job["id"])
    print(f"gpucell: job {job['id']} runs on the broker; follow it with `gpucell logs {job['id']} -f`, "
          f"get its notebook with `gpucell fetch {job['id']} -o OUT.ipynb`", file=sys.stderr)
    return 0


def _duration(job: dict[str, object]) -> str:
    end = float(job["finished"]) or time.time()  # type: ignore[arg-type]
    seconds = max(0.0, end - float(job["started"]))  # type: ignore[arg-type]
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def _jobs(args: argparse.Namespace) -> int:
    client = JobsClient.from_env()
    try:
        jobs = client.list()
    finally:
        client.close()
    if args.json:
        print(json.dumps(jobs))
        return 0
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'ID':<13} {'STATE':<11} {'HARDWARE':<9} {'STARTED':<19} {'DURATION':>8} {'COST':>9}  NOTEBOOK")
    for job in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(job["started"])))
        print(f"{job['id']:<13} {job['state']:<11} {job['hardware'] or '-':<9} {started:<19} "
              f"{_duration(job):>8} ${float(job['cost']):>8.4f}  {job['notebook']}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    client = JobsClient.from_env()
    try:
        for text in client.logs(args.job, follow=args.follow):
            sys.stdout.write(text)
            sys.stdout.flush()
    finally:
        client.close()
    return 0


def _fetch(args: argparse.Namespace) -> int:
    client = JobsClient.from_env()
    try:
        data, job = client.fetch(args.job)
    finally:
        client.close()
    Path(args.output).write_bytes(data)
    print(f"{args.output}: output of {job['id']} ({job['state']})")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    client = JobsClient.from_env()
    try:
        cancelled, job = client.cancel(args.job)
    finally:
        client.close()
    print(f"cancelling {job['id']}" if cancelled else f"{job['id']} already ended ({job['state']})")
    return 0


def add_batch_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="execute a notebook: parameters, live output, resumable, or detached")
    p.add_argument("notebook", nargs="?", help="the notebook to run (optional with --resume)")
    p.add_argument("-p", "--parameters", action="append", default=[], metavar="KEY=VALUE",
                   help="set a parameter (typed as papermill does: int, float, True/False/None, else str)")
    p.add_argument("--gpu", metavar="HW", help="hardware for bare %%%%gpu cells")
    p.add_argument("-o", "--output", metavar="OUT.ipynb",
                   help="output notebook, saved after every cell (default: NAME.out.ipynb here)")
    p.add_argument("--timeout", type=float, metavar="S", help="stop a cell that runs longer than S seconds")
    p.add_argument("--resume", metavar="OUT.ipynb", help="continue a failed run from its failing cell")
    p.add_argument("--detach", action="store_true", help="the broker runs it as a job; print the job id")
    p.add_argument("--cwd", help="the kernel's working directory (default: the current one)")
    p.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=_run)

    p = sub.add_parser("jobs", help="list the broker's batch jobs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_jobs)

    p = sub.add_parser("logs", help="a job's output")
    p.add_argument("job")
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming until the job ends")
    p.set_defaults(func=_logs)

    p = sub.add_parser("fetch", help="download a job's output notebook")
    p.add_argument("job")
    p.add_argument("-o", "--output", required=True, metavar="OUT.ipynb")
    p.set_defaults(func=_fetch)

    p = sub.add_parser("cancel", help="stop a running job")
    p.add_argument("job")
    p.set_defaults(func=_cancel)

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


def _run(args: argparse.Namespace) -> int:
    # papermill, nbformat and nbclient cost seconds to import: only `gpucell run` pays it, not status or workers.
    from gpucell.batch.cli_params import collect_parameters, split_pairs, sweep_points  # noqa: PLC0415

    typed, extra = split_pairs(args.parameters, "-p")
    raw, extra_raw = split_pairs(args.parameters_raw, "-r")
    positionals = [p for p in [args.notebook, args.output_path] if p] + extra + extra_raw
    if len(positionals) > 2:
        raise ConfigError(f"gpucell run: unexpected arguments {positionals[2:]}")
    notebook = positionals[0] if positionals else None
    output_path = positionals[1] if len(positionals) > 1 else None
    if output_path and args.output and output_path != args.output:
        raise ConfigError(f"gpucell run: two outputs ({output_path} and -o {args.output}); give one")
    output = args.output or output_path
    params = collect_parameters(typed, raw, args.parameters_yaml, args.parameters_file, args.parameters_base64)
    if args.inject_paths or args.inject_input_path:
        params["PAPERMILL_INPUT_PATH"] = notebook
    if args.inject_paths or args.inject_output_path:
        params["PAPERMILL_OUTPUT_PATH"] = output
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout:g}: must be positive")
    if args.cwd is not None and not os.path.isdir(args.cwd):
        # Before anything is written or submitted: the previous output stays as it was.
        raise ConfigError(f"--cwd {args.cwd}: no such directory")
    if args.help_notebook:
        from gpucell.batch.execute import notebook_help  # noqa: PLC0415 - papermill loads only for `run`

        if not notebook:
            raise ConfigError("--help-notebook: give a NOTEBOOK")
        sys.stdout.write(notebook_help(notebook))
        return 0
    if args.sweep:
        from gpucell.batch.sweep import run_sweep  # noqa: PLC0415 - papermill loads only for `run`

        if args.resume:
            raise ConfigError("--sweep starts new runs; it cannot be combined with --resume")
        if not notebook:
            raise ConfigError("gpucell run --sweep: a NOTEBOOK is required")
        return run_sweep(args, notebook, output, params, sweep_points(args.sweep))
    if args.detach:
        if output:
            raise ConfigError("--detach: the job's notebook stays on the broker, so -o/OUTPUT does not apply; "
                              "get it with `gpucell fetch JOB -o OUT.ipynb` once the job has ended")
        return _submit(args, notebook, params)
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    from gpucell.batch.execute import RunRequest, default_output, run  # noqa: PLC0415 - nbclient loads only for `run`

    if not notebook and not args.resume:
        raise ConfigError("gpucell run: give a NOTEBOOK (or --resume OUT.ipynb)")
    output = output or args.resume or default_output(notebook or "-", params)
    outcome = run(RunRequest(notebook, output, params, args.gpu or "", args.timeout, args.resume, args.cwd,
                             args.kernel, args.prepare_only, args.report_mode, args.log_output,
                             args.start_timeout))
    return outcome.exit_code


def _submit(args: argparse.Namespace, notebook: str | None, params: dict[str, object]) -> int:
    if args.resume:
        raise ConfigError("--resume runs here; it cannot be combined with --detach")
    if not notebook:
        raise ConfigError("gpucell run --detach: a NOTEBOOK is required")
    job_id = submit_job(notebook, params, args.gpu or "", args.timeout or 0.0, args.cwd)
    print(job_id)
    print(f"gpucell: job {job_id} runs on the broker; follow it with `gpucell logs {job_id} -f`, "
          f"get its notebook with `gpucell fetch {job_id} -o OUT.ipynb`", file=sys.stderr)
    return 0


def submit_job(notebook: str, params: dict[str, object], hardware: str, timeout: float, cwd: str | None) -> str:
    """Send one run to the broker; parameters travel as YAML so lists and mappings keep their types."""
    try:
        data = Path(notebook).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no such notebook: {notebook}") from None
    pairs = [f"{key}={value}" if value is None or isinstance(value, (str, bool, int, float))
             else f"{key}={json.dumps(value)}" for key, value in params.items()]
    client = JobsClient.from_env()
    try:
        job = client.submit(notebook, data, pairs, hardware, timeout, os.path.abspath(cwd or os.getcwd()))
    finally:
        client.close()
    return str(job["id"])


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
    p = sub.add_parser("run", help="execute a notebook (papermill's options): live output, resumable, detached, sweeps")
    p.add_argument("notebook", nargs="?", help="the notebook to run, a papermill path (fsspec, s3://, - for stdin)")
    p.add_argument("output_path", nargs="?", help="the output notebook (as -o; - for stdout)")
    p.add_argument("-p", "--parameters", action="append", default=[], nargs="+", metavar="KEY VALUE",
                   help="set a parameter: KEY VALUE (papermill) or KEY=VALUE; typed as papermill does, "
                        "and a YAML list or mapping ([128,64]) arrives as one")
    p.add_argument("-r", "--parameters-raw", action="append", default=[], nargs="+", metavar="KEY VALUE",
                   help="set a parameter as a raw string")
    p.add_argument("-y", "--parameters-yaml", action="append", default=[], metavar="YAML",
                   help="parameters as a YAML mapping")
    p.add_argument("-f", "--parameters-file", action="append", default=[], metavar="PARAMS.yaml",
                   help="parameters from a YAML file")
    p.add_argument("-b", "--parameters-base64", action="append", default=[], metavar="B64",
                   help="parameters as base64-encoded YAML")
    p.add_argument("--inject-input-path", action="store_true", help="PAPERMILL_INPUT_PATH as a parameter")
    p.add_argument("--inject-output-path", action="store_true", help="PAPERMILL_OUTPUT_PATH as a parameter")
    p.add_argument("--inject-paths", action="store_true", help="both of the above")
    p.add_argument("--help-notebook", action="store_true", help="print the notebook's parameters and exit")
    p.add_argument("-k", "--kernel", help="the kernel to run (default: the notebook's own kernelspec)")
    p.add_argument("--prepare-only", action="store_true", help="write the parameterised notebook, run nothing")
    p.add_argument("--report-mode", action="store_true", help="hide code cells' input in the output")
    p.add_argument("--log-output", action="store_true",
                   help="accepted for papermill's sake: gpucell prints every output live anyway")
    p.add_argument("--start-timeout", type=int, default=60, metavar="S", help="seconds to wait for the kernel")
    p.add_argument("--gpu", metavar="HW", help="hardware for bare %%%%gpu cells")
    p.add_argument("-o", "--output", metavar="OUT.ipynb",
                   help="output notebook, saved after every cell (default: NAME[.PARAMETERS].out.ipynb here)")
    p.add_argument("--timeout", "--execution-timeout", type=float, metavar="S",
                   help="stop a cell that runs longer than S seconds")
    p.add_argument("--resume", metavar="OUT.ipynb", help="continue a failed run from its failing cell")
    p.add_argument("--detach", action="store_true", help="the broker runs it as a job; print the job id")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=[V1,V2]|GRID.yaml",
                   help="run every point of the grid (one output notebook per point, named from its parameters)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="sweep points run at once (default 2)")
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

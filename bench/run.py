"""Benchmarks gpucell against ipyparallel, dask.distributed and Ray, with physical baselines, in one run.

    python bench/run.py [--json] [--quick] [--smoke] [--peers] [--only METRIC,...] [--markdown]

Every system runs in its own process, once per round, and the rounds rotate the order of the
systems, so that no figure depends on what ran before it (this VM pays ~2.4 s/GB for memory on
first touch). See bench/README.md for what each metric means.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import psutil

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

from agent import HARNESS_BROKEN, SAMPLE_PREFIX  # noqa: E402
from baselines import BASELINE_METRICS  # noqa: E402
from harness import MAIN_METRICS, METRIC_NAMES, PROFILES, Profile, Result, Sample, aggregate, terminate_on_sigterm  # noqa: E402
from report import print_table, write_markdown  # noqa: E402

PEERS = ["dask", "ray", "ipyparallel"]


class HarnessBroken(Exception):
    """The harness, not a system under test, failed."""


def run_agent(system: str, profile: Profile, metrics: list[str], log_dir: str, round_no: int,
              verbose: bool) -> list[Sample]:
    """Runs one system for one round in a child process; whatever it could not report is unsupported."""
    log_path = os.path.join(log_dir, f"{system}-{round_no}.log")
    cmd = [sys.executable, os.path.join(BENCH_DIR, "agent.py"), system, profile.name, ",".join(metrics)]
    with open(log_path, "w") as log:
        # its own process group, so that a timeout takes the system's helpers down with it
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        why = ""
        try:
            stdout, _ = proc.communicate(timeout=profile.agent_timeout_s)
        except subprocess.TimeoutExpired:
            why = f"timed out after {profile.agent_timeout_s:g} s"
            stdout = _stop_group(proc)
        except BaseException:  # Ctrl-C or SIGTERM of run.py: take the agent's cluster down too
            _stop_group(proc)
            _kill_group_leftovers(proc.pid)
            raise
    leftovers = _kill_group_leftovers(proc.pid)
    if leftovers:  # a system that does not clean up after itself is worth knowing about
        sys.stderr.write(f"[bench] {system} left processes behind (killed): {', '.join(leftovers)}\n")
    samples = [Sample.from_json(line[len(SAMPLE_PREFIX):]) for line in stdout.splitlines()
               if line.startswith(SAMPLE_PREFIX)]
    if proc.returncode == HARNESS_BROKEN:
        raise HarnessBroken(f"agent {system} failed in the harness; see {log_path}:\n{_tail(log_path)}")
    if not why and proc.returncode != 0:
        why = f"agent exited with status {proc.returncode}"
    if verbose:
        sys.stderr.write(f"[bench] round {round_no} {system}: {len(samples)} samples"
                         f"{' (' + why + ')' if why else ''}; log {log_path}\n")
    reported = {s.metric for s in samples}
    for metric in metrics:
        if metric not in reported:
            samples.append(Sample(system, metric, unsupported=why or "no result reported"))
    return samples


def _stop_group(proc: subprocess.Popen[str]) -> str:
    """SIGTERM (the agent shuts its cluster down), then SIGKILL; returns what the agent had printed."""
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            stdout, _ = proc.communicate(timeout=grace)
            return stdout
        except subprocess.TimeoutExpired:
            continue
    return ""


def _kill_group_leftovers(pgid: int) -> list[str]:
    """Kills what a system left running in the agent's process group; returns what it found."""
    left: list[str] = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getpgid(p.pid) == pgid:
                left.append(f"{' '.join(p.info['cmdline'] or [])[:100]}[{p.pid}]")
        except (ProcessLookupError, psutil.Error):
            continue
    if left:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _tail(path: str, lines: int = 30) -> str:
    with open(path) as f:
        return "".join(f.readlines()[-lines:])


def select_metrics(only: str | None) -> tuple[list[str], list[str]]:
    """(main metrics, baseline metrics) to run, in a fixed order."""
    main = [m for m in ["cold_start_ms", "warm_rtt_ms", "stream_latency_ms", "map_tasks_per_s",
                        "send_100mb_s", "send_1gb_s", "resend_1gb_cached_s", "return_100mb_s",
                        "idle_release_error_s", "broker_rss_mb", "dispatch_p99_ms", "stream_flood_s"]]
    assert sorted(main) == METRIC_NAMES
    if not only:
        return main, list(BASELINE_METRICS)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in main and w not in BASELINE_METRICS]
    if unknown:
        raise SystemExit(f"unknown metric(s): {', '.join(unknown)} (known: {', '.join(main + BASELINE_METRICS)})")
    return [m for m in main if m in wanted], [m for m in BASELINE_METRICS if m in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line per metric")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and items (real sizes for data)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no peers, < 60 s: checks the harness")
    parser.add_argument("--peers", action="store_true", help="also run ipyparallel, dask.distributed and Ray")
    parser.add_argument("--only", metavar="METRIC,...", help="run only these metrics")
    parser.add_argument("--markdown", action="store_true", help="rewrite the results table in bench/README.md")
    parser.add_argument("--rounds", type=int, help="override the profile's number of rounds")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = parser.parse_args(argv)

    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.rounds:
        profile = Profile(**{**profile.__dict__, "rounds": args.rounds})
    main_metrics, base_metrics = select_metrics(args.only)
    systems = ["gpucell"] + (PEERS if args.peers and not args.smoke else [])
    plan = [(s, main_metrics) for s in systems if main_metrics]
    if base_metrics:
        plan.append(("baseline", base_metrics))

    terminate_on_sigterm()
    started = time.time()
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="gpucell-bench-logs-") as log_dir:
        try:
            for round_no in range(profile.rounds):
                shift = round_no % len(plan)
                for system, metrics in plan[shift:] + plan[:shift]:  # rotate: no fixed run order
                    samples += run_agent(system, profile, metrics, log_dir, round_no, args.verbose)
        except HarnessBroken as exc:
            sys.stderr.write(f"bench harness broken: {exc}\n")
            return 2
    results = sorted(aggregate(samples), key=_order)
    if args.json:
        for r in results:
            print(json.dumps(r.as_dict()))
    else:
        print_table(results, sys.stdout)
    command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.markdown:
        write_markdown(results, os.path.join(BENCH_DIR, "README.md"), command.strip(), profile, time.time() - started)
    if args.verbose:
        sys.stderr.write(f"[bench] done in {time.time() - started:.1f} s\n")
    return 0


def _order(r: Result) -> tuple[int, int, str]:
    systems = ["gpucell", *PEERS, "baseline"]
    rows = [f"{m}[{v}]" for m, v in MAIN_METRICS] + [f"{m}[]" for m in BASELINE_METRICS]
    row = f"{r.metric}[{r.variant}]"
    if row in rows:
        rank = rows.index(row)
    elif any(k.startswith(r.metric + "[") for k in rows):
        rank = next(i for i, k in enumerate(rows) if k.startswith(r.metric + "["))
    else:
        rank = len(rows)
    return (rank, systems.index(r.system) if r.system in systems else len(systems), r.variant)

if __name__ == "__main__":
    sys.exit(main())

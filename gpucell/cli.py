"""The `gpucell` command: broker, worker, status, release (and batch jobs)."""

from __future__ import annotations

import argparse
import json
import secrets
import sys

from gpucell.batch.commands import add_batch_commands
from gpucell.broker import command as broker_command
from gpucell.errors import GpucellError


def _worker(args: argparse.Namespace) -> int:
    from gpucell.remote_kernel.worker import run_worker  # noqa: PLC0415 - heavy, worker only

    worker_id = args.worker_id or f"{args.hardware.lower()}-{secrets.token_hex(3)}"
    return run_worker(args.broker, args.hardware, worker_id, args.parent_pid)


def _client():  # type: ignore[no-untyped-def]
    from gpucell.client import BrokerClient  # noqa: PLC0415

    return BrokerClient.from_env()


def _status(args: argparse.Namespace) -> int:
    status = _client().status()
    if args.json:
        print(json.dumps(status))
        return 0
    for label, pool in status["pools"].items():
        print(f"{label}: {len(pool['workers'])}/{pool['max_workers']} workers, {pool['queued']} queued, "
              f"${pool['price_per_hour']:.2f}/h")
        for w in pool["workers"]:
            idle = f" idle {w['idle_s']:.0f}s (released in {w['release_in_s']:.0f}s)" if w["state"] == "idle" else ""
            print(f"  {w['id']:<14} {w['state']:<9} {w['session_name'] or w['session'][:8]}{idle}")
    print(f"total cost: ${status['usage']['total_cost']:.4f}")
    return 0


def _release(args: argparse.Namespace) -> int:
    client = _client()
    released: list[str] = []
    if args.worker:
        released = client.release(args.session or "", worker_id=args.worker)
    else:
        sessions = [args.session] if args.session else sorted(
            {w["session"] for p in client.status()["pools"].values() for w in p["workers"] if w["session"]})
        for session in sessions:
            released += client.release(session, hardware=args.hardware or "")
    print(f"released: {', '.join(released) if released else 'nothing'}")
    return 0


def _token_add(args: argparse.Namespace) -> int:
    from gpucell.broker.token_files import add_entry  # noqa: PLC0415 - the broker package loads only for this command

    token = add_entry(args.file, args.name, args.admin if args.kind == "user" else None)
    what = "user" if args.kind == "user" else "worker"
    print(f"gpucell: {what} {args.name} added to {args.file}; its token (shown once, only its SHA-256 is kept):",
          file=sys.stderr)
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpucell", description="Run notebook cells on remote GPU workers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run a broker")
    broker_command.add_arguments(p)
    p.set_defaults(func=broker_command.run)

    p = sub.add_parser("worker", help="run a worker that dials a broker (token in $GPUCELL_WORKER_TOKEN)")
    p.add_argument("--broker", required=True, help="host:port")
    p.add_argument("--hardware", required=True, help="label this worker serves, e.g. A100")
    p.add_argument("--worker-id")
    p.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=_worker)

    p = sub.add_parser("status", help="pools, workers, queues and usage")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)

    p = sub.add_parser("release", help="release workers now")
    p.add_argument("hardware", nargs="?")
    p.add_argument("--session")
    p.add_argument("--worker")
    p.set_defaults(func=_release)

    p = sub.add_parser("user", help="manage a broker's users file")
    user_sub = p.add_subparsers(dest="action", required=True)
    p = user_sub.add_parser("add", help="add (or re-key) a user and print its token once")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="may see and act on every user's sessions, workers, jobs")
    p.add_argument("--file", required=True, help="the broker's users_file")
    p.set_defaults(func=_token_add, kind="user")

    p = sub.add_parser("worker-token", help="manage a broker's join tokens for hand-started workers")
    token_sub = p.add_subparsers(dest="action", required=True)
    p = token_sub.add_parser("add", help="add (or re-key) a worker id and print its join token once")
    p.add_argument("name", metavar="ID")
    p.add_argument("--file", required=True, help="the broker's worker_tokens_file")
    p.set_defaults(func=_token_add, kind="worker", admin=False)

    add_batch_commands(sub)  # run, jobs, logs, fetch, cancel
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GpucellError as exc:
        print(f"gpucell: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""The `gpucell` command: broker, worker, status, release (and batch jobs)."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys

from gpucell import settings
from gpucell.batch.commands import add_batch_commands
from gpucell.broker.config import load_config
from gpucell.errors import GpucellError
from gpucell.process import die_with_parent
from gpucell.settings import ENV_TOKEN


def _broker(args: argparse.Namespace) -> int:
    from gpucell.broker.server import serve_forever  # noqa: PLC0415 - the broker's deps load only for this command

    if args.parent_pid:
        die_with_parent(args.parent_pid)
    config = load_config(args.config)
    if args.host:
        config.host = args.host
    if args.port is not None:
        config.port = args.port
    if args.state_dir:
        config.state_dir = args.state_dir
    for name in ("tls_cert", "tls_key", "metrics_port"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    if args.insecure:
        config.insecure = True
    token = settings.get("token") or secrets.token_urlsafe(24)
    if not settings.get("token"):
        print(f"gpucell broker token (set {ENV_TOKEN} on clients): {token}", file=sys.stderr, flush=True)
    worker_token = settings.get("worker_token") or secrets.token_urlsafe(24)
    asyncio.run(serve_forever(config, token, worker_token))
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpucell", description="Run notebook cells on remote GPU workers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run a broker")
    p.add_argument("--config", help="TOML config (default: $GPUCELL_CONFIG)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--state-dir")
    p.add_argument("--tls-cert", help="PEM certificate (TLS is required off loopback)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback host without TLS")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (0: any free one)")
    p.add_argument("--embedded", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=_broker)

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

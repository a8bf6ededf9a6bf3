"""The broker's command line: what `gpucell broker` and `python -m gpucell.broker` run."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys

from gpucell import settings
from gpucell.broker.config import load_config
from gpucell.errors import GpucellError
from gpucell.process import die_with_parent
from gpucell.settings import ENV_TOKEN


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpucell broker", description="Run a gpucell broker.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except GpucellError as exc:
        print(f"gpucell: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

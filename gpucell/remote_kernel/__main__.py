"""`python -m gpucell.remote_kernel`: start one worker (what `gpucell worker` runs), without the CLI's imports."""

import argparse
import secrets

from gpucell.remote_kernel.worker import run_worker


def main() -> int:
    parser = argparse.ArgumentParser(prog="gpucell worker")
    parser.add_argument("--broker", required=True, help="host:port")
    parser.add_argument("--hardware", required=True, help="label this worker serves, e.g. A100")
    parser.add_argument("--worker-id")
    parser.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args()
    worker_id = args.worker_id or f"{args.hardware.lower()}-{secrets.token_hex(3)}"
    return run_worker(args.broker, args.hardware, worker_id, args.parent_pid)


if __name__ == "__main__":
    raise SystemExit(main())

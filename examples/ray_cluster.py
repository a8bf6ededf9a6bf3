"""A real multi-node Ray cluster on this one machine, on loopback only, to try gpucell's `ray` provisioner.

    python examples/ray_cluster.py            # prints the address and a gpucell config; Ctrl-C stops it

A head with no CPUs (no worker lands there) and one 1-CPU node per label advertising
`accelerator_type:LABEL`, for pools with `simulate = true`. Stopping this script stops this cluster's
processes only (not every Ray process on the machine, as `ray stop` would). tests/test_ray.py runs
its cluster through `start()`.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from typing import Any

# Ray must stay on loopback (with 1 it binds the machine's other address), report nothing home, and need
# no token; set before Ray is imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray.cluster_utils  # after the variables above

LABELS = ("A100", "T4")


def start(labels: tuple[str, ...] = LABELS) -> tuple[Any, dict[str, Any]]:
    """(the cluster, label -> its node). Its temp dir is $RAY_TMPDIR, made here when unset (a short path:
    Ray's unix sockets live there and must fit in 107 bytes)."""
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="gcray-"))
    cluster = ray.cluster_utils.Cluster(initialize_head=True,
                                        head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = {}
    try:
        for label in labels:
            nodes[label] = cluster.add_node(num_cpus=1, resources={f"accelerator_type:{label}": 1})
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster, nodes


def config(address: str, labels: tuple[str, ...] = LABELS) -> str:
    """A gpucell config whose pools place their workers on this cluster."""
    return "".join(f'[pools.{label}]\nsimulate = true\nprovisioner = "ray"\n'
                   f'options = {{ address = "{address}" }}\n\n' for label in labels)


def main() -> None:
    cluster, nodes = start()
    print(f"ray cluster at {cluster.address} (RAY_TMPDIR={os.environ['RAY_TMPDIR']})", flush=True)
    for label, node in nodes.items():
        print(f"  node {node.node_id} offers accelerator_type:{label}", flush=True)
    print("gpucell config:\n\n" + config(cluster.address), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster.shutdown()
        print("ray cluster stopped", flush=True)


if __name__ == "__main__":
    main()

"""gpucell's cold start with the ray provisioner: pool at zero -> first output of print(1), on a real local Ray cluster."""
from __future__ import annotations

import os
import tempfile
import time

from harness import wait_for

from gpucell.client.sink import Sink

RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


class _FirstOutput(Sink):
    def __init__(self) -> None:
        self.at: float | None = None

    def stream(self, name: str, text: str) -> None:
        if self.at is None and "1" in text.split():
            self.at = time.monotonic()

    def display(self, data: object, metadata: object, execute_result: bool) -> None:
        pass

    def phase(self, text: str) -> None:
        pass


def ray_cold_starts(n: int) -> list[float]:
    """ms per cold start (the first one, which also pays ray.init, is dropped), on a 1-node Ray cluster."""
    os.environ.update(RAY_ENV)
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="gpucell-bench-ray-"))
    import ray  # noqa: PLC0415 - only this metric needs Ray
    import ray.cluster_utils  # noqa: PLC0415

    from gpucell.broker.server import BrokerThread  # noqa: PLC0415
    from gpucell.client import BrokerClient  # noqa: PLC0415
    from gpucell.client.session import CellOptions, Session  # noqa: PLC0415
    from gpucell.broker.config import load_config  # noqa: PLC0415

    cluster = ray.cluster_utils.Cluster(initialize_head=True,
                                        head_node_args={"num_cpus": 1, "include_dashboard": False})
    broker = None
    try:
        path = os.path.join(tempfile.mkdtemp(prefix="gpucell-bench-"), "ray.toml")
        with open(path, "w") as f:
            f.write(f'[pools.cpu]\nsimulate = true\nprovisioner = "ray"\noptions = {{ address = "{cluster.address}" }}\n')
        config = load_config(path)
        config.state_dir = os.path.dirname(path)
        broker = BrokerThread(config).start()
        client = BrokerClient(broker.address, broker.token)
        session = Session(client)
        out: list[float] = []
        for _ in range(n + 1):
            session.release("cpu")
            wait_for(lambda: not client.status()["pools"]["cpu"]["workers"], 60.0, "ray workers to reach zero")
            sink = _FirstOutput()
            t0 = time.monotonic()
            session.run_cell("print(1)\n", {}, CellOptions(hardware="cpu"), sink)
            out.append(((sink.at or time.monotonic()) - t0) * 1000)
        session.release("cpu")
        client.close()
        return out[1:]
    finally:
        if broker is not None:
            broker.stop()
        ray.shutdown()
        cluster.shutdown()

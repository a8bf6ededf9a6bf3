"""Prometheus metrics of one broker (its own registry, so brokers in one process do not mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class BrokerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge("gpucell_queue_depth", "cells waiting for a worker", ["pool"],
                                 registry=self.registry)
        self.workers = Gauge("gpucell_workers", "workers by state", ["pool", "state"], registry=self.registry)
        self.cold_start = Histogram("gpucell_cold_start_seconds", "worker launch to registration", ["pool"],
                                    buckets=LATENCY_BUCKETS, registry=self.registry)
        self.dispatch = Histogram("gpucell_dispatch_seconds", "cell submitted to sent to a worker (warm)", ["pool"],
                                  buckets=LATENCY_BUCKETS, registry=self.registry)
        self.cells = Counter("gpucell_cells", "cells by outcome", ["pool", "outcome"], registry=self.registry)
        self.user_cells = Counter("gpucell_user_cells", "cells by user and outcome", ["user", "outcome"],
                                  registry=self.registry)
        self.address = ""

    def serve(self, host: str, port: int) -> str:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.address = f"{host}:{server.server_address[1]}"
        self._server = server
        return self.address

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()

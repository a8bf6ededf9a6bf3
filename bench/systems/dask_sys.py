"""dask.distributed with a LocalCluster of 2 single-threaded worker processes on 127.0.0.1."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import dask
import numpy as np
from distributed import Client, LocalCluster

from harness import OutputRecorder, Sample, timed
from systems import tasks
from systems.base import System


class DaskSystem(System):
    name = "dask"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.cluster: LocalCluster | None = None
        self.client: Client | None = None
        self.sent: list[Any] = []

    def _cluster(self) -> LocalCluster:
        return LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address=None, silence_logs=logging.ERROR)

    def start(self) -> None:
        self.cluster = self._cluster()
        self.client = Client(self.cluster)

    def stop(self) -> None:
        self.sent.clear()
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    def m_cold_start_ms(self) -> Iterator[Sample]:
        yield from super().m_cold_start_ms()
        # the same with forked workers (dask's default is spawn): a fork server's best case
        self.close()

        def forked() -> None:
            with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
                with self._cluster() as cluster, Client(cluster) as client:
                    client.submit(tasks.noop, pure=False).result()

        yield self.sample("cold_start_ms", [timed(forked) * 1000], "fork",
                          note="cluster start to first result, workers forked")

    def noop(self) -> None:
        assert self.client is not None
        self.client.submit(tasks.noop, pure=False).result()

    def map(self, n: int, slow_s: float) -> int:
        assert self.client is not None
        if slow_s:
            futures = self.client.map(tasks.sleep_item, range(n), seconds=slow_s, pure=False)
        else:
            futures = self.client.map(tasks.identity, range(n), pure=False)
        return len(self.client.gather(futures))

    def send(self, arr: np.ndarray) -> int:
        assert self.client is not None
        fut = self.client.scatter(arr)  # default hash=True: the key is a hash of the content
        self.sent.append(fut)
        return int(self.client.submit(tasks.nbytes, fut, pure=False).result())

    def resend_note(self) -> str:
        return "scatter() again while holding the first future (same content hash)"

    def drop_sent(self) -> None:
        self.sent.clear()

    def fetch(self, n: int) -> np.ndarray:
        assert self.client is not None
        return self.client.submit(tasks.make_array, n, pure=False).result()

    def stream_once(self, recorder: OutputRecorder) -> None:
        assert self.client is not None
        self.client.submit(tasks.stamp_print_dask, pure=False).result()

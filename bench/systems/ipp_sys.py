"""ipyparallel with a local controller and 2 engines on 127.0.0.1."""
from __future__ import annotations

import os
import tempfile
from typing import Any

import ipyparallel as ipp
import numpy as np

from harness import STAMP, OutputRecorder, wait_for
from systems import tasks
from systems.base import System


class IppSystem(System):
    name = "ipyparallel"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        # profiles and connection files go to a temp dir, not the home folder
        self.tmp = tempfile.mkdtemp(prefix="gpucell-bench-ipp-")
        os.environ["IPYTHONDIR"] = os.path.join(self.tmp, "ipython")
        os.environ["JUPYTER_RUNTIME_DIR"] = os.path.join(self.tmp, "runtime")
        self.cluster: ipp.Cluster | None = None
        self.rc: ipp.Client | None = None

    def start(self) -> None:
        # The default 3 s heartbeat delays engine registration by seconds; 100 ms is ipyparallel tuned.
        self.cluster = ipp.Cluster(n=2, controller_ip="127.0.0.1", log_level=40,
                                   controller_args=["--HeartMonitor.period=100"])
        self.start_notes.append("heartbeat period tuned to 100 ms (the 3 s default adds seconds)")
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(2, timeout=60)
        self.rc[:].use_cloudpickle()  # module functions by reference, as the other peers send them
        self.lview = self.rc.load_balanced_view()
        self.engine = self.rc[0]

    def stop(self) -> None:
        if self.rc is not None:
            self.rc.close()
        if self.cluster is not None:
            self.cluster.stop_cluster_sync()
        self.rc = self.cluster = None

    def noop(self) -> None:
        self.lview.apply_sync(tasks.noop)

    def map(self, n: int, slow_s: float) -> int:
        if slow_s:
            return len(self.lview.map_sync(tasks.sleep_item, range(n), [slow_s] * n))
        return len(self.lview.map_sync(tasks.identity, range(n)))

    def send(self, arr: np.ndarray) -> int:
        self.engine.push({"bench_payload": arr}, block=True)
        return int(self.engine.apply_sync(tasks.nbytes, ipp.Reference("bench_payload")))

    def drop_sent(self) -> None:
        self.engine.execute("bench_payload = None", block=True)

    def fetch(self, n: int) -> np.ndarray:
        return self.engine.apply_sync(tasks.make_array, n)

    def stream_once(self, recorder: OutputRecorder) -> None:
        # the client's IO thread appends the engine's stdout to ar.stdout as it arrives
        ar = self.engine.apply_async(tasks.stamp_print)
        wait_for(lambda: STAMP in (ar.stdout or ""), 10.0, "the engine's print", poll=0.0005)
        recorder.write(ar.stdout)
        ar.get()

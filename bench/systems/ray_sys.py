"""Ray on one machine with 2 CPUs (2 worker processes), bound to loopback."""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np
import ray

from harness import OutputRecorder
from systems import tasks
from systems.base import System

# Without these Ray binds the machine's non-loopback address, reports usage, and asks for auth.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0"}

START_ATTEMPTS = 2

noop = ray.remote(tasks.noop)
identity = ray.remote(tasks.identity)
sleep_item = ray.remote(tasks.sleep_item)
nbytes = ray.remote(tasks.nbytes)
make_array = ray.remote(tasks.make_array)
stamp_print = ray.remote(tasks.stamp_print)


class RaySystem(System):
    name = "ray"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.tmp = tempfile.mkdtemp(prefix="gpucell-bench-ray-")
        os.environ.update(LOOPBACK_ENV)
        os.environ["RAY_TMPDIR"] = self.tmp
        self.refs: list[Any] = []

    def start(self) -> None:
        for attempt in range(START_ATTEMPTS):
            self.attempt_began = time.perf_counter()
            try:
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, logging_level="ERROR",
                         _node_ip_address="127.0.0.1")
                return
            except Exception as exc:
                # seen on a loaded 2-core machine: the raylet gives up waiting for its metrics agent
                ray.shutdown()
                self.start_notes.append(f"ray.init attempt {attempt + 1} failed: {str(exc)[:80]}")
                if attempt == START_ATTEMPTS - 1:
                    raise

    def stop(self) -> None:
        self.refs.clear()
        ray.shutdown()

    def noop(self) -> None:
        ray.get(noop.remote())

    def map(self, n: int, slow_s: float) -> int:
        if slow_s:
            return len(ray.get([sleep_item.remote(i, slow_s) for i in range(n)]))
        return len(ray.get([identity.remote(i) for i in range(n)]))

    def send(self, arr: np.ndarray) -> int:
        ref = ray.put(arr)  # into the shared-memory object store; the task reads it zero-copy
        self.refs.append(ref)
        return int(ray.get(nbytes.remote(ref)))

    def resend_note(self) -> str:
        return "ray.put() again (Ray does not deduplicate by content)"

    def drop_sent(self) -> None:
        self.refs.clear()

    def fetch(self, n: int) -> np.ndarray:
        return ray.get(make_array.remote(n))

    def stream_once(self, recorder: OutputRecorder) -> None:
        ray.get(stamp_print.remote())

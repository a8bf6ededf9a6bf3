"""The local provisioner gives each worker of a real GPU pool its own devices, through real workers.

This machine has no GPU, so the host's inventory is the one thing replaced (a fixed list of A100s);
the broker, provisioner, fork server and workers are real, and each worker reports what it was given.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import RecordingSink, make_cluster, wait_for
from gpucell.client.session import CellOptions, Session
from gpucell.errors import UnknownHardwareError, WorkerLostError
from gpucell.hardware import GpuAllocator, GpuDevice

POOLS = """
[pools.cpu]
simulate = true
max_workers = 1

[pools.A100]
gpus = 1
max_workers = 4

[pools."A100:2"]
gpus = 2
max_workers = 2
"""


class FourA100:
    def devices(self) -> list[GpuDevice]:
        return [GpuDevice(i, "NVIDIA A100-SXM4-80GB", "A100", f"GPU-{i:08d}-aaaa", 80 << 30, 0, 0) for i in range(4)]


def _visible(session: Session, hardware: str) -> list[str]:
    ns: dict[str, object] = {}
    session.run_cell("import os\nvisible = os.environ.get('CUDA_VISIBLE_DEVICES', '')\n", ns,
                     CellOptions(hardware=hardware), RecordingSink())
    return str(ns["visible"]).split(",")


def test_workers_get_disjoint_devices(tmp_path: Path) -> None:
    with make_cluster(tmp_path, POOLS) as cluster:
        cluster.broker.call(lambda: setattr(cluster.broker.service.provisioners["local"], "gpus",
                                            GpuAllocator(FourA100())))
        first, second, third = (Session(cluster.client()) for _ in range(3))
        a = _visible(first, "A100:2")
        b = _visible(second, "A100:2")
        assert len(a) == 2 and len(b) == 2 and set(a).isdisjoint(b)
        with pytest.raises(WorkerLostError, match="no 1 free A100 device"):
            _visible(third, "A100")  # all four are held: a clear reason, not a shared device
        first.release()
        wait_for(lambda: len(cluster.status()["pools"]["A100:2"]["workers"]) == 1, 15, what="the release")
        c = _visible(third, "A100")
        assert len(c) == 1 and c[0] in a and c[0] not in b


def test_a_count_no_pool_serves_is_refused(tmp_path: Path) -> None:
    with make_cluster(tmp_path, POOLS) as cluster:
        with pytest.raises(UnknownHardwareError, match="'A100:4'"):
            Session(cluster.client()).run_cell("x = 1\n", {}, CellOptions(hardware="A100:4"), RecordingSink())

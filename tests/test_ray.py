"""The ray provisioner on a real multi-node Ray cluster (ray.cluster_utils.Cluster) on this machine."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Ray must stay on loopback, quiet and without auth in tests; set before Ray is imported or started.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_AUTH_MODE"] = "disabled"

pytest.importorskip("ray")
import ray.cluster_utils  # after the skip, and after the RAY_* variables above
from ray._private import ray_constants

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import ray_cluster as recipe  # docs/ray.md's one-machine recipe: the suite runs it as written

from conftest import Cluster, RecordingSink, loaded_shell, make_cluster, pid_alive, wait_for
from gpucell.broker.provisioners import load_provisioner
from gpucell.broker.provisioners.ray import ACCELERATOR_SHARE, RayProvisioner, placement
from gpucell.client.session import CellOptions, Session
from gpucell.broker.config import PoolConfig
from gpucell.errors import WorkerLostError

pytestmark = pytest.mark.slow

WHERE = ("import os\nnode = os.environ['GPUCELL_NODE']\nhw = os.environ['GPUCELL_HARDWARE']\n"
         "data_host = os.environ.get('GPUCELL_DATA_HOST')\n")


@dataclass
class RayCluster:
    """A head node (no CPUs, so no worker lands there) and one node per accelerator label."""

    cluster: Any
    nodes: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def node_id(self, label: str) -> str:
        return str(self.nodes[label].node_id)

    def add(self, label: str) -> str:
        self.nodes[label] = self.cluster.add_node(num_cpus=1, resources={f"accelerator_type:{label}": 1})
        self.cluster.wait_for_nodes()
        return self.node_id(label)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    # A short path: Ray's unix sockets live under RAY_TMPDIR and must fit in 107 bytes.
    tmp = tempfile.mkdtemp(prefix="gcray-")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    try:
        cluster, nodes = recipe.start(("A100", "T4"))
    except BaseException:
        reap(tmp)
        raise
    rc = RayCluster(cluster, nodes)
    try:
        # The broker runs in this process and shares this driver connection (as it would inside a
        # Jupyter server that already talks to Ray); the tests also use it to look at actors.
        ray.init(address=cluster.address, namespace="gpucell", log_to_driver=False)
        yield rc
    finally:
        try:
            ray.shutdown()
        finally:
            cluster.shutdown()
            leftovers = reap(tmp)
            if saved is None:
                os.environ.pop("RAY_TMPDIR", None)
            else:
                os.environ["RAY_TMPDIR"] = saved
            shutil.rmtree(tmp, ignore_errors=True)
    assert not leftovers, f"processes outlived the Ray cluster: {leftovers}"


def processes_under(tmp: str) -> list[int]:
    """Processes started for this Ray cluster: every Ray process and agent names its temp dir."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if tmp.encode() in (proc / "cmdline").read_bytes() and pid_alive(int(proc.name)):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def reap(tmp: str) -> list[str]:
    """Wait (bounded) for this cluster's processes to exit; kill and name any that do not."""
    try:
        wait_for(lambda: not processes_under(tmp), timeout=20, what="the Ray cluster's processes to exit")
        return []
    except AssertionError:
        left = processes_under(tmp)
        names = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:100].decode(errors="replace")
                 for pid in left]
        for pid in left:
            os.kill(pid, 9)
        return names


def pools(address: str, idle_timeout: float = 300, cpu_workers: int = 2) -> str:
    return "\n".join(
        f'[pools.{label}]\nsimulate = true\nprovisioner = "ray"\nmax_workers = {n}\nidle_timeout = {idle_timeout}\n'
        f'options = {{ address = "{address}"{extra} }}\n'
        for label, n, extra in (("A100", 2, ""), ("T4", 1, ""),
                                # one worker per node: concurrent cpu cells must use both nodes
                                ("cpu", cpu_workers, ", num_cpus = 1")))


@pytest.fixture
def broker(ray_cluster: RayCluster, tmp_path: Path) -> Iterator[Cluster]:
    with make_cluster(tmp_path, pools(ray_cluster.address), broker="heartbeat_timeout = 5.0") as c:
        yield c
        provisioner = c.broker.service.provisioners["ray"]
        names = [provisioner.actor_name(w["id"]) for p in c.status()["pools"].values() for w in p["workers"]]
    # The broker has stopped: every actor it placed is dead (so an autoscaler could drop the nodes).
    for name in names:
        wait_for(lambda name=name: not actor_alive(name), timeout=15, what=f"actor {name} to die")


def actor_alive(name: str) -> bool:
    try:
        ray.get_actor(name, namespace="gpucell")
    except ValueError:
        return False
    return True


def run(session: Session, source: str, hardware: str, sink: RecordingSink | None = None) -> dict[str, Any]:
    ns: dict[str, Any] = {}
    session.run_cell(source, ns, CellOptions(hardware=hardware), sink or RecordingSink())
    return ns


def workers(c: Cluster, label: str) -> list[dict[str, Any]]:
    return list(c.status()["pools"][label]["workers"])


def test_placement_asks_for_gpus_and_the_accelerator_resource() -> None:
    real = placement(PoolConfig("A100:2", provisioner="ray"))
    assert real.num_gpus == 2 and real.resources == {"accelerator_type:A100": ACCELERATOR_SHARE}
    simulated = placement(PoolConfig("T4", simulate=True, provisioner="ray", options={"num_cpus": 1}))
    assert simulated.num_gpus == 0 and simulated.num_cpus == 1
    assert simulated.resources == {"accelerator_type:T4": ACCELERATOR_SHARE}
    assert placement(PoolConfig("cpu", provisioner="ray")).resources == {}
    assert load_provisioner("ray") is RayProvisioner


def test_cells_land_on_the_node_with_their_accelerator(ray_cluster: RayCluster, broker: Cluster,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with loaded_shell(broker, monkeypatch) as sh:
        sh.run_cell_magic("gpu", "A100", WHERE)
        assert sh.user_ns["node"] == ray_cluster.node_id("A100") and sh.user_ns["hw"] == "A100"
        # The worker advertises its data server and lane at the address Ray reaches its node by.
        assert sh.user_ns["data_host"] == ray_cluster.nodes["A100"].node_ip_address == "127.0.0.1"
        sh.user_ns["big"] = np.arange(2_000_000, dtype=np.float64)  # 16 MB: over the data path, both ways
        sh.run_cell_magic("gpu", "A100", "total = float(big.sum())\nbig = big * 2\n")
        assert sh.user_ns["total"] == 1_999_999 * 2_000_000 / 2 and sh.user_ns["big"][-1] == 3_999_998
        sh.run_cell_magic("gpu", "T4", WHERE)
        assert sh.user_ns["node"] == ray_cluster.node_id("T4") and sh.user_ns["hw"] == "T4"
        # The broker's status says where each worker runs.
        assert {w["node"] for w in workers(broker, "A100")} == {ray_cluster.node_id("A100")}
        assert {w["node"] for w in workers(broker, "T4")} == {ray_cluster.node_id("T4")}


def test_scale_to_zero_kills_the_actor_and_its_worker(ray_cluster: RayCluster, tmp_path: Path) -> None:
    with make_cluster(tmp_path, pools(ray_cluster.address, idle_timeout=1)) as c:
        session = Session(c.client())
        try:
            assert run(session, WHERE, "T4")["node"] == ray_cluster.node_id("T4")
            [worker] = workers(c, "T4")
            name = c.broker.service.provisioners["ray"].actor_name(worker["id"])
            assert actor_alive(name) and pid_alive(worker["pid"])
            wait_for(lambda: not workers(c, "T4"), timeout=20, what="the idle T4 worker to be released")
            wait_for(lambda: not actor_alive(name), timeout=15, what="its actor to die")
            wait_for(lambda: not pid_alive(worker["pid"]), timeout=10, what="its worker process to exit")
        finally:
            session.client.close()


def test_node_lost_mid_cell_fails_the_cell_and_a_replacement_serves_the_next(
        ray_cluster: RayCluster, broker: Cluster) -> None:
    session = Session(broker.client())
    try:
        old_node = ray_cluster.node_id("T4")
        assert run(session, WHERE, "T4")["node"] == old_node
        [worker] = workers(broker, "T4")
        running = threading.Event()
        outcome: dict[str, BaseException] = {}

        def long_cell() -> None:
            try:
                run(session, "import time\nprint('running', flush=True)\ntime.sleep(120)\n", "T4",
                    RecordingSink(on_text=lambda text: running.set()))
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome["error"] = exc

        thread = threading.Thread(target=long_cell, daemon=True)
        thread.start()
        assert running.wait(30), "the cell never started"
        ray_cluster.cluster.remove_node(ray_cluster.nodes.pop("T4"))
        # Within the heartbeat timeout (5 s), plus slack for a loaded 2-core machine.
        thread.join(20)
        assert not thread.is_alive(), "the cell did not fail after its node died"
        error = outcome.get("error")
        assert isinstance(error, WorkerLostError), error
        assert str(error).startswith("worker lost: ")
        wait_for(lambda: not pid_alive(worker["pid"]), timeout=10, what="the lost worker's process to exit")
        # The pool replaces capacity as soon as Ray has a node for it.
        new_node = ray_cluster.add("T4")
        assert new_node != old_node
        assert run(session, WHERE, "T4")["node"] == new_node
    finally:
        session.client.close()
    # The dropped stream alone would say "worker disconnected"; the broker asks the provisioner why first.
    assert "worker lost: node died" in str(error), str(error)


def test_a_map_spreads_over_both_nodes(ray_cluster: RayCluster, broker: Cluster) -> None:
    # The `cpu` pool's workers each take a whole CPU, so Ray must put one on each 1-CPU node.
    import gpucell  # noqa: PLC0415 - the public API, as a user imports it

    def where(item: int) -> str:
        import os  # noqa: PLC0415 - runs on the worker
        import time  # noqa: PLC0415

        time.sleep(0.3)  # slow items spread over every worker rather than batching onto one
        return f"{item}@{os.environ['GPUCELL_NODE']}"

    client = broker.client()
    try:
        results = list(gpucell.map(where, range(8), gpu="cpu", workers=2, client=client))
    finally:
        client.close()
    assert [r.split("@")[0] for r in results] == [str(i) for i in range(8)]  # in order, each once
    assert {r.split("@")[1] for r in results} == {node.node_id for node in ray_cluster.nodes.values()}


def node_processes(node: Any) -> list[int]:
    """A Ray node's raylet and every process under it (its workers, our actors and their gpucell workers)."""
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found = [raylet]
    for pid in found:
        found.extend(child for child, parent in parents.items() if parent == pid and child not in found)
    return found


def lane_cell_until_lost(session: Session, hardware: str, fault: Any) -> tuple[float, BaseException]:
    """A warm (lane) cell that prints and sleeps; `fault()` once it runs: (seconds from the fault to the
    cell's error, the error)."""
    run(session, "x = 1\n", hardware)   # through the broker: the next cell takes the lane
    sink = RecordingSink()
    faulted: list[float] = []

    def inject() -> None:
        wait_for(lambda: "running" in sink.text(), 60, what="the lane cell to start")
        fault()
        faulted.append(time.monotonic())

    thread = threading.Thread(target=inject, daemon=True)
    thread.start()
    with pytest.raises(WorkerLostError) as info:
        run(session, "import time\nprint('running', flush=True)\ntime.sleep(120)\n", hardware, sink)
    ended = time.monotonic()
    thread.join(10)
    assert session.last_report is not None and session.last_report.lane, "the cell did not take the lane"
    return ended - faulted[0], info.value


def replace_node(ray_cluster: RayCluster, label: str) -> None:
    ray_cluster.cluster.remove_node(ray_cluster.nodes.pop(label), allow_graceful=False)
    ray_cluster.add(label)


def test_a_stopped_node_fails_a_lane_cell_within_the_heartbeat_timeout(ray_cluster: RayCluster,
                                                                      broker: Cluster) -> None:
    session = Session(broker.client())
    stopped: list[int] = []

    def stop_node() -> None:
        for pid in node_processes(ray_cluster.nodes["T4"]):
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)

    try:
        elapsed, error = lane_cell_until_lost(session, "T4", stop_node)
        assert "worker lost: no heartbeat for 5s" in str(error), error
        assert elapsed <= 5.0 + 1.0, f"{elapsed:.2f}s"
    finally:
        for pid in stopped:
            if pid_alive(pid):
                os.kill(pid, signal.SIGCONT)
        session.client.close()
        replace_node(ray_cluster, "T4")


def test_a_worker_that_exits_says_what_it_last_printed(ray_cluster: RayCluster, broker: Cluster) -> None:
    session = Session(broker.client())
    try:
        with pytest.raises(WorkerLostError) as info:
            run(session, "import os\nos.write(2, b'fatal: out of device memory\\n')\nos._exit(3)\n", "A100")
        assert re.search(r"worker process exited with status 3: .*fatal: out of device memory", str(info.value),
                         re.S), info.value
    finally:
        session.client.close()

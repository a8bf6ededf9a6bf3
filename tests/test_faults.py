"""Fault injection on maps: workers and the broker SIGKILLed mid-map; every item's result exactly once."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster, RecordingSink, pid_alive, wait_for
from gpucell.api import make_fanout
from gpucell.client import BrokerClient, broker_client
from gpucell.client import fanout as fanout_module  # `fanout` names the map objects below
from gpucell.settings import ENV_CONFIG, ENV_TOKEN, ENV_WORKER_TOKEN
from gpucell.client.session import CellOptions, Session
from gpucell.errors import GpucellError, RemoteError

CPU_POOL = "[pools.cpu]\nsimulate = true\nmax_workers = 2\nidle_timeout = 300\n"


@pytest.fixture
def client(cluster: Cluster) -> Iterator[BrokerClient]:
    c = cluster.client()
    yield c
    c.close()


def _run_map(client: BrokerClient, fn: Any, items: Any, **options: Any) -> tuple[list[Any], Any]:
    """An unordered map (so a doubled result would show), plus its Fanout for the fault counters."""
    fanout = make_fanout(fn, "one", gpu="cpu", workers=options.pop("workers", 2), retries=options.pop("retries", 0),
                         timeout=0.0, ordered=False, return_exceptions=options.pop("return_exceptions", False),
                         progress=False, client=client)
    return list(fanout.results(items)), fanout


def _workers(cluster: Cluster) -> list[dict[str, Any]]:
    return [w for p in cluster.status()["pools"].values() for w in p["workers"]]


# ---------------------------------------------------------------- a worker SIGKILLed mid-map


def test_worker_killed_mid_map_reruns_its_items_elsewhere_without_using_retries(
        client: BrokerClient, cluster: Cluster, tmp_path: Path) -> None:
    flag = tmp_path / "killed"

    def work(x: int) -> tuple[int, str]:
        import os  # noqa: PLC0415 - runs on the worker
        import signal  # noqa: PLC0415 - runs on the worker
        import time  # noqa: PLC0415 - runs on the worker
        time.sleep(0.02)
        if x == 25 and not flag.exists():     # the worker dies in the middle of a batch, once
            flag.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return x, os.environ["GPUCELL_WORKER_ID"]

    results, fanout = _run_map(client, work, range(80), retries=0)   # retries=0: a death must not cost one
    assert flag.exists()
    counts = Counter(index for index, _ in results)
    assert sorted(counts) == list(range(80)) and set(counts.values()) == {1}   # each item exactly once
    assert fanout.lost_batches >= 1 and fanout.failed == 0 and fanout.retrying == 0
    assert len({worker for _, worker in results}) >= 3    # two slots, one of them replaced
    wait_for(lambda: all(w["state"] == "releasing" for w in _workers(cluster)), 15, what="release")


def test_an_item_that_always_kills_its_worker_fails_alone_with_the_reason(client: BrokerClient) -> None:
    def poison(x: int) -> int:
        if x == 3:
            import os  # noqa: PLC0415 - runs on the worker
            import signal  # noqa: PLC0415 - runs on the worker
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    results, fanout = _run_map(client, poison, range(12), return_exceptions=True)
    errors = [r for r in results if isinstance(r, RemoteError)]
    assert len(errors) == 1 and errors[0].ename == "WorkerLostError"
    assert errors[0].index == 3 and "worker lost" in str(errors[0]) and "4 times" in str(errors[0])  # type: ignore[attr-defined]
    assert sorted(r for r in results if not isinstance(r, RemoteError)) == [x for x in range(12) if x != 3]
    assert fanout.lost_batches == 4          # LOST_RETRIES + 1: bounded


# ---------------------------------------------------------------- the broker SIGKILLed mid-map, then restarted


class BrokerProcess:
    """`python -m gpucell.broker` as a real subprocess (dies with this process); restartable on its port."""

    def __init__(self, tmp_path: Path, pools: str) -> None:
        self.config = tmp_path / "pools.toml"
        self.config.write_text(pools)
        self.state_dir = tmp_path / "state"
        self.token = "client-token-for-test"
        self.env = {**os.environ, ENV_TOKEN: self.token, ENV_WORKER_TOKEN: "worker-token-for-test",
                    ENV_CONFIG: str(self.config)}
        self.port = 0
        self.address = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpucell.broker", "--port", str(self.port), "--state-dir", str(self.state_dir),
             "--parent-pid", str(os.getpid())], env=self.env, stdout=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None
        threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
        while True:
            line = lines.get(timeout=60)     # bounded: a broker that does not come up fails the test
            if line.startswith("gpucell broker listening on "):
                self.address = line.split()[-1]
                self.port = int(self.address.rpartition(":")[2])
                return self.address

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()       # SIGTERM: the broker releases its workers on the way out
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _worker_pids(client: BrokerClient) -> list[int]:
    return [w["pid"] for p in client.status()["pools"].values() for w in p["workers"] if w["pid"]]


def _shut_down(broker: BrokerProcess, client: BrokerClient | None, pids: Iterable[int]) -> None:
    """Stop the broker, then check that every worker it had went with it."""
    if client is not None:
        client.close()
    broker.stop()
    for pid in pids:
        wait_for(lambda pid=pid: not pid_alive(pid), 20, what=f"worker {pid} to exit")


def test_broker_killed_mid_map_and_restarted_loses_and_doubles_nothing(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path, CPU_POOL)
    pids: set[int] = set()
    client: BrokerClient | None = None
    try:
        address = broker.start()
        client = BrokerClient(address, broker.token)
        results: list[tuple[int, int]] = []
        outcome: list[BaseException] = []

        def work(x: int) -> tuple[int, int]:
            import os  # noqa: PLC0415 - runs on the worker
            import time  # noqa: PLC0415 - runs on the worker
            time.sleep(0.03)
            return x, os.getpid()     # worker ids restart at cpu-1 with the broker; pids do not repeat

        fanout = make_fanout(work, "one", gpu="cpu", workers=2, retries=0, timeout=0.0, ordered=False,
                             return_exceptions=False, progress=False, client=client)

        def consume() -> None:
            try:
                results.extend(fanout.results(range(300)))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
                outcome.append(exc)

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        wait_for(lambda: len(results) >= 30 or outcome, 60, what="the first results")
        before = {pid for _, pid in results}
        pids.update(_worker_pids(client))
        broker.kill()                       # its local workers die with it
        for pid in pids:
            wait_for(lambda pid=pid: not pid_alive(pid), 20, what=f"worker {pid} to die with the broker")
        assert len(results) < 300, "the map ended before the broker was killed"
        broker.start()                      # same port, same state dir
        thread.join(120)
        assert not thread.is_alive(), "the map did not finish after the broker came back"
        assert not outcome, outcome
        counts = Counter(index for index, _ in results)
        assert sorted(counts) == list(range(300)) and set(counts.values()) == {1}   # none lost, none doubled
        assert {pid for _, pid in results} - before     # items finished on the new broker's workers
        assert fanout.reconnects >= 1 and fanout.failed == 0
        pids.update(_worker_pids(client))
    finally:
        _shut_down(broker, client, pids)


def test_a_broker_that_stays_down_stops_the_map_with_a_clear_error(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout_module, "RECONNECT_WINDOW_S", 2.0)        # the bound, shortened for the test
    monkeypatch.setattr(broker_client, "REATTACH_WINDOW_S", 1.0)
    broker = BrokerProcess(tmp_path, CPU_POOL)
    client: BrokerClient | None = None
    pids: list[int] = []
    try:
        client = BrokerClient(broker.start(), broker.token)
        results: list[int] = []
        outcome: list[BaseException] = []

        def work(x: int) -> int:
            import time  # noqa: PLC0415 - runs on the worker
            time.sleep(0.03)
            return x

        def consume() -> None:
            try:
                for value in make_fanout(work, "one", gpu="cpu", workers=2, retries=0, timeout=0.0, ordered=False,
                                         return_exceptions=False, progress=False, client=client).results(range(500)):
                    results.append(value)
            except BaseException as exc:  # noqa: BLE001 - checked below
                outcome.append(exc)

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        wait_for(lambda: len(results) >= 10 or outcome, 60, what="the first results")
        pids = _worker_pids(client)
        broker.kill()
        thread.join(60)
        assert not thread.is_alive()
        assert outcome and "stayed unreachable for 2s" in str(outcome[0]), outcome
        assert type(outcome[0]).__name__ == "BrokerUnavailableError"
        assert len(results) < 500
    finally:
        _shut_down(broker, client, pids)


def test_a_hand_started_worker_redials_a_restarted_broker(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path, "[pools.cpu]\nsimulate = true\nmax_workers = 1\nidle_timeout = 300\n")
    address = broker.start()
    env = {**os.environ, ENV_WORKER_TOKEN: "worker-token-for-test"}
    env.pop(ENV_TOKEN, None)
    worker = subprocess.Popen([sys.executable, "-m", "gpucell.remote_kernel", "--broker", address, "--hardware", "cpu",
                               "--worker-id", "by-hand"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def registered() -> bool:
            client = BrokerClient(broker.address, broker.token)
            try:
                return any(w["id"] == "by-hand" for w in client.status()["pools"]["cpu"]["workers"])
            except GpucellError:
                return False
            finally:
                client.close()

        wait_for(registered, 60, what="the hand-started worker to register")
        broker.kill()
        assert worker.poll() is None  # not a child of the broker: it outlives it and redials
        broker.start()                # same port, same state dir
        wait_for(registered, 60, what="the worker to register with the restarted broker")
        client = BrokerClient(broker.address, broker.token)
        ns: dict[str, Any] = {}
        report = Session(client).run_cell("import os\nwho = os.environ.get('GPUCELL_WORKER_ID', '')\n", ns,
                                          CellOptions(hardware="cpu"), RecordingSink())
        assert report.worker_id == "by-hand"
        client.close()
    finally:
        worker.terminate()
        worker.wait(20)
        broker.stop()

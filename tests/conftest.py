"""Real parts, cheap: a broker in this process on port 0 with real worker subprocesses, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from gpucell.broker.server import BrokerThread
from gpucell.client import BrokerClient
from gpucell.client.sink import Sink
from gpucell.broker.config import load_config

DEFAULT_POOLS = """
[pools.cpu]
simulate = true
max_workers = 2
idle_timeout = 300

[pools.A100]
simulate = true
max_workers = 2
idle_timeout = 300
price_per_hour = 3.0

[pools.T4]
simulate = true
max_workers = 1
idle_timeout = 300
price_per_hour = 0.5
"""


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll a condition with a bounded timeout (never sleep and hope)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Cluster:
    broker: BrokerThread
    config_path: str

    @property
    def address(self) -> str:
        return self.broker.address

    @property
    def token(self) -> str:
        return self.broker.token

    def client(self) -> BrokerClient:
        return BrokerClient(self.address, self.token)

    def env(self) -> dict[str, str]:
        return {**os.environ, "GPUCELL_BROKER": self.address, "GPUCELL_TOKEN": self.token}

    def status(self) -> dict[str, Any]:
        client = self.client()
        try:
            return client.status()
        finally:
            client.close()

    def worker_pids(self) -> list[int]:
        return [w["pid"] for p in self.status()["pools"].values() for w in p["workers"] if w["pid"]]

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gpucell.cli", *args], env=self.env(), capture_output=True,
                              text=True, timeout=timeout)


@contextmanager
def make_cluster(tmp_path: Path, pools: str = DEFAULT_POOLS, broker: str = "") -> Iterator[Cluster]:
    config_path = tmp_path / "gpucell.toml"
    config_path.write_text(f"[broker]\nhost = \"127.0.0.1\"\nport = 0\n{broker}\n{pools}")
    config = load_config(config_path)
    config.state_dir = str(tmp_path / "state")
    thread = BrokerThread(config).start()
    cluster = Cluster(thread, str(config_path))
    pids: list[int] = []
    try:
        yield cluster
    finally:
        try:
            pids = cluster.worker_pids()
        except Exception:  # noqa: BLE001 - the broker may be what the test broke
            pass
        thread.stop()
        for pid in pids:
            wait_for(lambda pid=pid: not pid_alive(pid), timeout=10, what=f"worker {pid} to exit")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with make_cluster(tmp_path) as c:
        yield c


@contextmanager
def loaded_shell(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """A real InteractiveShell with `%load_ext gpucell` against the cluster's broker (unloaded after)."""
    monkeypatch.setenv("GPUCELL_BROKER", cluster.address)
    monkeypatch.setenv("GPUCELL_TOKEN", cluster.token)
    sh = InteractiveShell.instance()
    sh.reset(new_session=False)
    sh.run_line_magic("load_ext", "gpucell")
    try:
        yield sh
    finally:
        sh.run_line_magic("unload_ext", "gpucell")  # closes the session: its workers are released
        sh.reset(new_session=False)


@pytest.fixture
def shell(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    with loaded_shell(cluster, monkeypatch) as sh:
        yield sh


class RecordingSink(Sink):
    """Collects a cell's live output with arrival times (the notebook sink's stand-in in tests)."""

    def __init__(self, on_text: Callable[[str], None] | None = None) -> None:
        self.items: list[tuple[float, str, Any]] = []
        self.on_text = on_text

    def stream(self, name: str, text: str) -> None:
        self.items.append((time.monotonic(), name, text))
        if self.on_text:
            self.on_text(text)

    def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool) -> None:
        self.items.append((time.monotonic(), "execute_result" if execute_result else "display", data))

    def phase(self, text: str) -> None:
        self.items.append((time.monotonic(), "phase", text))

    def text(self, name: str = "stdout") -> str:
        return "".join(t for _, n, t in self.items if n == name)


def magics_of(sh: InteractiveShell) -> Any:
    return sh._gpucell_magics  # type: ignore[attr-defined]

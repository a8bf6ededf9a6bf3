"""Faults injected for real: killed workers, dropped streams, bad tokens, TLS, isolation, memory, journal."""

from __future__ import annotations

import _thread
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

import gpucell
from conftest import Cluster, RecordingSink, make_cluster, pid_alive, wait_for
from gpucell.broker.server import BrokerThread
from gpucell.client import BrokerClient
from gpucell.client.embedded import start_embedded_broker
from gpucell.client.session import CellOptions, Session
from gpucell.broker.config import load_config
from gpucell.errors import (AuthenticationError, BrokerUnavailableError, ConfigError, SerializationError,
                            WorkerLostError)
from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol import gpucell_pb2_grpc as pb_grpc

CPU = "[pools.cpu]\nsimulate = true\nmax_workers = 2\nidle_timeout = 300\n"


def run(session: Session, source: str, ns: dict | None = None, sink: RecordingSink | None = None,  # type: ignore[type-arg]
        **options: object):
    return session.run_cell(source, ns if ns is not None else {}, CellOptions(hardware="cpu", **options),  # type: ignore[arg-type]
                            sink or RecordingSink())


# ---------------------------------------------------------------- trust


def test_worker_token_cannot_submit_and_client_token_cannot_register(cluster: Cluster, tmp_path: Path) -> None:
    as_client = BrokerClient(cluster.address, cluster.broker.worker_token)
    with pytest.raises(AuthenticationError, match="refused the token"):
        run(Session(as_client), "x = 1\n")
    as_client.close()
    env = {**os.environ, "GPUCELL_WORKER_TOKEN": cluster.token}
    worker = subprocess.run([sys.executable, "-m", "gpucell.remote_kernel", "--broker", cluster.address,
                             "--hardware", "cpu", "--worker-id", "intruder"], env=env, capture_output=True,
                            timeout=60)
    assert worker.returncode == 0  # it was turned away and exited
    assert all(w["id"] != "intruder" for p in cluster.status()["pools"].values() for w in p["workers"])


def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    tls = f'tls_cert = "{cert}"\ntls_key = "{key}"'
    with make_cluster(tmp_path, CPU, broker=tls) as cluster:
        client = BrokerClient(cluster.address, cluster.token, tls_ca=str(cert))
        session = Session(client)
        report = run(session, "import os\nw = os.environ['GPUCELL_WORKER_ID']\n")
        assert report.worker_id
        # The direct lane is plaintext TCP: under TLS the broker does not offer it, warm cells stay on TLS.
        assert not run(session, "v = 2\n").lane and session.lanes == {}
        client.close()
        plain = BrokerClient(cluster.address, cluster.token, connect_timeout=2)
        with pytest.raises(BrokerUnavailableError):
            plain.status()
        plain.close()


def test_refuses_non_loopback_without_tls() -> None:
    config = load_config()
    config.host = "0.0.0.0"
    with pytest.raises(ConfigError, match="without TLS"):
        BrokerThread(config).start()


def test_a_session_cannot_cancel_or_read_another_sessions_cell(cluster: Cluster) -> None:
    mine, theirs = Session(cluster.client()), Session(cluster.client())
    started = threading.Event()
    sink = RecordingSink(on_text=lambda text: started.set())
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(run(
        mine, "import time\nprint('go', flush=True)\ntime.sleep(1)\ndone = 1\n", sink=sink)))
    thread.start()
    assert started.wait(60)
    cell_id = mine.last_report.cell_id  # type: ignore[union-attr]
    assert theirs.client.cancel(theirs.session_id, cell_id) is False
    stub = pb_grpc.BrokerStub(grpc.insecure_channel(cluster.address))
    with pytest.raises(grpc.RpcError) as info:
        list(stub.CellAttach(pb.CellAttachRequest(session_id=theirs.session_id, cell_id=cell_id),
                             metadata=(("authorization", f"Bearer {cluster.token}"),)))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    view = theirs.client.status(theirs.session_id)
    assert [w["id"] for p in view["pools"].values() for w in p["workers"]] == [""]  # a count, no identity
    thread.join(60)
    assert outcome and outcome[0].finished.ok  # type: ignore[attr-defined]


# ---------------------------------------------------------------- worker faults


def test_killed_worker_fails_the_cell_and_is_replaced(cluster: Cluster) -> None:
    session = Session(cluster.client())
    pid_seen: list[int] = []
    sink = RecordingSink(on_text=lambda text: pid_seen.append(int(text.split()[1])) if text.startswith("pid") else None)
    killer = threading.Thread(target=lambda: (wait_for(lambda: pid_seen, 60), os.kill(pid_seen[0], signal.SIGKILL)))
    killer.start()
    with pytest.raises(WorkerLostError, match="worker lost"):
        run(session, "import os, time\nprint('pid', os.getpid(), flush=True)\ntime.sleep(120)\n", sink=sink)
    killer.join(10)
    report = run(session, "import os\np = os.getpid()\n")
    assert report.worker_id and report.cold


def test_worker_over_its_memory_limit_is_reported(tmp_path: Path) -> None:
    pools = "[pools.cpu]\nsimulate = true\nmax_workers = 1\nmemory_limit_mb = 400\n"
    with make_cluster(tmp_path, pools) as cluster:
        session = Session(cluster.client())
        with pytest.raises(WorkerLostError, match="memory limit"):
            run(session, "import numpy as np, time\nhog = np.ones(80_000_000)\ntime.sleep(30)\n")


@pytest.mark.parametrize("body", ["import time\ntime.sleep(100)\n", "x = 0\nwhile True:\n    x += 1\n"])
def test_interrupt_reaches_sleeps_and_tight_loops(cluster: Cluster, body: str) -> None:
    session = Session(cluster.client())
    ns: dict[str, object] = {}
    run(session, "kept = 'state'\n", ns)
    sink = RecordingSink(on_text=lambda text: _thread.interrupt_main() if "go" in text else None)
    with pytest.raises(KeyboardInterrupt):
        run(session, "print('go', flush=True)\n" + body, ns, sink=sink)
    run(session, "again = kept\n", ns)
    assert ns["again"] == "state"


# ---------------------------------------------------------------- dropped streams


class FlakyProxy:
    """A real TCP proxy in front of the broker whose connections the test can cut mid-stream."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_dropped_client_stream_reattaches_without_losing_output(cluster: Cluster) -> None:
    proxy = FlakyProxy(cluster.address)
    try:
        session = Session(BrokerClient(proxy.address, cluster.token))
        cut_once: list[bool] = []

        def on_text(text: str) -> None:
            if "line 3" in text and not cut_once:
                cut_once.append(True)
                proxy.cut()

        sink = RecordingSink(on_text=on_text)
        report = run(session, "import time\nfor i in range(8):\n    print('line', i, flush=True)\n"
                              "    time.sleep(0.2)\nresult = 42\n", sink=sink)
        assert cut_once and report.finished.ok
        assert sink.text() == "".join(f"line {i}\n" for i in range(8))  # each line exactly once
    finally:
        proxy.close()


# ---------------------------------------------------------------- durability and observability


def test_usage_survives_a_broker_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first_usage = 0.0
    with make_cluster(tmp_path, CPU, broker=f'state_dir = "{state}"') as cluster:
        session = Session(cluster.client(), session_name="nb.ipynb")
        run(session, "x = 1\n")
        session.release()
        wait_for(lambda: not cluster.status()["pools"]["cpu"]["workers"], 15)
        first_usage = cluster.status()["usage"]["sessions"][0]["worker_seconds"]
        assert first_usage > 0
    with make_cluster(tmp_path, CPU, broker=f'state_dir = "{state}"') as cluster:
        usage = cluster.status()["usage"]["sessions"]
        assert [(u["session_name"], round(u["worker_seconds"], 3)) for u in usage] == [
            ("nb.ipynb", round(first_usage, 3))]


def test_metrics_endpoint_counts_cells(tmp_path: Path) -> None:
    with make_cluster(tmp_path, CPU, broker="metrics_port = 0") as cluster:
        session = Session(cluster.client())
        run(session, "x = 1\n")
        address = cluster.client().status_pb().metrics_address
        body = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
        assert 'gpucell_cells_total{outcome="ok",pool="cpu"} 1.0' in body
        assert "gpucell_cold_start_seconds_bucket" in body and "gpucell_queue_depth" in body


def test_broker_dies_workers_follow(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CPU)
    broker = start_embedded_broker(str(config))
    try:
        client = BrokerClient(broker.address, broker.token)
        run(Session(client), "x = 1\n")
        pids = [w["pid"] for p in client.status()["pools"].values() for w in p["workers"]]
        assert pids and all(pid_alive(p) for p in pids)
        os.kill(broker.pid, signal.SIGKILL)
        for pid in pids:
            wait_for(lambda pid=pid: not pid_alive(pid), 20, what=f"worker {pid} to exit")
        client.close()
    finally:
        broker.stop()


# ---------------------------------------------------------------- quotas


def test_per_session_quota_is_a_clear_error_and_maps_stay_within_it(tmp_path: Path) -> None:
    pools = "[pools.T4]\nsimulate = true\nmax_workers = 4\nmax_workers_per_session = 2\n"
    with make_cluster(tmp_path, pools) as cluster:
        client = cluster.client()
        sessions = [Session(client) for _ in range(3)]
        for session in sessions:
            session.owner = "notebook-1"  # three fan-out slots of one notebook
        for session in sessions[:2]:
            run_on = session.run_cell("x = 1\n", {}, CellOptions(hardware="T4"), RecordingSink())
            assert run_on.finished.ok
        ns: dict[str, object] = {"keep": 1}
        with pytest.raises(ConfigError, match=r"quota: this notebook already holds 2 T4 worker") as info:
            sessions[2].run_cell("keep = 2\n", ns, CellOptions(hardware="T4"), RecordingSink())
        assert "\n" not in str(info.value) and ns == {"keep": 1}
        for session in sessions[:2]:
            session.release()
        wait_for(lambda: not cluster.status()["pools"]["T4"]["workers"], 15, what="the release")

        def worker_of(item: int) -> str:
            import os  # noqa: PLC0415 - runs on the worker

            return os.environ["GPUCELL_WORKER_ID"]

        used = set(gpucell.map(worker_of, range(12), gpu="T4", workers=4, client=client))
        assert 1 <= len(used) <= 2  # asked for 4, the quota allows 2: the map runs within it
        client.close()


def test_a_value_over_the_blob_limit_is_refused_before_sending(tmp_path: Path) -> None:
    with make_cluster(tmp_path, CPU, broker="max_blob_mb = 1") as cluster:
        session = Session(cluster.client())
        ns: dict[str, object] = {"big": np.ones(500_000), "small": 2}
        with pytest.raises(SerializationError, match=r"cannot send 'big' \(numpy.ndarray, 4.0 MB\).*1 MB per value"):
            session.run_cell("y = big.sum() + small\n", ns, CellOptions(hardware="cpu"), RecordingSink())
        assert "y" not in ns
        assert not cluster.status()["pools"]["cpu"]["workers"]  # nothing ran remotely
        report = session.run_cell("y = small * 2\n", ns, CellOptions(hardware="cpu"), RecordingSink())
        assert report.finished.ok and ns["y"] == 4

"""With TLS on the broker's port, the data path is TLS too (a pinned per-worker certificate) and the lane is off."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import RecordingSink, make_cluster
from gpucell.client import BrokerClient
from gpucell.client.session import CellOptions, Session
from gpucell.namespace import transfer
from gpucell.namespace.serialize import Packed

CPU = "[pools.cpu]\nsimulate = true\nmax_workers = 1\nidle_timeout = 300\n"


@pytest.fixture
def tls_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Session]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed for TLS")
    monkeypatch.setenv("GPUCELL_SHM", "0")   # the network path, not same-host shared memory
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with make_cluster(tmp_path, CPU, broker=f'tls_cert = "{cert}"\ntls_key = "{key}"') as cluster:
        client = BrokerClient(cluster.address, cluster.token, tls_ca=str(cert))
        session = Session(client)
        try:
            yield session
        finally:
            session.close()
            client.close()


def _run(session: Session, source: str, ns: dict[str, Any]) -> Any:
    return session.run_cell(source, ns, CellOptions(hardware="cpu"), RecordingSink())


def test_large_values_travel_over_tls_with_the_workers_pinned_certificate(tls_session: Session,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []
    real_put, real_get = transfer.put, transfer.get

    def put(address: str, ticket: str, values: list[Packed]) -> int:
        seen.append((address, ticket))
        return real_put(address, ticket, values)

    def get(address: str, ticket: str, hashes: list[str]) -> Any:
        seen.append((address, ticket))
        return real_get(address, ticket, hashes)

    monkeypatch.setattr(transfer, "put", put)
    monkeypatch.setattr(transfer, "get", get)
    ns: dict[str, Any] = {"big": np.arange(2_000_000, dtype=np.float64)}   # 16 MB each way
    report = _run(tls_session, "back = big * 2\n", ns)
    assert np.array_equal(ns["back"], np.arange(2_000_000) * 2.0)
    assert not report.lane and not _run(tls_session, "v = 1\n", ns).lane   # no plaintext lane under TLS
    (address, _), _ = seen
    tcp, options = transfer.parse_address(address)
    assert len(options["tls"]) == 64
    host, _, port = tcp.rpartition(":")

    # Plaintext to the data port: no answer, not even DENIED (a TLS server reads no request line in the clear).
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"GET not-a-ticket h\n")
        try:
            answer = raw.recv(100)
        except ConnectionResetError:
            answer = b""
        assert b"DENIED" not in answer   # at most a TLS alert, then the connection is closed

    # A server with another certificate than the one the broker named is refused before anything is sent.
    forged = address.replace(options["tls"], "0" * 64)
    with pytest.raises(ConnectionError, match="another certificate"):
        real_get(forged, "any", ["h"])

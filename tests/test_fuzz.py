"""Bad input at every door, with bounded counts: the broker's port, its RPCs, the magic's parser.

Each case must end in a clear error (or a normal result), and the broker must serve a normal cell after.
The number of cases run is printed (`pytest -s` shows it) so a report can say how many ran.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

import grpc
import pytest
from IPython.core.interactiveshell import InteractiveShell
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

from conftest import Cluster, RecordingSink, magics_of, make_cluster
from gpucell.client.session import CellOptions, Session
from gpucell.errors import ConfigError, GpucellError
from gpucell.namespace.analysis import CellSyntaxError, analyze

SERVICES = ["/gpucell.v1.Broker/CellExecute", "/gpucell.v1.Broker/StatusGet", "/gpucell.v1.Broker/CellCancel",
            "/gpucell.v1.Broker/WorkerRelease", "/gpucell.v1.WorkerHub/WorkerConnect"]


def _still_serves(cluster: Cluster) -> None:
    report = Session(cluster.client()).run_cell("ok = 1\n", {}, CellOptions(hardware="cpu"), RecordingSink())
    assert report.finished is not None and report.finished.ok


def test_random_bytes_on_the_port(cluster: Cluster) -> None:
    rng = random.Random(7)
    host, _, port = cluster.address.rpartition(":")
    cases = 60
    for _ in range(cases):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            prefix = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" if rng.random() < 0.5 else b""
            sock.sendall(prefix + rng.randbytes(rng.randint(1, 4096)))
            try:
                sock.recv(1024)
            except OSError:
                pass
    print(f"\nfuzz: {cases} random byte streams on the broker port")
    _still_serves(cluster)


def test_malformed_protobuf_to_every_rpc(cluster: Cluster) -> None:
    rng = random.Random(11)
    channel = grpc.insecure_channel(cluster.address)
    metadata = (("authorization", f"Bearer {cluster.token}"),)
    cases = 0
    for method in SERVICES:
        for _ in range(15):
            payload = rng.randbytes(rng.randint(0, 512))
            call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            try:
                call(payload, metadata=metadata, timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() is not grpc.StatusCode.UNKNOWN or "Exception" not in (exc.details() or "")
            cases += 1
    channel.close()
    print(f"\nfuzz: {cases} malformed requests")
    _still_serves(cluster)


def test_oversize_message_is_a_clear_error(tmp_path: Path) -> None:
    pools = "[pools.cpu]\nsimulate = true\nmax_workers = 2\n"
    with make_cluster(tmp_path, pools, broker="max_message_mb = 1") as cluster:
        session = Session(cluster.client())
        with pytest.raises(GpucellError, match="(?i)message|larger|exhausted"):
            session.run_cell("y = 1\n" + "#" * 2_000_000 + "\n", {}, CellOptions(hardware="cpu"), RecordingSink())
        # Values are never the problem: past the inline budget they take the data path.
        report = session.run_cell("y = len(blob) + len(other)\n", {"blob": b"x" * 900_000, "other": b"y" * 900_000},
                                  CellOptions(hardware="cpu"), RecordingSink())
        assert report.finished is not None and report.finished.ok
        _still_serves(cluster)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_any_cell_source_analyses_or_fails_in_one_line(source: str) -> None:
    try:
        analyze(source)
    except CellSyntaxError as exc:
        assert "\n" not in str(exc)


OPTION_WORDS = st.sampled_from(["cpu", "A100", "T4", "--timeout", "--idle", "--pull", "--keep", "--fresh",
                                "--retries", "--env", "--strict", "3", "-1", "0.5", "a,b", "K=V", "=", "x y",
                                "--bogus", "'", '"', "A100:2", "A100:x", ""])


def test_option_strings_to_the_magic_parser(shell: InteractiveShell) -> None:
    magics = magics_of(shell)
    count = {"n": 0}

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture])
    @given(st.lists(OPTION_WORDS, max_size=6))
    def check(words: list[str]) -> None:
        count["n"] += 1
        line = " ".join(words)
        try:
            options = magics.parse_options(line)
        except (UsageError, ConfigError) as exc:
            assert "\n" not in str(exc).strip() or isinstance(exc, UsageError)
            return
        assert isinstance(options, CellOptions)

    check()
    print(f"\nfuzz: {count['n']} option strings")

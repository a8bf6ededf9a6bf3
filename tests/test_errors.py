"""The one error table, row by row: each refusal provoked for real, then the class and the one line a user reads.

Every row of gpucell.client.errors_table is provoked through the real broker (bad token, unknown label,
a cell it never heard of, ...) except the catch-all for statuses the broker never sends on purpose, which a
real gRPC server that aborts with INTERNAL stands in for. The reason travels in trailing metadata, so none of
this reads message text to decide.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from conftest import Cluster
from gpucell.broker.jobs import TERMINAL
from gpucell.client.jobs_client import JobsClient
from gpucell.broker.scheduler import WorkerState
from gpucell.client import BrokerClient
from gpucell.client.errors_table import CELL_ERRORS, RPC_ERRORS, UNEXPECTED, Row, translate
from gpucell.errors import (AuthenticationError, BrokerError, BrokerUnavailableError, CellGoneError, ConfigError,
                            GpucellError, NotFoundError, UnknownHardwareError)
from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol import gpucell_pb2_grpc as pb_grpc
from gpucell.protocol.reasons import REASON_KEY, parsed, reason_of, shown


def _known(cluster: Cluster) -> str:
    client = cluster.client()
    try:
        return ", ".join(client.catalog()["known_labels"])
    finally:
        client.close()


def _raised(call: Callable[[], object]) -> GpucellError:
    with pytest.raises(GpucellError) as info:
        call()
    return info.value


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- one provocation per row


def unreachable(cluster: Cluster) -> tuple[GpucellError, str]:
    # Nothing listens there: the call itself fails UNAVAILABLE (not the client's own readiness check).
    address = f"127.0.0.1:{_closed_port()}"
    channel = grpc.insecure_channel(address)
    try:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.BrokerStub(channel).CatalogGet(pb.CatalogGetRequest(), timeout=5)
        exc = translate(info.value, address)
    finally:
        channel.close()
    return exc, rf"cannot reach the gpucell broker at {re.escape(address)} \(GPUCELL_BROKER\): .+"


def bad_token(cluster: Cluster) -> tuple[GpucellError, str]:
    client = BrokerClient(cluster.address, "not-the-token")
    try:
        exc = _raised(client.catalog)
    finally:
        client.close()
    return exc, (rf"the gpucell broker at {re.escape(cluster.address)} refused the token \(GPUCELL_TOKEN\): "
                 r"invalid or missing gpucell token")


def unknown_hardware(cluster: Cluster) -> tuple[GpucellError, str]:
    client = cluster.client()
    try:
        exc = _raised(lambda: client.release(uuid.uuid4().hex, hardware="A10O"))
    finally:
        client.close()
    return exc, re.escape(f"no pool serves 'A10O' (known: {_known(cluster)})")


def gone_cell(cluster: Cluster) -> tuple[GpucellError, str]:
    client = cluster.client()
    try:
        exc = _raised(lambda: list(client.attach(uuid.uuid4().hex, "no-such-cell", timeout=10)))
    finally:
        client.close()
    return exc, r"cell no-such-cell is gone \(it finished more than \d+s ago, or belongs to another session\)"


def no_job(cluster: Cluster) -> tuple[GpucellError, str]:
    jobs = JobsClient(cluster.address, cluster.token)
    try:
        exc = _raised(lambda: jobs.fetch("job-that-never-was"))
    finally:
        jobs.close()
    return exc, re.escape("no job 'job-that-never-was' (see gpucell jobs)")


def strict_absent_label(cluster: Cluster) -> tuple[GpucellError, str]:
    # H100 is a label the broker knows but has no pool for; strict mode refuses the CPU fallback.
    client = cluster.client()
    request = pb.CellExecuteRequest(session_id=uuid.uuid4().hex, cell_id=uuid.uuid4().hex, hardware="H100",
                                    source="1", options=pb.CellOptions(strict=True))
    try:
        exc = _raised(lambda: list(client.execute(request)))
    finally:
        client.close()
    return exc, r"no H100 here and strict mode is on \(pools: cpu, A100, T4\)"


class _Internal(pb_grpc.BrokerServicer):
    """A real gRPC server that fails the way only a broken broker would (no reason, INTERNAL)."""

    def CatalogGet(self, request: pb.CatalogGetRequest, context: grpc.ServicerContext) -> pb.CatalogGetResponse:
        context.abort(grpc.StatusCode.INTERNAL, "the broker fell over")
        raise AssertionError("abort returns by raising")


@pytest.fixture
def failing_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_BrokerServicer_to_server(_Internal(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def unexpected_status(cluster: Cluster, address: str) -> tuple[GpucellError, str]:
    client = BrokerClient(address, cluster.token)
    try:
        exc = _raised(client.catalog)
    finally:
        client.close()
    return exc, re.escape("broker error (INTERNAL): the broker fell over")


PROVOKE: dict[int, Callable[..., tuple[GpucellError, str]]] = {
    id(RPC_ERRORS[0]): unreachable,
    id(RPC_ERRORS[1]): bad_token,
    id(RPC_ERRORS[2]): unknown_hardware,
    id(RPC_ERRORS[3]): gone_cell,
    id(RPC_ERRORS[4]): no_job,
    id(RPC_ERRORS[5]): strict_absent_label,
    id(UNEXPECTED): unexpected_status,
}
EXPECTED: dict[int, type[GpucellError]] = {
    id(RPC_ERRORS[0]): BrokerUnavailableError,
    id(RPC_ERRORS[1]): AuthenticationError,
    id(RPC_ERRORS[2]): UnknownHardwareError,
    id(RPC_ERRORS[3]): CellGoneError,
    id(RPC_ERRORS[4]): NotFoundError,
    id(RPC_ERRORS[5]): ConfigError,
    id(UNEXPECTED): BrokerError,
}
ROWS = [*RPC_ERRORS, UNEXPECTED]


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.error.__name__)
def test_each_row_is_what_a_user_reads(row: Row, cluster: Cluster, failing_server: str) -> None:
    provoke = PROVOKE[id(row)]
    exc, message = (provoke(cluster, failing_server) if provoke is unexpected_status else provoke(cluster))
    assert type(exc) is row.error is EXPECTED[id(row)]
    assert "\n" not in str(exc) and re.fullmatch(message, str(exc)), str(exc)
    assert exc._render_traceback_() == [f"{row.error.__name__}: {exc}"]


def test_every_row_has_a_provocation() -> None:
    assert {id(row) for row in ROWS} == set(PROVOKE) == set(EXPECTED)


# ---------------------------------------------------------------- the reason, not the text


def test_the_reason_rides_in_trailing_metadata_and_decides(cluster: Cluster) -> None:
    """The same status with another reason is another class: the broker's reason decides, not its words."""
    channel = grpc.insecure_channel(cluster.address)
    stub = pb_grpc.BrokerStub(channel)
    metadata = (("authorization", f"Bearer {cluster.token}"),)
    try:
        with pytest.raises(grpc.RpcError) as unknown:
            stub.WorkerRelease(pb.WorkerReleaseRequest(session_id="s", hardware="A10O"), metadata=metadata, timeout=10)
        with pytest.raises(grpc.RpcError) as missing:
            list(stub.CellExecute(pb.CellExecuteRequest(hardware="cpu"), metadata=metadata, timeout=10))
    finally:
        channel.close()
    assert unknown.value.code() is missing.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert dict(unknown.value.trailing_metadata())[REASON_KEY] == "REASON_UNKNOWN_HARDWARE"
    assert reason_of(missing.value) == pb.REASON_BAD_REQUEST
    assert type(translate(unknown.value, cluster.address)) is UnknownHardwareError
    assert type(translate(missing.value, cluster.address)) is ConfigError


def test_every_abort_in_the_broker_names_a_reason() -> None:
    """Aborts go through broker.service.Abort (code, reason, text); none is sent bare."""
    broker = Path(__file__).resolve().parent.parent / "gpucell" / "broker"
    bare = [f"{path.name}:{n}" for path in sorted(broker.rglob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if "context.abort(" in line and "self.reason" not in line]
    assert bare == []


def test_every_failed_cell_kind_but_the_users_own_has_a_class() -> None:
    kinds = set(pb.Error.Kind.values()) - {pb.Error.KIND_UNSPECIFIED, pb.Error.USER}
    assert set(CELL_ERRORS) == kinds


# ---------------------------------------------------------------- enums on the wire, strings for users


@pytest.mark.parametrize(("enum", "strings"), [
    (pb.WorkerStatus.State, {state.value for state in WorkerState}),     # `gpucell status --json`, the sidebar
    (pb.JobInfo.State, {"running", *TERMINAL}),                           # `gpucell jobs`, the sidebar
    (pb.Error.Kind, {"user", "cancelled", "timeout", "worker_lost", "rejected"}),  # metrics labels
], ids=["worker-state", "job-state", "error-kind"])
def test_each_wire_enum_reads_as_the_string_users_saw(enum: Any, strings: set[str]) -> None:
    values = set(enum.values()) - {0}
    assert {shown(enum, value) for value in values} == strings
    assert {parsed(enum, text) for text in strings} == values

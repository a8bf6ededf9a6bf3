"""The checked-in generated gRPC code matches gpucell.proto, and peers of another protocol version are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from conftest import Cluster
from gpucell.protocol import PROTOCOL_VERSION
from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol import gpucell_pb2_grpc as pb_grpc
from gpucell.protocol.reasons import reason_of

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protocol.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1])
def test_a_worker_of_another_protocol_version_is_refused_with_a_clear_message(cluster: Cluster, version: int) -> None:
    """A worker from another gpucell release (or from before versions) registers as it would; the broker says no."""
    channel = grpc.insecure_channel(cluster.address)
    stub = pb_grpc.WorkerHubStub(channel)
    register = pb.WorkerMessage(register=pb.WorkerRegister(worker_id="old-1", hardware="cpu", pid=os.getpid(),
                                                           protocol_version=version))
    try:
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.WorkerConnect(iter([register]), timeout=10,
                                    metadata=(("authorization", f"Bearer {cluster.broker.worker_token}"),)))
    finally:
        channel.close()
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(refused.value) == pb.REASON_PROTOCOL_MISMATCH
    assert f"this broker speaks {PROTOCOL_VERSION}" in (refused.value.details() or "")
    assert "old-1" not in {w["id"] for p in cluster.status()["pools"].values() for w in p["workers"]}


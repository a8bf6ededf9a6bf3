"""JobsClient: blocking calls to the broker's Jobs service, with gRPC errors translated like BrokerClient's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from gpucell.client.broker_client import UNARY_TIMEOUT_S
from gpucell.client.errors_table import translate
from gpucell import settings
from gpucell.errors import BrokerUnavailableError, ConfigError
from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol import gpucell_pb2_grpc as pb_grpc
from gpucell.protocol.channels import open_channel
from gpucell.protocol.reasons import shown
from gpucell.settings import ENV_BROKER


def job_to_json(job: pb.JobInfo) -> dict[str, Any]:
    return {"id": job.id, "notebook": job.notebook, "state": shown(pb.JobInfo.State, job.state),
            "hardware": job.hardware, "submitted": job.submitted, "started": job.started, "finished": job.finished,
            "cost": round(job.cost, 6), "error": job.error}


class JobsClient:
    def __init__(self, address: str, token: str, connect_timeout: float = 5.0) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        # The same channel rules as every client (TLS when GPUCELL_TLS_CA is set).
        self._channel = open_channel(address, [
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        self._stub = pb_grpc.JobsStub(self._channel)
        self._is_ready = False
        self._metadata = (("authorization", f"Bearer {token}"),)

    @classmethod
    def from_env(cls) -> JobsClient:
        address = settings.get("broker")
        if not address:
            raise ConfigError(f"{ENV_BROKER} is not set: detached jobs run on a broker (start one with "
                              f"`gpucell broker`)")
        return cls(address, settings.get("token"))

    def _ready(self) -> None:
        if self._is_ready:
            return  # gRPC reconnects by itself; a later outage surfaces as UNAVAILABLE on the call
        try:
            grpc.channel_ready_future(self._channel).result(timeout=self.connect_timeout)
            self._is_ready = True
        except grpc.FutureTimeoutError:
            raise BrokerUnavailableError(f"cannot reach the gpucell broker at {self.address} ({ENV_BROKER}): "
                                         f"nothing answered within {self.connect_timeout:g}s") from None

    def _unary(self, method: Any, request: Any, timeout: float = UNARY_TIMEOUT_S) -> Any:
        self._ready()
        try:
            return method(request, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise translate(exc, self.address) from None

    def submit(self, notebook_name: str, notebook: bytes, parameters: list[str], hardware: str = "",
               timeout_s: float = 0.0, workdir: str = "") -> dict[str, Any]:
        response = self._unary(self._stub.JobSubmit, pb.JobSubmitRequest(
            notebook_name=notebook_name, notebook=notebook, parameters=parameters, hardware=hardware,
            timeout_s=timeout_s, workdir=workdir), timeout=60.0)
        return job_to_json(response.job)

    def list(self) -> list[dict[str, Any]]:
        return [job_to_json(j) for j in self._unary(self._stub.JobList, pb.JobListRequest()).jobs]

    def logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        self._ready()
        call = self._stub.JobLogs(pb.JobLogsRequest(job_id=job_id, follow=follow), metadata=self._metadata)
        try:
            for chunk in call:
                yield chunk.text
        except grpc.RpcError as exc:
            raise translate(exc, self.address) from None
        finally:
            call.cancel()

    def fetch(self, job_id: str) -> tuple[bytes, dict[str, Any]]:
        response = self._unary(self._stub.JobFetch, pb.JobFetchRequest(job_id=job_id), timeout=120.0)
        return response.notebook, job_to_json(response.job)

    def cancel(self, job_id: str) -> tuple[bool, dict[str, Any]]:
        response = self._unary(self._stub.JobCancel, pb.JobCancelRequest(job_id=job_id))
        return response.cancelled, job_to_json(response.job)

    def close(self) -> None:
        self._channel.close()

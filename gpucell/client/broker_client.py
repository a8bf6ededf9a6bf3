"""BrokerClient: a blocking gRPC client of the broker; every gRPC failure becomes a gpucell error here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, TypeVar

import grpc

from gpucell.config import ENV_BROKER, ENV_TOKEN
from gpucell.errors import (AuthenticationError, BrokerUnavailableError, ConfigError, GpucellError,
                            UnknownHardwareError)
from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol import gpucell_pb2_grpc as pb_grpc

UNARY_TIMEOUT_S = 10.0
T = TypeVar("T")


def translate(exc: grpc.RpcError, address: str) -> GpucellError:
    """The one place where a gRPC status turns into what a user reads."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return BrokerUnavailableError(f"cannot reach the gpucell broker at {address} ({ENV_BROKER}): "
                                      f"{details.splitlines()[0] if details else code.name.lower()}")
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(f"the gpucell broker at {address} refused the token ({ENV_TOKEN}): {details}")
    if code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("no pool serves"):
        return UnknownHardwareError(details)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.PERMISSION_DENIED):
        return ConfigError(details)
    return GpucellError(f"broker error ({code.name if code else 'unknown'}): {details}")


class BrokerClient:
    """Blocking calls to one broker. Thread-safe (gRPC channels are)."""

    def __init__(self, address: str, token: str, *, connect_timeout: float = 5.0) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
                   ("grpc.enable_retries", 0)]
        self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.BrokerStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._ready = False

    @classmethod
    def from_env(cls) -> BrokerClient:
        address = os.environ.get(ENV_BROKER, "")
        if not address:
            raise ConfigError(f"{ENV_BROKER} is not set (host:port of a gpucell broker)")
        return cls(address, os.environ.get(ENV_TOKEN, ""))

    def ensure_ready(self) -> None:
        """Fail within connect_timeout, with a clear error, when nothing listens at the address."""
        if self._ready:
            return
        try:
            grpc.channel_ready_future(self._channel).result(timeout=self.connect_timeout)
        except grpc.FutureTimeoutError:
            raise BrokerUnavailableError(f"cannot reach the gpucell broker at {self.address} ({ENV_BROKER}): "
                                         f"nothing answered within {self.connect_timeout:g}s") from None
        self._ready = True

    def _unary(self, method: Any, request: Any) -> Any:
        self.ensure_ready()
        try:
            return method(request, metadata=self._metadata, timeout=UNARY_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise translate(exc, self.address) from None

    def execute(self, request: pb.CellExecuteRequest) -> Iterator[pb.CellEvent]:
        """Submit a cell; yields its events as they happen, ending with `finished`."""
        self.ensure_ready()
        call = self._stub.CellExecute(request, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise translate(exc, self.address) from None
        finally:
            call.cancel()

    def cancel(self, session_id: str, cell_id: str) -> bool:
        response = self._unary(self._stub.CellCancel, pb.CellCancelRequest(session_id=session_id, cell_id=cell_id))
        return bool(response.found)

    def catalog_pb(self) -> pb.CatalogGetResponse:
        return self._unary(self._stub.CatalogGet, pb.CatalogGetRequest())

    def catalog(self) -> dict[str, Any]:
        response = self.catalog_pb()
        return {"entries": [{"label": e.label, "price_per_hour": e.price_per_hour, "max_workers": e.max_workers,
                             "simulate": e.simulate, "served_by": e.served_by} for e in response.entries],
                "default_hardware": response.default_hardware, "known_labels": list(response.known_labels)}

    def status_pb(self, session_id: str | None = None) -> pb.StatusGetResponse:
        return self._unary(self._stub.StatusGet, pb.StatusGetRequest(session_id=session_id or ""))

    def status(self, session_id: str | None = None) -> dict[str, Any]:
        return status_to_json(self.status_pb(session_id))

    def release(self, session_id: str, hardware: str = "", worker_id: str = "") -> list[str]:
        response = self._unary(self._stub.WorkerRelease, pb.WorkerReleaseRequest(
            session_id=session_id, hardware=hardware, worker_id=worker_id))
        return list(response.released)

    def close_session(self, session_id: str) -> None:
        self._unary(self._stub.SessionClose, pb.SessionCloseRequest(session_id=session_id))

    def close(self) -> None:
        self._channel.close()


def status_to_json(status: pb.StatusGetResponse) -> dict[str, Any]:
    """The `gpucell status --json` shape fixed in DESIGN.md (plus a few extra keys)."""
    pools: dict[str, Any] = {}
    for pool in status.pools:
        pools[pool.label] = {
            "workers": [{"id": w.id, "state": w.state, "session": w.session, "idle_s": round(w.idle_s, 3),
                         "hardware": w.hardware, "release_in_s": round(w.release_in_s, 3),
                         "session_name": w.session_name, "pid": w.pid, "node": w.node} for w in pool.workers],
            "queued": pool.queued, "max_workers": pool.max_workers, "min_warm": pool.min_warm,
            "idle_timeout": pool.idle_timeout, "price_per_hour": pool.price_per_hour, "simulate": pool.simulate,
        }
    sessions = [{"session": u.session, "session_name": u.session_name, "hardware": u.hardware,
                 "worker_seconds": round(u.worker_seconds, 3), "cost": round(u.cost, 6)} for u in status.usage]
    return {"pools": pools, "usage": {"sessions": sessions, "total_cost": round(sum(u.cost for u in status.usage), 6)}}

"""BrokerClient: a blocking gRPC client of the broker; every gRPC failure becomes a gpucell error here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, TypeVar

import grpc

from gpucell.client.errors_table import translate
from gpucell import settings
from gpucell.errors import BrokerGoneError, BrokerUnavailableError, ConfigError, GpucellError
from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol.channels import open_channel
from gpucell.protocol import gpucell_pb2_grpc as pb_grpc
from gpucell.protocol.reasons import reason_of, shown
from gpucell.settings import ENV_BROKER

UNARY_TIMEOUT_S = 10.0
# A dropped cell stream is re-attached for this long (the broker keeps the cell for reattach_grace_s). A
# broker that does not answer by then has gone, and its workers with it (they die with their broker): the
# cell ends with BrokerGoneError within 5 s, not after a long wait for a broker that may never come back.
REATTACH_WINDOW_S = 4.0
_DROPPED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
T = TypeVar("T")


class BrokerClient:
    """Blocking calls to one broker. Thread-safe (gRPC channels are)."""

    def __init__(self, address: str, token: str, *, connect_timeout: float = 5.0, tls_ca: str | None = None) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
                   ("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 2000)]
        self._channel = open_channel(address, options, tls_ca)
        self._stub = pb_grpc.BrokerStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._ready = False

    @classmethod
    def from_env(cls) -> BrokerClient:
        address = settings.get("broker")
        if not address:
            raise ConfigError(f"{ENV_BROKER} is not set (host:port of a gpucell broker)")
        return cls(address, settings.get("token"))

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
            raise self._failed(exc) from None

    def execute(self, request: pb.CellExecuteRequest) -> Iterator[pb.CellEvent]:
        """Submit a cell; yields its events as they happen, ending with `finished`.

        If the stream drops mid-cell (network, proxy, broker hiccup), re-attach and resume after the
        last event seen: the cell keeps running on its worker meanwhile, and no event is lost or doubled.
        """
        self.ensure_ready()
        call = self._stub.CellExecute(request, metadata=self._metadata)
        last_seq = 0
        deadline = 0.0
        try:
            while True:
                try:
                    for event in call:
                        last_seq = event.seq or last_seq
                        deadline = 0.0
                        yield event
                        if event.WhichOneof("kind") == "finished":
                            return
                    return
                except grpc.RpcError as exc:
                    if last_seq and exc.code() == grpc.StatusCode.NOT_FOUND and reason_of(exc) == pb.REASON_CELL_GONE:
                        raise self.broker_gone() from None   # re-attached to a broker that restarted: it never knew the cell
                    if exc.code() not in _DROPPED or last_seq == 0:
                        raise self._failed(exc) from None
                    deadline = deadline or time.monotonic() + REATTACH_WINDOW_S
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self.broker_gone() from None
                    try:
                        grpc.channel_ready_future(self._channel).result(timeout=remaining)
                    except grpc.FutureTimeoutError:
                        raise self.broker_gone() from None
                    call.cancel()
                    call = self._stub.CellAttach(pb.CellAttachRequest(
                        session_id=request.session_id, cell_id=request.cell_id, after_seq=last_seq),
                        metadata=self._metadata)
        finally:
            call.cancel()

    def _failed(self, exc: grpc.RpcError) -> GpucellError:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            self._ready = False   # the next call waits (connect_timeout) for a broker that may be coming back
        return translate(exc, self.address)

    def broker_gone(self) -> BrokerGoneError:
        """What a cell ends with when its broker went away mid-cell (its worker went with it)."""
        self._ready = False
        return BrokerGoneError(f"the broker at {self.address} went away; the cell's worker is gone")

    def attach(self, session_id: str, cell_id: str, timeout: float, lane_worker_id: str = "") -> Iterator[pb.CellEvent]:
        """A cell's events from the start, as the broker logged them (it may still be running); with
        lane_worker_id, a lane cell the broker may not have heard of, bound to that worker's fate."""
        self.ensure_ready()
        call = self._stub.CellAttach(pb.CellAttachRequest(session_id=session_id, cell_id=cell_id,
                                                          lane_worker_id=lane_worker_id),
                                     metadata=self._metadata, timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise self._failed(exc) from None
        finally:
            call.cancel()

    def cancel(self, session_id: str, cell_id: str) -> bool:
        response = self._unary(self._stub.CellCancel, pb.CellCancelRequest(session_id=session_id, cell_id=cell_id))
        return bool(response.found)

    def input_reply(self, reply: pb.CellInputRequest) -> bool:
        """The notebook's answer to a cell's input request, to its worker through the broker."""
        response = self._unary(self._stub.CellInput, reply)
        return bool(response.found)

    def catalog_pb(self) -> pb.CatalogGetResponse:
        response: pb.CatalogGetResponse = self._unary(self._stub.CatalogGet, pb.CatalogGetRequest())
        return response

    def catalog(self) -> dict[str, Any]:
        response = self.catalog_pb()
        return {"entries": [{"label": e.label, "price_per_hour": e.price_per_hour, "max_workers": e.max_workers,
                             "simulate": e.simulate, "served_by": e.served_by,
                             "max_workers_per_session": e.max_workers_per_session} for e in response.entries],
                "default_hardware": response.default_hardware, "known_labels": list(response.known_labels)}

    def status_pb(self, session_id: str | None = None) -> pb.StatusGetResponse:
        response: pb.StatusGetResponse = self._unary(self._stub.StatusGet,
                                                     pb.StatusGetRequest(session_id=session_id or ""))
        return response

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
            "workers": [{"id": w.id, "state": shown(pb.WorkerStatus.State, w.state), "session": w.session, "idle_s": round(w.idle_s, 3),
                         "hardware": w.hardware, "release_in_s": round(w.release_in_s, 3),
                         "session_name": w.session_name, "pid": w.pid, "node": w.node,
                         "gpus": [{"name": g.name, "uuid": g.uuid, "utilization": g.utilization,
                                   "memory_used": g.memory_used, "memory_total": g.memory_total} for g in w.gpus]}
                        for w in pool.workers],
            "queued": pool.queued, "max_workers": pool.max_workers, "min_warm": pool.min_warm,
            "idle_timeout": pool.idle_timeout, "price_per_hour": pool.price_per_hour, "simulate": pool.simulate,
        }
    sessions = [{"session": u.session, "session_name": u.session_name, "hardware": u.hardware, "user": u.user,
                 "worker_seconds": round(u.worker_seconds, 3), "cost": round(u.cost, 6)} for u in status.usage]
    users: dict[str, dict[str, float]] = {}
    for u in status.usage:
        totals = users.setdefault(u.user, {"worker_seconds": 0.0, "cost": 0.0})
        totals["worker_seconds"] = round(totals["worker_seconds"] + u.worker_seconds, 3)
        totals["cost"] = round(totals["cost"] + u.cost, 6)
    return {"pools": pools, "usage": {"sessions": sessions, "users": users,
                                      "total_cost": round(sum(u.cost for u in status.usage), 6)}}

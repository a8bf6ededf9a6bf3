"""Who a caller is: the bearer token, checked in a gRPC server interceptor before the request body is read.

Every RPC of gpucell.proto has a row in RPC_ROLES (users or workers); a method without one is refused, so a new RPC
cannot go unauthenticated. What the caller may do with the objects it names is gpucell.broker.owners's question.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio

from gpucell.broker.refusal import Abort
from gpucell.broker.token_files import TokenFile, digest
from gpucell.protocol import gpucell_pb2 as pb

USER = "user"
WORKER = "worker"

# Every RPC and the role that may call it. tests/test_auth.py walks the proto's services against this table.
RPC_ROLES: dict[str, str] = {
    "/gpucell.v1.Broker/CellExecute": USER,
    "/gpucell.v1.Broker/CellCancel": USER,
    "/gpucell.v1.Broker/CellInput": USER,
    "/gpucell.v1.Broker/CellAttach": USER,
    "/gpucell.v1.Broker/StatusGet": USER,
    "/gpucell.v1.Broker/CatalogGet": USER,
    "/gpucell.v1.Broker/WorkerRelease": USER,
    "/gpucell.v1.Broker/SessionClose": USER,
    "/gpucell.v1.WorkerHub/WorkerConnect": WORKER,
    "/gpucell.v1.Jobs/JobSubmit": USER,
    "/gpucell.v1.Jobs/JobList": USER,
    "/gpucell.v1.Jobs/JobLogs": USER,
    "/gpucell.v1.Jobs/JobFetch": USER,
    "/gpucell.v1.Jobs/JobCancel": USER,
}

DEFAULT_USER = "default"
RECONNECT_PREFIX = "gpucell-reconnect."


@dataclass(frozen=True)
class Identity:
    """A user (name, admin) or a worker (the one id its credential may register)."""

    user: str = ""
    admin: bool = False
    worker_id: str = ""
    via: str = ""          # a worker's credential: "launch" (one-time), "reconnect", "join" or "operator"

    @property
    def role(self) -> str:
        return WORKER if self.worker_id or self.via == "operator" else USER


CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("gpucell_caller", default=None)


def caller() -> Identity:
    """The identity the interceptor established for this RPC; a handler reached without one fails closed."""
    identity = CALLER.get()
    if identity is None:
        raise PermissionError("no authenticated caller: the auth interceptor is not installed")
    return identity


@dataclass
class WorkerCredentials:
    """Per-worker secrets: one-time launch secrets, reconnect credentials bound to one id, join tokens."""

    key: str                                   # the broker's worker key: signs reconnect credentials, never leaves it
    join_file: TokenFile | None = None         # [broker] worker_tokens_file: hand-started workers, one token per id
    pending: dict[str, str] = field(default_factory=dict)   # launched id -> digest of its unused launch secret

    def issue(self, worker_id: str) -> str:
        """A launched worker's credential: its one-time secret, then (space-separated) its reconnect credential."""
        secret = secrets.token_urlsafe(32)
        self.pending[worker_id] = digest(secret)
        return f"{secret} {self.reconnect(worker_id)}"

    def reconnect(self, worker_id: str) -> str:
        mac = hmac.new(self.key.encode(), f"reconnect:{worker_id}".encode(), hashlib.sha256).hexdigest()
        return f"{RECONNECT_PREFIX}{worker_id}.{mac}"

    def consume(self, identity: Identity) -> bool:
        """Spend a launch secret (False when it was spent already: a second registration with it)."""
        if identity.via != "launch":
            return True
        return self.pending.pop(identity.worker_id, None) is not None

    def identify(self, token: str) -> Identity | None:
        found: Identity | None = None
        wanted = digest(token)
        for worker_id, pending in list(self.pending.items()):
            if hmac.compare_digest(pending, wanted):
                found = Identity(worker_id=worker_id, via="launch")
        if token.startswith(RECONNECT_PREFIX):
            worker_id = token[len(RECONNECT_PREFIX):].rpartition(".")[0]
            if worker_id and hmac.compare_digest(self.reconnect(worker_id).encode(), token.encode()):
                found = Identity(worker_id=worker_id, via="reconnect")
        if self.join_file is not None:
            entry = self.join_file.find(token)
            if entry is not None:
                found = Identity(worker_id=entry.name, via="join")
        elif self.key and hmac.compare_digest(self.key.encode(), token.encode()):
            # No worker_tokens_file: the operator's own worker key (never given to a process the broker starts)
            # may join a hand-started worker under any id that is not live and was not launched here.
            found = Identity(via="operator")
        return found


class Authenticator:
    """Token -> Identity: users (users_file, or GPUCELL_TOKEN as the admin `default`), job tokens, workers."""

    def __init__(self, client_token: str, users_file: str, workers: WorkerCredentials) -> None:
        self.client_token = client_token
        self.users = TokenFile(users_file) if users_file else None
        self.workers = workers
        self._minted: dict[str, Identity] = {}   # digest -> user: tokens the broker made for its own jobs

    def mint(self, identity: Identity) -> str:
        """A token that acts as `identity` (a detached job's notebook runs as its owner); revoke() when done."""
        token = secrets.token_urlsafe(32)
        self._minted[digest(token)] = identity
        return token

    def revoke(self, token: str) -> None:
        self._minted.pop(digest(token), None)

    def identify(self, token: str) -> Identity | None:
        if not token:
            return None
        found: Identity | None = None
        if self.users is not None:
            entry = self.users.find(token)
            if entry is not None:
                found = Identity(user=entry.name, admin=entry.admin)
        elif self.client_token and hmac.compare_digest(self.client_token.encode(), token.encode()):
            found = Identity(user=DEFAULT_USER, admin=True)
        wanted = digest(token)
        for minted, identity in list(self._minted.items()):
            if hmac.compare_digest(minted, wanted):
                found = identity
        worker = self.workers.identify(token)
        return found or worker


def bearer(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return ""


def _refusal(code: grpc.StatusCode, reason: int, details: str) -> grpc.RpcMethodHandler:
    """A handler that refuses without reading: request-streaming, so no message is ever received or parsed."""
    async def refuse(requests: AsyncIterator[Any], context: aio.ServicerContext) -> AsyncIterator[Any]:
        await Abort(code, reason, details).send(context)
        yield None  # pragma: no cover - abort raised

    return grpc.stream_stream_rpc_method_handler(refuse)


class AuthInterceptor(aio.ServerInterceptor):
    """Authenticates from the metadata alone; the caller's Identity is then `caller()` inside the handler."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        role = RPC_ROLES.get(method)
        if role is None:
            return _refusal(grpc.StatusCode.PERMISSION_DENIED, pb.REASON_NOT_OWNER,
                            f"{method} has no entry in the broker's RPC table: refused")
        identity = self.authenticator.identify(bearer(handler_call_details.invocation_metadata))
        if identity is None or identity.role != role:
            return _refusal(grpc.StatusCode.UNAUTHENTICATED, pb.REASON_BAD_TOKEN, "invalid or missing gpucell token")
        # Each RPC runs in its own task, which copied the context before this ran: the handler sees this value.
        CALLER.set(identity)
        return await continuation(handler_call_details)

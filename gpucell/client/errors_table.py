"""The one table from what the broker said to what a user reads: (gRPC status, Reason) and Error.Kind -> gpucell.errors.

Nothing here reads a message to decide: the broker names a Reason with every abort (gpucell.protocol.reasons)
and a Kind with every failed cell; the message is only passed on, as the one line the user sees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from gpucell.errors import (AuthenticationError, BrokerError, BrokerUnavailableError, CellGoneError,
                            CellTimeoutError, ConfigError, GpucellError, NotFoundError, UnknownHardwareError,
                            WorkerLostError)
from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol.reasons import reason_of
from gpucell.settings import ENV_BROKER, ENV_TOKEN

Code = grpc.StatusCode
ANY = -1   # a row's reason that matches whatever the broker named (or nothing)


def _unreachable(address: str, code: Code, details: str) -> str:
    return (f"cannot reach the gpucell broker at {address} ({ENV_BROKER}): "
            f"{details.splitlines()[0] if details else code.name.lower()}")


def _refused(address: str, code: Code, details: str) -> str:
    return f"the gpucell broker at {address} refused the token ({ENV_TOKEN}): {details}"


def _as_sent(address: str, code: Code, details: str) -> str:
    return details


def _unexpected(address: str, code: Code | None, details: str) -> str:
    return f"broker error ({code.name if code else 'unknown'}): {details}"


@dataclass(frozen=True)
class Row:
    codes: tuple[Code, ...]
    reason: int                                  # a pb.Reason, or ANY
    error: type[GpucellError]
    message: Callable[[str, Any, str], str]     # (broker address, code, details) -> the user's one line


_REQUEST = (Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.ALREADY_EXISTS, Code.RESOURCE_EXHAUSTED,
            Code.PERMISSION_DENIED)

# First match wins: specific reasons before the catch-all of their status.
RPC_ERRORS: tuple[Row, ...] = (
    Row((Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED), ANY, BrokerUnavailableError, _unreachable),
    Row((Code.UNAUTHENTICATED,), ANY, AuthenticationError, _refused),
    Row((Code.INVALID_ARGUMENT,), pb.REASON_UNKNOWN_HARDWARE, UnknownHardwareError, _as_sent),
    Row((Code.NOT_FOUND,), pb.REASON_CELL_GONE, CellGoneError, _as_sent),
    Row((Code.NOT_FOUND,), ANY, NotFoundError, _as_sent),
    Row(_REQUEST, ANY, ConfigError, _as_sent),
)
UNEXPECTED = Row((), ANY, BrokerError, _unexpected)   # any other status: INTERNAL, UNKNOWN, CANCELLED, ...


def row_for(code: Code | None, reason: int) -> Row:
    for row in RPC_ERRORS:
        if code in row.codes and row.reason in (ANY, reason):
            return row
    return UNEXPECTED


def translate(exc: grpc.RpcError, address: str) -> GpucellError:
    """The one place where a gRPC status turns into what a user reads."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    row = row_for(code, reason_of(exc))
    return row.error(row.message(address, code, details))


# A failed cell's Error.Kind -> what the client raises; USER (and unset) is the cell's own RemoteError.
CELL_ERRORS: dict[int, type[BaseException]] = {
    pb.Error.CANCELLED: KeyboardInterrupt,
    pb.Error.TIMEOUT: CellTimeoutError,
    pb.Error.WORKER_LOST: WorkerLostError,
    pb.Error.REJECTED: ConfigError,
}

__all__ = ["CELL_ERRORS", "RPC_ERRORS", "Row", "row_for", "translate"]

"""The machine-readable half of a refusal: the broker names a `Reason` with every abort, the client reads it.

The reason travels by name in the trailing metadata key `gpucell-reason` (names survive renumbering and read
well in logs); a peer that sends none, or a name this side does not know, reads as REASON_UNSPECIFIED.
Enums on the wire are shown to users as the lower-case value name (`idle`, `worker_lost`), as before.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from gpucell.protocol import gpucell_pb2 as pb

REASON_KEY = "gpucell-reason"


def reason_metadata(reason: int) -> tuple[tuple[str, str], ...]:
    """The trailing metadata an abort carries."""
    return ((REASON_KEY, pb.Reason.Name(reason)),)


def reason_of(exc: grpc.RpcError) -> int:
    """The Reason a failed call came back with (REASON_UNSPECIFIED when none: a dead channel, an old broker)."""
    trailing: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == REASON_KEY:
            name = value.decode() if isinstance(value, bytes) else str(value)
            return pb.Reason.Value(name) if name in pb.Reason.keys() else pb.REASON_UNSPECIFIED
    return pb.REASON_UNSPECIFIED


def shown(enum: EnumTypeWrapper, value: int, default: str = "") -> str:
    """How users see an enum value: `WorkerStatus.IDLE` -> "idle"; an unset value -> `default`."""
    return enum.Name(value).lower() if value and value in enum.values() else default


def parsed(enum: EnumTypeWrapper, text: str) -> int:
    """The inverse of `shown`: "worker_lost" -> `Error.WORKER_LOST`; unknown text -> 0 (unspecified)."""
    name = text.upper()
    return enum.Value(name) if name in enum.keys() else 0

"""A refusal the broker sends: its status code, its Reason (for the client's table) and the one line the user reads."""

from __future__ import annotations

import grpc
from grpc import aio

from gpucell.protocol.reasons import reason_metadata


class Abort(Exception):
    """A refusal: its status code, its Reason (for the client's table) and the one line the user reads."""

    def __init__(self, code: grpc.StatusCode, reason: int, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.reason = reason
        self.details = details

    async def send(self, context: aio.ServicerContext) -> None:
        await context.abort(self.code, self.details, reason_metadata(self.reason))

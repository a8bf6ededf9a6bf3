"""The direct lane's wire format: a ticket line, then length-prefixed protobuf messages both ways.

A warm cell costs two gRPC hops through the broker (client → broker → worker and back), ~0.9 ms each
on this kind of machine before any Python runs; over one already-open TCP connection the round trip
is tens of microseconds. The broker still decides who owns a worker: it hands the lane's address and
ticket only to the session the worker was assigned to, and the worker tells it when a lane cell
starts and ends (LaneActivity), so idle release, status and usage stay the broker's.
"""

from __future__ import annotations

import socket
import struct
from typing import BinaryIO, TypeVar

from google.protobuf.message import Message

_LEN = struct.Struct("!I")
MAX_FRAME = 1 << 30     # a sanity bound: requests carry a cell and ≤ 1 MB of inline values, events its output
M = TypeVar("M", bound=Message)


def frame(message: Message) -> bytes:
    body = message.SerializeToString()
    return _LEN.pack(len(body)) + body


def read(stream: BinaryIO, message: M) -> M | None:
    """The next message into `message`; None at a clean end of stream (EOF between messages)."""
    head = stream.read(_LEN.size)
    if not head:
        return None
    if len(head) < _LEN.size:
        raise ConnectionError("lane closed mid-message")
    (size,) = _LEN.unpack(head)
    if size > MAX_FRAME:
        raise ConnectionError(f"lane message of {size} bytes is over the limit")
    body = stream.read(size)
    if len(body) < size:
        raise ConnectionError("lane closed mid-message")
    message.ParseFromString(body)
    return message


WELCOME = b"gpucell-lane ok\n"


def connect(address: str, ticket: str, timeout: float = 5.0) -> socket.socket:
    """An open lane: the worker answered the ticket with WELCOME (so an address that, seen from here,
    leads somewhere else, fails now rather than hanging a cell)."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(f"{ticket}\n".encode())
        answer = b""
        while not answer.endswith(b"\n") and len(answer) < len(WELCOME):
            chunk = sock.recv(len(WELCOME) - len(answer))
            if not chunk:
                break
            answer += chunk
        if answer != WELCOME:
            raise ConnectionError(f"no gpucell lane at {address}")
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock

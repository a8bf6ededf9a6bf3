"""What the broker keeps per submitted cell, per connected worker and per launch (state, no I/O)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gpucell.broker.provisioners import Provisioner
from gpucell.protocol import gpucell_pb2 as pb


@dataclass
class CellRun:
    """One submitted cell and the log of its events, which any (re-)attached client stream follows."""

    request: pb.CellExecuteRequest
    pool: str
    submitted: float
    log: list[pb.CellEvent] = field(default_factory=list)
    closed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    attached: int = 0
    worker_id: str = ""
    dispatched: float = 0.0
    cold_start_s: float = 0.0
    done: bool = False
    timed_out: bool = False        # the scheduler interrupted it for its --timeout
    outcome: str = "user"
    detach_timer: asyncio.TimerHandle | None = None

    def push(self, event: pb.CellEvent) -> None:
        event.seq = len(self.log) + 1
        self.log.append(event)
        self.wake.set()
        self.wake = asyncio.Event()

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    async def follow(self, after: int) -> AsyncIterator[pb.CellEvent]:
        index = after
        while True:
            while index < len(self.log):
                yield self.log[index]
                index += 1
            if self.closed:
                return
            await self.wake.wait()


@dataclass
class WorkerConn:
    worker_id: str
    pool: str
    pid: int
    node: str
    versions: dict[str, str]
    outbox: asyncio.Queue[pb.WorkerInstruction | None] = field(default_factory=asyncio.Queue)
    last_seen: float = field(default_factory=time.monotonic)
    gpus: list[pb.GpuInfo] = field(default_factory=list)
    lane_address: str = ""
    lane_ticket: str = ""


@dataclass
class LaunchRecord:
    pool: str
    launched: float
    provisioner: Provisioner
    ready: float = 0.0

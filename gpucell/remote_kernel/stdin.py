"""input(), getpass.getpass() and sys.stdin in a remote cell, answered by the notebook's stdin channel.

The worker asks (an InputRequest event) and waits on the main thread; the reply comes back on the
broker's stream or the lane. A notebook whose frontend allows no stdin (nbclient, `gpucell run`) answers
with the error its own input() raised, and the cell's input() raises that: StdinNotImplementedError, as a
local cell's does. An interrupt while waiting is a KeyboardInterrupt, as in ipykernel.
"""

from __future__ import annotations

import builtins
import getpass
import importlib
import io
import queue
import sys
from collections.abc import Callable
from typing import Any

from gpucell.protocol import gpucell_pb2 as pb


class StdinRelay:
    """One per worker: `ask(prompt, password)` sends the request, `reply` (any thread) delivers the answer."""

    def __init__(self, ask: Callable[[str, bool], None]) -> None:
        self._ask = ask
        self._replies: queue.Queue[pb.CellInputRequest] = queue.Queue()

    def install(self) -> None:
        """Replace the process's input(), getpass and sys.stdin (a worker process serves only its cells)."""
        builtins.input = self.input
        getpass.getpass = self.getpass
        sys.stdin = RelayedStdin(self)

    def begin(self) -> None:
        while True:
            try:
                self._replies.get_nowait()
            except queue.Empty:
                return

    def reply(self, answer: pb.CellInputRequest) -> None:
        self._replies.put(answer)

    def input(self, prompt: Any = "") -> str:
        return self.request(str(prompt), password=False)

    def getpass(self, prompt: str = "Password: ", stream: Any = None) -> str:
        return self.request(prompt, password=True)

    def request(self, prompt: str, password: bool) -> str:
        self._ask(prompt, password)
        # A signal interrupts this wait on the main thread: a cancelled cell raises KeyboardInterrupt here.
        answer = self._replies.get()
        if answer.ename:
            raise _rebuilt(answer.etype, answer.ename, answer.evalue)
        return answer.value


class RelayedStdin(io.TextIOBase):
    """sys.stdin in a cell: each line read is a request to the notebook, without a prompt."""

    def __init__(self, relay: StdinRelay) -> None:
        super().__init__()
        self._relay = relay

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        return self._relay.request("", password=False) + "\n"

    def read(self, size: int | None = -1) -> str:
        return self.readline()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


def _rebuilt(etype: str, ename: str, evalue: str) -> BaseException:
    """The notebook's input() error as the same type here when it can be built from its message."""
    module, _, qualname = etype.partition(":")
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return cls(evalue) if evalue else cls()
    except Exception:  # noqa: BLE001 - any failure falls back to a plain error with the same words
        pass
    return RuntimeError(f"{ename}: {evalue}")

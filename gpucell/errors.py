"""The errors a gpucell user can see; gRPC failures are translated into these in one place (client)."""

from __future__ import annotations

import re
from types import TracebackType
from typing import Callable

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class GpucellError(Exception):
    """Base of every gpucell error; its message is one line that names what is at fault."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of the local traceback of our machinery: one clear line.
        return [f"{type(self).__name__}: {self}"]


class ConfigError(GpucellError):
    """A bad option, label or config value, found before anything was sent."""


class UnknownHardwareError(ConfigError):
    """No pool serves the requested hardware label."""


class NotFoundError(ConfigError):
    """No such worker, job, notebook or cell (it never existed, or it is gone)."""


class CellGoneError(NotFoundError):
    """The broker no longer knows the cell: it ended long ago, or the broker restarted since."""


class SerializationError(GpucellError):
    """A value the cell reads cannot be sent to the worker."""


class BrokerUnavailableError(GpucellError):
    """The broker cannot be reached (closed port, wrong address, broker gone)."""


class BrokerError(GpucellError):
    """The broker ended a call with a status gpucell does not expect (INTERNAL, UNKNOWN): often it went down."""


class AuthenticationError(GpucellError):
    """The broker refused our token."""


class DataPathError(GpucellError):
    """Values over the inline limit could not move between this kernel and the worker's data server."""


class WorkerLostError(GpucellError):
    """The worker running the cell died or was released."""


class BrokerGoneError(WorkerLostError, BrokerUnavailableError):
    """The broker went away while a cell ran, and the cell's worker with it: to the notebook a lost worker,
    to a fan-out a broker to wait for (it may come back)."""


class CellTimeoutError(GpucellError):
    """The cell ran longer than its --timeout."""


class RemoteRefError(GpucellError):
    """A RemoteRef was used locally, or its worker is gone."""


class RemoteError(GpucellError):
    """The cell raised on the worker; carries the remote exception's name, value and traceback.

    The error a cell raises is also an instance of the remote exception's type when that type is importable
    here (a KeyError is a KeyError): gpucell.client.remote_errors makes it."""

    ename: str = ""
    evalue: str = ""
    remote_traceback: list[str] = []
    hardware: str = ""
    remote_tb: TracebackType | None = None   # the remote frames as a traceback, for a local formatter
    render: Callable[[], list[str]] | None = None   # set by a front end: the traceback in its own formatter

    def __init__(self, ename: str, evalue: str, traceback: list[str] | None = None, hardware: str = "") -> None:
        super().__init__(f"{ename}: {evalue}" if evalue else ename)
        self.ename = ename
        self.evalue = evalue
        self.remote_traceback = list(traceback or [])
        self.hardware = hardware

    @property
    def traceback_text(self) -> str:
        """The remote traceback without terminal colours (for logs and tests)."""
        return _ANSI.sub("", "\n".join(self.remote_traceback))

    def _render_traceback_(self) -> list[str]:
        # The remote frames, rendered like a local traceback, so the notebook shows the user's line.
        if self.render is not None:
            return self.render()
        where = f" (on {self.hardware} worker)" if self.hardware else ""
        header = f"RemoteError{where}:"
        return [header, *self.remote_traceback] if self.remote_traceback else [header, str(self)]

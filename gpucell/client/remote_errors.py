"""A cell's remote error as the error a local cell would raise: its own type, its frames as a traceback."""

from __future__ import annotations

import builtins
import functools
import importlib
import sys
from collections.abc import Mapping, Sequence
from types import CodeType, TracebackType
from typing import Any

from gpucell.errors import RemoteError
from gpucell.protocol import gpucell_pb2 as pb


class KeyboardInterrupt(builtins.KeyboardInterrupt):  # noqa: A001 - a user sees this name: it is the one they expect
    """An interrupted %%gpu cell: a KeyboardInterrupt whose traceback is the cell's (remote) frames, none of gpucell's."""

    remote_tb: TracebackType | None = None
    render: Any = None

    def _render_traceback_(self) -> list[str]:
        if self.render is not None:
            rendered: list[str] = self.render()
            return rendered
        return ["KeyboardInterrupt: "]


class _Raised(BaseException):
    """Raised inside a stand-in frame, to get a traceback entry for it."""


def fake_traceback(frames: Sequence[pb.Frame]) -> TracebackType | None:
    """Traceback entries with the remote frames' files, lines and function names (jinja2's debug trick), so
    a local formatter renders them with local source: the cell's lines from its cache, libraries' from disk."""
    head: TracebackType | None = None
    tail: TracebackType | None = None
    for frame in frames:
        try:
            _raise_at(frame.filename or "<remote>", max(frame.lineno, 1), frame.name or "<module>")
        except _Raised:
            tb = sys.exc_info()[2]
            entry = tb.tb_next.tb_next if tb is not None and tb.tb_next is not None else None
        if entry is None:
            continue
        entry.tb_next = None
        if tail is None:
            head = entry
        else:
            tail.tb_next = entry
        tail = entry
    return head


def _raise_at(filename: str, lineno: int, name: str) -> None:
    exec(_stand_in(filename, lineno, name), {"__gpucell_raised__": _Raised})  # noqa: S102 - our own one-line code


@functools.lru_cache(maxsize=256)
def _stand_in(filename: str, lineno: int, name: str) -> CodeType:
    code = compile("\n" * (lineno - 1) + "raise __gpucell_raised__", filename, "exec")
    replace: Any = code.replace  # co_qualname (3.11+) is what tracebacks show
    renamed: CodeType = replace(co_name=name, co_qualname=name) if sys.version_info >= (3, 11) else replace(co_name=name)
    return renamed


def local_type(etype: str, user_ns: Mapping[str, Any]) -> type[BaseException] | None:
    """The remote exception's type here: a class of the notebook, or one of an importable module."""
    module, _, qualname = etype.partition(":")
    if not module or not qualname:
        return None
    if module == "__main__":
        obj: Any = user_ns.get(qualname.split(".")[0])
        parts = qualname.split(".")[1:]
    else:
        try:
            obj = sys.modules.get(module) or importlib.import_module(module)
        except Exception:  # noqa: BLE001 - not importable here: the error keeps only its name
            return None
        parts = qualname.split(".")
    for part in parts:
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None


_REMOTE_TYPES: dict[tuple[type[Exception] | None, str, str, str], type[RemoteError]] = {}


def _remote_type(base: type[Exception] | None, ename: str, module: str, qualname: str) -> type[RemoteError]:
    """`base` and RemoteError in one class that looks like `base` (its name is what the notebook shows)."""
    key = (base, ename, module, qualname)
    cls = _REMOTE_TYPES.get(key)
    if cls is None:
        bases: tuple[type, ...] = (base, RemoteError) if base is not None else (RemoteError,)
        namespace = {"__module__": module, "__qualname__": qualname, "__str__": _evalue,
                     "__init__": RemoteError.__init__}
        cls = _REMOTE_TYPES[key] = type(ename, bases, namespace)
    return cls


def _evalue(self: RemoteError) -> str:
    return self.evalue


def remote_error(error: pb.Error, hardware: str, user_ns: Mapping[str, Any]) -> RemoteError:
    """The error a cell raises for a remote exception: an instance of its type when importable here."""
    ename = error.ename or "RemoteError"
    module, _, qualname = error.etype.partition(":")
    base = local_type(error.etype, user_ns)
    usable = base if base is not None and issubclass(base, Exception) and not issubclass(base, RemoteError) else None
    try:
        cls = _remote_type(usable, ename, module or __name__, qualname or ename)
        exc = usable.__new__(cls) if usable is not None else cls.__new__(cls)
    except TypeError:  # a final type, or one whose layout does not mix: the name alone
        cls = _remote_type(None, ename, module or __name__, qualname or ename)
        exc = cls.__new__(cls)
    RemoteError.__init__(exc, ename, error.evalue, list(error.traceback), hardware=hardware)
    exc.args = (error.evalue,)
    exc.remote_tb = fake_traceback(error.frames)
    return exc


def remote_interrupt(error: pb.Error | None) -> KeyboardInterrupt:
    """An interrupted cell's KeyboardInterrupt, with the frames where the worker stopped when it said."""
    exc = KeyboardInterrupt()
    if error is not None:
        exc.remote_tb = fake_traceback(error.frames)
    return exc


__all__ = ["KeyboardInterrupt", "fake_traceback", "local_type", "remote_error", "remote_interrupt"]

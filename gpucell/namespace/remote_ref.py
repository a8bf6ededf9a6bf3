"""RemoteRef: the local stand-in for a value that stayed on the worker."""

from __future__ import annotations

from typing import Any, NoReturn

from gpucell.errors import RemoteRefError

# A returned value larger than this (in MB, 10**6 bytes) stays on the worker as a RemoteRef, unless the cell says otherwise.
RETURN_LIMIT_MB = 256


class RemoteRefAccessError(RemoteRefError, AttributeError):
    """Raised for attribute access on a RemoteRef (an AttributeError, so hasattr() stays sane)."""


class RemoteRefUseError(RemoteRefError, TypeError):
    """Raised when a RemoteRef is used as its value would be (next(), len(), +, [i], ...): a TypeError as well,
    as Python raises for an object that does not support the operation, so `except TypeError` still works."""


class RemoteRef:
    """A value that lives on a worker; use it in a later %%gpu cell or fetch it with %gpu_pull."""

    __slots__ = ("name", "type_name", "size", "hardware", "worker_id", "reason", "summary",
                 "execution_count", "lost")

    def __init__(self, name: str, type_name: str, size: int, hardware: str, worker_id: str,
                 reason: str = "", summary: str = "", execution_count: int = 0) -> None:
        self.name = name
        self.type_name = type_name
        self.size = size
        self.hardware = hardware
        self.worker_id = worker_id
        self.reason = reason
        self.summary = summary
        self.execution_count = execution_count
        self.lost = False

    def __repr__(self) -> str:
        size = _human(self.size) if self.size else "?"
        detail = f", {self.summary}" if self.summary else ""
        state = " LOST" if self.lost else ""
        return (f"<RemoteRef{state} {self.name}: {self.type_name}{detail}, {size} on {self.hardware} "
                f"worker {self.worker_id} ({self.reason})>")

    def _refuse(self, what: str) -> NoReturn:
        if self.lost:
            raise RemoteRefUseError(self.lost_message())
        raise RemoteRefUseError(f"{self.name!r} is a RemoteRef ({self.type_name} on {self.hardware} worker "
                             f"{self.worker_id}): {what} needs the value here; run %gpu_pull {self.name} "
                             f"or use it inside a %%gpu cell")

    def lost_message(self) -> str:
        cell = f"In[{self.execution_count}]" if self.execution_count else "an earlier cell"
        return (f"{self.name!r} was a RemoteRef made by {cell} on {self.hardware} worker {self.worker_id}, "
                f"which is gone; re-run {cell} to recreate it")

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)  # IPython's display machinery probes _repr_*_ names
        if self.lost:
            raise RemoteRefAccessError(self.lost_message())
        raise RemoteRefAccessError(f"{self.name!r} is a RemoteRef ({self.type_name} on {self.hardware} worker "
                                   f"{self.worker_id}): .{attr} needs the value here; run %gpu_pull {self.name}")

    def __len__(self) -> int:
        self._refuse("len()")

    def __iter__(self) -> Any:
        self._refuse("iteration")

    def __getitem__(self, key: Any) -> Any:
        self._refuse("indexing")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse("calling it")

    def __bool__(self) -> bool:
        self._refuse("truth testing")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        self._refuse("numpy conversion")

    def __reduce__(self) -> Any:
        self._refuse("pickling")

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr not in RemoteRef.__slots__:
            self._refuse(f"setting .{attr}")
        object.__setattr__(self, attr, value)

    def kept_notice(self) -> str:
        """One line for a value that stayed on the worker because it cannot travel ("" for one that stayed
        on purpose: --keep, device-bound, over the return limit)."""
        if not self.reason.startswith("unpicklable"):
            return ""
        return (f"gpucell: {self.name} stays on the worker (a {self.type_name} cannot be pickled); "
                f"%gpu_pull {self.name} brings a copy if it can")


def _refusing(what: str) -> Any:
    def method(self: RemoteRef, *args: Any, **kwargs: Any) -> Any:
        self._refuse(what)
    return method


# Every protocol a value may have: the RemoteRef says what it is and how to pull it, never a bare TypeError.
for _dunder, _what in [("next", "next()"), ("reversed", "reversed()"), ("contains", "`in`"),
                       ("setitem", "item assignment"), ("delitem", "item deletion"), ("neg", "unary -"),
                       ("pos", "unary +"), ("abs", "abs()"), ("invert", "the ~ operator"), ("int", "int()"),
                       ("float", "float()"), ("complex", "complex()"), ("index", "use as an index"),
                       ("round", "round()"), ("trunc", "math.trunc()"), ("floor", "math.floor()"),
                       ("ceil", "math.ceil()"), ("enter", "a with statement"), ("exit", "a with statement"),
                       ("await", "await"), ("aiter", "async iteration"), ("anext", "anext()"),
                       ("bytes", "bytes()"), ("fspath", "use as a path"), ("divmod", "divmod()"),
                       ("rdivmod", "divmod()"), ("lshift", "the << operator"), ("rlshift", "the << operator"),
                       ("rshift", "the >> operator"), ("rrshift", "the >> operator"), ("length_hint", "len()"),
                       ("buffer", "the buffer protocol"), ("dlpack", "DLPack conversion")]:
    setattr(RemoteRef, f"__{_dunder}__", _refusing(_what))


def _binary(op: str) -> Any:
    def method(self: RemoteRef, *args: Any) -> Any:
        self._refuse(f"the {op} operator")
    return method


for _name, _op in [("add", "+"), ("sub", "-"), ("mul", "*"), ("truediv", "/"), ("floordiv", "//"),
                   ("mod", "%"), ("pow", "**"), ("matmul", "@"), ("and", "&"), ("or", "|"), ("xor", "^"),
                   ("lt", "<"), ("le", "<="), ("gt", ">"), ("ge", ">="), ("lshift", "<<"), ("rshift", ">>")]:
    setattr(RemoteRef, f"__{_name}__", _binary(_op))
    if _name not in ("lt", "le", "gt", "ge"):
        setattr(RemoteRef, f"__r{_name}__", _binary(_op))
        setattr(RemoteRef, f"__i{_name}__", _binary(f"{_op}="))


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"

"""RemoteRef: the local stand-in for a value that stayed on the worker."""

from __future__ import annotations

from typing import Any, NoReturn

from gpucell.errors import RemoteRefError

# A returned value larger than this (in MB, 10**6 bytes) stays on the worker as a RemoteRef, unless the cell says otherwise.
RETURN_LIMIT_MB = 256


class RemoteRefAccessError(RemoteRefError, AttributeError):
    """Raised for attribute access on a RemoteRef (an AttributeError, so hasattr() stays sane)."""


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
            raise RemoteRefError(self.lost_message())
        raise RemoteRefError(f"{self.name!r} is a RemoteRef ({self.type_name} on {self.hardware} worker "
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


def _binary(op: str) -> Any:
    def method(self: RemoteRef, *args: Any) -> Any:
        self._refuse(f"the {op} operator")
    return method


for _name, _op in [("add", "+"), ("sub", "-"), ("mul", "*"), ("truediv", "/"), ("floordiv", "//"),
                   ("mod", "%"), ("pow", "**"), ("matmul", "@"), ("and", "&"), ("or", "|"), ("xor", "^"),
                   ("lt", "<"), ("le", "<="), ("gt", ">"), ("ge", ">=")]:
    setattr(RemoteRef, f"__{_name}__", _binary(_op))
    if _name not in ("lt", "le", "gt", "ge"):
        setattr(RemoteRef, f"__r{_name}__", _binary(_op))


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"

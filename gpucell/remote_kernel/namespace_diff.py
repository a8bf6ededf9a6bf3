"""What a cell changed in the worker's namespace: bound, rebound, deleted, and inputs mutated in place.

The worker keeps, per name, the content hash of the value its client holds (`Synced`): a name the client
sends with that hash is left alone (neither re-sent nor rebound, so the worker's object stays the object).
Around each cell the namespace is diffed by identity (a dict copy before, one pass after); only the inputs
the cell read, and arrays or tensors that share memory with one it mutated, are hashed again."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# IPython's own per-cell names (`_`, `__`, `___`, `_i`, `_ii`, `_iii`, `_iN`, `_N`): the notebook keeps its own.
_IPYTHON_NAME = re.compile(r"_{1,3}|_i{1,3}|_i?\d+")


def hidden(name: str, shell_hidden: Mapping[str, Any]) -> bool:
    """Names that never travel back: IPython's bookkeeping, dunders, and what the shell itself put there."""
    return (name in shell_hidden or _IPYTHON_NAME.fullmatch(name) is not None
            or (name.startswith("__") and name.endswith("__")))


@dataclass
class Change:
    """The names a cell bound or rebound (in the order the namespace holds them) and the names it deleted."""

    bound: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def diff(before: Mapping[str, Any], after: Mapping[str, Any], shell_hidden: Mapping[str, Any]) -> Change:
    """By identity only: thousands of names cost one pass, and no value is hashed here."""
    change = Change()
    missing = object()
    get = before.get
    for name, value in after.items():
        if get(name, missing) is not value and not hidden(name, shell_hidden):
            change.bound.append(name)
    if len(before) + len(change.bound) != len(after):  # something went: find it (rare)
        change.deleted = [n for n in before if n not in after and not hidden(n, shell_hidden)]
    return change


def memory_root(value: Any) -> int | None:
    """An id shared by every numpy array / torch tensor that views the same memory; None for other values."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        while isinstance(value.base, numpy.ndarray):
            value = value.base
        return id(value.base) if value.base is not None else id(value)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        try:
            return int(value.untyped_storage().data_ptr()) or None
        except (RuntimeError, AttributeError):
            return None
    return None


def sharing(ns: Mapping[str, Any], names: Iterable[str], roots: set[int]) -> list[str]:
    """Of `names`, those whose array or tensor views memory with one of `roots` (a view mutated through
    another name changed them too)."""
    if not roots:
        return []
    return [n for n in names if n in ns and memory_root(ns[n]) in roots]


class Synced:
    """Per name, the content hash of what the client holds; the worker's value for it is the same object
    it had when the two last agreed (sent, or received)."""

    def __init__(self) -> None:
        self.hashes: dict[str, str] = {}
        self.ids: dict[str, int] = {}

    def holds(self, name: str, digest: str, in_place: bool, ns: Mapping[str, Any]) -> bool:
        """The client sends `name` with `digest` (`in_place`: unchanged since the two agreed, whatever its
        hash there): True when this worker holds that very value, still bound to that name."""
        value = ns.get(name, self)
        return (value is not self and self.ids.get(name) == id(value)
                and (in_place and name in self.hashes or self.hashes.get(name) == digest))

    def bound(self, value: Any, but: str) -> bool:
        """Some other name the client holds is this very object here (a cache hit must not alias it)."""
        wanted = id(value)
        return any(i == wanted for n, i in self.ids.items() if n != but)

    def record(self, name: str, digest: str, value: Any) -> None:
        self.hashes[name] = digest
        self.ids[name] = id(value)

    def forget(self, name: str) -> None:
        self.hashes.pop(name, None)
        self.ids.pop(name, None)

    def names(self) -> Iterable[str]:
        return self.hashes.keys()


__all__ = ["Change", "Synced", "diff", "hidden", "memory_root", "sharing"]

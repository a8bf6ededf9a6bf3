"""What the notebook and its worker both hold, name by name, and writing a remote mutation back in place.

A name whose local value is still the object that was sent to, or came back from, the worker (same identity,
same content hash) is not sent again: the worker uses its own object, so views, figure<->axes links and
autograd graphs made there survive. Holding the object (not its id) keeps an id from being reused under us."""

from __future__ import annotations

import sys
import types
from collections.abc import Collection, Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

_MISSING = object()

# Values that cannot change in place: identity alone says they are unchanged (no pickling, no hashing).
_IMMUTABLE = frozenset({int, float, complex, str, bytes, bool, type(None), range, Decimal, Fraction})


class Synced:
    """Per name, the object the notebook holds that its worker holds too, that object's content hash as
    pickled here, and the hash the worker knows it by (they differ when a pickle does not round-trip to the
    same bytes, e.g. a view that came as a copy)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[Any, str, str]] = {}
        self.worker_id = ""

    def hash_if_same(self, name: str, value: Any) -> str | None:
        """The content hash of `name` here, when identity alone proves it unchanged since the worker got it."""
        entry = self.entries.get(name)
        if entry is not None and entry[0] is value and type(value) in _IMMUTABLE:
            return entry[1]
        return None

    def holds(self, name: str, value: Any, digest: str) -> bool:
        """The worker holds what the notebook does for `name` (same object, same content since)."""
        entry = self.entries.get(name)
        return entry is not None and entry[0] is value and entry[1] == digest

    def stale(self, user_ns: Mapping[str, Any], skip: Collection[str] = ()) -> list[str]:
        """Names the notebook rebound or deleted since the worker got them, forgotten here: unless the cell
        sends them anyway, the worker must forget them too, or a dynamic read there would see the old value.
        Names in `skip` are the caller's own business (a fan-out slot keeps its task there)."""
        get = user_ns.get
        # By identity only (~0.1 us a name); over a copy: a fan-out slot builds one cell while another lands.
        gone = [n for n, entry in tuple(self.entries.items()) if get(n, _MISSING) is not entry[0]]
        if skip:
            gone = [n for n in gone if n not in skip]
        for name in gone:
            self.entries.pop(name, None)
        return gone

    def on_worker(self, worker_id: str) -> None:
        """Another worker holds nothing of what the last one held."""
        if worker_id and worker_id != self.worker_id:
            self.entries.clear()
            self.worker_id = worker_id

    def record(self, name: str, value: Any, digest: str, worker_digest: str = "") -> None:
        self.entries[name] = (value, digest, worker_digest or digest)

    def forget(self, name: str) -> None:
        self.entries.pop(name, None)


# Rebound, never written into: what they are is their code or their name, not a state.
_NOT_IN_PLACE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def same_pickle_here(value: Any, buffers: int) -> bool:
    """Whether `value`, pickled here, gives the bytes it came in (so the worker's hash is ours too): an
    immutable scalar, or a C-contiguous array that came as one out-of-band buffer. Anything else (a view
    that came as a copy, a set of strings under another hash seed) is hashed here once, as it lands."""
    if type(value) in _IMMUTABLE:
        return True
    numpy = sys.modules.get("numpy")
    return (numpy is not None and type(value) is numpy.ndarray and buffers == 1
            and bool(value.flags.c_contiguous) and value.dtype.hasobject is False)


def write_back(old: Any, new: Any) -> bool:
    """Make `old` equal to `new` in place, so every local name bound to it sees the change; False when the
    type does not allow it (the name is rebound instead)."""
    cls = type(old)
    if cls is not type(new) or old is new:
        return old is new
    if cls is list or cls is bytearray:
        old[:] = new
        return True
    if cls is dict or cls is set:
        old.clear()
        old.update(new)
        return True
    numpy = sys.modules.get("numpy")
    if numpy is not None and cls is numpy.ndarray:
        if old.shape != new.shape or old.dtype != new.dtype or not old.flags.writeable:
            return False
        old[...] = new
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(old, torch.Tensor):
        old.data = new.data           # identity kept, autograd metadata of `old` kept
        old.grad = new.grad
        return True
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(old, (pandas.DataFrame, pandas.Series)):
        old._update_inplace(new)      # what pandas' own inplace=True operations do
        old.attrs = new.attrs
        return True
    if (isinstance(old, _NOT_IN_PLACE) or not isinstance(getattr(old, "__dict__", None), dict)):
        return False
    state = old.__dict__
    state.clear()
    state.update(new.__dict__)
    return True


__all__ = ["Synced", "same_pickle_here", "write_back"]

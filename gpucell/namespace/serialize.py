"""How values travel: cloudpickle (dill as the fallback) into content-addressed blobs."""

from __future__ import annotations

import hashlib
import pickle
import types
from dataclasses import dataclass
from typing import Any

import cloudpickle
import dill

from gpucell.errors import SerializationError

PROTOCOL = 5


@dataclass(frozen=True)
class Packed:
    """A pickled value and its content hash."""

    hash: str
    data: bytes
    type_name: str


def type_name(value: Any) -> str:
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


def content_hash(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def dumps(value: Any) -> bytes:
    """Pickle with cloudpickle (notebook functions and classes go by value), then dill."""
    try:
        return cloudpickle.dumps(value, protocol=PROTOCOL)
    except Exception as first:  # noqa: BLE001 - any pickling failure gets the second opinion
        try:
            return dill.dumps(value, protocol=PROTOCOL, recurse=True)
        except Exception:  # noqa: BLE001
            raise first from None


def pack(name: str, value: Any) -> Packed:
    """Pickle one namespace value, or raise a one-line SerializationError naming it."""
    try:
        data = dumps(value)
    except Exception as exc:  # noqa: BLE001 - the user's value, any failure is reported the same way
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SerializationError(f"cannot send {name!r} ({type_name(value)}): {reason}") from None
    return Packed(content_hash(data), data, type_name(value))


def loads(data: bytes) -> Any:
    # Both cloudpickle and dill write standard pickles; dill's need dill imported, which it is.
    return pickle.loads(data)


def module_import(name: str, value: Any) -> str | None:
    """`import x as name` for a module value, so modules travel as imports, not pickles."""
    if isinstance(value, types.ModuleType):
        module = value.__name__
        if module == name:
            return f"import {module}"
        if "." not in module or name != module.split(".")[0]:
            return f"import {module} as {name}"
        return f"import {module}"
    return None

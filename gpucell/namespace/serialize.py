"""How values travel: cloudpickle (dill as the fallback), protocol 5 with out-of-band buffers, content-hashed."""

from __future__ import annotations

import builtins
import io
import pickle
import sys
import types
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import dill
import xxhash

from gpucell.errors import SerializationError

PROTOCOL = 5
# The type_name of a cell input with no name: several of the cell's values in one pickle (a dict by name,
# one memo), their names after the prefix, comma-separated.
JOINT = "gpucell.cell:"


@dataclass
class Packed:
    """A pickled value: the pickle bytes, its out-of-band buffers (views, not copies), a content hash."""

    hash: str
    header: bytes
    buffers: list[memoryview] = field(default_factory=list)
    type_name: str = ""
    global_reads: frozenset[str] = frozenset()   # session globals its session functions read (`session`)

    @property
    def size(self) -> int:
        return len(self.header) + sum(b.nbytes for b in self.buffers)


def type_name(value: Any) -> str:
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


def content_hash(header: bytes, buffers: list[memoryview]) -> str:
    # xxh3-128: ~5 GB/s here where blake2b and sha1 manage ~0.2-0.4 GB/s; 128 bits for content addressing.
    h = xxhash.xxh3_128(header)
    for buf in buffers:
        h.update(len(buf).to_bytes(8, "little"))
        h.update(buf)
    return h.hexdigest()


def _raw(buf: pickle.PickleBuffer) -> memoryview:
    try:
        return buf.raw()
    except BufferError:  # a non-contiguous buffer: one copy, unavoidable
        return memoryview(bytes(buf))


def _tensor(array: Any, requires_grad: bool, grad: Any = None) -> Any:
    """A CPU torch tensor on the received buffer itself (torch.from_numpy shares the memory), with its
    gradient when it has one (a backward() on the other end changed it)."""
    import torch  # noqa: PLC0415 - runs only for a tensor, so torch is already imported

    tensor = torch.from_numpy(array)
    if requires_grad:
        tensor.requires_grad_()
    if grad is not None:
        tensor.grad = grad
    return tensor


def whole_cpu_tensor(torch: Any, tensor: Any) -> bool:
    """A strided CPU tensor that is the whole of its storage (not a view of part of one, no lazy conj/neg)."""
    try:
        return (tensor.device.type == "cpu" and tensor.layout == torch.strided and not tensor.is_conj()
                and not tensor.is_neg() and tensor.storage_offset() == 0
                and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size())
    except AttributeError:  # an older torch
        return False


def _reduce_tensor(torch: Any, tensor: Any) -> tuple[Any, tuple[Any, ...]] | None:
    """A whole CPU tensor travels as a numpy view of its memory, so its bytes go out of band (torch's own
    pickling copies them into the pickle, several times). None: torch's way (other devices and layouts,
    dtypes numpy lacks such as bfloat16, views of part of a storage)."""
    if not whole_cpu_tensor(torch, tensor):
        return None
    try:
        array = tensor.detach().numpy()
    except (TypeError, RuntimeError):  # a dtype numpy lacks
        return None
    grad = tensor.grad if tensor.requires_grad and tensor.is_leaf else None   # only a leaf keeps one
    return _tensor, (array, tensor.requires_grad) if grad is None else (array, True, grad)


class _Pickler(cloudpickle.CloudPickler):  # type: ignore[misc]  # cloudpickle ships no types
    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules.get("torch")  # a value can only be a tensor once torch is imported
        if torch is not None and type(obj) is torch.Tensor:
            reduced = _reduce_tensor(torch, obj)
            if reduced is not None:
                return reduced
        return super().reducer_override(obj)


# The namespace a notebook function's globals are on this side of a session: the notebook's user namespace
# on the client, the shell's on the worker. A function defined in a cell runs with it as its globals on
# either side (as in a kernel), so `global counter; counter += 1` changes the session's `counter`.
_SESSION: ContextVar[MutableMapping[str, Any] | None] = ContextVar("gpucell_session_namespace", default=None)


@contextmanager
def session_namespace(ns: MutableMapping[str, Any]) -> Iterator[None]:
    """Unpickle notebook functions inside this with `ns` as their globals."""
    token = _SESSION.set(ns)
    kept = ns.get("__builtins__", builtins)
    try:
        yield
    finally:
        _SESSION.reset(token)
        ns["__builtins__"] = kept   # cloudpickle's setstate sets its own; the shell's stays


def _session_globals() -> Any:
    ns = _SESSION.get()
    return ns if ns is not None else {"__name__": "__main__", "__builtins__": builtins}


class _SessionGlobals:
    """Pickled in place of a notebook function's globals: the session namespace where it is unpickled."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _session_globals, ()


_SESSION_GLOBALS = _SessionGlobals()


class _SessionPickler(_Pickler):
    """Functions (and methods of classes) defined in the session namespace travel without their globals:
    they run in the session namespace at the other end, and the names they read are sent as the cell's
    inputs. A function of any other namespace carries its globals, as cloudpickle does."""

    def __init__(self, file: io.BytesIO, session: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.session = session
        self.global_reads: set[str] = set()

    def _dynamic_function_reduce(self, func: Any) -> Any:
        reduced = super()._dynamic_function_reduce(func)
        if getattr(func, "__globals__", None) is not self.session:
            return reduced
        make, (code, _base, name, defaults, closure), (state, slots), *rest = reduced
        self.global_reads.update(slots["__globals__"])
        return (make, (code, _SESSION_GLOBALS, name, defaults, closure), (state, {**slots, "__globals__": {}}),
                *rest)


def dumps(value: Any, session: Mapping[str, Any] | None = None) -> tuple[bytes, list[memoryview]]:
    """Pickle with cloudpickle (notebook functions and classes go by value), then dill; big buffers out of band.
    `session`: the namespace `value` is taken from; its functions go without their globals (_SessionPickler)."""
    header, buffers, _ = _dumps(value, session)
    return header, buffers


def _dumps(value: Any, session: Mapping[str, Any] | None) -> tuple[bytes, list[memoryview], frozenset[str]]:
    buffers: list[pickle.PickleBuffer] = []
    reads: frozenset[str] = frozenset()
    try:
        out = io.BytesIO()
        pickler = (_Pickler(out, protocol=PROTOCOL, buffer_callback=buffers.append) if session is None else
                   _SessionPickler(out, session, protocol=PROTOCOL, buffer_callback=buffers.append))
        pickler.dump(value)
        header = out.getvalue()
        reads = frozenset(getattr(pickler, "global_reads", ()))
    except Exception as first:  # noqa: BLE001 - any pickling failure gets the second opinion
        buffers = []
        try:
            header = dill.dumps(value, protocol=PROTOCOL, recurse=True)
        except Exception:  # noqa: BLE001
            raise first from None
    return header, [_raw(b) for b in buffers], reads


def pack(name: str, value: Any, session: Mapping[str, Any] | None = None) -> Packed:
    """Pickle one namespace value, or raise a one-line SerializationError naming it and its type.
    `session`: the session namespace it is taken from (its functions run in the other end's)."""
    try:
        header, buffers, reads = _dumps(value, session)
    except Exception as exc:  # noqa: BLE001 - the user's value, any failure is reported the same way
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SerializationError(f"cannot send {name!r} ({type_name(value)}): {reason}") from None
    return Packed(content_hash(header, buffers), header, buffers, type_name(value), reads)


def unpack(header: bytes, buffers: list[Any]) -> Any:
    # Both cloudpickle and dill write standard pickles; buffers are used in place (no copy).
    return pickle.loads(header, buffers=buffers)


def module_import(name: str, value: Any) -> str | None:
    """`import x as name` for a module value, so modules travel as imports, not pickles."""
    if isinstance(value, types.ModuleType):
        module = value.__name__
        if module == name:
            return f"import {module}"
        if "." in module and name == module.split(".")[0]:
            return f"import {module}"
        return f"import {module} as {name}"
    return None

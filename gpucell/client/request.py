"""What a cell sends: the namespace, the cell and its options made into one CellExecuteRequest (no I/O)."""

from __future__ import annotations

import platform
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpucell.client.namespace_sync import Synced
from gpucell.errors import ConfigError, RemoteRefError, SerializationError
from gpucell.namespace import serialize
from gpucell.namespace.analysis import CellNames, CellSyntaxError, analyze
from gpucell.namespace.remote_ref import RemoteRef
from gpucell.namespace.transfer import INLINE_LIMIT
from gpucell.protocol import gpucell_pb2 as pb

_PYTHON = ".".join(platform.python_version().split(".")[:2])


@dataclass
class CellOptions:
    hardware: str = ""
    timeout_s: float = 0.0
    idle_s: float = 0.0
    fresh: bool = False
    env: dict[str, str] = field(default_factory=dict)
    pull: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    retries: int = 0
    strict: bool = False
    return_limit: int = 0
    lane: bool = True    # warm cells may go straight to the worker (a map pipelines through the broker)


class Uploads(dict[str, serialize.Packed]):
    """Packed inputs by hash; an input known unchanged by identity alone is packed only if the worker asks
    (a new worker holds nothing)."""

    def __init__(self, session: Mapping[str, Any]) -> None:
        super().__init__()
        self.session = session
        self.lazy: dict[str, tuple[str, Any]] = {}

    def __contains__(self, digest: object) -> bool:
        return super().__contains__(digest) or digest in self.lazy

    def __missing__(self, digest: str) -> serialize.Packed:
        name, value = self.lazy[digest]
        packed = self[digest] = serialize.pack(name, value, session=self.session)
        return packed


@dataclass
class OutgoingCell:
    """A request ready to send, and the packed inputs the worker may ask for (by hash) that are not inline."""

    request: pb.CellExecuteRequest
    uploads: dict[str, serialize.Packed]
    sent: dict[str, tuple[Any, str]] = field(default_factory=dict)  # the worker holds these once the cell ran
    skip: set[str] = field(default_factory=set)   # names that are not the notebook's: never bound from the result


def cell_names(source: str) -> CellNames:
    """The names the cell reads, binds and deletes; a syntax error as one line, before anything else."""
    try:
        return analyze(source)
    except CellSyntaxError as exc:
        raise ConfigError(f"syntax error in the cell, {exc}") from None


def build_request(source: str, names: CellNames, user_ns: Mapping[str, Any], options: CellOptions, skip: set[str],
                  *, session_id: str, hardware: str, session_name: str = "", owner: str = "", execution_count: int = 0,
                  max_blob_bytes: int = 0, worker_python: str = "", client_boot_id: str = "",
                  cell_id: str = "", synced: Synced | None = None) -> OutgoingCell:
    """Everything about the values that can go wrong locally goes wrong here, before anything is sent.

    `hardware` is the checked spec; `owner`, on a fan-out slot, the notebook session it works for; `worker_python` the Python version the last worker of that hardware
    reported ("" when none has yet); `cell_id` defaults to a fresh one; `synced`, what the worker holds as
    this notebook does: such an input goes as its name and hash, and a name the notebook changed since is
    named with no hash, so the worker forgets it."""
    request = pb.CellExecuteRequest(
        session_id=session_id, cell_id=cell_id or uuid.uuid4().hex, hardware=hardware, source=source,
        execution_count=execution_count, session_name=session_name, owner=owner,
        assigns=[n for n in names.assigns if n not in skip], deletes=list(names.deletes),
        options=pb.CellOptions(timeout_s=options.timeout_s, idle_s=options.idle_s, fresh=options.fresh,
                               env=options.env, pull=options.pull, keep=options.keep, retries=options.retries,
                               strict=options.strict, return_limit=options.return_limit),
        client_boot_id=client_boot_id)
    uploads = Uploads(user_ns)
    to_send: list[tuple[str, Any, serialize.Packed]] = []
    sent: dict[str, tuple[Any, str]] = {}
    gone = synced.stale(user_ns, skip) if synced is not None else []
    inline_bytes = 0  # the request stays small; the rest goes over the data path on demand
    reads = list(names.reads)
    for name in reads:   # grows: the globals a notebook function reads are read by the cell too
        if name in skip or name not in user_ns:
            continue
        value = user_ns[name]
        if isinstance(value, RemoteRef):
            if value.lost:
                raise RemoteRefError(value.lost_message())
            request.refs.append(name)
            continue
        statement = serialize.module_import(name, value)
        if statement is not None:
            request.imports.append(statement)
            continue
        digest = synced.hash_if_same(name, value) if synced is not None else None
        if digest is not None:
            request.inputs.append(pb.NamedValue(name=name, hash=digest, type_name=serialize.type_name(value),
                                                in_place=True))
            uploads.lazy[digest] = (name, value)
            sent[name] = (value, digest)
            continue
        packed = serialize.pack(name, value, session=user_ns)
        reads += [g for g in packed.global_reads if g not in reads]
        if max_blob_bytes and packed.size > max_blob_bytes:
            raise SerializationError(f"cannot send {name!r} ({packed.type_name}, {packed.size / 1e6:.1f} MB): "
                                     f"larger than the broker's limit of {max_blob_bytes / 1e6:g} MB "
                                     "per value (max_blob_mb)")
        _check_python(name, value, hardware, worker_python)
        if synced is not None and synced.holds(name, value, packed.hash):
            # The worker holds it: used in place there, sent only if it asks (a new worker holds nothing).
            request.inputs.append(pb.NamedValue(name=name, hash=packed.hash, type_name=packed.type_name,
                                                size=packed.size, in_place=True))
            uploads.setdefault(packed.hash, packed)
            continue
        request.inputs.append(pb.NamedValue(name=name, hash=packed.hash, type_name=packed.type_name,
                                            size=packed.size))
        sent[name] = (value, packed.hash)
        to_send.append((name, value, packed))
    for packed in _one_pickle(request, to_send, user_ns):
        if packed.hash in uploads:
            continue
        uploads[packed.hash] = packed
        if packed.size + inline_bytes <= INLINE_LIMIT:
            inline_bytes += packed.size
            request.blobs.append(pb.Blob(hash=packed.hash, data=packed.header,
                                         buffers=[bytes(b) for b in packed.buffers]))
    request.inputs.extend(pb.NamedValue(name=n) for n in gone if n not in sent)
    return OutgoingCell(request, uploads, sent, skip)


def _one_pickle(request: pb.CellExecuteRequest, to_send: list[tuple[str, Any, serialize.Packed]],
                user_ns: Mapping[str, Any]) -> list[serialize.Packed]:
    """The values to send, as blobs: those of a few MB or less (and any bound to one object under two names)
    in one pickle with one memo, so names bound to one object, or to objects that share parts, arrive
    as they are here; a larger value on its own, so the worker's cache of it by content still counts."""
    counts: dict[int, int] = {}
    for _, value, _ in to_send:
        counts[id(value)] = counts.get(id(value), 0) + 1
    together = [(n, v) for n, v, p in to_send if p.size <= INLINE_LIMIT or counts[id(v)] > 1]
    if len(together) < 2:
        return [p for _, _, p in to_send]
    joint = serialize.pack(", ".join(n for n, _ in together), dict(together), session=user_ns)
    request.inputs.insert(0, pb.NamedValue(hash=joint.hash, type_name=serialize.JOINT + ",".join(n for n, _ in together),
                                           size=joint.size))
    names = {n for n, _ in together}
    return [joint, *(p for n, _, p in to_send if n not in names)]


def _check_python(name: str, value: Any, hardware: str, worker_python: str) -> None:
    """A function pickled by value only loads on the same Python minor version: say so before sending."""
    if not worker_python or not callable(value) or getattr(value, "__module__", None) not in ("__main__", None):
        return
    theirs = ".".join(worker_python.split(".")[:2])
    if _PYTHON != theirs:
        raise SerializationError(f"cannot send {name!r} (a function defined in this notebook): this kernel runs "
                                 f"Python {_PYTHON} but the {hardware or 'default'} worker runs Python {theirs}; "
                                 "by-value functions need the same minor version")


__all__ = ["CellOptions", "OutgoingCell", "Uploads", "build_request", "cell_names"]

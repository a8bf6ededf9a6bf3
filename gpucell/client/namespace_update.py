"""What a cell's result does to the local namespace: planned in full first (no I/O), then applied at once."""

from __future__ import annotations

from collections.abc import Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpucell.client.namespace_sync import Synced, same_pickle_here, write_back
from gpucell.namespace import serialize
from gpucell.namespace.remote_ref import RemoteRef
from gpucell.protocol import gpucell_pb2 as pb

Parts = tuple[bytes, list[Any]]   # one packed value: the pickle and its out-of-band buffers


@dataclass
class NamespaceUpdate:
    """Names to bind (a loaded value, or a RemoteRef to what stays on the worker) and names to delete."""

    binds: dict[str, Any]
    deletes: Sequence[str]
    assigned: list[str]      # outputs that came back as values
    refs: list[str]          # outputs that stay on the worker
    kept_remote: list[str]   # one line per output that cannot load here
    in_place: list[str] = field(default_factory=list)      # outputs the cell mutated (not rebound) remotely
    hashes: dict[str, str] = field(default_factory=dict)   # content hash, as pickled here, of loaded outputs
    worker_hashes: dict[str, str] = field(default_factory=dict)   # and as the worker knows them


def to_fetch(result: pb.Result) -> list[str]:
    """The hashes of outputs too large to ride in the result: they come over the data path."""
    return [v.hash for v in result.outputs if v.fetch]


def inline_parts(result: pb.Result) -> dict[str, Parts]:
    return {b.hash: (b.data, [bytearray(x) for x in b.buffers]) for b in result.blobs}


def plan_update(result: pb.Result, parts: Mapping[str, Parts], *, hardware: str, worker_id: str,
                execution_count: int = 0) -> NamespaceUpdate:
    """Load every output (`parts`: the result's inline blobs and what was fetched, by hash). One that cannot
    be loaded here, e.g. from a module only the worker has, stays there as a RemoteRef."""
    binds: dict[str, Any] = {}
    kept_remote: list[str] = []
    infos = list(result.refs)
    outputs = [v for v in result.outputs if v.name]
    together: dict[str, Any] = {}          # outputs that came in one pickle (one memo: aliases stay aliases)
    failed: dict[str, Exception] = {}
    for value in result.outputs:
        if not value.name and value.type_name.startswith(serialize.JOINT):
            try:
                together.update(serialize.unpack(*parts[value.hash]))
            except Exception as exc:  # noqa: BLE001 - each of them stays on the worker, as below
                failed.update(dict.fromkeys(value.type_name[len(serialize.JOINT):].split(","), exc))
    for value in outputs:
        try:
            if value.name in failed:
                raise failed[value.name]
            binds[value.name] = (together[value.name] if value.name in together
                                 else serialize.unpack(*parts[value.hash]))
        except Exception as exc:  # noqa: BLE001 - e.g. a module only the worker has: it stays usable there
            reason = f"cannot be loaded here: {one_line(exc)}"
            infos.append(pb.RemoteRefInfo(name=value.name, type_name=value.type_name, size=value.size,
                                          reason=reason))
            kept_remote.append(f"gpucell: {value.name!r} ({value.type_name}) stays on the worker as a "
                                      f"RemoteRef: it {reason}")
    for info in infos:
        binds[info.name] = RemoteRef(info.name, info.type_name, info.size, info.hardware or hardware,
                                     info.worker_id or worker_id, info.reason, info.summary, execution_count)
    assigned = [v.name for v in outputs if not isinstance(binds.get(v.name), RemoteRef)]
    return NamespaceUpdate(binds, result.deleted, assigned, [r.name for r in infos], kept_remote,
                           in_place=[v.name for v in outputs if v.in_place and v.name in assigned],
                           hashes={v.name: v.hash for v in outputs if v.name in binds and v.hash in parts
                                   and same_pickle_here(binds[v.name], len(parts[v.hash][1]))},
                           worker_hashes={v.name: v.hash for v in outputs
                                          if not isinstance(binds.get(v.name), RemoteRef)})


def apply_update(update: NamespaceUpdate, user_ns: MutableMapping[str, Any], refs: dict[str, RemoteRef],
                 synced: Synced | None = None, sent: Mapping[str, tuple[Any, str]] | None = None,
                 skip: Collection[str] = ()) -> None:
    """Bind and delete, and keep the session's table of RemoteRefs in step; nothing here can fail half-way.

    A value the cell mutated remotely is written into the local object where its type allows, so every
    local name bound to it sees the change; other names that came back bound to that same object (one
    pickle, one memo) are bound to the local one. `synced` learns what the worker now holds: `sent`, the
    cell's inputs, then what came back. Names in `skip` (IPython's, a fan-out's own) are not bound here."""
    for name in skip:
        if name in update.binds:
            del update.binds[name]
    _write_back(update, user_ns)
    if synced is not None:
        _learn(update, synced, sent or {}, user_ns)
    for name, value in update.binds.items():
        if isinstance(value, RemoteRef):
            refs[name] = value
        else:
            refs.pop(name, None)
    user_ns.update(update.binds)
    for name in update.deletes:
        user_ns.pop(name, None)
        refs.pop(name, None)


def _learn(update: NamespaceUpdate, synced: Synced, sent: Mapping[str, tuple[Any, str]],
           user_ns: Mapping[str, Any]) -> None:
    """What the worker holds now, as this notebook does: the cell's inputs, then what came back."""
    for name, (value, digest) in sent.items():
        synced.record(name, value, digest)
    for name, value in update.binds.items():
        theirs = update.worker_hashes.get(name)
        ours = update.hashes.get(name) if name not in update.in_place else None
        if ours is None and theirs is not None:
            try:
                ours = serialize.pack(name, value, session=user_ns).hash   # the baseline a later change is seen against
            except Exception:  # noqa: BLE001 - it came as a pickle; if it will not go back as one, resend
                ours = None
        if ours is None or theirs is None:
            synced.forget(name)
        else:
            synced.record(name, value, ours, theirs)
    for name in update.deletes:
        synced.forget(name)


def _write_back(update: NamespaceUpdate, user_ns: Mapping[str, Any]) -> None:
    binds = update.binds
    landed: dict[int, Any] = {}   # id of a loaded value -> the local object it was written into
    for name in update.in_place:
        if name not in binds:
            continue
        new, old = binds[name], user_ns.get(name)
        if old is None or id(new) in landed:
            continue
        try:
            if write_back(old, new):
                landed[id(new)] = old
        except Exception:  # noqa: BLE001 - a type that refuses: the name is rebound, as it always was
            continue
    if landed:
        for name, value in binds.items():
            if id(value) in landed:
                binds[name] = landed[id(value)]


def one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


__all__ = ["NamespaceUpdate", "Parts", "apply_update", "inline_parts", "one_line", "plan_update", "to_fetch"]

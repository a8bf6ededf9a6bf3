"""What a cell's result does to the local namespace: planned in full first (no I/O), then applied at once."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

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
    for value in result.outputs:
        try:
            binds[value.name] = serialize.unpack(*parts[value.hash])
        except Exception as exc:  # noqa: BLE001 - e.g. a module only the worker has: it stays usable there
            reason = f"cannot be loaded here: {one_line(exc)}"
            infos.append(pb.RemoteRefInfo(name=value.name, type_name=value.type_name, size=value.size,
                                          reason=reason))
            kept_remote.append(f"gpucell: {value.name!r} ({value.type_name}) stays on the worker as a "
                                      f"RemoteRef: it {reason}")
    for info in infos:
        binds[info.name] = RemoteRef(info.name, info.type_name, info.size, info.hardware or hardware,
                                     info.worker_id or worker_id, info.reason, info.summary, execution_count)
    assigned = [v.name for v in result.outputs if not isinstance(binds.get(v.name), RemoteRef)]
    return NamespaceUpdate(binds, result.deleted, assigned, [r.name for r in infos], kept_remote)


def apply_update(update: NamespaceUpdate, user_ns: MutableMapping[str, Any], refs: dict[str, RemoteRef]) -> None:
    """Bind and delete, and keep the session's table of RemoteRefs in step; nothing here can fail half-way."""
    for name, value in update.binds.items():
        if isinstance(value, RemoteRef):
            refs[name] = value
        else:
            refs.pop(name, None)
    user_ns.update(update.binds)
    for name in update.deletes:
        user_ns.pop(name, None)
        refs.pop(name, None)


def one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


__all__ = ["NamespaceUpdate", "Parts", "apply_update", "inline_parts", "one_line", "plan_update", "to_fetch"]

"""The notebook's own modules on the worker: reloaded when edited, made from their source where absent.

Each cell names the notebook's modules with the hash of the source it has loaded (namespace/modules.py).
Before the cell, a module the worker loaded from other source is reloaded, in dependency order, with
IPython's autoreload machinery (old functions and classes are updated in place, so values the worker
already holds run the new code) — `%autoreload` semantics without the user asking. Where this host's
file is not that source (another machine), the source comes over the data path like an input and a
finder first in sys.meta_path serves it, for an import now or later.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

from IPython.extensions.autoreload import superreload

from gpucell.namespace.modules import ModuleTracker, read_source, source_packed, source_text
from gpucell.protocol import gpucell_pb2 as pb

Take = Callable[[str], "tuple[bytes, list[Any]] | None"]


class _SourceLoader(importlib.abc.Loader):
    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self.gpucell_source = source   # ModuleTracker hashes this, not a file this host may lack

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        exec(compile(self.gpucell_source, self.path, "exec"), module.__dict__)  # noqa: S102 - the notebook's module


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the notebook's modules whose files this host lacks, from the source the notebook sent."""

    def __init__(self) -> None:
        self.served: dict[str, tuple[str, str, str]] = {}   # name -> (path, source, hash)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        served = self.served.get(fullname)
        if served is None:
            return None
        origin, source, _ = served
        package = os.path.basename(origin) == "__init__.py"
        return importlib.util.spec_from_file_location(
            fullname, origin, loader=_SourceLoader(origin, source),
            submodule_search_locations=[os.path.dirname(origin)] if package else None)


class ModuleRefresher:
    def __init__(self) -> None:
        self.tracker = ModuleTracker()
        self._finder = _SourceFinder()
        self._file_hashes: dict[str, tuple[int, int, str]] = {}   # path -> (mtime_ns, size, hash)
        self._old_objects: dict[Any, Any] = {}                    # autoreload's record of replaced objects

    def _file_hash(self, path: str) -> str:
        try:
            stat = os.stat(path)
        except OSError:
            return ""
        cached = self._file_hashes.get(path)
        if cached is not None and cached[:2] == (stat.st_mtime_ns, stat.st_size):
            return cached[2]
        text = read_source(path)
        digest = source_packed(text).hash if text is not None else ""
        self._file_hashes[path] = (stat.st_mtime_ns, stat.st_size, digest)
        return digest

    def _current(self, module: pb.ModuleSource, held: dict[str, Any]) -> bool:
        """The worker has, or will import, this module as the notebook has it."""
        mine = held.get(module.name)
        if mine is not None:
            return bool(mine.hash == module.hash)
        served = self._finder.served.get(module.name)
        return (served is not None and served[2] == module.hash) or self._file_hash(module.path) == module.hash

    def needs(self, modules: Iterable[pb.ModuleSource]) -> set[str]:
        """Hashes of the sources to ask the notebook for: modules this host has from other source, and
        whose file here is not the notebook's either."""
        modules = list(modules)
        if not modules:
            return set()
        held = self.tracker.scan()
        return {m.hash for m in modules if not self._current(m, held) and self._file_hash(m.path) != m.hash}

    def refresh(self, modules: Iterable[pb.ModuleSource], take: Take) -> list[str]:
        """Make the worker's modules the notebook's before the cell; lines to show for those that failed."""
        modules = list(modules)
        if not modules:
            return []
        if self._finder not in sys.meta_path:
            sys.meta_path.insert(0, self._finder)
        held = self.tracker.scan()
        changed: list[str] = []
        for module in modules:
            if self._current(module, held) and module.name not in held:
                continue
            if module.name in held and held[module.name].hash == module.hash:
                continue
            if self._file_hash(module.path) == module.hash:
                self._finder.served.pop(module.name, None)   # this host's file is the notebook's
            else:
                got = take(module.hash)
                if got is not None:
                    self._finder.served[module.name] = (module.path, source_text(*got), module.hash)
                elif self._finder.served.get(module.name, ("", "", ""))[2] != module.hash:
                    continue   # no source for it: it stays as it is
            if module.name in sys.modules:
                changed.append(module.name)
        lines = []
        for name in _dependency_order(changed):
            try:
                superreload(sys.modules[name], importlib.reload, self._old_objects)
            except Exception as exc:  # noqa: BLE001 - the cell runs with the module as it was, and says so
                lines.append(f"gpucell: reloading {name} on the worker failed: {type(exc).__name__}: {exc}\n")
        self.tracker.scan()
        return lines

    def settle(self) -> None:
        """After a cell: note the source of each module it imported, before anyone edits the file."""
        self.tracker.scan()


def _dependency_order(names: list[str]) -> list[str]:
    """Modules a changed module uses (a module object, or a function or class of it) are reloaded first."""
    pending = set(names)
    ordered: list[str] = []
    uses = {name: _uses(sys.modules[name], pending - {name}) for name in names}
    while pending:
        ready = sorted(n for n in pending if not (uses[n] & pending)) or sorted(pending)[:1]   # a cycle: by name
        for name in ready:
            pending.discard(name)
            ordered.append(name)
    return ordered


def _uses(module: types.ModuleType, others: set[str]) -> set[str]:
    found: set[str] = set()
    for value in list(vars(module).values()):
        if isinstance(value, types.ModuleType):
            owner = value.__name__
        else:
            owner = getattr(value, "__module__", None) if isinstance(value, (type, types.FunctionType)) else None
        if owner in others:
            found.add(str(owner))
    return found


__all__ = ["ModuleRefresher"]

"""The notebook's own modules, tracked by content: which are the user's, and what source each was loaded from.

A module is the user's when it was loaded from a `.py` file outside the standard library and
site-packages (a file next to the notebook, a package of the project, an editable install); installed
distributions travel by reference. Both ends keep a ModuleTracker: a module's hash is taken when it is
first seen and again whenever its `__spec__` is a new object (an import or `importlib.reload` makes a
new one), so a scan per cell costs one identity check per loaded module. The notebook's tracker also
follows the user's files (one stat each): `%autoreload` in IPython 9 patches a module in place without a
new spec, and an edited file is what autoreload semantics run on the worker anyway.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import pickle
import site
import sys
import sysconfig
from dataclasses import dataclass
from typing import Any

from gpucell.namespace.serialize import Packed, content_hash

_OWN = ("gpucell",)   # gpucell itself is installed editable in development: never the user's module


@dataclass(frozen=True)
class Tracked:
    name: str
    path: str
    hash: str
    packed: Packed | None = None   # the source as it travels (client side)


def source_packed(text: str) -> Packed:
    """A module's source as a value the data path moves and checks by content."""
    header = pickle.dumps(text, protocol=5)
    return Packed(content_hash(header, []), header, [], "module source")


def source_text(header: bytes, buffers: list[Any]) -> str:
    text = pickle.loads(header, buffers=buffers)  # our own pickle of a str, checked by its hash
    if not isinstance(text, str):
        raise TypeError("a module source is a str")
    return text


def read_source(path: str) -> str | None:
    try:
        with open(path, "rb") as file:
            return importlib.util.decode_source(file.read())
    except (OSError, UnicodeDecodeError, SyntaxError):
        return None


def _stat(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k, "") for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    try:
        roots.update(site.getsitepackages())
    except AttributeError:   # a virtualenv's old site.py
        pass
    roots.add(site.getusersitepackages() or "")
    roots.update({os.path.realpath(r) for r in roots if r})
    return tuple(os.path.join(r, "") for r in roots if r)


class ModuleTracker:
    """The user's modules in this process's sys.modules, with the hash of the source each was loaded from."""

    def __init__(self, keep_sources: bool = False, follow_files: bool = False) -> None:
        self._keep_sources = keep_sources
        self._follow_files = follow_files
        self._roots = _installed_roots()
        # name -> (the spec seen, its file's (mtime_ns, size) when followed, what it is)
        self._entries: dict[str, tuple[Any, tuple[int, int], Tracked | None]] = {}

    def scan(self) -> dict[str, Tracked]:
        found: dict[str, Tracked] = {}
        for name, module in list(sys.modules.items()):
            spec = getattr(module, "__spec__", None)
            if spec is None:
                continue
            seen = self._entries.get(name)
            if seen is not None and seen[0] is spec and (seen[2] is None or not self._follow_files
                                                          or _stat(seen[2].path) == seen[1]):
                if seen[2] is not None:
                    found[name] = seen[2]
                continue
            tracked = self._classify(name, spec)
            if tracked is None and seen is not None and seen[0] is spec:
                tracked = seen[2]   # its file is gone: the source it was loaded from is still the one we hold
            self._entries[name] = (spec, _stat(tracked.path) if tracked is not None else (0, 0), tracked)
            if tracked is not None:
                found[name] = tracked
        return found

    def _classify(self, name: str, spec: Any) -> Tracked | None:
        if name == "__main__" or name.split(".")[0] in _OWN:
            return None
        loader = spec.loader
        origin = spec.origin
        given = getattr(loader, "gpucell_source", None)   # a module made from a source the notebook sent
        if given is not None:
            packed = source_packed(given)
            return Tracked(name, str(origin), packed.hash, packed if self._keep_sources else None)
        if not isinstance(loader, importlib.machinery.SourceFileLoader) or not isinstance(origin, str):
            return None
        if (not origin.endswith(".py") or origin.startswith(self._roots)
                or os.path.realpath(origin).startswith(self._roots)):
            return None
        text = read_source(origin)
        if text is None:
            return None
        packed = source_packed(text)
        return Tracked(name, origin, packed.hash, packed if self._keep_sources else None)


__all__ = ["ModuleTracker", "Tracked", "read_source", "source_packed", "source_text"]

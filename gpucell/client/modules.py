"""The notebook's own modules, named in each cell by the hash of the source the notebook has loaded.

The worker reloads a module whose source it loaded differs (an edit the notebook reloaded, by hand or with
%autoreload), and asks for the source, by that hash, over the data path where its own file differs
(another host): so the module's source is an upload like an input's value.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from gpucell.namespace.modules import ModuleTracker
from gpucell.namespace.serialize import Packed
from gpucell.protocol import gpucell_pb2 as pb


class NotebookModules:
    def __init__(self) -> None:
        self._tracker = ModuleTracker(keep_sources=True, follow_files=True)

    def manifest(self, uploads: MutableMapping[str, Packed]) -> list[pb.ModuleSource]:
        """The user's modules now loaded here; their sources join `uploads`, sent only if asked for."""
        found = []
        for tracked in self._tracker.scan().values():
            found.append(pb.ModuleSource(name=tracked.name, path=tracked.path, hash=tracked.hash))
            if tracked.packed is not None:
                uploads[tracked.hash] = tracked.packed
        return found


__all__ = ["NotebookModules"]

"""gpucell: run notebook cells on remote, serverless GPU workers with %%gpu."""

from __future__ import annotations

import importlib
from typing import Any

from gpucell.errors import GpucellError, RemoteError, RemoteRefError
from gpucell.namespace.remote_ref import RemoteRef

__version__ = "0.1.0"

__all__ = ["Call", "Function", "GpucellError", "RemoteError", "RemoteRef", "RemoteRefError", "__version__",
           "connect", "function", "load_ipython_extension", "map", "status", "unload_ipython_extension"]

# The Python API lives in gpucell.api, imported on first use: `import gpucell` stays light (no gRPC) for
# workers, the CLI and `%load_ext`, and `gpucell.map` costs the import only to those who call it.
_API = {"Call", "Function", "connect", "function", "map", "status"}


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module("gpucell.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gpucell' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext gpucell`: connect to GPUCELL_BROKER, or start an embedded broker, and add the magics."""
    from gpucell.magics import load  # noqa: PLC0415 - keep `import gpucell` light for workers and the CLI

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from gpucell.magics import unload  # noqa: PLC0415

    unload(ipython)

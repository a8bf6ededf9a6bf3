"""gpucell: run notebook cells on remote, serverless GPU workers with %%gpu."""

from __future__ import annotations

from typing import Any

from gpucell.errors import GpucellError, RemoteError, RemoteRefError
from gpucell.namespace.remote_ref import RemoteRef

__version__ = "0.1.0"

__all__ = ["GpucellError", "RemoteError", "RemoteRef", "RemoteRefError", "__version__",
           "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext gpucell`: connect to GPUCELL_BROKER, or start an embedded broker, and add the magics."""
    from gpucell.magics import load  # noqa: PLC0415 - keep `import gpucell` light for workers and the CLI

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from gpucell.magics import unload  # noqa: PLC0415

    unload(ipython)

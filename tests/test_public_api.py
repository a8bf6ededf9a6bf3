"""The public Python API is explicit and pinned: changing it must change this test."""

from __future__ import annotations

import subprocess
import sys

import gpucell

PUBLIC = ["Call", "Function", "GpucellError", "RemoteError", "RemoteRef", "RemoteRefError", "__version__",
          "connect", "function", "load_ipython_extension", "map", "status", "unload_ipython_extension"]


def test_all_is_pinned() -> None:
    assert sorted(gpucell.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(gpucell, name) is not None, name


def test_import_stays_light() -> None:
    # Workers, the CLI and %load_ext import gpucell; gRPC and the API load only when the API is used.
    code = ("import sys, gpucell; assert 'grpc' not in sys.modules and 'gpucell.api' not in sys.modules; "
            "gpucell.map; assert 'gpucell.api' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

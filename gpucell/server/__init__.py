"""Jupyter server extension behind the "GPU cells" sidebar: REST over the broker client (see openapi.yaml)."""

from __future__ import annotations

from typing import Any

from gpucell.server.app import GpuCellApp

__all__ = ["GpuCellApp"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "gpucell.server", "app": GpuCellApp}]

"""Worker-side helper of %gpu_pull: device-bound values come back as CPU copies."""

from __future__ import annotations

from typing import Any


def to_host(*values: Any) -> tuple[Any, ...]:
    return tuple(_host(v) for v in values)


def _host(value: Any) -> Any:
    cpu = getattr(value, "cpu", None)
    if callable(cpu) and type(value).__module__.startswith("torch"):
        return cpu()  # a CUDA tensor or module: the same value in host memory
    return value

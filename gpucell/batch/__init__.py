"""Batch notebooks: `gpucell run` (parameters, live output, resume) and the broker's detached jobs."""

from typing import Any

__all__ = ["execute_notebook", "inspect_notebook"]


def __getattr__(name: str) -> Any:
    # papermill and nbclient cost seconds to import; `gpucell status` imports this package and must not pay it.
    if name in __all__:
        from gpucell.batch import execute  # noqa: PLC0415

        return getattr(execute, name)
    raise AttributeError(f"module 'gpucell.batch' has no attribute {name!r}")

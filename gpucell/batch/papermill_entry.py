"""The object papermill's `papermill.engine` entry point names: the gpucell engine, resolved when first used.

Importing papermill loads every engine its entry points name. Naming gpucell.batch.engine there directly
made `import gpucell.batch.engine` (before papermill) circular: that module imports papermill, which then
asked the half-imported module for its class. This stand-in imports nothing; each call papermill makes on
an engine (`execute_notebook`, `nb_kernel_name`, `nb_language`) goes to the real one.
"""

from __future__ import annotations

from typing import Any


class GpucellEngine:
    """Stand-in for gpucell.batch.engine.GpucellEngine in papermill's engine registry."""

    @staticmethod
    def _engine() -> Any:
        from gpucell.batch.engine import GpucellEngine as Engine  # noqa: PLC0415 - see the module docstring

        return Engine

    @classmethod
    def execute_notebook(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._engine().execute_notebook(*args, **kwargs)

    @classmethod
    def nb_kernel_name(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._engine().nb_kernel_name(*args, **kwargs)

    @classmethod
    def nb_language(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._engine().nb_language(*args, **kwargs)

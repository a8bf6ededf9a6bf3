"""The worker's end of process state (namespace/state.py): the notebook's applied before a cell, its own sent after."""

from __future__ import annotations

from typing import Any

from gpucell.namespace import state


class WorkerState:
    """The worker's sync table: its fingerprints as of the last exchange with its notebook."""

    def __init__(self) -> None:
        state.set_origin()   # where this worker started stands for where its session started
        self.sync = state.StateSync()

    def before(self, data: bytes) -> list[str]:
        """Before a cell: apply what moved in the notebook; one line per state that could not be applied."""
        self.sync.baseline()
        if not data:
            return []
        return [f"gpucell: the notebook's {p} (not applied on the worker)\n"
                for p in self.sync.apply(state.decode(data))]

    def after(self) -> bytes:
        """After a cell (ended well or not): the state the cell moved here, for the notebook; b"" when none."""
        states, marks = self.sync.changed()
        self.sync.synced.update(marks)
        return state.encode(states)


class KernelStandIn:
    """What libraries find at `get_ipython().kernel`: its presence is how they tell a notebook kernel from a
    terminal (pandas picks notebook display defaults, e.g. display.max_columns 20, not 0)."""


def present_as_kernel(shell: Any) -> None:
    if getattr(shell, "kernel", None) is None:
        shell.kernel = KernelStandIn()


__all__ = ["KernelStandIn", "WorkerState", "present_as_kernel"]

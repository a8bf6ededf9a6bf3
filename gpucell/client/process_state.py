"""The notebook's end of process state (namespace/state.py): what each worker has, sent before a cell, taken back after."""

from __future__ import annotations

from typing import Any

from gpucell.namespace import state


class ProcessStates:
    """One sync table per worker. A cell for a known worker (the lane's) carries only the state that moved
    since that worker last got it, often nothing; a cell whose worker the broker will pick carries all of
    it (applying it twice changes nothing)."""

    def __init__(self) -> None:
        state.set_origin()   # the session starts here: the relative cwd and sys.path additions count from it
        self._workers: dict[str, state.StateSync] = {}
        self._pending: tuple[str, dict[str, Any]] = ("", {})

    def outgoing(self, worker_id: str) -> bytes:
        """The state to send with a cell bound for `worker_id` ("" when the broker picks the worker)."""
        table = self._workers.get(worker_id) if worker_id else None
        states, marks = (table or state.StateSync()).changed()
        self._pending = (worker_id, marks)
        return state.encode(states)

    def started(self, worker_id: str) -> None:
        """The worker took the cell (and so the state sent with it)."""
        meant_for, marks = self._pending
        self._pending = ("", {})
        table = self._workers.setdefault(worker_id, state.StateSync())
        if meant_for and meant_for != worker_id:
            table.synced.clear()   # sent as a change for another worker: this one's next cell gets it all
            return
        if not meant_for:
            table.synced = dict(marks)
        else:
            table.synced.update(marks)

    def incoming(self, worker_id: str, data: bytes) -> list[str]:
        """The worker's state moved during the cell: apply it here, as a local cell would have left it."""
        table = self._workers.setdefault(worker_id, state.StateSync())
        return [f"gpucell: could not bring back the worker's {p}" for p in table.apply(state.decode(data))]

    def forget(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)


__all__ = ["ProcessStates"]

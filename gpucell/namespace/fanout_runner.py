"""What a fan-out batch cell runs on the worker: the per-item task, the %%gpu_map cell body, run_batch.

Imported on the worker by the batch cell itself (and by unpickling a Task), so it stays small and
imports nothing of the client (no gRPC, no session).
"""

from __future__ import annotations

import ast
import builtins
import io
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

NO_TASK = b""                    # a batch that reached a worker without the task (it was replaced)


@dataclass
class Task:
    """What runs per item on a fan-out worker; pickled once per worker (the function goes by value)."""

    fn: Callable[..., Any]
    mode: str = "one"            # one: fn(item); star: fn(*item); call: fn(*item[0], **item[1])
    timeout_s: float = 0.0

    def __call__(self, item: Any) -> Any:
        if self.mode == "star":
            return self.fn(*item)
        if self.mode == "call":
            return self.fn(*item[0], **item[1])
        return self.fn(item)


class CellBody:
    """A `%%gpu_map` cell as a per-item function: the cell's code with NAME bound; returns its last expression."""

    def __init__(self, source: str, name: str, values: dict[str, Any]) -> None:
        self.source = source
        self.name = name
        self.values = values          # what the cell reads from the notebook, sent once per worker
        self._code: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source, "name": self.name, "values": self.values, "_code": None}

    def _compile(self) -> tuple[Any, Any]:
        tree = ast.parse(self.source)
        last = None
        tail = tree.body[-1] if tree.body else None
        if isinstance(tail, ast.Expr):
            tree.body.pop()
            last = compile(ast.Expression(tail.value), "<gpu_map cell>", "eval")
        self._code = (compile(tree, "<gpu_map cell>", "exec"), last)
        return self._code

    def __call__(self, item: Any) -> Any:
        body, last = self._code or self._compile()
        ns = dict(self.values)        # each item starts from the notebook's values, not the last item's leftovers
        ns["__builtins__"] = builtins
        ns["__name__"] = "__main__"
        ns[self.name] = item
        exec(body, ns)  # noqa: S102 - the user's own cell, on their worker
        return eval(last, ns) if last is not None else None  # noqa: S307


class _Prefixed(io.TextIOBase):
    """A worker's stdout/stderr while items run: every line starts with its item's index, `[17] `."""

    def __init__(self, target: Any) -> None:
        super().__init__()
        self.target = target
        self.index = 0
        self.line_start = True

    def writable(self) -> bool:
        return True

    def switch(self, index: int) -> None:
        if not self.line_start:      # the previous item left a partial line: end it before the next prefix
            self.target.write("\n")
            self.line_start = True
        self.index = index

    def write(self, text: str) -> int:
        if not text:
            return 0
        parts = []
        for line in text.splitlines(keepends=True):
            if self.line_start:
                parts.append(f"[{self.index}] ")
            parts.append(line)
            self.line_start = line.endswith("\n")
        self.target.write("".join(parts))
        return len(text)

    def flush(self) -> None:
        self.target.flush()


class ItemTimeout(Exception):
    """An item ran past the function's timeout (a per-item failure, retried like any other)."""


def _describe(exc: BaseException) -> tuple[str, str, list[str]]:
    # Skip our own frames (run_batch, Task): the traceback starts at the user's function.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    return type(exc).__name__, str(exc), "".join(lines).rstrip("\n").splitlines()


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:  # noqa: BLE001 - lambdas, notebook classes: cloudpickle goes by value
        data: bytes = cloudpickle.dumps(value, protocol=5)
        return data


def run_batch(task: Task | None, payload: bytes) -> bytes:
    """Run one batch, up to its first failing item. Returns pickled (values, failures, compute_s): values
    covers the items run (the rest were not started), failures maps a position to (ename, evalue, traceback)."""
    if task is None:
        return NO_TASK
    indices, items = pickle.loads(payload)
    values: list[Any] = [None] * len(items)
    failures: dict[int, tuple[str, str, list[str]]] = {}
    out, err = _Prefixed(sys.stdout), _Prefixed(sys.stderr)
    saved = sys.stdout, sys.stderr
    timeout = task.timeout_s
    previous_alarm: Any = None
    if timeout > 0:
        def on_alarm(signum: int, frame: Any) -> None:
            raise ItemTimeout(f"the item ran past its timeout of {timeout:g}s")
        previous_alarm = signal.signal(signal.SIGALRM, on_alarm)
    started = time.perf_counter()
    sys.stdout, sys.stderr = out, err
    try:
        for pos, item in enumerate(items):
            out.switch(indices[pos])
            err.switch(indices[pos])
            try:
                if timeout > 0:
                    signal.setitimer(signal.ITIMER_REAL, timeout)
                    try:
                        values[pos] = task(item)
                    finally:
                        signal.setitimer(signal.ITIMER_REAL, 0)
                else:
                    values[pos] = task(item)
            except Exception as exc:  # noqa: BLE001 - the user's failure is this item's result
                failures[pos] = _describe(exc)
                # End the batch here so the failure reaches the client now (to retry, or to stop the map);
                # the items after it go back to the queue untouched.
                del values[pos + 1:]
                break
    finally:
        out.switch(-1)   # end a last partial line: the next batch's output starts on its own line
        err.switch(-1)
        sys.stdout, sys.stderr = saved
        if previous_alarm is not None:
            signal.signal(signal.SIGALRM, previous_alarm)
    elapsed = time.perf_counter() - started
    try:
        return _dumps((values, failures, elapsed))
    except Exception:  # noqa: BLE001 - find the items whose results cannot travel; the rest still do
        for pos, value in enumerate(values):
            if pos in failures:
                continue
            try:
                _dumps(value)
            except Exception as exc:  # noqa: BLE001
                failures[pos] = ("SerializationError", f"the result ({type(value).__name__}) cannot be sent "
                                 f"back: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", [])
                values[pos] = None
        return _dumps((values, failures, elapsed))


__all__ = ["NO_TASK", "CellBody", "ItemTimeout", "Task", "run_batch"]

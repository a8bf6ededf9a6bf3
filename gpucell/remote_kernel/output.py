"""A cell's stream output, coalesced: a flood of prints goes as a few large chunks, a lone print at once.

ipykernel's OutStream does the same (a flush interval); without it every `print` became its own event, and
`for i in range(100000): print(i)` cost 200,000 protobuf messages. The first line after a quiet spell
goes out as soon as it is complete (live output stays live); writes that follow within WINDOW_S wait in one buffer, which
goes when it reaches LIMIT bytes, when the window ends, when the other stream is written (order kept
across stdout and stderr), and before any other event of the cell (display, input request, result, end).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

WINDOW_S = 0.05
LIMIT = 256 * 1024


class CoalescedOutput:
    """Stream writes in, stream events out through `emit(name, text)`; `lock` also orders other events."""

    def __init__(self, emit: Callable[[str, str], None], window_s: float = WINDOW_S, limit: int = LIMIT) -> None:
        self._emit = emit
        self._window_s = window_s
        self._limit = limit
        self.lock = threading.RLock()          # held while anything of a cell is emitted
        self._wake = threading.Condition(self.lock)
        self._name = ""
        self._parts: list[str] = []
        self._size = 0
        self._quiet_after = 0.0                # monotonic time after which a write goes out at once
        self._deadline = 0.0                   # when the buffered text must go (0: nothing buffered)
        self._eager = False                    # this buffer began after a quiet spell: its first line goes now
        self._thread: threading.Thread | None = None

    def write(self, name: str, text: str) -> None:
        now = time.monotonic()
        with self.lock:
            if self._parts and name != self._name:
                self._flush_locked()
            if not self._parts:
                self._name = name
                self._eager = now >= self._quiet_after   # the first line after a quiet spell goes at once
                self._deadline = now + self._window_s
                self._start()
                self._wake.notify()
            self._parts.append(text)
            self._size += len(text)
            # A line, not a write: print('pid', pid) is four writes, and a kernel shows one 'pid 1234' chunk.
            if self._size >= self._limit or (self._eager and text.endswith("\n")):
                self._flush_locked()

    def flush(self) -> None:
        """Everything buffered goes now (before another event, at the end of a cell)."""
        with self.lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._parts:
            return
        text = "".join(self._parts)
        name = self._name
        self._parts, self._size, self._deadline = [], 0, 0.0
        self._quiet_after = time.monotonic() + self._window_s
        self._emit(name, text)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._timer, daemon=True, name="gpucell-output")
            self._thread.start()

    def _timer(self) -> None:
        with self.lock:
            while True:
                if not self._deadline:
                    self._wake.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                self._flush_locked()

"""The kernel's stderr, less ipykernel's ZMQError tracebacks when a cell is interrupted or the kernel shut down."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

_NOISE = ("ZMQError", "zmq.error", "Socket operation on non-socket", "Context was terminated")


_HANDLER_ERROR = "[IPKernelApp] ERROR | Exception in message handler"


def _is_noise(block: list[str]) -> bool:
    if block[0].startswith(_HANDLER_ERROR):
        # The kernel interrupted as it is shut down after a timeout or a cancel: the cell's error is already shown.
        return any(line.startswith("KeyboardInterrupt") or any(m in line for m in _NOISE) for line in block)
    return any(marker in line for line in block for marker in _NOISE)


def _forward(read_fd: int, sink: TextIO) -> None:
    """Copy lines to `sink`; hold each traceback until it ends and drop it when it is a ZMQ shutdown race."""
    block: list[str] = []
    with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as source:
        for line in source:
            opens = line.startswith(("Traceback (most recent call last)", "Exception in thread", _HANDLER_ERROR))
            if opens and not block:
                block.append(line)
                continue
            if block:
                block.append(line)
                ends = line.strip() and not line[0].isspace() and not line.startswith(
                    ("Traceback", "Exception in thread", "During handling", "Cell In", "---", "[IPKernelApp]"))
                if ends and ":" in line and not line.startswith(("KeyboardInterrupt   ", "ZMQError   ")):
                    if not _is_noise(block):
                        sink.writelines(block)
                        sink.flush()
                    block = []
                continue
            sink.write(line)
            sink.flush()
    if block and not _is_noise(block):
        sink.writelines(block)
        sink.flush()


@contextmanager
def quiet_kernel_stderr(sink: TextIO | None = None) -> Iterator[int]:
    """A file descriptor to give the kernel as its stderr; everything but ZMQ shutdown noise reaches `sink`."""
    read_fd, write_fd = os.pipe()
    thread = threading.Thread(target=_forward, args=(read_fd, sink or sys.stderr), name="kernel-stderr",
                              daemon=True)
    thread.start()
    try:
        yield write_fd
    finally:
        os.close(write_fd)    # the kernel has exited (or holds its own copy until it does)
        thread.join(timeout=5)

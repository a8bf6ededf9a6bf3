"""Where a cell's live output goes: one base class, and the two shapes every sink is made of."""

from __future__ import annotations

import sys
from typing import Any


class Sink:
    """A cell's live output. The defaults suit a plain process: streams to this process's stdout/stderr,
    rich displays dropped (they have no place outside a notebook), phase lines to stderr, no status line.
    A sink overrides only what it does differently."""

    def begin(self) -> None:
        """A new cell starts (a sink with a phase line starts a new one)."""

    def stream(self, name: str, text: str) -> None:
        out = sys.stdout if name == "stdout" else sys.stderr
        out.write(text)
        out.flush()

    def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool) -> None:
        """A MIME bundle (figures, HTML, the cell's result)."""

    def phase(self, text: str) -> None:
        """One line about the cell's progress: queued, a notice, a retry, a value left remote."""
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def status(self, text: str, final: bool = False) -> None:
        """The cell's phase line (starting, running on, done in / cost), for sinks that update one in place."""


class ForwardingSink(Sink):
    """Passes a cell's output on to another sink; a subclass changes only what it sees on the way. The
    status line is not passed on: it belongs to the one cell the other sink shows (a map's items have none)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def stream(self, name: str, text: str) -> None:
        self.sink.stream(name, text)

    def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool) -> None:
        self.sink.display(data, metadata, execute_result)

    def phase(self, text: str) -> None:
        self.sink.phase(text)


def first_phase(seen: set[str], text: str) -> bool:
    """For sinks that show many cells' phases as one (a map): queue positions never, each other line once."""
    if text.startswith("queued:") or text in seen:
        return False
    seen.add(text)
    return True


__all__ = ["ForwardingSink", "Sink", "first_phase"]

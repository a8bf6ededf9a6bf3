"""Where a cell's live output goes: one base class, and the two shapes every sink is made of."""

from __future__ import annotations

import json
import sys
from typing import Any

from gpucell.protocol import gpucell_pb2 as pb


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

    def display_update(self, data: dict[str, Any], metadata: dict[str, Any], display_id: str, update: bool) -> None:
        """display(..., display_id=...) (update False) or its handle's update(): without ids, the first shows."""
        if not update:
            self.display(data, metadata, False)

    def clear_output(self, wait: bool) -> None:
        """clear_output() in the cell: a plain process has nothing to clear."""

    def page(self, data: dict[str, Any], start: int) -> None:
        """The pager's payload (`obj?`, %prun): a plain process prints its text."""
        self.stream("stdout", str(data.get("text/plain", "")) + "\n")

    def local_magic(self, line: str) -> None:
        """%who / %whos in the cell: shown from the namespace of the process the sink writes into."""

    def result(self, value: Any) -> None:
        """The value of the cell's last expression, after its execute_result bundle (display with
        execute_result=True): a notebook sets `_`, `Out[N]` with it."""

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

    def display_update(self, data: dict[str, Any], metadata: dict[str, Any], display_id: str, update: bool) -> None:
        self.sink.display_update(data, metadata, display_id, update)

    def clear_output(self, wait: bool) -> None:
        self.sink.clear_output(wait)

    def page(self, data: dict[str, Any], start: int) -> None:
        self.sink.page(data, start)


def relay_display(sink: Sink, display: pb.Display) -> None:
    """A Display event to the sink method the Jupyter protocol gives it (display, update, clear, pager)."""
    if display.clear:
        sink.clear_output(display.clear_wait)
        return
    if display.local_magic:
        sink.local_magic(display.local_magic)
        return
    data = json.loads(display.data_json)
    metadata = json.loads(display.metadata_json or "{}")
    if display.page:
        sink.page(data, int(metadata.get("start", 0)))
    elif display.display_id or display.update:
        sink.display_update(data, metadata, display.display_id, display.update)
    else:
        sink.display(data, metadata, display.execute_result)


def first_phase(seen: set[str], text: str) -> bool:
    """For sinks that show many cells' phases as one (a map): queue positions never, each other line once."""
    if text.startswith("queued:") or text in seen:
        return False
    seen.add(text)
    return True


__all__ = ["ForwardingSink", "Sink", "first_phase", "relay_display"]

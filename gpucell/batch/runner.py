"""What `gpucell run` shows and writes while a notebook runs: each output echoed live, the notebook saved atomically."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TextIO

import nbformat
from nbformat import NotebookNode

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PHASE_PREFIX = "gpucell: "   # the magics' one-line phase display (starting, running on, done in)


def first_line(source: str) -> str:
    line = next((ln for ln in source.splitlines() if ln.strip()), "")
    return line if len(line) <= 60 else line[:57] + "..."


class Echo:
    """Prints each output as the kernel sends it: the terminal sees a cell's lines while it runs."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.colour = out.isatty()

    def _plain(self, text: str) -> str:
        return text if self.colour else _ANSI.sub("", text)

    def header(self, index: int, cell: NotebookNode, note: str = "") -> None:
        self.out.write(f"--- cell {index}: {first_line(cell.source)}{note}\n")
        self.out.flush()

    def output(self, out: NotebookNode) -> None:
        kind = out.get("output_type")
        if kind == "stream":
            stream = self.err if out.get("name") == "stderr" else self.out
            stream.write(out.get("text", ""))
            stream.flush()
        elif kind in ("display_data", "execute_result"):
            data = out.get("data", {})
            text = data.get("text/plain", "")
            if text.startswith(PHASE_PREFIX):
                return  # a %%gpu phase line: it changes as the cell runs; its last word is echoed at the end
            image = next((m for m in ("image/png", "image/svg+xml") if m in data), "")
            # A terminal cannot show HTML: its text/plain form is the honest rendering.
            rich = image or ("" if text else next(iter(data), ""))
            self.out.write(f"[{rich}]\n" if rich else f"{text}\n")
            self.out.flush()
        elif kind == "error":
            self.err.write(self._plain("\n".join(out.get("traceback", [])) or f"{out.ename}: {out.evalue}") + "\n")
            self.err.flush()

    def phases(self, cell: NotebookNode) -> None:
        """The final phase line of each %%gpu in the cell (done in 1.2s on T4 worker ... · $0.0001)."""
        for out in cell.get("outputs", []):
            text = out.get("data", {}).get("text/plain", "") if out.get("output_type") == "display_data" else ""
            if text.startswith(PHASE_PREFIX):
                self.err.write(text + "\n")
        self.err.flush()


def write_notebook(nb: NotebookNode, path: str) -> None:
    """Atomic write: a reader (gpucell fetch, a crash) sees the previous or the new notebook, never half of one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=str(target.parent))
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        nbformat.write(nb, handle)
    os.replace(tmp, target)

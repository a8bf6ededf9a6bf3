"""Execute a notebook with nbclient on a local ipykernel: output streams live, the output notebook is saved after every cell."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from traitlets.config import Config

from gpucell.batch.params import inject_parameters
from gpucell.batch.resume import cells_to_rerun, failed_cell_index
from gpucell.errors import ConfigError

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
KERNEL_NAME = "python3"  # the native kernel: this interpreter, so the kernel has gpucell installed


@dataclass
class RunOptions:
    notebook: str | None                      # source notebook; None with resume: rerun the output's own cells
    output: str
    params: dict[str, Any] = field(default_factory=dict)
    hardware: str = ""                        # default for a bare %%gpu (GPUCell.default_hardware in the kernel)
    timeout: float | None = None              # per cell, as papermill's --execution-timeout
    resume: str | None = None                 # a failed output notebook to continue
    cwd: str | None = None                    # the kernel's working directory (default: ours)


@dataclass
class RunResult:
    status: str                               # succeeded, failed, cancelled
    failed_cell: int | None = None
    error: str = ""

    @property
    def exit_code(self) -> int:
        return {"succeeded": 0, "cancelled": 130}.get(self.status, 1)


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


class StreamingClient(NotebookClient):
    """NotebookClient that echoes every output as it arrives, not when the cell ends."""

    def __init__(self, nb: NotebookNode, echo: Echo, **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self.echo = echo

    def output(self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None,
               cell_index: int) -> NotebookNode | None:
        out = super().output(outs, msg, display_id, cell_index)
        if out is not None:
            self.echo.output(out)
        return out


def write_notebook(nb: NotebookNode, path: str) -> None:
    """Atomic write: a reader (gpucell fetch, a crash) sees the previous or the new notebook, never half of one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=str(target.parent))
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        nbformat.write(nb, handle)
    os.replace(tmp, target)


def _read(path: str) -> NotebookNode:
    try:
        return nbformat.read(path, as_version=4)
    except FileNotFoundError:
        raise ConfigError(f"no such notebook: {path}") from None
    except (json.JSONDecodeError, nbformat.reader.NotJSONError) as exc:
        raise ConfigError(f"{path} is not a notebook: {exc}") from None


def prepare(opts: RunOptions) -> tuple[NotebookNode, list[int], set[int]]:
    """The notebook to run, the cell indexes to execute in order, and those re-run only to rebuild state."""
    if opts.resume is None:
        if not opts.notebook:
            raise ConfigError("gpucell run: a NOTEBOOK is required")
        nb = _read(opts.notebook)
        inject_parameters(nb, opts.params)
        return nb, [i for i, c in enumerate(nb.cells) if c.cell_type == "code"], set()
    previous = _read(opts.resume)
    start = failed_cell_index(previous)
    params = {**previous.metadata.get("gpucell", {}).get("parameters", {}), **opts.params}
    nb = _read(opts.notebook) if opts.notebook else previous
    inject_parameters(nb, params)
    if len(nb.cells) != len(previous.cells):
        raise ConfigError(f"--resume: {opts.notebook} has {len(nb.cells)} cells but {opts.resume} has "
                          f"{len(previous.cells)}; cells were added or removed, so run it from the start")
    changed = set()
    for index, (cell, old) in enumerate(zip(nb.cells, previous.cells)):
        if cell.source != old.source:
            changed.add(index)
        if index < start and cell.cell_type == "code":
            # Earlier cells keep what the failed run printed; re-run ones get fresh output below.
            cell.outputs = old.get("outputs", [])
            cell.execution_count = old.get("execution_count")
    rerun = cells_to_rerun(nb.cells, start, frozenset(changed))
    later = [i for i in range(start, len(nb.cells)) if nb.cells[i].cell_type == "code"]
    return nb, rerun + later, set(rerun)


class _Cancelled(BaseException):
    """SIGTERM (gpucell cancel): stop after saving what ran."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Cancelled()


def _local_transport(directory: str) -> Config:
    """IPC sockets in a private directory: a kernel on this machine needs no TCP, and ipykernel's "running
    over TCP without encryption" warning was the first line every `gpucell run` printed. The path is
    absolute (left to itself, jupyter_client makes it relative to each side's cwd, which differ under
    --cwd), and TCP stays where the directory's path is too long for a Unix socket."""
    prefix = os.path.join(directory, "k")
    if len(prefix) > 90:
        return Config()
    return Config(KernelManager={"transport": "ipc", "ip": prefix})


def run_notebook(opts: RunOptions, out: TextIO | None = None, err: TextIO | None = None) -> RunResult:
    """Run the notebook; stream its output to `out`/`err`; save `opts.output` after every cell."""
    out = out or sys.stdout
    err = err or sys.stderr
    nb, plan, rebuild = prepare(opts)
    meta = nb.metadata.setdefault("gpucell", {})
    meta.update({"status": "running", "failed_cell": None, "error": ""})
    for index in plan:
        # Cleared up front: a run killed mid-way leaves unfinished cells without a count (resume finds them).
        nb.cells[index].outputs = []
        nb.cells[index].execution_count = None
        nb.cells[index].metadata.pop("gpucell", None)
        if index in rebuild:
            nb.cells[index].metadata["gpucell"] = {"rerun": "rebuild namespace"}
    write_notebook(nb, opts.output)
    echo = Echo(out, err)
    sockets = tempfile.mkdtemp(prefix="gpucell-kernel-")
    extra = [f"--GPUCell.default_hardware={opts.hardware}"] if opts.hardware else []
    client = StreamingClient(
        nb, echo, kernel_name=KERNEL_NAME, extra_arguments=extra, config=_local_transport(sockets),
        timeout=math.ceil(opts.timeout) if opts.timeout else None, allow_errors=False,
        resources={"metadata": {"path": opts.cwd or os.getcwd()}})
    env = dict(os.environ)
    env.setdefault("JPY_SESSION_NAME", os.path.abspath(opts.notebook or opts.resume or ""))
    result = RunResult("succeeded")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    current = -1
    try:
        with client.setup_kernel(env=env):
            for current in plan:
                cell = nb.cells[current]
                echo.header(current, cell, " (re-run to rebuild the namespace)" if current in rebuild else "")
                try:
                    client.execute_cell(cell, current)
                finally:
                    echo.phases(cell)
                    write_notebook(nb, opts.output)
    except CellTimeoutError:
        result = RunResult("failed", current, f"CellTimeoutError: the cell ran past --timeout {opts.timeout:g}s")
    except CellExecutionError as exc:
        result = RunResult("failed", current, f"{exc.ename}: {exc.evalue}")
    except DeadKernelError:
        result = RunResult("failed", current, "DeadKernelError: the kernel died")
    except (_Cancelled, KeyboardInterrupt):
        result = RunResult("cancelled", current if current >= 0 else None, "cancelled")
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(sockets, ignore_errors=True)
    meta.update({"status": result.status, "failed_cell": result.failed_cell, "error": result.error})
    write_notebook(nb, opts.output)
    if result.status != "succeeded":
        where = ""
        if result.failed_cell is not None:
            where = f" at cell {result.failed_cell} ({first_line(nb.cells[result.failed_cell].source)!r})"
        err.write(f"gpucell run: {result.status}{where}: {result.error}\n"
                  f"gpucell run: partial output in {opts.output}"
                  f"{'; continue with --resume ' + opts.output if result.status == 'failed' else ''}\n")
        err.flush()
    return result

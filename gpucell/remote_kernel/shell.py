"""The worker's persistent IPython shell, with its output routed into cell events."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import types
from typing import Any, Callable, Protocol

import IPython
from IPython.core.compilerop import CachingCompiler
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_magic, magics_class
from traitlets import Type
from traitlets.config import Config

from gpucell.protocol import gpucell_pb2 as pb

_IPYTHON_DIR = os.path.dirname(IPython.__file__) + os.sep


class Emitter(Protocol):
    def stream(self, name: str, text: str) -> None: ...

    def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool,
                **fields: Any) -> None: ...
        # fields: the other pb.Display fields (display_id, update, clear, clear_wait, page, local_magic)


def mime_json(value: Any) -> str:
    """A MIME bundle as JSON; raw bytes (an image a formatter returned undecoded) go as base64."""

    def default(obj: Any) -> Any:
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return base64.b64encode(bytes(obj)).decode("ascii")
        return repr(obj)

    return json.dumps(value, default=default)


class CellStream(io.TextIOBase):
    """sys.stdout / sys.stderr on the worker: writes go to the cell's (coalesced) output; flush() sends them
    now, as `print(..., flush=True)` does in a kernel."""

    def __init__(self, name: str, sink: Callable[[str, str], None], flush: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.name = name
        self._sink = sink
        self._flush = flush

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:
            self._sink(self.name, text)
        return len(text)

    def flush(self) -> None:
        self._flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


class WorkerDisplayPublisher(DisplayPublisher):
    def publish(self, data: dict[str, Any], metadata: dict[str, Any] | None = None, source: Any = None, *,
                transient: Any = None, update: bool = False, **kwargs: Any) -> None:
        shell = self.shell
        assert isinstance(shell, WorkerShell)
        display_id = (transient or {}).get("display_id", "") if isinstance(transient, dict) else ""
        if display_id or update:
            shell.emitter.display(data, metadata or {}, False, display_id=str(display_id), update=update)
        else:
            shell.emitter.display(data, metadata or {}, False)

    def clear_output(self, wait: bool = False) -> None:
        shell = self.shell
        assert isinstance(shell, WorkerShell)
        shell.emitter.display({}, {}, False, clear=True, clear_wait=wait)


class WorkerDisplayHook(DisplayHook):
    """The cell's last expression goes back as an execute result (a MIME bundle)."""

    def write_output_prompt(self) -> None:
        pass

    def write_format_data(self, format_dict: dict[str, Any], md_dict: dict[str, Any] | None = None) -> None:
        shell = self.shell
        assert isinstance(shell, WorkerShell)
        shell.emitter.display(format_dict, md_dict or {}, True)

    def update_user_ns(self, result: Any) -> None:
        super().update_user_ns(result)
        shell = self.shell
        assert isinstance(shell, WorkerShell)
        # `_N` holds the value here as in any kernel; the worker returns it under that name (or keeps it there)
        shell.result_name = f"_{self.prompt_count}"

    def finish_displayhook(self) -> None:
        pass


class CellCompiler(CachingCompiler):
    """Compiles a cell under the file name the notebook's kernel gives it (ipykernel: /tmp/ipykernel_PID/HASH.py),
    so warnings and tracebacks name the cell as a local run does."""

    cell_filename = ""

    def get_code_name(self, raw_code: str, transformed_code: str, number: int) -> str:
        return self.cell_filename or super().get_code_name(raw_code, transformed_code, number)


@magics_class
class NotebookViewMagics(Magics):
    """%who and %whos in a %%gpu cell list the notebook's namespace: the client shows them from there."""

    @line_magic
    def who(self, line: str = "") -> None:
        self._relay(f"who {line}".strip())

    @line_magic
    def whos(self, line: str = "") -> None:
        self._relay(f"whos {line}".strip())

    def _relay(self, magic: str) -> None:
        shell = self.shell
        assert isinstance(shell, WorkerShell)
        shell.emitter.display({}, {}, False, local_magic=magic)


class _NullEmitter:
    def stream(self, name: str, text: str) -> None:
        sys.__stderr__.write(text) if sys.__stderr__ else None

    def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool, **fields: Any) -> None:
        pass


class WorkerShell(InteractiveShell):
    """A real IPython shell (magics, `!cmd`, display) whose outputs and errors go to an Emitter."""

    display_pub_class = WorkerDisplayPublisher  # type: ignore[assignment]
    displayhook_class = WorkerDisplayHook  # type: ignore[assignment]

    compiler_class = Type(CellCompiler)  # type: ignore[assignment]

    emitter: Emitter = _NullEmitter()
    last_error: tuple[str, str, list[str]] | None = None
    last_exception: BaseException | None = None
    result_name = ""   # `_N` when the cell's last expression had a value (the display hook saw it)

    def _showtraceback(self, etype: type[BaseException], evalue: BaseException, stb: list[str]) -> None:
        # Keep the structured error for the error event instead of printing it.
        self.last_error = (etype.__name__, str(evalue), list(stb))
        self.last_exception = evalue

    def run_notebook_cell(self, source: str, cell_filename: str = "") -> None:
        """Run one cell as the notebook's kernel would, under the file name it gives the cell."""
        compiler = self.compile
        assert isinstance(compiler, CellCompiler)
        compiler.cell_filename = cell_filename
        self.last_error = self.last_exception = None
        self.result_name = ""
        try:
            self.run_cell(source, store_history=True)
        finally:
            compiler.cell_filename = ""

    def error_message(self, kind: int) -> pb.Error:
        """The last error as an Error event: name, value, the uncoloured traceback, its type and the user's frames."""
        assert self.last_error is not None
        ename, evalue, stb = self.last_error
        exc = self.last_exception
        error = pb.Error(ename=ename, evalue=evalue, traceback=stb, kind=kind)  # type: ignore[arg-type]
        if exc is not None:
            etype = type(exc)
            error.etype = f"{etype.__module__}:{etype.__qualname__}"
            error.frames.extend(_user_frames(exc.__traceback__))
        return error

    def init_io(self) -> None:
        # sys.stdout/stderr are set by the worker; IPython must not replace them.
        pass

    def enable_gui(self, gui: str | None = None) -> None:
        pass


def _user_frames(tb: types.TracebackType | None) -> list[pb.Frame]:
    """The traceback's frames from the cell inwards: IPython's own frames around the cell are left out."""
    frames: list[pb.Frame] = []
    while tb is not None:
        code = tb.tb_frame.f_code
        if frames or not code.co_filename.startswith(_IPYTHON_DIR):
            frames.append(pb.Frame(filename=code.co_filename, lineno=tb.tb_lineno or 0, name=code.co_name))
        tb = tb.tb_next
    return frames


def make_shell(emitter: Emitter) -> WorkerShell:
    config = Config()
    config.HistoryManager.enabled = False  # workers share no history database with anyone
    # Uncoloured: the notebook renders the frames with its own formatter and theme (light or dark).
    shell = WorkerShell.instance(colors="nocolor", config=config)
    shell.emitter = emitter

    def show_in_pager(_shell: Any, data: Any, start: int = 0, screen_lines: int = 0) -> None:
        # `obj?`, %prun, %page: the notebook's pager shows it, as a local cell's would
        bundle = data if isinstance(data, dict) else {"text/plain": str(data)}
        shell.emitter.display(bundle, {"start": start}, False, page=True)

    shell.set_hook("show_in_pager", show_in_pager, 99)
    shell.register_magics(NotebookViewMagics)
    return shell

"""The worker's persistent IPython shell, with its output routed into cell events."""

from __future__ import annotations

import base64
import io
import json
import sys
from typing import Any, Callable, Protocol

from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config


class Emitter(Protocol):
    def stream(self, name: str, text: str) -> None: ...

    def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool) -> None: ...


def mime_json(value: Any) -> str:
    """A MIME bundle as JSON; raw bytes (an image a formatter returned undecoded) go as base64."""

    def default(obj: Any) -> Any:
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return base64.b64encode(bytes(obj)).decode("ascii")
        return repr(obj)

    return json.dumps(value, default=default)


class CellStream(io.TextIOBase):
    """sys.stdout / sys.stderr on the worker: every write becomes a stream event at once."""

    def __init__(self, name: str, sink: Callable[[str, str], None]) -> None:
        super().__init__()
        self.name = name
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:
            self._sink(self.name, text)
        return len(text)

    def flush(self) -> None:
        pass

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
        shell.emitter.display(data, metadata or {}, False)

    def clear_output(self, wait: bool = False) -> None:
        pass


class WorkerDisplayHook(DisplayHook):
    """The cell's last expression goes back as an execute result (a MIME bundle)."""

    def write_output_prompt(self) -> None:
        pass

    def write_format_data(self, format_dict: dict[str, Any], md_dict: dict[str, Any] | None = None) -> None:
        shell = self.shell
        assert isinstance(shell, WorkerShell)
        shell.emitter.display(format_dict, md_dict or {}, True)

    def finish_displayhook(self) -> None:
        pass


class _NullEmitter:
    def stream(self, name: str, text: str) -> None:
        sys.__stderr__.write(text) if sys.__stderr__ else None

    def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool) -> None:
        pass


class WorkerShell(InteractiveShell):
    """A real IPython shell (magics, `!cmd`, display) whose outputs and errors go to an Emitter."""

    display_pub_class = WorkerDisplayPublisher  # type: ignore[assignment]
    displayhook_class = WorkerDisplayHook  # type: ignore[assignment]

    emitter: Emitter = _NullEmitter()
    last_error: tuple[str, str, list[str]] | None = None

    def _showtraceback(self, etype: type[BaseException], evalue: BaseException, stb: list[str]) -> None:
        # Keep the structured error for the error event instead of printing it.
        self.last_error = (etype.__name__, str(evalue), list(stb))

    def init_io(self) -> None:
        # sys.stdout/stderr are set by the worker; IPython must not replace them.
        pass

    def enable_gui(self, gui: str | None = None) -> None:
        pass


def make_shell(emitter: Emitter) -> WorkerShell:
    config = Config()
    config.HistoryManager.enabled = False  # workers share no history database with anyone
    shell = WorkerShell.instance(colors="Linux", config=config)
    shell.emitter = emitter
    return shell

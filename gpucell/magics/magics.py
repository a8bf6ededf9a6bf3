"""IPython magics: %%gpu, %gpu_status, %gpu_release, %gpu_pull — thin, over the client's Session."""

from __future__ import annotations

import argparse
import atexit
import html
import os
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import clear_output, display, publish_display_data
from traitlets import Bool, Float, Int, Unicode
from traitlets.config import Configurable

from gpucell.client.embedded import EmbeddedBroker, start_embedded_broker
from gpucell.client import BrokerClient
from gpucell.client.session import CellOptions, Session
from gpucell.client.sink import Sink
from gpucell import settings as gpucell_settings
from gpucell.errors import ConfigError, RemoteError, RemoteRefError
from gpucell.magics.cell_behaviour import NotebookOutput, cell_filename, clean_interrupt, in_notebook_formatter
from gpucell.magics.status_view import status_html, status_text
from gpucell.namespace.remote_ref import RETURN_LIMIT_MB, RemoteRef

_HIDDEN = {"In", "Out", "get_ipython", "exit", "quit", "_", "__", "___", "_ih", "_oh", "_dh", "_ii", "_iii"}


class GPUCell(Configurable):
    """Settings of the %%gpu magics (`c.GPUCell.*` in an IPython/Jupyter config file)."""

    default_hardware = Unicode("", help="hardware for a bare %%gpu; empty: the broker's default").tag(config=True)
    strict = Bool(False, help="error instead of CPU fallback when the hardware is absent").tag(config=True)
    timeout = Float(0.0, help="default --timeout in seconds (0: none)").tag(config=True)
    return_limit_mb = Int(RETURN_LIMIT_MB, help="values larger than this stay on the worker as RemoteRefs").tag(config=True)


class NotebookSink(Sink):
    """Live output into the notebook: streams as written, displays as MIME bundles, and in a Jupyter
    kernel one phase line per cell (queued, starting, running on, done in / cost) updated in place."""

    def __init__(self, in_kernel: bool = False, shell: Any = None) -> None:
        self.in_kernel = in_kernel
        self._handle: Any = None
        self.out = NotebookOutput(shell) if shell is not None else None

    def begin(self) -> None:
        """A new cell: its phase line is a new output (an interrupted cell's line stays as it was)."""
        self._handle = None

    def status(self, text: str, final: bool = False) -> None:
        if not self.in_kernel:
            return  # a terminal gets the queue and notice lines only
        bundle = {"text/plain": text, "text/html": f'<span style="color: var(--jp-ui-font-color2, gray)">'
                                                   f'{html.escape(text)}</span>'}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)
        if final:
            self._handle = None

    def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool) -> None:
        if execute_result and self.out is not None:
            self.out.execute_result(data, metadata)
            return
        publish_display_data(data, metadata)

    def result(self, value: Any) -> None:
        if self.out is not None:
            self.out.result(value)

    def display_update(self, data: dict[str, Any], metadata: dict[str, Any], display_id: str, update: bool) -> None:
        publish_display_data(data, metadata, transient={"display_id": display_id}, update=update)

    def clear_output(self, wait: bool) -> None:
        clear_output(wait=wait)
        self._handle = None   # the phase line went with the rest: the next one is a new output

    def page(self, data: dict[str, Any], start: int) -> None:
        if self.out is not None:
            self.out.page(data, start)
        else:
            super().page(data, start)

    def local_magic(self, line: str) -> None:
        if self.out is not None:
            self.out.local_magic(line)

    def phase(self, text: str) -> None:
        if self.in_kernel and text.startswith("queued:"):
            self.status(f"gpucell: {text}")
            return
        super().phase(text)


def _names(value: str, option: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    for name in names:
        if not name.isidentifier():
            raise ConfigError(f"{option}: {name!r} is not a variable name")
    return names


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


@magics_class
class GPUCellMagics(Magics):
    """The magics own their client and session; nothing global."""

    def __init__(self, shell: Any, settings: GPUCell, session: Session, broker: EmbeddedBroker | None) -> None:
        super().__init__(shell)
        self.settings = settings
        self.session = session
        self.broker = broker
        self.sink: Sink = NotebookSink(in_kernel=getattr(shell, "kernel", None) is not None, shell=shell)
        self.closed = False
        self._parsed: dict[str, argparse.Namespace] = {}   # %%gpu option line -> its parse (read only)
        if settings.default_hardware:
            session.default_hardware = settings.default_hardware

    def skip_names(self) -> set[str]:
        hidden = set(getattr(self.shell, "user_ns_hidden", {})) | _HIDDEN
        return hidden

    @magic_arguments()
    @argument("hardware", nargs="?", default="", help="A100, A100:2, H100, T4, cpu; default: the picked one")
    @argument("--timeout", type=float, default=None, help="stop the cell after S seconds")
    @argument("--idle", type=float, default=0.0, help="release this session's worker after S idle seconds")
    @argument("--pull", default="", help="A,B: return these even if large")
    @argument("--keep", default="", help="A,B: leave these on the worker (RemoteRef)")
    @argument("--fresh", action="store_true", help="a new worker; nothing inherited")
    @argument("--retries", type=int, default=0, help="retry on worker loss")
    @argument("--env", action="append", default=[], metavar="K=V", help="environment variable on the worker")
    @argument("--strict", action="store_true", help="error instead of running on the CPU when HW is absent")
    @cell_magic
    def gpu(self, line: str, cell: str) -> None:
        """Run this cell on a remote worker, with the variables it reads; what it assigns comes back."""
        options = self.parse_options(line)
        self.sink.begin()
        try:
            self.session.run_cell(cell, self.shell.user_ns, options, self.sink, skip=self.skip_names(),
                                  execution_count=self.shell.displayhook.prompt_count,  # In[N] (IPython 8 and 9)
                                  cell_filename=cell_filename(self.shell, cell))
        except RemoteError as exc:
            raise in_notebook_formatter(self.shell, exc) from None
        except KeyboardInterrupt as exc:
            raise clean_interrupt(self.shell, exc) from None

    def parse_options(self, line: str) -> CellOptions:
        """%%gpu's option line → CellOptions, or a one-line UsageError/ConfigError naming the option."""
        args = self._parsed.get(line)
        if args is None:
            try:
                args = parse_argstring(self.gpu, line)
            except ValueError as exc:  # shlex: an unbalanced quote
                raise UsageError(f"%%gpu {line}: {exc}") from None
            # argparse costs ~0.1 ms, a tenth of a warm round trip, and a notebook repeats a few option lines
            if len(self._parsed) >= 64:
                self._parsed.clear()
            self._parsed[line] = args
        if args.timeout is not None and args.timeout <= 0:
            raise ConfigError(f"--timeout {args.timeout:g}: must be positive")
        if args.idle < 0:
            raise ConfigError(f"--idle {args.idle:g}: must be positive")
        if args.retries < 0:
            raise ConfigError(f"--retries {args.retries}: must be zero or more")
        return CellOptions(
            hardware=args.hardware, timeout_s=args.timeout or self.settings.timeout, idle_s=args.idle,
            fresh=args.fresh, env=_env(args.env), pull=_names(args.pull, "--pull"), keep=_names(args.keep, "--keep"),
            retries=args.retries, strict=args.strict or self.settings.strict,
            return_limit=self.settings.return_limit_mb * 1_000_000)

    @line_magic
    def gpu_status(self, line: str = "") -> None:
        """Pools, workers, queue, and this session's usage and cost."""
        status = self.session.client.status(self.session.session_id)
        if "ipykernel" in sys.modules and getattr(self.shell, "kernel", None) is not None:
            display({"text/html": status_html(status, self.session.session_id),
                     "text/plain": status_text(status, self.session.session_id)}, raw=True)
        else:
            print(status_text(status, self.session.session_id))

    @magic_arguments()
    @argument("hardware", nargs="?", default="", help="release only this label's worker")
    @line_magic
    def gpu_release(self, line: str = "") -> None:
        """Release this session's workers now (their remote state is gone)."""
        args = parse_argstring(self.gpu_release, line)
        if args.hardware:
            self.session.check_hardware(args.hardware)
        released = self.session.release(args.hardware)
        print(f"released {', '.join(released)}" if released else "no workers to release")

    @magic_arguments()
    @argument("names", nargs="+", help="RemoteRef variables to bring here")
    @line_magic
    def gpu_pull(self, line: str = "") -> None:
        """Fetch RemoteRef values into the local namespace (device-bound values as CPU copies)."""
        args = parse_argstring(self.gpu_pull, line)
        user_ns = self.shell.user_ns
        for name in args.names:
            value = user_ns.get(name)
            if not isinstance(value, RemoteRef):
                raise ConfigError(f"%gpu_pull {name}: not a RemoteRef" if name in user_ns
                                  else f"%gpu_pull {name}: no such variable")
            if value.lost:
                raise RemoteRefError(value.lost_message())
        pulled = ", ".join(args.names)
        source = (f"from gpucell.namespace.pull import to_host as __gpucell_to_host\n"
                  f"{pulled}, = __gpucell_to_host({pulled},)\n")
        hardware = self.session.refs[args.names[0]].hardware
        self.session.run_cell(source, user_ns, CellOptions(hardware=hardware, return_limit=1 << 62,
                                                           pull=list(args.names)),
                              self.sink, skip=self.skip_names() | {"__gpucell_to_host"})

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        self.session.close()
        self.session.client.close()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


def connect(shell: Any) -> GPUCellMagics:
    """The magics for this kernel: GPUCELL_BROKER if set, else an embedded broker on 127.0.0.1."""
    settings = GPUCell(parent=shell, config=shell.config)
    broker = None
    if gpucell_settings.get("broker"):
        client = BrokerClient(gpucell_settings.get("broker"), gpucell_settings.get("token"))
    else:
        broker = start_embedded_broker()
        client = BrokerClient(broker.address, broker.token)
    session = Session(client, session_name=os.environ.get("JPY_SESSION_NAME", ""))
    magics = GPUCellMagics(shell, settings, session, broker)
    atexit.register(magics.close)
    return magics

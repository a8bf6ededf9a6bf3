"""%%gpu_map: run a cell once per item, fanned out over fresh workers; the per-item values, in order."""

from __future__ import annotations

import ast
import sys
from typing import Any

from IPython.core.inputtransformer2 import TransformerManager
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from gpucell.client.fanout_start import start_fanout
from gpucell.namespace.fanout_runner import CellBody
from gpucell.client.sink import ForwardingSink, Sink, first_phase
from gpucell.errors import ConfigError, RemoteError, SerializationError
from gpucell.magics.magics import GPUCellMagics
from gpucell.namespace import serialize
from gpucell.namespace.analysis import CellSyntaxError, analyze
from gpucell.namespace.remote_ref import RemoteRef


class _OwnerSink(ForwardingSink):
    """Item output through the %%gpu magics' sink (the notebook), no queue lines, each notice once."""

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self._seen: set[str] = set()

    def phase(self, text: str) -> None:
        if first_phase(self._seen, text):
            self.sink.phase(text)


@magics_class
class GPUMapMagics(Magics):
    """`%%gpu_map`; shares the client, session defaults and output sink of the `%%gpu` magics."""

    def __init__(self, shell: Any, owner: GPUCellMagics) -> None:
        super().__init__(shell)
        self.owner = owner

    @magic_arguments()
    @argument("hardware", nargs="?", default="", help="A100, H100, T4, cpu; default: the picked one")
    @argument("--over", required=True, metavar="EXPR", help="the items: any iterable expression")
    @argument("--as", dest="name", required=True, metavar="NAME", help="the variable each item is bound to")
    @argument("--workers", type=int, default=None, help="at most N workers (default: the pool's max_workers)")
    @argument("--into", default="", metavar="VAR", help="store the list of per-item values in VAR")
    @argument("--retries", type=int, default=0, help="retry a failing item N times, with backoff")
    @cell_magic
    def gpu_map(self, line: str, cell: str) -> list[Any]:
        """Run the cell once per item of EXPR, with NAME bound, on fresh workers; the value of its last
        expression per item, in order, goes to VAR (--into) and is the cell's value."""
        args = parse_argstring(self.gpu_map, line)
        if not args.name.isidentifier():
            raise ConfigError(f"--as {args.name!r}: not a variable name")
        if args.into and not args.into.isidentifier():
            raise ConfigError(f"--into {args.into!r}: not a variable name")
        if args.workers is not None and args.workers < 1:
            raise ConfigError(f"--workers {args.workers}: must be at least 1")
        if args.retries < 0:
            raise ConfigError(f"--retries {args.retries}: must be zero or more")
        source = _python_source(cell)
        user_ns = self.shell.user_ns
        try:
            items = eval(args.over, user_ns)  # noqa: S307 - the user's own expression, in their namespace
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"--over {args.over!r} failed: {type(exc).__name__}: {exc}") from None
        try:
            iter(items)
        except TypeError:
            raise ConfigError(f"--over {args.over!r}: {type(items).__name__} is not iterable") from None
        values = self._values(source, args.name)
        body = CellBody(source, args.name, values)
        session = self.owner.session
        hardware = args.hardware or session.default_hardware
        in_notebook = getattr(self.shell, "kernel", None) is not None
        try:
            fanout = start_fanout(session.client, body, "one", hardware=hardware, workers=args.workers,
                                  retries=args.retries, timeout=0.0, ordered=True, return_exceptions=False,
                                  progress=in_notebook or sys.stderr.isatty(), sink=_OwnerSink(self.owner.sink),
                                  owner=session.session_id, description=f"%%gpu_map on {hardware or 'default'}")
        except SerializationError:
            for name, value in values.items():   # name the variable that cannot travel
                serialize.pack(name, value)
            raise
        results: list[Any] = []
        try:
            for value in fanout.results(items):
                results.append(value)
        except RemoteError as exc:
            # The items before the failure were collected here: they stay reachable on the error too.
            so_far = dict(enumerate(results))
            so_far.update(getattr(exc, "results_so_far", {}))
            exc.results_so_far = so_far  # type: ignore[attr-defined]
            raise
        if args.into:
            user_ns[args.into] = results
        return results

    def _values(self, source: str, name: str) -> dict[str, Any]:
        """The notebook values the cell reads (modules, helpers, data), sent once per worker."""
        skip = self.owner.skip_names() | {name}
        values: dict[str, Any] = {}
        for read in analyze(source).reads:
            if read in skip or read not in self.shell.user_ns:
                continue
            value = self.shell.user_ns[read]
            if isinstance(value, RemoteRef):
                raise ConfigError(f"%%gpu_map reads {read!r}, a RemoteRef on this session's worker; fan-out "
                                  f"workers are fresh and cannot see it: %gpu_pull {read} first")
            values[read] = value
        return values


def _python_source(cell: str) -> str:
    """The cell as plain Python (IPython syntax such as `!cmd` rewritten), or a one-line error."""
    try:
        ast.parse(cell)
        return cell
    except SyntaxError:
        pass
    source = TransformerManager().transform_cell(cell)
    try:
        analyze(cell)
        ast.parse(source)
    except CellSyntaxError as exc:
        raise ConfigError(f"syntax error in the cell, {exc}") from None
    except SyntaxError as exc:
        raise ConfigError(f"syntax error in the cell, line {exc.lineno}: {exc.msg}") from None
    return source

"""What makes a %%gpu cell behave as a local cell in the notebook: its file name, its syntax errors, its
result (Out, `_`), its tracebacks in the notebook's own formatter and a clean interrupt."""

from __future__ import annotations

import re
from typing import Any

from IPython.core.page import page as show_in_pager

from gpucell.client.remote_errors import KeyboardInterrupt as CellInterrupt
from gpucell.client.remote_errors import remote_interrupt
from gpucell.errors import RemoteError

_GPU_CELL = re.compile(r"%%gpu(\s|$)")
_NOTEBOOK_VIEW = {"who", "whos"}   # magics a %%gpu cell shows from the notebook's namespace


def raw_body(shell: Any, cell: str) -> str:
    """The cell's text below the %%gpu line exactly as the user wrote it (the magic gets it with a newline
    added): a local run of the same text compiles under a file name made from it, and so does this one."""
    history = getattr(shell.history_manager, "input_hist_raw", None) or [""]
    first, _, body = history[-1].partition("\n")
    if _GPU_CELL.match(first) and body.rstrip("\n") == cell.rstrip("\n"):
        return str(body)
    return cell


def cell_filename(shell: Any, cell: str) -> str:
    """Cache the cell as the kernel caches a cell it runs (linecache, `In[N]`) and return its file name."""
    raw = raw_body(shell, cell)
    return str(shell.compile.cache(shell.transform_cell(raw), shell.displayhook.prompt_count, raw_code=raw))


class SyntaxCheck:
    """An input transformer: a %%gpu cell whose body does not parse fails as the same cell run locally does,
    a SyntaxError before anything runs (IPython shows it without frames, the kernel with the cell's file)."""

    has_side_effects = True   # check_complete (is the cell finished?) must not run it

    def __init__(self, shell: Any) -> None:
        self.shell = shell

    def __call__(self, lines: list[str]) -> list[str]:
        if lines and _GPU_CELL.match(lines[0]):
            body = "".join(lines[1:])
            raw = body[:-1] if body.endswith("\n") else body  # transform_cell added the newline most cells lack
            transformed = self.shell.transform_cell(raw)
            compiler = self.shell.compile
            name = compiler.get_code_name(raw, transformed, self.shell.execution_count)
            compiler.ast_parse(transformed, filename=name)
        return lines


def install(shell: Any) -> SyntaxCheck:
    check = SyntaxCheck(shell)
    shell.input_transformers_cleanup.append(check)
    return check


def uninstall(shell: Any, check: SyntaxCheck | None) -> None:
    if check is not None and check in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.remove(check)


def in_notebook_formatter(shell: Any, exc: BaseException) -> BaseException:
    """A cell's error, rendered by the shell's own traceback formatter (its colours, `Cell In[N]`)."""
    if isinstance(exc, RemoteError | CellInterrupt):
        tb = exc.remote_tb

        def render() -> list[str]:
            stb: list[str] = shell.InteractiveTB.structured_traceback(type(exc), exc, tb, tb_offset=0)
            return stb

        exc.render = render
    return exc


def clean_interrupt(shell: Any, exc: BaseException) -> BaseException:
    """An interrupt ends the cell with a plain KeyboardInterrupt: the cell's frames, none of gpucell's."""
    interrupt = exc if isinstance(exc, CellInterrupt) else remote_interrupt(None)
    return in_notebook_formatter(shell, interrupt)


class NotebookOutput:
    """The parts of a notebook sink that go through the shell: the display hook, the pager, local magics."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell

    def execute_result(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        """The worker's MIME bundle as this cell's execute_result, with its count (`Out[N]:`)."""
        hook = self.shell.displayhook
        hook.start_displayhook()
        hook.write_output_prompt()
        hook.write_format_data(data, metadata)
        if "text/plain" in data:
            hook.log_output(data)
        hook.finish_displayhook()

    def result(self, value: Any) -> None:
        """`_`, `__`, `___`, `_N`, `Out[N]` (and run_cell's result) as a local cell sets them."""
        hook = self.shell.displayhook
        hook.update_user_ns(value)
        hook.fill_exec_result(value)

    def page(self, data: dict[str, Any], start: int) -> None:
        show_in_pager(data, start=start)

    def local_magic(self, line: str) -> None:
        name, _, args = line.partition(" ")
        if name in _NOTEBOOK_VIEW:
            self.shell.run_line_magic(name, args)


__all__ = ["NotebookOutput", "SyntaxCheck", "cell_filename", "clean_interrupt", "in_notebook_formatter",
           "install", "raw_body", "uninstall"]

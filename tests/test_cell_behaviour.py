"""A %%gpu cell behaves as a local cell in a real InteractiveShell: its result, its errors, its displays."""

from __future__ import annotations

import _thread
import re
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from conftest import RecordingSink, magics_of
from gpucell import RemoteError, RemoteRef

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ProtocolSink(RecordingSink):
    """Records the Jupyter-protocol shapes a notebook sink gets: updates by display id, clears, the pager."""

    def display_update(self, data: dict[str, Any], metadata: dict[str, Any], display_id: str, update: bool) -> None:
        self.items.append((0.0, "update" if update else "display_id", (display_id, data)))

    def clear_output(self, wait: bool) -> None:
        self.items.append((0.0, "clear", wait))

    def page(self, data: dict[str, Any], start: int) -> None:
        self.items.append((0.0, "page", data))

    def local_magic(self, line: str) -> None:
        self.items.append((0.0, "local_magic", line))


def test_the_last_expression_is_the_cells_result(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    result = shell.run_cell("%%gpu cpu\n40 + 2\n", store_history=True)
    count = shell.execution_count - 1
    assert result.result == 42
    assert shell.user_ns["_"] == 42 and shell.user_ns["Out"][count] == 42 and shell.user_ns[f"_{count}"] == 42
    assert f"Out[{count}]: 42" in capsys.readouterr().out
    shell.run_cell("%%gpu cpu\n'x' * 3\n", store_history=True)
    assert (shell.user_ns["_"], shell.user_ns["__"]) == ("xxx", 42)


def test_a_trailing_semicolon_suppresses_the_result(shell: InteractiveShell,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_cell("%%gpu cpu\n1 + 1\n", store_history=True)
    before = dict(shell.user_ns["Out"])
    shell.run_cell("%%gpu cpu\n40 + 2;\n", store_history=True)
    assert shell.user_ns["Out"] == before and shell.user_ns["_"] == 2
    assert "42" not in capsys.readouterr().out


def test_a_value_that_stays_remote_is_the_result_as_a_remoteref(shell: InteractiveShell) -> None:
    shell.run_cell("%%gpu cpu\n(i for i in range(3))\n", store_history=True)
    count = shell.execution_count - 1
    ref = shell.user_ns["Out"][count]
    assert isinstance(ref, RemoteRef) and shell.user_ns["_"] is ref
    shell.run_cell(f"%%gpu cpu\nfirst = next(_{count})\n", store_history=True)
    assert shell.user_ns["first"] == 0


def test_an_error_keeps_its_type(shell: InteractiveShell) -> None:
    result = shell.run_cell("%%gpu cpu\n{}['missing']\n", store_history=True)
    err = result.error_in_exec
    assert isinstance(err, KeyError) and isinstance(err, RemoteError)
    assert (type(err).__name__, str(err)) == ("KeyError", "'missing'")
    with pytest.raises(ZeroDivisionError):
        shell.run_cell_magic("gpu", "cpu", "def f():\n    return 1 / 0\nf()\n")


def test_an_unknown_exception_type_keeps_its_name(shell: InteractiveShell) -> None:
    result = shell.run_cell("%%gpu cpu\nclass Boom(Exception):\n    pass\nraise Boom('now')\n", store_history=True)
    err = result.error_in_exec
    assert isinstance(err, RemoteError) and (type(err).__name__, str(err)) == ("Boom", "now")


def test_the_traceback_is_rendered_here_naming_the_cell(shell: InteractiveShell,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_cell("%%gpu cpu\nx = 1\ny = undefined_thing + x\n", store_history=True)
    count = shell.execution_count - 1
    out = _ANSI.sub("", capsys.readouterr().out)
    assert f"In[{count}], line 2" in out or f"In [{count}], line 2" in out, out
    assert "y = undefined_thing + x" in out and "NameError: name 'undefined_thing' is not defined" in out
    assert "gpucell" not in out and "session.py" not in out


def test_a_syntax_error_is_a_syntax_error_found_before_sending(shell: InteractiveShell) -> None:
    sink = RecordingSink()
    magics_of(shell).sink = sink
    result = shell.run_cell("%%gpu cpu\nx = (\n", store_history=True)
    assert type(result.error_before_exec) is SyntaxError
    assert sink.items == []   # nothing was sent


def test_display_updates_clear_and_pager_are_relayed(shell: InteractiveShell) -> None:
    sink = ProtocolSink()
    magics_of(shell).sink = sink
    shell.run_cell_magic("gpu", "cpu", "from IPython.display import display, clear_output\n"
                         "h = display('one', display_id='d1')\nh.update('two')\nclear_output(wait=True)\n"
                         "print('after')\n%whos\nlen?\n")
    kinds = [(name, data) for _, name, data in sink.items if name not in ("phase",)]
    assert ("display_id", ("d1", {"text/plain": "'one'"})) in kinds
    assert ("update", ("d1", {"text/plain": "'two'"})) in kinds
    assert ("clear", True) in kinds
    assert ("local_magic", "whos") in kinds
    pages = [data for name, data in kinds if name == "page"]
    assert pages and "Return the number of items" in _ANSI.sub("", pages[0]["text/plain"])
    assert "Return the number" not in sink.text()


def test_whos_in_a_gpu_cell_shows_the_notebooks_names(shell: InteractiveShell,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    shell.user_ns["local_only"] = 123
    shell.run_cell("%%gpu cpu\n%who\n", store_history=True)
    assert "local_only" in capsys.readouterr().out


def test_an_interrupt_ends_with_a_plain_keyboardinterrupt(shell: InteractiveShell,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_cell("%%gpu cpu\nready = 1\n", store_history=True)   # a warm worker: the next cell takes the lane
    sink = RecordingSink(on_text=lambda text: _thread.interrupt_main() if "looping" in text else None)
    magics = magics_of(shell)
    real = magics.sink
    magics.sink = sink
    capsys.readouterr()
    try:
        result = shell.run_cell("%%gpu cpu\nimport time\nprint('looping', flush=True)\nwhile True:\n"
                                "    time.sleep(0.01)\n", store_history=True)
    finally:
        magics.sink = real
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    out = _ANSI.sub("", capsys.readouterr().out)
    assert "KeyboardInterrupt" in out
    assert "gpucell" not in out and "session.py" not in out and "socket" not in out, out

"""Running a notebook through papermill with the gpucell engine: the Python API and what `gpucell run` calls."""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import nbformat
import papermill
from nbclient.exceptions import DeadKernelError
from nbformat import NotebookNode
from papermill.exceptions import PapermillExecutionError
from papermill.execute import remove_error_markers
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from gpucell.batch.engine import Cancelled, GpucellEngine, save_final
from gpucell.batch.params import INJECTED_TAG
from gpucell.batch.resume import cells_to_rerun, failed_cell_index
from gpucell.batch.runner import first_line, write_notebook
from gpucell.errors import ConfigError

ENGINE = "gpucell"


def execute_notebook(input_path: str | Path | NotebookNode, output_path: str | Path | None,
                     parameters: dict[str, Any] | None = None, *, engine_name: str = ENGINE,
                     **kwargs: Any) -> NotebookNode:
    """papermill.execute_notebook with the gpucell engine: same arguments, plus `hardware` (bare `%%gpu`)."""
    kwargs.setdefault("progress_bar", False)
    if parameters and kwargs.get("kernel_name") is None:
        # papermill's check for undeclared parameters asks the notebook for its kernel without asking the engine,
        # and fails on a notebook that names none; the engine's answer (the notebook's own, else python3) is given.
        nb = input_path if isinstance(input_path, NotebookNode) else load_notebook_node(str(input_path))
        kwargs["kernel_name"] = GpucellEngine.nb_kernel_name(nb)
        kwargs["language"] = kwargs.get("language") or GpucellEngine.nb_language(nb)
        if input_path == "-":
            input_path, kwargs["input_label"] = nb, "-"   # stdin can be read once
    return papermill.execute_notebook(input_path, output_path, parameters, engine_name=engine_name, **kwargs)


def inspect_notebook(notebook_path: str | Path, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """papermill.inspect_notebook: the parameters a notebook declares (name, inferred type, default, help)."""
    return dict(papermill.inspect_notebook(notebook_path, parameters))


def notebook_help(notebook_path: str) -> str:
    """`--help-notebook`: the declared parameters, as papermill prints them."""
    try:
        params = inspect_notebook(notebook_path)
    except FileNotFoundError:
        raise ConfigError(f"no such notebook: {notebook_path}") from None
    lines = [f"Parameters inferred for notebook '{notebook_path}':"]
    if not params:
        lines.append("  none (no cell tagged 'parameters', or it assigns nothing)")
    for name, p in params.items():
        kind = p["inferred_type_name"] if p["inferred_type_name"] != "None" else "Unknown type"
        lines.append(f"  {name}: {kind} (default {p['default']}){'  ' + p['help'] if p['help'] else ''}")
    return "\n".join(lines) + "\n"


_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")


def parameter_slug(params: dict[str, Any]) -> str:
    """`{"lr": 0.1, "layers": [128, 64]}` -> `lr=0.1,layers=128-64`: a file name part that tells runs apart."""
    parts = []
    for key, value in params.items():
        text = "-".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"{key}={_UNSAFE.sub('_', text).strip('_') or '_'}")
    slug = ",".join(parts)
    return slug if len(slug) <= 120 else slug[:120]


def default_output(notebook: str, params: dict[str, Any], directory: str | None = None) -> str:
    """NAME.out.ipynb, or NAME.<parameters>.out.ipynb, so runs with other parameters never overwrite it."""
    stem = Path(notebook).stem if notebook != "-" else "stdin"
    slug = parameter_slug(params)
    name = f"{stem}.{slug}.out.ipynb" if slug else f"{stem}.out.ipynb"
    return str(Path(directory or Path.cwd()) / name)


def _tags(cell: NotebookNode) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


@dataclass
class Prepared:
    notebook: NotebookNode
    plan: list[int]
    rebuild: frozenset[int]


def prepare_resume(resume: str, notebook: str | None, new_params: dict[str, Any],
                   kernel_name: str | None) -> Prepared:
    """The notebook to continue a failed run with, and which cells to run.

    Cells are matched one to one ignoring the injected-parameters cell and papermill's error banners, so a
    parameter added now (a new injected cell) shifts nothing and a fixed source notebook lines up.
    """
    previous = remove_error_markers(load_notebook_node(resume))
    start = failed_cell_index(previous)
    failed_is_injected = INJECTED_TAG in _tags(previous.cells[start])
    rank = sum(1 for c in previous.cells[:start] if INJECTED_TAG not in _tags(c))
    nb = remove_error_markers(load_notebook_node(notebook)) if notebook else previous
    old_plain = [c for c in previous.cells if INJECTED_TAG not in _tags(c)]
    new_plain = [c for c in nb.cells if INJECTED_TAG not in _tags(c)]
    if len(new_plain) != len(old_plain):
        raise ConfigError(f"--resume: {notebook} has {len(new_plain)} cells but {resume} has {len(old_plain)}; "
                          f"cells were added or removed, so run it from the start")
    changed_plain = set()
    for index, (cell, old) in enumerate(zip(new_plain, old_plain)):
        if cell.source != old.source:
            changed_plain.add(index)
        if index < rank and cell.cell_type == "code":
            cell.outputs = old.get("outputs", [])          # earlier cells keep what the failed run printed
            cell.execution_count = old.get("execution_count")
    old_meta = previous.metadata
    params = {**(old_meta.get("papermill", {}).get("parameters")
                 or old_meta.get("gpucell", {}).get("parameters") or {}), **new_params}
    if params:
        nb = parameterize_notebook(nb, params, kernel_name=kernel_name, engine_name=ENGINE)
    nb.metadata.setdefault("gpucell", {})["parameters"] = params
    plain = [i for i, c in enumerate(nb.cells) if INJECTED_TAG not in _tags(c)]
    injected = next((i for i, c in enumerate(nb.cells) if INJECTED_TAG in _tags(c)), None)
    begin = injected if failed_is_injected and injected is not None else plain[rank]
    changed = frozenset(plain[i] for i in changed_plain)
    rerun = cells_to_rerun(nb.cells, begin, changed)
    later = [i for i in range(begin, len(nb.cells)) if nb.cells[i].cell_type == "code"]
    for index in rerun:
        nb.cells[index].metadata["gpucell"] = {"rerun": "rebuild namespace"}
    return Prepared(nb, rerun + later, frozenset(rerun))


@dataclass
class RunRequest:
    """One `gpucell run` (or one point of a sweep), as papermill's execute_notebook takes it."""

    notebook: str | None
    output: str
    parameters: dict[str, Any]
    hardware: str = ""
    timeout: float | None = None
    resume: str | None = None
    cwd: str | None = None
    kernel: str | None = None
    prepare_only: bool = False
    report_mode: bool = False
    log_output: bool = False
    start_timeout: int = 60


@dataclass
class RunOutcome:
    status: str                               # succeeded, failed, cancelled, interrupted
    failed_cell: int | None = None
    error: str = ""

    @property
    def exit_code(self) -> int:
        # 143 = 128 + SIGTERM, as a shell reports a process SIGTERM ended; 130 for Ctrl-C.
        return {"succeeded": 0, "cancelled": 143, "interrupted": 130}.get(self.status, 1)


class _WarningLines(logging.Handler):
    """papermill's warnings (an undeclared parameter, no `parameters` cell) as one `gpucell run:` line each."""

    def __init__(self, err: TextIO) -> None:
        super().__init__(logging.WARNING)
        self.err = err

    def emit(self, record: logging.LogRecord) -> None:
        self.err.write(f"gpucell run: warning: {record.getMessage()}\n")
        self.err.flush()


def run(request: RunRequest, err: TextIO | None = None) -> RunOutcome:
    """Run one notebook through papermill and the gpucell engine; print a two-line summary when it fails."""
    err = err or sys.stderr
    if request.cwd is not None and not os.path.isdir(request.cwd):
        raise ConfigError(f"--cwd {request.cwd}: no such directory (nothing was run, {request.output} is untouched)")
    output = request.output
    if output != "-" and "://" not in output:
        output = os.path.abspath(output)   # papermill changes directory to --cwd; the output stays where it was asked
    kwargs: dict[str, Any] = dict(
        kernel_name=request.kernel, cwd=request.cwd, prepare_only=request.prepare_only,
        report_mode=request.report_mode, log_output=request.log_output, start_timeout=request.start_timeout,
        hardware=request.hardware, echo_to=sys.stderr if output == "-" else sys.stdout,
        request_save_on_cell_execute=output != "-",   # stdout gets the notebook once, at the end
        execution_timeout=request.timeout and int(max(1, round(request.timeout))))
    source: str | NotebookNode
    parameters: dict[str, Any] | None = request.parameters
    if request.resume:
        if output == "-":
            raise ConfigError("--resume writes its notebook back to a file; give -o OUT.ipynb, not -")
        prepared = prepare_resume(request.resume, request.notebook, request.parameters, request.kernel)
        write_notebook(prepared.notebook, output)
        source, parameters = output, None
        kwargs.update(plan=prepared.plan, rebuild=prepared.rebuild)
    else:
        if not request.notebook:
            raise ConfigError("gpucell run: give a NOTEBOOK (or --resume OUT.ipynb)")
        source = request.notebook
    handler = _WarningLines(err)
    pm_log = logging.getLogger("papermill")
    pm_log.addHandler(handler)
    pm_log.propagate, pm_log_level = False, pm_log.level
    pm_log.setLevel(logging.WARNING)
    outcome = RunOutcome("succeeded")
    nb: NotebookNode | None = None
    try:
        nb = execute_notebook(source, output, parameters or None, **kwargs)
    except FileNotFoundError as exc:
        raise ConfigError(f"no such notebook: {exc.filename or request.notebook}") from None
    except nbformat.reader.NotJSONError as exc:
        raise ConfigError(f"{request.notebook} is not a notebook: {exc}") from None
    except PapermillExecutionError as exc:
        outcome = RunOutcome("failed", None, f"{exc.ename}: {exc.evalue}")
    except DeadKernelError:
        outcome = RunOutcome("failed", None, "DeadKernelError: the kernel died")
    except Cancelled:
        outcome = RunOutcome("cancelled", None, "cancelled (SIGTERM)")
    except KeyboardInterrupt:
        outcome = RunOutcome("interrupted", None, "interrupted")
    finally:
        pm_log.removeHandler(handler)
        pm_log.setLevel(pm_log_level)
    if nb is not None:
        # papermill's engine ran to the end; record gpucell's status next to metadata.papermill.
        meta = nb.metadata.setdefault("gpucell", {})
        meta.setdefault("parameters", dict(nb.metadata.get("papermill", {}).get("parameters") or {}))
        if request.prepare_only:
            meta.update({"status": "prepared", "failed_cell": None, "error": ""})
        if output != "-":   # papermill has printed the notebook to stdout once; a second copy would break it
            save_final(nb, output)
        return outcome
    saved = _read_back(output)
    if saved is not None:
        meta = saved.metadata.get("gpucell", {})
        outcome.failed_cell = meta.get("failed_cell")
        outcome.error = meta.get("error") or outcome.error
    where = ""
    if outcome.failed_cell is not None and saved is not None:
        cells = remove_error_markers(saved).cells
        if 0 <= outcome.failed_cell < len(cells):
            where = f" at cell {outcome.failed_cell} ({first_line(cells[outcome.failed_cell].source)!r})"
    hint = f"; continue with `gpucell run --resume {output}`" if outcome.status == "failed" and output != "-" else ""
    job = re.match(r"job (job-[0-9a-f]+):", os.environ.get("JPY_SESSION_NAME", ""))
    if job and outcome.status == "failed":
        # A detached job: its output lives in the broker's state dir, which the user does not read directly.
        hint = (f"; get it with `gpucell fetch {job.group(1)} -o OUT.ipynb`, "
                f"then continue with `gpucell run --resume OUT.ipynb`")
        output = f"job {job.group(1)}"
    err.write(f"gpucell run: {outcome.status}{where}: {outcome.error}\n"
              f"gpucell run: partial output in {output}{hint}\n")
    err.flush()
    return outcome


def _read_back(output: str) -> NotebookNode | None:
    if output == "-":
        return None
    try:
        return load_notebook_node(output)
    except Exception:  # noqa: BLE001 - a summary line is all that depends on it
        return None

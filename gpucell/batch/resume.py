"""`gpucell run --resume`: which cells before the failing one must run again to rebuild the namespace."""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass

from nbformat import NotebookNode

from gpucell.batch.params import INJECTED_TAG, PARAMETERS_TAG
from gpucell.batch.resume_modules import imported_names, writes_module_state
from gpucell.errors import ConfigError
from gpucell.namespace.analysis import analyze

# A line magic (%load_ext, %env, %config, %matplotlib, %cd, ...) changes kernel state that no name shows.
_LINE_MAGIC = re.compile(r"^\s*%(?!%)", re.MULTILINE)
# Reading print or len says nothing about the notebook's own state.
_BUILTINS = frozenset(dir(builtins)) | {"get_ipython", "display"}


@dataclass(frozen=True)
class CellEffect:
    """What re-running a cell can do to the namespace: names it touches, or `always` when we cannot tell."""

    touches: frozenset[str]    # names it binds, deletes or reads (a read may mutate: lst.append)
    reads: frozenset[str]
    always: bool
    why: str = ""


def cell_effect(cell: NotebookNode) -> CellEffect:
    source: str = cell.source
    tags = cell.get("metadata", {}).get("tags", [])
    why = ""
    if PARAMETERS_TAG in tags or INJECTED_TAG in tags:
        why = "parameters"
    elif _LINE_MAGIC.search(source):
        why = "line magic"
    stripped = source.lstrip()
    if stripped.startswith("%%"):
        first, _, body = stripped.partition("\n")
        name = first[2:].split(None, 1)[0] if first[2:].strip() else ""
        if name != "gpu":
            # %%capture NAME, %%gpu_map --into VAR, %%time ...: bindings we do not parse; re-run to be safe.
            why = why or f"%%{name}"
        source = body  # a %%gpu cell binds and reads what its body does (values come back or stay as RemoteRefs)
    try:
        names = analyze(source)
    except SyntaxError:
        return CellEffect(frozenset(), frozenset(), True, "unparsable")
    if names.star_import:
        why = why or "star import"
    reads = frozenset(names.reads) - _BUILTINS
    return CellEffect(reads | frozenset(names.assigns) | frozenset(names.deletes), reads, bool(why), why)


def failed_cell_index(nb: NotebookNode) -> int:
    """Where a previous run stopped: recorded by the runner, else the first code cell with an error."""
    recorded = nb.metadata.get("gpucell", {}).get("failed_cell")
    if isinstance(recorded, int) and 0 <= recorded < len(nb.cells):
        return recorded
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return index
    status = nb.metadata.get("gpucell", {}).get("status")
    if status == "succeeded":
        raise ConfigError("--resume: that notebook finished without a failure; nothing to resume")
    # Killed mid-run (no error recorded): restart from the first code cell that never finished.
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.source.strip() and cell.get("execution_count") is None:
            return index
    raise ConfigError("--resume: no failed or unfinished cell in that notebook")


def cells_to_rerun(cells: list[NotebookNode], start: int, changed: frozenset[int] = frozenset()) -> list[int]:
    """Indexes before `start` to execute again, in order, so cells from `start` on see the namespace they expect.

    Walking backwards from the end, a cell is kept when it touches (binds, deletes, or reads, since a
    read can mutate) a name that a kept or later cell reads; its own reads then become needed too.
    Cells whose effect cannot be known (line magics such as %load_ext, other cell magics, parameters,
    unparsable or star-importing cells), cells that call into or assign on an imported module (process
    state: sys.path, cwd, RNG seeds) and cells whose source changed since the failed run are kept.
    """
    needed: set[str] = set()
    for cell in cells[start:]:
        if cell.cell_type == "code":
            needed |= cell_effect(cell).reads
    keep: list[int] = []
    modules = imported_names(cells)
    for index in range(start - 1, -1, -1):
        cell = cells[index]
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        effect = cell_effect(cell)
        # sys.path.insert, os.chdir, np.random.seed: process state that no name shows.
        through_module = writes_module_state(cell.source, modules)
        if effect.always or through_module or index in changed or effect.touches & needed:
            keep.append(index)
            needed |= effect.reads
    return sorted(keep)

"""Notebook parameters, papermill's way: typed `-p KEY=VALUE` values injected after the `parameters` cell."""

from __future__ import annotations

import math
from typing import Any

import nbformat
from nbformat import NotebookNode

from gpucell.errors import ConfigError

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"

ParamValue = bool | int | float | str | None


def resolve_type(raw: str) -> ParamValue:
    """Type a command-line value as papermill does: True/False/None, then int, then float, else str."""
    if raw == "True":
        return True
    if raw == "False":
        return False
    if raw == "None":
        return None
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw


def parse_parameters(pairs: list[str]) -> dict[str, ParamValue]:
    """`["lr=0.1", "name=run 1"]` -> `{"lr": 0.1, "name": "run 1"}`; a later KEY wins, as on papermill's CLI."""
    params: dict[str, ParamValue] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"-p {pair!r}: expected KEY=VALUE with KEY a variable name")
        params[key] = resolve_type(value)
    return params


def _literal(value: Any) -> str:
    # Python source that evaluates to value; non-finite floats have no literal.
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    return repr(value)


def parameters_source(params: dict[str, Any]) -> str:
    lines = ["# Parameters"] + [f"{key} = {_literal(value)}" for key, value in params.items()]
    return "\n".join(lines) + "\n"


def _tags(cell: NotebookNode) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def inject_parameters(nb: NotebookNode, params: dict[str, Any]) -> int | None:
    """Put an `injected-parameters` cell right after the `parameters` cell (or first); return its index.

    A notebook that already has an injected cell (an output notebook run again) has it replaced,
    as papermill does. With no parameters nothing is injected and None is returned.
    """
    old = [i for i, cell in enumerate(nb.cells) if INJECTED_TAG in _tags(cell)]
    for index in reversed(old):
        del nb.cells[index]
    nb.metadata.setdefault("gpucell", {})["parameters"] = dict(params)
    if not params:
        return None
    cell = nbformat.v4.new_code_cell(parameters_source(params))
    cell.metadata["tags"] = [INJECTED_TAG]
    marked = [i for i, c in enumerate(nb.cells) if PARAMETERS_TAG in _tags(c)]
    # papermill: after the first `parameters` cell; with none, at the top (values still bind first).
    index = marked[0] + 1 if marked else 0
    nb.cells.insert(index, cell)
    return index

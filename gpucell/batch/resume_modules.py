"""--resume: a cell that calls into an imported module, or assigns on one, may change process state no name shows."""

from __future__ import annotations

import ast

from nbformat import NotebookNode


def _body(source: str) -> str:
    stripped = source.lstrip()
    if stripped.startswith("%%"):
        return stripped.partition("\n")[2]
    # Line magics and shell escapes are not Python; they are judged elsewhere (always re-run).
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(_body(source))
    except SyntaxError:
        return None


def imported_names(cells: list[NotebookNode]) -> frozenset[str]:
    """Names bound to modules by `import m`, `import m as n`, `from pkg import sub` anywhere in these cells."""
    names: set[str] = set()
    for cell in cells:
        tree = _parse(cell.source) if cell.cell_type == "code" else None
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, ast.Import):
                names.update((a.asname or a.name.split(".")[0]) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                # `from os import path` binds a module; `from os import getcwd` a function: both reach module state.
                names.update((a.asname or a.name) for a in node.names if a.name != "*")
    return frozenset(names)


def _root(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def writes_module_state(source: str, modules: frozenset[str]) -> bool:
    """True when the cell calls something reached through a module (`sys.path.insert`, `os.chdir`, `np.random.seed`)
    or assigns/deletes on one (`torch.backends.cudnn.benchmark = True`): such a cell is re-run on resume."""
    tree = _parse(source)
    if tree is None or not modules:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and _root(func) in modules:
                return True
            if isinstance(func, ast.Name) and func.id in modules:
                return True   # from os import chdir; chdir('lib')
        targets: list[ast.expr] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        if any(isinstance(t, (ast.Attribute, ast.Subscript)) and _root(t) in modules for t in targets):
            return True
    return False

"""Which names an IPython cell reads, binds and deletes at top level, found from its syntax tree."""

from __future__ import annotations

import ast
import difflib
import re
import warnings
from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, Union

from IPython.core.inputtransformer2 import TransformerManager

__all__ = ["CellNames", "CellSyntaxError", "analyze"]


@dataclass(frozen=True)
class CellNames:
    """What one cell does to the module namespace it runs in.

    ``reads`` and ``assigns`` are conservative: a name read or bound only on some paths (or only
    when a function defined in the cell is called) is listed. ``assigns`` keeps a name that is
    deleted later (the cell may stop half-way), so a name can be in both ``assigns`` and
    ``deletes``: whether it exists after the run decides.
    """

    reads: tuple[str, ...]
    assigns: tuple[str, ...]
    deletes: tuple[str, ...]
    last_expr: bool
    star_import: bool = False


class CellSyntaxError(SyntaxError):
    """A cell that does not parse; ``str()`` is one line naming the user's line and its text."""

    def __str__(self) -> str:
        where = f"line {self.lineno}: " if self.lineno else ""
        text = (self.text or "").strip()
        if len(text) > 120:
            text = text[:117] + "..."
        return f"{where}{self.msg}: {text!r}" if text else f"{where}{self.msg}"


# One shared instance: transform_cell keeps no state between calls.
_TRANSFORMER = TransformerManager()


def analyze(source: str) -> CellNames:
    """Return the names ``source`` (raw IPython cell text) reads, binds and deletes at top level."""
    tree, transformed = _parse(source)
    walker = _Walker()
    try:
        walker.stmts(tree.body)
    except _CompileCheck as problem:
        raise _syntax_error(problem.msg, problem.lineno, None, source, transformed) from None
    except RecursionError:
        raise CellSyntaxError("cell is too deeply nested to analyze") from None
    module = walker.module
    reads = module.reads
    if transformed is not None and "get_ipython" not in source:
        # Introduced by IPython's own rewriting of %magics and !commands, not read by the user.
        reads.pop("get_ipython", None)
    bound = module.flow if module.flow is not None else set()
    return CellNames(
        reads=tuple(reads),
        assigns=tuple(module.assigns),
        deletes=tuple(name for name in module.deleted if name not in bound),
        last_expr=bool(tree.body) and isinstance(tree.body[-1], ast.Expr),
        star_import=module.star_import,
    )


# --------------------------------------------------------------------------- parsing


def _parse(source: str) -> tuple[ast.Module, str | None]:
    """Parse the cell; the second item is IPython's rewritten text, or None if none was needed."""
    try:
        # Plain Python is left unchanged by IPython's transforms; skipping them halves the cost and
        # keeps line numbers exact.
        return _quiet_parse(source), None
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        pass
    transformed = _TRANSFORMER.transform_cell(source)
    try:
        return _quiet_parse(transformed), transformed
    except SyntaxError as exc:
        raise _syntax_error(exc.msg, exc.lineno, exc.offset, source, transformed) from None
    except ValueError as exc:  # e.g. a NUL byte (a SyntaxError only from Python 3.12)
        raise CellSyntaxError(str(exc)) from None
    except (RecursionError, MemoryError):
        raise CellSyntaxError("cell is too deeply nested to parse") from None


def _quiet_parse(text: str, mode: str = "exec") -> Any:
    # Warnings such as "invalid escape sequence" are the run's to show, not the analysis's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(text, mode=mode)


def _syntax_error(
    msg: str, lineno: int | None, offset: int | None, source: str, transformed: str | None
) -> CellSyntaxError:
    """Build the error in the user's coordinates: original line number and original text."""
    original = source.splitlines()
    if transformed is None or not lineno:
        text = original[lineno - 1] if lineno and 0 < lineno <= len(original) else ""
        return CellSyntaxError(msg, ("<cell>", lineno, offset, text))
    rewritten = transformed.splitlines()
    user_line = _user_lineno(original, rewritten, lineno)
    text = original[user_line - 1] if 0 < user_line <= len(original) else ""
    if offset is not None and 0 < lineno <= len(rewritten):
        new_text = rewritten[lineno - 1]
        if new_text.strip() == text.strip():
            offset += (len(text) - len(text.lstrip())) - (len(new_text) - len(new_text.lstrip()))
        else:
            offset = None
    # Python's messages cite other lines too ("after 'if' statement on line 2").
    msg = re.sub(
        r"\bline (\d+)", lambda m: f"line {_user_lineno(original, rewritten, int(m.group(1)))}", msg
    )
    return CellSyntaxError(msg, ("<cell>", user_line, offset, text))


def _user_lineno(original: list[str], rewritten: list[str], lineno: int) -> int:
    """Map a line of IPython's rewritten cell back to the user's line (dedent, dropped blanks,
    prompts and joined continuation lines all shift or merge lines)."""
    if not original:
        return 1
    matcher = difflib.SequenceMatcher(
        None, [line.strip() for line in original], [line.strip() for line in rewritten], False
    )
    index = lineno - 1
    for _tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if j1 <= index < j2:
            return max(1, min(i1 + (index - j1), max(i1, i2 - 1), len(original) - 1) + 1)
    return len(original)


class _CompileCheck(Exception):
    """A mistake ast.parse lets through but compiling would reject (found while walking)."""

    def __init__(self, msg: str, lineno: int) -> None:
        super().__init__(msg)
        self.msg = msg
        self.lineno = lineno


# --------------------------------------------------------------------------- scopes


# What is known at one point of module or class code: the names surely bound there. None stands
# for "unreachable" (after raise/break/continue); it is the identity of _merge.
_State = Union[set[str], None]


def _copy(state: _State) -> _State:
    return None if state is None else set(state)


def _merge(a: _State, b: _State) -> _State:
    """Join two paths; mutates and returns ``a`` (callers own both)."""
    if a is None:
        return b
    if b is not None:
        a &= b
    return a


class _TryBlock:
    """Names deleted anywhere in a try statement so far: a handler may start after any of it."""

    __slots__ = ("deleted",)

    def __init__(self) -> None:
        self.deleted: set[str] = set()


class _ModuleScope:
    """The cell's own namespace, followed statement by statement (LOAD_NAME semantics)."""

    def __init__(self) -> None:
        self.flow: _State = set()
        self.reads: dict[str, None] = {}  # dicts keep first-seen order
        self.assigns: dict[str, None] = {}
        self.deleted: dict[str, None] = {}
        self.tries: list[_TryBlock] = []
        # Names of functions being defined: their bodies run only once the name is bound.
        self.defining: set[str] = set()
        self.star_import = False
        self.future_annotations = False

    def load(self, name: str) -> None:
        flow = self.flow
        if flow is not None and name not in flow:
            self.reads[name] = None

    def store(self, name: str, definite: bool = True, record: bool = True) -> None:
        if record:
            self.assigns[name] = None
        if definite and self.flow is not None:
            self.flow.add(name)

    def delete(self, name: str) -> None:
        self.load(name)  # `del x` of a name the cell did not bind needs it to exist
        self.deleted[name] = None
        self.unbind(name)

    def unbind(self, name: str) -> None:
        for block in self.tries:
            block.deleted.add(name)
        if self.flow is not None:
            self.flow.discard(name)

    def resolve(self, name: str, now: bool) -> None:
        """A name a nested scope reads from here; ``now`` is False for function bodies."""
        if now or name not in self.defining:
            self.load(name)


class _ClassScope:
    """A class body: runs at once, own namespace first, then the enclosing scopes."""

    def __init__(self, parent: _Scope, module: _ModuleScope) -> None:
        self.flow: _State = set()
        self.parent = parent
        self.module = module
        self.globals: set[str] = set()
        self.nonlocals: set[str] = set()
        self.tries: list[_TryBlock] = []

    def load(self, name: str) -> None:
        if name in self.globals:
            self.module.load(name)
            return
        flow = self.flow
        if flow is not None and name not in flow:
            self.parent.resolve(name, True)

    def store(self, name: str, definite: bool = True, record: bool = True) -> None:
        if name in self.globals:
            self.module.store(name, definite, record)
            return
        if definite and name not in self.nonlocals and self.flow is not None:
            self.flow.add(name)

    def delete(self, name: str) -> None:
        if name in self.globals:
            self.module.delete(name)
            return
        self.load(name)
        self.unbind(name)

    def unbind(self, name: str) -> None:
        for block in self.tries:
            block.deleted.add(name)
        if self.flow is not None:
            self.flow.discard(name)

    def resolve(self, name: str, now: bool) -> None:
        # Functions and comprehensions inside a class body do not see the class namespace.
        self.parent.resolve(name, now)


class _FunctionScope:
    """A function, lambda or comprehension: a name bound anywhere in it is local throughout, so
    no flow is followed; what is left unresolved goes to the enclosing scope when it ends."""

    def __init__(
        self, parent: _Scope, module: _ModuleScope, runs_now: bool, comprehension: bool = False
    ) -> None:
        self.flow: _State = None
        self.parent = parent
        self.module = module
        self.runs_now = runs_now
        self.comprehension = comprehension
        self.uses: dict[str, None] = {}
        self.stored: dict[str, None] = {}
        self.deleted: dict[str, None] = {}
        self.child_free: dict[str, None] = {}
        self.globals: set[str] = set()
        self.nonlocals: set[str] = set()
        self.passthrough: set[str] = set()  # walrus targets of a comprehension
        self.tries: list[_TryBlock] = []

    def load(self, name: str) -> None:
        self.uses[name] = None

    def store(self, name: str, definite: bool = True, record: bool = True) -> None:
        self.stored[name] = None

    def delete(self, name: str) -> None:
        self.stored[name] = None  # `del x` makes x local, like a binding
        self.deleted[name] = None

    def unbind(self, name: str) -> None:
        pass

    def resolve(self, name: str, now: bool) -> None:
        self.child_free[name] = None

    def finish(self) -> None:
        """Hand the names this scope does not bind itself to the scope that encloses it."""
        local = self.stored.keys() - self.globals - self.nonlocals - self.passthrough
        module = self.module
        for name in chain(self.uses, self.child_free):
            if name in self.globals:
                module.resolve(name, self.runs_now)
            elif name not in local:
                self.parent.resolve(name, self.runs_now)
        for name in self.stored:
            if name in self.globals:
                # Binds the module name, but only if and when the function is called.
                module.store(name, definite=False)
        for name in self.deleted:
            if name in self.globals:
                module.resolve(name, self.runs_now)  # it must exist to be deleted
                module.deleted[name] = None


_Scope = Union[_ModuleScope, _ClassScope, _FunctionScope]


class _Loop:
    __slots__ = ("breaks", "continues")

    def __init__(self) -> None:
        self.breaks: list[_State] = []
        self.continues: list[_State] = []


# --------------------------------------------------------------------------- the walker

_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_NOT_CHILDREN = frozenset(
    {"ctx", "op", "ops", "conversion", "kind", "attr", "arg", "id", "type_comment"}
)
_FIELDS: dict[type, tuple[str, ...]] = {}
_COND_ENTER = ("cond", 1)
_COND_LEAVE = ("cond", -1)


def _child_fields(cls: type) -> tuple[str, ...]:
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = tuple(f for f in getattr(cls, "_fields", ()) if f not in _NOT_CHILDREN)
        _FIELDS[cls] = fields
    return fields


def _is_true_constant(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and bool(node.value)


def _irrefutable(pattern: ast.pattern) -> bool:
    if isinstance(pattern, ast.MatchAs):
        return pattern.pattern is None
    if isinstance(pattern, ast.MatchOr):
        return any(_irrefutable(p) for p in pattern.patterns)
    return False


class _Walker:
    """One pass over the tree; statements recurse (the parser bounds their depth), expressions
    use an explicit stack so that `a + b + ... ` with thousands of terms is fine."""

    def __init__(self) -> None:
        self.module = _ModuleScope()
        self.scope: _Scope = self.module
        self.loops: list[_Loop] = []
        self.cond = 0  # > 0 inside the part of an expression that may not run (`a and (b := 1)`)
        self.handlers: dict[type[ast.AST], Callable[[Any], None]] = {
            ast.Expr: self._expr_stmt,
            ast.Assign: self._assign,
            ast.AugAssign: self._augassign,
            ast.AnnAssign: self._annassign,
            ast.Delete: self._delete,
            ast.Import: self._import,
            ast.ImportFrom: self._import_from,
            ast.If: self._if,
            ast.For: self._loop,
            ast.AsyncFor: self._loop,
            ast.While: self._loop,
            ast.With: self._with,
            ast.AsyncWith: self._with,
            ast.Try: self._try,
            ast.Raise: self._raise,
            ast.Assert: self._assert,
            ast.Return: self._return,
            ast.Break: self._break,
            ast.Continue: self._continue,
            ast.Pass: self._pass,
            ast.Global: self._global,
            ast.Nonlocal: self._nonlocal,
            ast.FunctionDef: self._function,
            ast.AsyncFunctionDef: self._function,
            ast.ClassDef: self._class,
            ast.Match: self._match,
        }
        try_star = getattr(ast, "TryStar", None)
        if try_star is not None:
            self.handlers[try_star] = self._try
        type_alias = getattr(ast, "TypeAlias", None)
        if type_alias is not None:
            self.handlers[type_alias] = self._type_alias

    # ---- scope switching

    def _enter(self, scope: _Scope) -> tuple[_Scope, list[_Loop], int]:
        saved = (self.scope, self.loops, self.cond)
        self.scope, self.loops, self.cond = scope, [], 0
        return saved

    def _leave(self, saved: tuple[_Scope, list[_Loop], int]) -> None:
        self.scope, self.loops, self.cond = saved

    # ---- statements

    def stmts(self, body: list[ast.stmt]) -> None:
        handlers = self.handlers
        for node in body:
            handler = handlers.get(node.__class__)
            if handler is None:
                self._generic_stmt(node)
            else:
                handler(node)

    def _generic_stmt(self, node: ast.AST) -> None:
        # Statements newer than this walker: read what they mention, conservatively.
        for field in _child_fields(node.__class__):
            value = getattr(node, field, None)
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, ast.stmt):
                    self.stmts([item])
                elif isinstance(item, ast.expr):
                    self.expr(item)

    def _expr_stmt(self, node: ast.Expr) -> None:
        self.expr(node.value)

    def _pass(self, node: ast.stmt) -> None:
        pass

    def _assign(self, node: ast.Assign) -> None:
        self.expr(node.value)
        for target in node.targets:
            self._target(target)

    def _augassign(self, node: ast.AugAssign) -> None:
        target = node.target
        if isinstance(target, ast.Name):
            self.scope.load(target.id)
            self.expr(node.value)
            self.scope.store(target.id)
        else:
            self.expr(target)
            self.expr(node.value)

    def _annassign(self, node: ast.AnnAssign) -> None:
        scope = self.scope
        in_function = isinstance(scope, _FunctionScope)
        if node.value is not None:
            self.expr(node.value)
        target = node.target
        if node.value is not None:
            self._target(target)
        elif isinstance(target, ast.Name):
            if in_function:
                scope.store(target.id)  # `x: int` alone still makes x local to the function
        elif not in_function:
            self.expr(target)
        # Annotations of local variables are never evaluated; module and class ones are.
        if not in_function and not self.module.future_annotations:
            self.expr(node.annotation)

    def _delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._del_target(target)

    def _del_target(self, target: ast.expr) -> None:
        if isinstance(target, ast.Name):
            self.scope.delete(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._del_target(element)
        else:
            self.expr(target)

    def _import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.scope.store(alias.asname or alias.name.partition(".")[0])

    def _import_from(self, node: ast.ImportFrom) -> None:
        if node.module == "__future__" and any(a.name == "annotations" for a in node.names):
            self.module.future_annotations = True
        for alias in node.names:
            if alias.name == "*":
                if self.scope is self.module:
                    self.module.star_import = True
            else:
                self.scope.store(alias.asname or alias.name)

    def _global(self, node: ast.Global) -> None:
        scope = self.scope
        if not isinstance(scope, _ModuleScope):
            scope.globals.update(node.names)

    def _nonlocal(self, node: ast.Nonlocal) -> None:
        scope = self.scope
        if isinstance(scope, _ModuleScope):
            raise _CompileCheck("nonlocal declaration not allowed at module level", node.lineno)
        scope.nonlocals.update(node.names)

    def _return(self, node: ast.Return) -> None:
        if not isinstance(self.scope, _FunctionScope):
            raise _CompileCheck("'return' outside function", node.lineno)
        if node.value is not None:
            self.expr(node.value)
        self.scope.flow = None

    def _raise(self, node: ast.Raise) -> None:
        if node.exc is not None:
            self.expr(node.exc)
        if node.cause is not None:
            self.expr(node.cause)
        self.scope.flow = None

    def _assert(self, node: ast.Assert) -> None:
        self.expr(node.test)
        if node.msg is not None:
            self.expr(node.msg)

    def _break(self, node: ast.Break) -> None:
        if self.loops:
            self.loops[-1].breaks.append(_copy(self.scope.flow))
        self.scope.flow = None

    def _continue(self, node: ast.Continue) -> None:
        if self.loops:
            self.loops[-1].continues.append(_copy(self.scope.flow))
        self.scope.flow = None

    def _if(self, node: ast.If) -> None:
        self.expr(node.test)
        scope = self.scope
        start = scope.flow
        scope.flow = _copy(start)
        self.stmts(node.body)
        after_body = scope.flow
        scope.flow = start
        self.stmts(node.orelse)
        scope.flow = _merge(after_body, scope.flow)

    def _loop(self, node: ast.For | ast.AsyncFor | ast.While) -> None:
        scope = self.scope
        if isinstance(node, ast.While):
            self.expr(node.test)
            target = None
            endless = _is_true_constant(node.test)
        else:
            self.expr(node.iter)
            target = node.target
            endless = False
        entry = scope.flow
        # A `del` in the body changes what the next iteration starts with: walk again from the
        # reduced state (rarely needed, and twice at most in practice).
        for _ in range(3):
            loop = _Loop()
            self.loops.append(loop)
            scope.flow = _copy(entry)
            if target is not None:
                self._target(target)
            self.stmts(node.body)
            self.loops.pop()
            back = scope.flow
            for state in loop.continues:
                back = _merge(back, state)
            if entry is None or back is None or entry <= back:
                break
            entry = _merge(_copy(entry), _copy(back))
        scope.flow = None if endless else _merge(_copy(entry), back)
        self.stmts(node.orelse)
        out = scope.flow
        for state in loop.breaks:
            out = _merge(out, state)
        scope.flow = out

    def _with(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.expr(item.context_expr)
            if item.optional_vars is not None:
                self._target(item.optional_vars)
        # The body is taken to run to its end: a context manager that swallows an exception
        # (contextlib.suppress) is rare, and assuming it everywhere would make every result of
        # `with torch.no_grad(): out = model(x)` look like a read of the old `out`.
        self.stmts(node.body)

    def _try(self, node: ast.Try) -> None:
        scope = self.scope
        block = _TryBlock()
        scope.tries.append(block)
        entry = _copy(scope.flow)
        self.stmts(node.body)
        self.stmts(node.orelse)
        out = scope.flow
        for handler in node.handlers:
            # The exception may have come after any part of the body.
            scope.flow = _without(entry, block)
            if handler.type is not None:
                self.expr(handler.type)
            if handler.name:
                scope.store(handler.name, record=False)
            self.stmts(handler.body)
            if handler.name:
                scope.unbind(handler.name)  # Python deletes it when the handler ends
            out = _merge(out, scope.flow)
        scope.tries.pop()
        for outer in scope.tries:
            outer.deleted |= block.deleted
        if not node.finalbody:
            scope.flow = out
            return
        start = _without(entry, block)
        scope.flow = _copy(start)
        in_finally = _TryBlock()  # records what the finally block deletes
        scope.tries.append(in_finally)
        self.stmts(node.finalbody)
        scope.tries.pop()
        end = scope.flow
        if out is None or end is None:
            scope.flow = None
            return
        # Apply what the finally block did to the normal way out.
        scope.flow = (out - in_finally.deleted) | end

    def _match(self, node: ast.Match) -> None:
        self.expr(node.subject)
        scope = self.scope
        start = scope.flow
        out: _State = None
        exhaustive = False
        for case in node.cases:
            scope.flow = _copy(start)
            self._pattern(case.pattern)
            if case.guard is not None:
                self.expr(case.guard)
            self.stmts(case.body)
            out = _merge(out, scope.flow)
            if case.guard is None and _irrefutable(case.pattern):
                exhaustive = True
        scope.flow = out if exhaustive else _merge(out, start)

    def _pattern(self, pattern: ast.pattern) -> None:
        if isinstance(pattern, ast.MatchValue):
            self.expr(pattern.value)
        elif isinstance(pattern, ast.MatchSequence):
            for sub in pattern.patterns:
                self._pattern(sub)
        elif isinstance(pattern, ast.MatchMapping):
            for key in pattern.keys:
                self.expr(key)
            for sub in pattern.patterns:
                self._pattern(sub)
            if pattern.rest:
                self.scope.store(pattern.rest)
        elif isinstance(pattern, ast.MatchClass):
            self.expr(pattern.cls)
            for sub in chain(pattern.patterns, pattern.kwd_patterns):
                self._pattern(sub)
        elif isinstance(pattern, ast.MatchStar):
            if pattern.name:
                self.scope.store(pattern.name)
        elif isinstance(pattern, ast.MatchAs):
            if pattern.pattern is not None:
                self._pattern(pattern.pattern)
            if pattern.name:
                self.scope.store(pattern.name)
        elif isinstance(pattern, ast.MatchOr):
            for sub in pattern.patterns:
                self._pattern(sub)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.expr(decorator)
        self._defaults(node.args)
        if not self.module.future_annotations:
            for arg in _all_args(node.args):
                if arg.annotation is not None:
                    self.expr(arg.annotation)
            if node.returns is not None:
                self.expr(node.returns)
        scope = self.scope
        function = _FunctionScope(scope, self.module, runs_now=False)
        own = self._start_defining(node.name)
        saved = self._enter(function)
        try:
            for arg in _all_args(node.args):
                function.store(arg.arg)
            self.stmts(node.body)
        finally:
            self._leave(saved)
        function.finish()
        if own:
            self.module.defining.discard(node.name)
        scope.store(node.name)

    def _class(self, node: ast.ClassDef) -> None:
        for decorator in node.decorator_list:
            self.expr(decorator)
        for base in node.bases:
            self.expr(base)
        for keyword in node.keywords:
            self.expr(keyword.value)
        scope = self.scope
        body = _ClassScope(scope, self.module)
        # Unlike a def's body, code in a class body can run before the class name is bound
        # (`x = helper()` calling a method that names the class), so the name stays a read.
        saved = self._enter(body)
        try:
            self.stmts(node.body)
        finally:
            self._leave(saved)
        scope.store(node.name)

    def _type_alias(self, node: Any) -> None:
        # `type X[T] = ...` (Python 3.12+): the value is evaluated lazily, in a scope of its own.
        inner = _FunctionScope(self.scope, self.module, runs_now=False)
        saved = self._enter(inner)
        try:
            for param in node.type_params:
                inner.store(param.name)
            self.expr(node.value)
        finally:
            self._leave(saved)
        inner.finish()
        self.scope.store(node.name.id)

    def _start_defining(self, name: str) -> bool:
        # A module-level function may call itself (recursion): its body runs once the name is
        # bound, so that is not a read of an old value. (Unsound only for a decorator that calls
        # the function before returning it, which is rare and odd.)
        if self.scope is self.module and name not in self.module.defining:
            self.module.defining.add(name)
            return True
        return False

    def _defaults(self, args: ast.arguments) -> None:
        for default in args.defaults:
            self.expr(default)
        for kw_default in args.kw_defaults:
            if kw_default is not None:
                self.expr(kw_default)

    # ---- targets

    def _target(self, target: ast.expr) -> None:
        if isinstance(target, ast.Name):
            self.scope.store(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._target(element)
        elif isinstance(target, ast.Starred):
            self._target(target.value)
        else:  # `a.b = v`, `a[i] = v`: reads a (and i)
            self.expr(target)

    def _walrus_store(self, name: str) -> None:
        scope = self.scope
        through_comprehension = False
        # A walrus inside a comprehension binds in the nearest enclosing non-comprehension scope.
        while isinstance(scope, _FunctionScope) and scope.comprehension:
            scope.passthrough.add(name)
            scope = scope.parent
            through_comprehension = True
        scope.store(name, definite=not through_comprehension and self.cond == 0)

    # ---- expressions

    def expr(self, root: ast.expr) -> None:
        stack: list[Any] = [root]  # AST nodes, and ("cond", ±1) / ("bind", name) markers
        pop = stack.pop
        push = stack.append
        load = self.scope.load  # nested scopes (lambda, comprehension) are walked by other calls
        while stack:
            node = pop()
            cls = node.__class__
            if cls is ast.Name:
                load(node.id)
            elif cls is ast.Constant:
                continue
            elif cls is ast.Attribute:
                push(node.value)
            elif cls is ast.Call:
                func = node.func
                if func.__class__ is ast.Attribute and func.attr in _IPYTHON_CALLS:
                    _magic_code(node, self)
                if func.__class__ is ast.Attribute and func.attr in _AT_NAME_CALLS:
                    _at_names(node, self)
                elif func.__class__ is ast.Name and func.id in _CODE_CALLS:
                    _code_string(node, self, func.id)
                for keyword in reversed(node.keywords):
                    push(keyword.value)
                stack.extend(reversed(node.args))
                push(func)
            elif cls is ast.BinOp:
                push(node.right)
                push(node.left)
            elif cls is ast.Subscript:
                if _is_globals_item(node):   # globals()['name'] reads (or binds) that name
                    load(node.slice.value)
                push(node.slice)
                push(node.value)
            elif cls is tuple:
                kind, value = node
                if kind == "cond":
                    self.cond += value
                else:
                    self._walrus_store(value)
            elif cls is ast.NamedExpr:
                push(("bind", node.target.id))
                push(node.value)
            elif cls is ast.BoolOp:
                values = node.values
                push(_COND_LEAVE)
                stack.extend(reversed(values[1:]))
                push(_COND_ENTER)
                push(values[0])
            elif cls is ast.IfExp:
                push(_COND_LEAVE)
                push(node.orelse)
                push(node.body)
                push(_COND_ENTER)
                push(node.test)
            elif cls in _COMPREHENSIONS:
                self._comprehension(node)
            elif cls is ast.Lambda:
                self._lambda(node)
            elif cls is ast.Dict:
                # Evaluated key, value, key, value...; `**m` has a None key.
                for key, value in reversed(list(zip(node.keys, node.values))):
                    push(value)
                    if key is not None:
                        push(key)
            else:
                for field in reversed(_child_fields(cls)):
                    value = getattr(node, field)
                    if value is None:
                        continue
                    if value.__class__ is list:
                        for item in reversed(value):
                            if isinstance(item, ast.AST):
                                push(item)
                    elif isinstance(value, ast.AST):
                        push(value)

    def _comprehension(
        self, node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp
    ) -> None:
        generators = node.generators
        # The first iterable is evaluated in the enclosing scope, the rest inside.
        self.expr(generators[0].iter)
        inner = _FunctionScope(self.scope, self.module, runs_now=True, comprehension=True)
        saved = self._enter(inner)
        try:
            for index, generator in enumerate(generators):
                if index:
                    self.expr(generator.iter)
                self._target(generator.target)
                for condition in generator.ifs:
                    self.expr(condition)
            if isinstance(node, ast.DictComp):
                self.expr(node.key)
                self.expr(node.value)
            else:
                self.expr(node.elt)
        finally:
            self._leave(saved)
        inner.finish()

    def _lambda(self, node: ast.Lambda) -> None:
        self._defaults(node.args)
        function = _FunctionScope(self.scope, self.module, runs_now=False)
        saved = self._enter(function)
        try:
            for arg in _all_args(node.args):
                function.store(arg.arg)
            self.expr(node.body)
        finally:
            self._leave(saved)
        function.finish()


def _all_args(args: ast.arguments) -> list[ast.arg]:
    found = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    if args.vararg is not None:
        found.append(args.vararg)
    if args.kwarg is not None:
        found.append(args.kwarg)
    return found


def _without(entry: _State, block: _TryBlock) -> _State:
    """The state a handler starts from: the try's entry less what the body may have undone."""
    return None if entry is None else entry - block.deleted


# --------------------------------------------------------------------------- IPython rewrites

# Magics whose argument is Python code run in the user namespace (`%time y = f(x)`), and those
# that run it in a namespace of their own (`%timeit f(x)`: reads only).
_IPYTHON_CALLS = frozenset({"run_line_magic", "run_cell_magic", "system", "getoutput"})
_INLINE_CODE_MAGICS = frozenset({"time", "prun", "capture"})
_OWN_SCOPE_MAGICS = frozenset({"timeit"})
# The options each of them takes before its code (flags, and flags with a value).
_MAGIC_OPTIONS = {
    "time": re.compile(r"(?!)"),
    "timeit": re.compile(r"\s*(?:-[nrp]\s*\S+|-[tcqo])(?=\s)"),
    "prun": re.compile(r"\s*(?:-[lsTD]\s*\S+|-[rq])(?=\s)"),
    "capture": re.compile(r"\s*--no-(?:stdout|stderr|display)(?=\s)"),
}
_DOLLAR_NAME = re.compile(r"(?<!\$)\$([A-Za-z_]\w*)")
_BRACED = re.compile(r"(?<!\{)\{([^{}]+)\}(?!\})")


def _magic_code(call: ast.Call, walker: _Walker) -> None:
    """Read what IPython's rewritten `%magic`/`!cmd` calls will read: `$name` and `{expr}`
    expansions, and the code given to %time, %timeit, %prun, %%capture."""
    func = call.func
    if not (
        isinstance(func, ast.Attribute)
        and func.attr in _IPYTHON_CALLS
        and isinstance(func.value, ast.Call)
        and isinstance(func.value.func, ast.Name)
        and func.value.func.id == "get_ipython"
    ):
        return
    texts = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if len(texts) != len(call.args):
        return
    if func.attr in ("system", "getoutput"):
        _expansions(texts[0] if texts else "", walker)
        return
    if len(texts) < 2:
        return
    magic, line = texts[0], texts[1]
    body = texts[2] if len(texts) > 2 else None
    code_magic = magic in _INLINE_CODE_MAGICS or magic in _OWN_SCOPE_MAGICS
    if not code_magic:
        _expansions(line, walker)
        return
    line = _strip_options(magic, line)
    pieces: list[str] = []
    if body is None:
        pieces.append(line)
    else:
        if magic == "timeit":
            pieces.append(line)  # %%timeit's line is setup code
        elif magic == "capture" and line.strip().isidentifier():
            walker.scope.store(line.strip())  # `%%capture out` binds the captured output
        pieces.append(body)
    inner = _FunctionScope(walker.scope, walker.module, runs_now=True)
    own_scope = magic in _OWN_SCOPE_MAGICS
    saved = walker._enter(inner) if own_scope else None
    try:
        for piece in pieces:
            try:
                code = _quiet_parse(_TRANSFORMER.transform_cell(piece) if piece.strip() else "")
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                continue  # the magic will report it; nothing more to learn here
            walker.stmts(code.body)
    finally:
        if saved is not None:
            walker._leave(saved)
    if own_scope:
        inner.finish()


# pandas' `df.query('a > @thr')`, `df.eval(...)`, `pd.eval(...)` read `@name` from the caller's namespace.
_AT_NAME_CALLS = frozenset({"query", "eval"})
_AT_NAME = re.compile(r"@([A-Za-z_]\w*)")


_CODE_CALLS = frozenset({"exec", "eval"})


def _is_globals_item(node: ast.Subscript) -> bool:
    value, key = node.value, node.slice
    return (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "globals"
            and not value.args and isinstance(key, ast.Constant) and isinstance(key.value, str))


def _code_string(call: ast.Call, walker: _Walker, kind: str) -> None:
    """`exec('...')` / `eval('...')` of a literal string in the cell's namespace: its code is the cell's."""
    if not call.args or len(call.args) > 1 or call.keywords:   # with explicit namespaces it is not ours
        return
    text = call.args[0]
    if not (isinstance(text, ast.Constant) and isinstance(text.value, str)):
        return
    try:
        code = _quiet_parse(text.value, mode=kind)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return   # it fails there as it would here
    if kind == "eval":
        walker.expr(code.body)
    else:
        walker.stmts(code.body)


def _at_names(call: ast.Call, walker: _Walker) -> None:
    """`@name` inside a string given to query/eval is a read of `name`."""
    texts = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    texts += [k.value.value for k in call.keywords
              if k.arg == "expr" and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)]
    for text in texts:
        for match in _AT_NAME.finditer(text):
            walker.scope.load(match.group(1))


def _strip_options(magic: str, line: str) -> str:
    option = _MAGIC_OPTIONS[magic]
    while True:
        match = option.match(line + " ")
        if match is None:
            return line
        line = line[match.end():]


def _expansions(text: str, walker: _Walker) -> None:
    """IPython substitutes `$name` and `{expr}` in shell commands and most magic lines."""
    for match in _DOLLAR_NAME.finditer(text):
        walker.scope.load(match.group(1))
    for match in _BRACED.finditer(text):
        try:
            expression = _quiet_parse(match.group(1).strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        walker.expr(expression.body)

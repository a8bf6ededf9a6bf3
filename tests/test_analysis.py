"""Tests of the cell analysis: each construct, syntax errors, and generated cells run for real."""

from __future__ import annotations

import ast
import builtins
import contextlib
import pickle
import textwrap
import warnings
from types import CodeType, TracebackType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from gpucell.namespace.analysis import CellNames, CellSyntaxError, analyze


def names(source: str) -> CellNames:
    return analyze(textwrap.dedent(source))


def reads(source: str) -> set[str]:
    return set(names(source).reads)


def assigns(source: str) -> set[str]:
    return set(names(source).assigns)


# --------------------------------------------------------------------------- reads


def test_assigned_before_read_is_not_read() -> None:
    result = names("x = 1\nprint(x)\n")
    assert result.reads == ("print",)
    assert result.assigns == ("x",)


def test_reads_keep_first_read_order() -> None:
    assert names("c(b)\na(b, c)\nd\n").reads == ("c", "b", "a", "d")


def test_conditional_binding_still_reads() -> None:
    assert reads("if c:\n    x = 1\nprint(x)\n") == {"c", "print", "x"}
    assert reads("if c:\n    x = 1\nelse:\n    x = 2\nprint(x)\n") == {"c", "print"}


def test_branch_that_raises_does_not_weaken_the_other() -> None:
    assert reads("if c:\n    x = 1\nelse:\n    raise E\nx\n") == {"c", "E"}


def test_augmented_assignment_reads_and_assigns() -> None:
    result = names("x += y\n")
    assert result.reads == ("x", "y")
    assert result.assigns == ("x",)
    assert reads("a[i] += 1\n") == {"a", "i"}


def test_attribute_and_subscript_targets_read_their_object() -> None:
    result = names("obj.attr = v\nd[k] = w\n")
    assert set(result.reads) == {"v", "obj", "w", "d", "k"}
    assert result.assigns == ()


def test_comprehension_variables_are_local_and_free_names_read() -> None:
    result = names("y = [a * k for a in b if a > lim]\n")
    assert set(result.reads) == {"b", "k", "lim"}
    assert result.assigns == ("y",)
    assert reads("{k: v for k, v in items}\n{s for s in seq}\n(g for g in gen)\n") == {
        "items",
        "seq",
        "gen",
    }


def test_nested_comprehension_and_inner_iterables() -> None:
    assert reads("[x + y for x in xs for y in range(x) if y < top]\n") == {"xs", "range", "top"}


def test_fstrings_are_read() -> None:
    assert reads("f'{u} {v!r:{w}} {{z}}'\n") == {"u", "v", "w"}


def test_lambda_reads_free_names_not_parameters() -> None:
    result = names("f = lambda p, q=dflt: p + q + free\n")
    assert set(result.reads) == {"dflt", "free"}
    assert result.assigns == ("f",)


def test_function_body_globals_defaults_decorators_annotations() -> None:
    result = names(
        """
        @decorator(arg)
        def f(p: Ann, q=default, *rest: Rest, k: Kw = kd, **kw) -> Ret:
            local = p + q
            return helper(local, glob)
        """
    )
    assert set(result.reads) == {
        "decorator", "arg", "default", "kd", "Ann", "Rest", "Kw", "Ret", "helper", "glob",
    }
    assert result.assigns == ("f",)


def test_function_reading_a_name_bound_before_it_is_not_a_read() -> None:
    assert reads("k = 2\ndef f(x):\n    return x * k\n") == set()


def test_recursive_function_does_not_read_itself() -> None:
    assert reads("def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n") == set()


def test_nested_functions_resolve_through_enclosing_locals() -> None:
    source = """
        def outer():
            x = 1
            def inner():
                return x + y
            return inner
        """
    assert reads(source) == {"y"}


def test_function_local_everywhere_when_bound_anywhere() -> None:
    # `x` is local to f (UnboundLocalError if called), so no global read.
    assert reads("def f():\n    print(x)\n    x = 1\n") == {"print"}


def test_global_declaration_reads_and_assigns() -> None:
    result = names(
        """
        def bump():
            global counter, other
            counter += 1
            return other
        """
    )
    assert set(result.reads) == {"counter", "other"}
    assert result.assigns == ("counter", "bump")


def test_global_in_nested_function_skips_enclosing_local() -> None:
    source = """
        def outer():
            x = 1
            def inner():
                global x
                return x
            return inner
        """
    assert reads(source) == {"x"}


def test_global_delete_in_function_reads_and_deletes() -> None:
    result = names("def drop():\n    global cache\n    del cache\n")
    assert result.reads == ("cache",)
    assert result.deletes == ("cache",)


def test_nonlocal_resolves_in_enclosing_function() -> None:
    source = """
        def counter():
            n = 0
            def bump():
                nonlocal n
                n += step
                return n
            return bump
        """
    assert names(source) == CellNames(("step",), ("counter",), (), False)


def test_comprehension_in_class_body_skips_class_names() -> None:
    # Only the first iterable sees the class namespace; `k` inside is the module's.
    assert reads("class A:\n    k = 2\n    xs = [1]\n    ys = [x * k for x in xs]\n") == {"k"}


def test_class_body_is_flow_sensitive_and_methods_skip_it() -> None:
    result = names(
        """
        class A(Base, metaclass=Meta):
            z = q
            w = z
            def m(self):
                return w, A, helper
        """
    )
    # `w` in the method is the module's w, not the class attribute; `A` could be called while
    # the class body runs, before the name is bound.
    assert set(result.reads) == {"Base", "Meta", "q", "w", "A", "helper"}
    assert result.assigns == ("A",)


def test_class_body_reading_before_binding_reads_global() -> None:
    assert reads("class A:\n    y = x\n    x = 1\n") == {"x"}


def test_annotations() -> None:
    assert names("x: int = v\n") == CellNames(("v", "int"), ("x",), (), False)
    # No value: nothing bound, but a module-level annotation is evaluated.
    assert names("y: Thing\n") == CellNames(("Thing",), (), (), False)
    # Local-variable annotations are never evaluated.
    assert reads("def f():\n    z: Never = 1\n    return z\n") == set()
    assert reads("from __future__ import annotations\ndef f(a: Lazy) -> Lazy: pass\n") == set()


def test_del_of_unbound_name_reads_it() -> None:
    result = names("del x\n")
    assert result.reads == ("x",)
    assert result.deletes == ("x",)
    assert result.assigns == ()


def test_del_after_binding_is_not_a_read() -> None:
    # Still assigned: a cell that stops between the two lines leaves `tmp` bound.
    result = names("tmp = 1\ndel tmp\n")
    assert result == CellNames((), ("tmp",), ("tmp",), False)


def test_rebinding_after_del_cancels_the_delete() -> None:
    result = names("del x\nx = 2\n")
    assert result.deletes == ()
    assert result.assigns == ("x",)


def test_conditional_del_is_both_assigned_and_deleted() -> None:
    result = names("x = 1\nif c:\n    del x\n")
    assert result.assigns == ("x",)
    assert result.deletes == ("x",)


def test_del_targets_in_tuples_and_subscripts() -> None:
    result = names("del a, (b, c[i])\n")
    assert set(result.reads) == {"a", "b", "c", "i"}
    assert result.deletes == ("a", "b")


def test_builtins_are_not_filtered() -> None:
    assert reads("print(len(x))\n") == {"print", "len", "x"}


def test_read_inside_loop_before_binding_is_read() -> None:
    assert reads("for i in r:\n    print(t)\n    t = i\n") == {"r", "print", "t"}


def test_del_in_loop_body_makes_next_iteration_read() -> None:
    # The second iteration reads `x` after the first deleted it.
    assert "x" in reads("x = 1\nfor i in r:\n    y = x\n    del x\n")


def test_loop_targets_and_bindings_are_not_definite_after_the_loop() -> None:
    result = names("for i in r:\n    t = i\nprint(t, i)\n")
    assert set(result.reads) == {"r", "print", "t", "i"}
    assert result.assigns == ("i", "t")


def test_while_true_with_break_binds_definitely() -> None:
    assert reads("while True:\n    x = f()\n    if x:\n        break\nprint(x)\n") == {
        "f",
        "print",
    }


def test_while_walrus_in_test() -> None:
    result = names("while (line := read()):\n    use(line)\n")
    assert set(result.reads) == {"read", "use"}
    assert result.assigns == ("line",)


def test_with_as_and_body() -> None:
    result = names("with open(path) as fh, lock:\n    data = fh.read()\ndata\n")
    assert set(result.reads) == {"open", "path", "lock"}
    assert result.assigns == ("fh", "data")


def test_except_as_is_not_assigned_and_is_gone_after() -> None:
    result = names("try:\n    import foo\nexcept ImportError as err:\n    print(err)\n")
    assert result.assigns == ("foo",)
    assert set(result.reads) == {"ImportError", "print"}
    assert "err" in reads("try:\n    pass\nexcept E as err:\n    pass\nerr\n")


def test_handler_cannot_rely_on_try_body_bindings() -> None:
    source = "try:\n    x = f()\nexcept E:\n    print(x)\nelse:\n    y = x\nx\n"
    assert reads(source) == {"f", "E", "print", "x"}


def test_finally_bindings_hold_after_the_statement() -> None:
    assert reads("try:\n    a = f()\nfinally:\n    b = 1\nprint(a, b)\n") == {"f", "print"}


def test_del_in_finally_is_a_delete() -> None:
    result = names("try:\n    b = f()\nfinally:\n    del b\n    c = 2\nc\n")
    assert result.deletes == ("b",)
    assert "c" not in result.reads


def test_walrus_at_top_level_and_in_comprehension() -> None:
    result = names("print((n := 10), n)\n")
    assert result.reads == ("print",)
    assert result.assigns == ("n",)
    comprehension = names("[y := v for v in data]\nprint(y)\n")
    assert comprehension.assigns == ("y",)
    # The comprehension may run zero times: y may come from outside.
    assert set(comprehension.reads) == {"data", "print", "y"}


def test_walrus_in_short_circuit_is_conditional() -> None:
    assert "b" in reads("a and (b := 1)\nb\n")
    assert "b" not in reads("(b := 1) and a\nb\n")


def test_imports() -> None:
    result = names("import a.b.c\nimport d.e as f\nfrom m import x, y as z\nfrom . import rel\n")
    assert result.assigns == ("a", "f", "x", "z", "rel")
    assert result.reads == ()
    assert not result.star_import


def test_star_import_is_flagged() -> None:
    result = names("from numpy import *\n")
    assert result.star_import
    assert result.assigns == ()
    assert not names("def f():\n    pass\n").star_import


def test_unpacking_targets() -> None:
    result = names("a, (b, *c), [d] = value\nfor i, (j, k) in pairs: pass\n")
    assert result.assigns == ("a", "b", "c", "d", "i", "j", "k")


def test_def_and_class_names_are_assigned() -> None:
    assert names("def f(): pass\nclass C: pass\nasync def g(): pass\n").assigns == ("f", "C", "g")


def test_names_bound_inside_functions_are_local() -> None:
    result = names("def f():\n    inner = 1\n    import os\n    for i in r: pass\n")
    assert result.assigns == ("f",)
    assert result.reads == ("r",)


def test_match_statement_captures_and_reads() -> None:
    result = names(
        """
        match command:
            case Point(x=0, y=yy) if yy > limit:
                pass
            case [first, *rest]:
                pass
            case {"key": value, **others}:
                pass
            case Color.RED | None:
                pass
            case other:
                pass
        """
    )
    assert set(result.reads) == {"command", "Point", "limit", "Color"}
    assert result.assigns == ("yy", "first", "rest", "value", "others", "other")


def test_match_binding_definite_only_with_irrefutable_case() -> None:
    assert "r" in reads("match s:\n    case 1:\n        r = 1\nr\n")
    assert "r" not in reads("match s:\n    case 1:\n        r = 1\n    case _:\n        r = 2\nr\n")


def test_top_level_await_and_async_constructs() -> None:
    result = names(
        "async with session() as s:\n    rows = await s.fetch(q)\nasync for r in rows: pass\n"
    )
    assert set(result.reads) == {"session", "q"}
    assert result.assigns == ("s", "rows", "r")


def test_last_expr() -> None:
    assert names("x = 1\nx\n").last_expr
    assert names("f()\n").last_expr
    assert not names("x = 1\n").last_expr
    assert not names("").last_expr
    assert not names("if x:\n    y\n").last_expr


def test_ipython_syntax_is_transformed() -> None:
    result = names(
        """
        %matplotlib inline
        files = !ls {folder}
        !echo $home
        %time y = f(x)
        obj?
        files
        """
    )
    assert set(result.reads) == {"folder", "home", "f", "x"}
    assert result.assigns == ("files", "y")
    assert result.last_expr


def test_timeit_code_runs_in_its_own_namespace() -> None:
    result = names("%%timeit -n 3 setup = make(n)\ntotal = setup + v\n")
    assert set(result.reads) == {"make", "n", "v"}
    assert result.assigns == ()


def test_timeit_flags_are_not_code() -> None:
    assert names("%timeit -q -n 10 -r3 f(x)\n").reads == ("f", "x")


def test_capture_binds_its_output_name() -> None:
    result = names("%%capture --no-stderr out\ny = g(z)\n")
    assert result.assigns == ("out", "y")
    assert set(result.reads) == {"g", "z"}


def test_cell_magic_time_binds_in_user_namespace() -> None:
    result = names("%%time\nw = u + 1\n")
    assert result.reads == ("u",)
    assert result.assigns == ("w",)


def test_explicit_get_ipython_is_kept() -> None:
    assert "get_ipython" in reads("ip = get_ipython()\n")
    assert "get_ipython" not in reads("%ls\n")


def test_deep_expression_does_not_overflow() -> None:
    result = analyze("x = " + " + ".join(f"v{i}" for i in range(2000)) + "\n")
    assert len(result.reads) == 2000
    # Deeper than Python itself can compile: an error, not a crash.
    with pytest.raises(CellSyntaxError, match="too deeply nested"):
        analyze("x = " + " + ".join(f"v{i}" for i in range(5000)) + "\n")


def test_large_cell() -> None:
    body = "".join(
        f"x{i} = [a * {i} for a in range(n) if a > b]\nif x{i}:\n    y = f(x{i}, k=z)\n"
        f"def g{i}(p, q=d):\n    return p + q + e + x{i}\n"
        for i in range(200)
    )
    result = analyze(body)
    assert set(result.reads) == {"range", "n", "b", "f", "z", "d", "e"}
    assert len(result.assigns) == 401


# --------------------------------------------------------------------------- syntax errors


def test_syntax_error_names_line_and_text() -> None:
    with pytest.raises(CellSyntaxError) as info:
        analyze("a = 1\nb = 2\nx = = 1\n")
    assert str(info.value) == "line 3: invalid syntax: 'x = = 1'"
    assert info.value.lineno == 3
    assert isinstance(info.value, SyntaxError)


def test_syntax_error_line_is_the_users_after_transforms() -> None:
    # Leading blank lines and indentation are dropped by IPython before parsing.
    with pytest.raises(CellSyntaxError) as info:
        analyze("\n\n  %time x\n  y = (\n")
    assert info.value.lineno == 4
    assert str(info.value) == "line 4: '(' was never closed: 'y = ('"
    with pytest.raises(CellSyntaxError) as info:
        analyze("%time a \\\n  b\nok = 1\nz = = 1\n")
    assert str(info.value) == "line 4: invalid syntax: 'z = = 1'"


def test_syntax_error_message_mentions_user_lines() -> None:
    with pytest.raises(CellSyntaxError) as info:
        analyze("\n\n%time x\nif a:\nb = 1\n")
    assert str(info.value).startswith("line 5: expected an indented block after 'if' statement")
    assert "on line 4" in str(info.value)
    assert "\n" not in str(info.value)


def test_errors_found_beyond_parsing() -> None:
    for source, message in [
        ("nonlocal x\n", "line 1: nonlocal declaration not allowed at module level: 'nonlocal x'"),
        ("x = 1\nreturn x\n", "line 2: 'return' outside function: 'return x'"),
    ]:
        with pytest.raises(CellSyntaxError) as info:
            analyze(source)
        assert str(info.value) == message


def test_syntax_error_survives_pickling() -> None:
    with pytest.raises(CellSyntaxError) as info:
        analyze("x = = 1\n")
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, CellSyntaxError)
    assert str(copy) == str(info.value)


def test_null_byte_is_a_cell_syntax_error() -> None:
    with pytest.raises(CellSyntaxError):
        analyze("x = 1\n\0\n")


_FRAGMENTS = st.sampled_from(
    list("ab =+-()[]{}:%!?$\\\n\t'\",.;*@0123456789")
    + ["if ", "for ", "in ", "lambda ", "def ", "class ", "del ", "%%time\n", "match ", "case "]
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(source=st.lists(_FRAGMENTS, max_size=30).map("".join))
def test_any_text_gives_names_or_a_one_line_error(source: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing leaks to the user's stderr either
        try:
            analyze(source)
        except CellSyntaxError as exc:
            assert "\n" not in str(exc)


# --------------------------------------------------------------------------- generated cells

NAMES = "abcd"


class Value(int):
    """An int whose every instance is a distinct object, so rebinding is seen by identity."""


_name = st.sampled_from(NAMES)


def _exprs() -> st.SearchStrategy[str]:
    leaves = st.one_of(_name, st.integers(0, 2).map(str))

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(inner, inner).map(lambda t: f"({t[0]} + {t[1]})"),
            inner.map(lambda e: f'len(f"{{{e}}}")'),
            st.tuples(_name, inner, inner).map(
                lambda t: f"sum([{t[1]} for {t[0]} in range(2) if {t[2]}])"
            ),
            st.tuples(_name, inner).map(lambda t: f"(lambda {t[0]}=1: {t[1]})()"),
            st.tuples(_name, inner).map(lambda t: f"({t[0]} := {t[1]})"),
            st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]} and {t[1]})"),
        )

    return st.recursive(leaves, extend, max_leaves=5)


_expr = _exprs()


@st.composite
def _statement(draw: st.DrawFn, depth: int) -> list[str]:
    kinds = ["assign", "aug", "print", "del", "lambda", "def", "call", "unpack", "walrus"]
    kinds += ["divide", "comprehension_walrus"]
    if depth > 0:
        kinds += ["if", "for", "global_def", "try", "class", "with"]
    kind = draw(st.sampled_from(kinds))
    x = draw(_name)
    if kind == "del":
        return [f"del {x}"]
    if kind == "call":
        return [f"print({x}())"]
    e = draw(_expr)
    if kind == "assign":
        return [f"{x} = {e}"]
    if kind == "aug":
        return [f"{x} += {e}"]
    if kind == "print":
        return [f"print({e})"]
    if kind == "lambda":
        return [f"{x} = lambda: {e}"]
    if kind == "if":
        return [f"if {e}:", *draw(_block(depth - 1)), "else:", *draw(_block(depth - 1))]
    if kind == "for":
        return [f"for {x} in range({draw(st.integers(0, 2))}):", *draw(_block(depth - 1))]
    if kind == "divide":
        return [f"{x} = 1 // {e}"]
    if kind == "try":
        handler = draw(st.sampled_from(["except ZeroDivisionError:", "finally:"]))
        return ["try:", *draw(_block(depth - 1)), handler, *draw(_block(depth - 1))]
    if kind == "class":
        return [f"class {x}:", *draw(_block(depth - 1))]
    if kind == "with":
        return [f"with nullcontext({e}) as {x}:", *draw(_block(depth - 1))]
    y, e2 = draw(_name), draw(_expr)
    if kind == "def":
        return [f"def {x}({y}={e}):", f"    return {e2}"]
    if kind == "unpack":
        return [f"{x}, {y} = {e}, {e2}"]
    if kind == "walrus":
        return [f"print(({x} := {e}), {e2})"]
    if kind == "comprehension_walrus":
        return [f"print([({x} := {e}) for {y} in range(2) if {e2}])"]
    return [f"def {x}():", f"    global {y}", f"    {y} = {e}", f"    return {e2}"]


@st.composite
def _block(draw: st.DrawFn, depth: int) -> list[str]:
    lines: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        lines.extend(draw(_statement(depth)))
    return ["    " + line for line in lines]


cells = _block(2).map(lambda lines: textwrap.dedent("\n".join(lines)) + "\n")


def _noop(*args: object) -> None:
    pass


_BUILTINS = {
    "print": _noop,
    "len": len,
    "sum": sum,
    "range": range,
    "nullcontext": contextlib.nullcontext,
    "ZeroDivisionError": ZeroDivisionError,
    "__build_class__": builtins.__build_class__,
}


def _run(code: CodeType, namespace: dict[str, Any]) -> BaseException | None:
    """Run the cell as IPython would (module-level exec); return what it raised, if anything."""
    namespace["__builtins__"] = _BUILTINS
    namespace["__name__"] = "__cell__"  # class bodies read it for __module__
    try:
        exec(code, namespace)  # noqa: S102 - the test runs a cell as IPython would
    except Exception as exc:  # noqa: BLE001 - whatever the cell raised is the result
        return exc
    return None


def _name_error_site(exc: BaseException | None, name: str) -> int | None:
    """Where (cell line) a plain NameError for `name` came from; None if it is not one."""
    if type(exc) is not NameError or getattr(exc, "name", None) != name:
        return None
    tb: TracebackType | None = exc.__traceback__
    line = -1
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<cell>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _targets(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found.add(node.name)
    return found


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(cell=cells, start=st.lists(st.integers(0, 2), min_size=4, max_size=4))
def test_generated_cells_match_execution(cell: str, start: list[int]) -> None:
    try:
        code = compile(cell, "<cell>", "exec")
    except SyntaxError:
        reject()  # e.g. a walrus rebinding a comprehension variable
    result = analyze(cell)
    tree = ast.parse(cell)

    def namespace(missing: str | None = None) -> dict[str, Any]:
        return {n: Value(v) for n, v in zip(NAMES, start) if n != missing}

    full = namespace()
    initial = dict(full)
    full_error = _run(code, full)

    # A name is truly read if removing it makes the cell fail on it where it did not before.
    truly_read = set()
    for name in NAMES:
        site = _name_error_site(_run(code, namespace(missing=name)), name)
        if site is not None and site != _name_error_site(full_error, name):
            truly_read.add(name)
    truly_assigned = {n for n in NAMES if n in full and full[n] is not initial[n]}
    # "Deleted and not bound again" describes a run to the end; a failed run may stop between.
    truly_deleted = {n for n in NAMES if n not in full} if full_error is None else set()

    assert truly_read <= set(result.reads), cell
    assert truly_assigned <= set(result.assigns), cell
    assert truly_deleted <= set(result.deletes), cell
    assert set(result.assigns) <= _targets(tree), cell
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert set(result.reads) <= loaded, cell


def test_straight_line_cells_are_exact() -> None:
    # Without branches, loops or functions there is nothing to be conservative about.
    source = "a = b + 1\nc += a\ndel b\nd = [a for a in range(c)]\n"
    result = analyze(source)
    assert set(result.reads) == {"b", "c", "range"}
    assert set(result.assigns) == {"a", "c", "d"}
    assert result.deletes == ("b",)

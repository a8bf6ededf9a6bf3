"""The one settings table: every GPUCELL_* variable the code names is in it, read only through it, every entry is
used, docs/settings.md is made from it, and a TOML file with variables over it gives the documented precedence."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpucell import settings
from gpucell.broker.config import BrokerConfig, PoolConfig, load_config
from gpucell.errors import ConfigError
from gpucell.namespace import transfer

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gpucell"
TABLE_MODULE = PACKAGE / "settings.py"
VARIABLES = {s.env_var for s in settings.SETTINGS.values() if s.env_var}
NAMED = re.compile(r"\bGPUCELL_[A-Z][A-Z0-9_]*\b")


def _sources(suffixes: tuple[str, ...] = (".py",)) -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in suffixes and "labextension" not in path.parts and path.is_file():
            yield path


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"


def test_every_variable_the_code_names_is_in_the_table() -> None:
    # Reads (os.environ.get("GPUCELL_X"), getenv, ENV_X = "GPUCELL_X"), writes for a child, and the docs in
    # docstrings, help texts and the proto: a name that is not in the table is a setting nobody documented.
    unknown = [f"{path.relative_to(ROOT)}: {name}"
               for path in _sources((".py", ".proto", ".yaml"))
               for name in sorted(set(NAMED.findall(path.read_text()))) if name not in VARIABLES]
    assert not unknown, f"GPUCELL_* variables not in gpucell/settings.py: {unknown}"


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (isinstance(node, ast.Name)
                                                                            and node.id == "environ")


def _names_a_variable(node: ast.AST) -> bool:
    """"GPUCELL_X", f"GPUCELL_{...}", a constant ENV_X, or settings.env_var(...)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.startswith("GPUCELL_")
    if isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        return isinstance(first, ast.Constant) and str(first.value).startswith("GPUCELL_")
    if isinstance(node, (ast.Name, ast.Attribute)):
        return (node.id if isinstance(node, ast.Name) else node.attr).startswith("ENV_")
    if isinstance(node, ast.Call):
        func = node.func
        return isinstance(func, (ast.Name, ast.Attribute)) and (
            func.id if isinstance(func, ast.Name) else func.attr) == "env_var"
    return False


def _env_reads(tree: ast.AST) -> Iterator[ast.AST]:
    """os.environ.get(X), os.getenv(X), os.environ[X], X in os.environ: each read of the process environment."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr == "get"
                    and _is_environ(func.value)) or (
                    isinstance(func, (ast.Attribute, ast.Name))
                    and (func.attr if isinstance(func, ast.Attribute) else func.id) == "getenv"):
                if _names_a_variable(node.args[0]):
                    yield node
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
            if _names_a_variable(node.slice):
                yield node
        elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            if _names_a_variable(node.left):
                yield node


def test_variables_are_read_only_through_the_table() -> None:
    direct = [_where(path, node) for path in _sources() if path != TABLE_MODULE
              for node in _env_reads(ast.parse(path.read_text()))]
    assert not direct, f"GPUCELL_* read outside gpucell.settings.get (use settings.get(NAME)): {direct}"


def _table_aliases(tree: ast.Module) -> set[str]:
    """The names this module binds gpucell.settings to (`from gpucell import settings [as x]`)."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "gpucell":
            aliases |= {a.asname or a.name for a in node.names if a.name == "settings"}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == "gpucell.settings" and a.asname}
    return aliases


def _table_calls(path: Path) -> Iterator[tuple[str, str, ast.Call]]:
    """(function, setting name, call) for each settings.get/config_field/env_var/default("NAME") in `path`."""
    tree = ast.parse(path.read_text())
    aliases = _table_aliases(tree)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id in aliases
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.func.attr, node.args[0].value, node


def test_every_table_entry_is_used_and_every_use_is_in_the_table() -> None:
    read: set[str] = set()     # settings.get (a variable) or config_field (a [broker] or pool key)
    written: set[str] = set()  # settings.env_var: set for a child, e.g. GPUCELL_WORKER_ID for user code
    unknown = []
    for path in _sources():
        if path == TABLE_MODULE:
            continue
        for function, name, node in _table_calls(path):
            if name not in settings.SETTINGS:
                unknown.append(f"{_where(path, node)} {function}({name!r})")
            (read if function in ("get", "config_field") else written).add(name)
    assert not unknown, f"not in the settings table: {unknown}"
    unused = [s.name for s in settings.SETTINGS.values()
              if s.name not in read and not (s.scope == settings.USER_CODE and s.name in written)]
    assert not unused, f"settings nothing reads (remove them, or read them with settings.get): {unused}"


@pytest.mark.parametrize("config_class, section, own", [
    (BrokerConfig, settings.BROKER, {"pools"}),
    (PoolConfig, settings.POOLS, {"label"}),
])
def test_config_classes_take_their_fields_and_defaults_from_the_table(config_class: type, section: str,
                                                                      own: set[str]) -> None:
    fields = {f.name: f for f in dataclasses.fields(config_class) if f.name not in own}
    table = {s.name: s for s in settings.section(section)}
    assert list(fields) == list(table)
    made = config_class(**({"label": "x"} if "label" in own else {}))
    for name, setting in table.items():
        assert getattr(made, name) == setting.default, name
        assert str(fields[name].type).split("[")[0] == setting.type.__name__, name


def test_docs_page_is_made_from_the_table() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_settings_doc.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    page = (ROOT / "docs" / "settings.md").read_text()
    assert all(f"`{s.name}`" in page or f"`{s.env_var}`" in page for s in settings.SETTINGS.values())


def test_the_table_imports_nothing_heavy() -> None:
    code = ("import sys, gpucell.settings; heavy = {'grpc', 'pynvml', 'gpucell.hardware', 'gpucell.broker.config'} "
            "& set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_variable_beats_the_file_and_the_file_beats_the_default(tmp_path: Path,
                                                                   clean_env: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gpucell.toml"
    config.write_text("[broker]\nport = 1234\nheartbeat_timeout = 7.5\nfork_server = false\nmetrics_port = 9100\n"
                      "[pools.T4]\nsimulate = true\nmax_workers = 2\n")
    clean_env.setenv("GPUCELL_CONFIG", str(config))
    clean_env.setenv("GPUCELL_PORT", "4321")
    clean_env.setenv("GPUCELL_FORK_SERVER", "on")
    clean_env.setenv("GPUCELL_METRICS_PORT", "")  # empty: unset, so the file's value stands
    loaded = load_config()
    assert loaded.port == 4321 and loaded.fork_server is True                       # variable over file
    assert loaded.heartbeat_timeout == 7.5 and loaded.metrics_port == 9100         # file over default
    assert loaded.host == settings.default("host") == "127.0.0.1"                  # default
    t4 = loaded.pools["T4"]
    assert t4.simulate and t4.max_workers == 2 and t4.idle_timeout == settings.default("idle_timeout")
    assert loaded.pools["cpu"].max_workers == max(2, os.cpu_count() or 2)          # added when the file has none

    clean_env.setenv("GPUCELL_HEARTBEAT_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match=r"GPUCELL_HEARTBEAT_TIMEOUT='soon' is not a valid float"):
        load_config()


def test_worker_and_client_settings_come_from_the_table(clean_env: pytest.MonkeyPatch) -> None:
    assert transfer.shm_enabled() == transfer.SHM_SUPPORTED            # default: on where the OS allows
    clean_env.setenv("GPUCELL_SHM", "off")
    assert transfer.shm_enabled() is False
    clean_env.setenv("GPUCELL_SHM", "maybe")
    with pytest.raises(ConfigError, match="GPUCELL_SHM='maybe'"):
        transfer.shm_enabled()
    clean_env.delenv("GPUCELL_SHM")
    clean_env.setenv("GPUCELL_MAX_BLOB_MB", "3")  # what the broker sets on the workers it starts
    server = transfer.DataServer()
    try:
        assert server.max_bytes == 3_000_000
    finally:
        server.close()
    assert settings.get("worker_reconnect_s") == 60.0 and settings.get("data_host") == "127.0.0.1"

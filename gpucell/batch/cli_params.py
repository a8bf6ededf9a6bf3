"""papermill's parameter options for `gpucell run` (-p KEY VALUE or KEY=VALUE, -r, -y, -f, -b) and sweep grids."""

from __future__ import annotations

import base64
import itertools
from typing import Any

import yaml

from gpucell.batch.params import resolve_type
from gpucell.errors import ConfigError


def _yaml(text: str | bytes, what: str) -> Any:
    # papermill's loader: YAML 1.1 without dates, so 2024-01-01 stays a string as it does there.
    from papermill.iorw import NoDatesSafeLoader  # noqa: PLC0415 - papermill loads only for `gpucell run`

    try:
        return yaml.load(text, Loader=NoDatesSafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: not YAML: {exc}") from None


def _typed(raw: str, what: str) -> Any:
    """A -p value: a YAML list or mapping (`[128,64]`, `{a: 1}`) arrives as one; the rest as papermill types it."""
    if raw.strip()[:1] in ("[", "{"):
        return _yaml(raw, what)
    return resolve_type(raw)


def split_pairs(groups: list[list[str]], option: str) -> tuple[list[tuple[str, str]], list[str]]:
    """`-p` groups (nargs='+') -> (KEY, VALUE) pairs and the tokens argparse wrongly gave them (positionals).

    `-p KEY=VALUE` and papermill's `-p KEY VALUE` are both accepted; what follows a complete pair is a
    NOTEBOOK or OUTPUT path that argparse could not tell apart.
    """
    pairs: list[tuple[str, str]] = []
    rest: list[str] = []
    for group in groups:
        first = group[0]
        if "=" in first and first.partition("=")[0].strip().isidentifier():
            key, _, value = first.partition("=")
            used = 1
        elif len(group) >= 2:
            key, value, used = first, group[1], 2
        else:
            raise ConfigError(f"{option} {first!r}: expected KEY VALUE or KEY=VALUE")
        key = key.strip()
        if not key.isidentifier():
            raise ConfigError(f"{option} {' '.join(group[:used])!r}: expected KEY=VALUE with KEY a variable name")
        pairs.append((key, value))
        rest.extend(group[used:])
    return pairs, rest


def collect_parameters(typed: list[tuple[str, str]], raw: list[tuple[str, str]], yamls: list[str],
                       files: list[str], b64: list[str]) -> dict[str, Any]:
    """In papermill's order: -b, -f, -y, then -p, then -r (a later one wins)."""
    params: dict[str, Any] = {}
    for blob in b64:
        try:
            decoded = base64.b64decode(blob, validate=True)
        except ValueError:
            raise ConfigError(f"-b {blob[:20]!r}: not base64") from None
        params.update(_mapping(_yaml(decoded, "-b"), "-b"))
    for path in files:
        try:
            with open(path, encoding="utf-8") as handle:
                params.update(_mapping(_yaml(handle.read(), f"-f {path}"), f"-f {path}"))
        except FileNotFoundError:
            raise ConfigError(f"-f {path}: no such file") from None
    for text in yamls:
        params.update(_mapping(_yaml(text, "-y"), "-y"))
    for key, value in typed:
        params[key] = _typed(value, f"-p {key}")
    for key, value in raw:
        params[key] = value
    return params


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{what}: expected a YAML mapping of parameters, got {type(value).__name__}")
    return dict(value)


def sweep_points(specs: list[str]) -> list[dict[str, Any]]:
    """`--sweep 'lr=[0.1,0.01]' --sweep 'layers=[[64],[128,64]]'` (or a YAML file KEY: [values]) -> the grid."""
    axes: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if sep and key.strip().isidentifier():
            parsed = _yaml(values, f"--sweep {spec}")
            if not isinstance(parsed, list) or not parsed:
                raise ConfigError(f"--sweep {spec}: expected KEY=[VALUE, ...], a non-empty YAML list")
            axes[key.strip()] = parsed
            continue
        try:
            with open(spec, encoding="utf-8") as handle:
                grid = _mapping(_yaml(handle.read(), f"--sweep {spec}"), f"--sweep {spec}")
        except FileNotFoundError:
            raise ConfigError(f"--sweep {spec}: expected KEY=[VALUES] or a YAML file of KEY: [VALUES]") from None
        for name, values in grid.items():
            axes[str(name)] = values if isinstance(values, list) else [values]
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]

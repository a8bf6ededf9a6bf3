"""Process state that travels with a cell: adapters (read, apply, fingerprint) and what each side last synced.

A local cell runs in the notebook's process, so it sees the notebook's RNG seeds, rcParams, pandas options,
warnings filters, loaded extensions, working directory and sys.path; a `%%gpu` cell must see them too, and
leave them where a local cell would. Each kind of state is one `StateAdapter`. An adapter whose module is not
imported on a side costs nothing there (one `in sys.modules`); the others cost one cheap fingerprint per
cell, and their state (a small picklable value) travels only when the fingerprint moved since the other
side last got it. Other packages add adapters through the entry-point group `gpucell.state`: each entry
point names a `StateAdapter`, or a callable returning one or a list of them.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import cloudpickle

ENTRY_POINT_GROUP = "gpucell.state"


@dataclass(frozen=True)
class StateAdapter:
    """One kind of process state: `read()` it as a small picklable value, `apply(value)` it, and tell cheaply
    whether it moved (`fingerprint()`, compared with ==; read() when not given). `module`: the adapter is
    skipped unless this module is imported on that side ("" for always)."""

    name: str
    module: str
    read: Callable[[], Any]
    apply: Callable[[Any], None]
    fingerprint: Callable[[], Any] | None = None

    def present(self) -> bool:
        return not self.module or self.module in sys.modules

    def mark(self) -> Any:
        return self.fingerprint() if self.fingerprint is not None else self.read()


# ---------------------------------------------------------------- where the session started, on each side

_origin: list[str] = []        # the working directory the session started in, once known
_base_path: list[list[str]] = []   # sys.path then


def set_origin(path: str | None = None) -> str:
    """Fix this side's starting point (cwd and sys.path) for the relative-cwd and sys.path adapters; the first
    call wins unless a path is given."""
    if path is not None or not _origin:
        _origin[:] = [os.path.abspath(path or os.getcwd())]
        _base_path[:] = [list(sys.path)]
    return _origin[0]


# ---------------------------------------------------------------- the built-in adapters

def _numpy_read() -> Any:
    return sys.modules["numpy"].random.get_state()


def _numpy_apply(value: Any) -> None:
    importlib.import_module("numpy").random.set_state(value)


def _numpy_mark() -> Any:
    kind, key, pos, has_gauss, gauss = _numpy_read()
    return kind, key.tobytes(), pos, has_gauss, gauss


def _random_read() -> Any:
    return sys.modules["random"].getstate()


def _random_apply(value: Any) -> None:
    importlib.import_module("random").setstate(value)


def _torch_read() -> Any:
    return bytes(sys.modules["torch"].get_rng_state().numpy().tobytes())


def _torch_apply(value: Any) -> None:
    torch = importlib.import_module("torch")
    torch.set_rng_state(torch.tensor(list(value), dtype=torch.uint8))


# Which backend draws the figures is each side's own business; the rest is how figures look.
_RC_LOCAL = frozenset({"backend", "backend_fallback", "interactive", "webagg.port", "webagg.address"})


def _rc_read() -> Any:
    params = sys.modules["matplotlib"].rcParams
    return {k: v for k, v in dict.items(params) if k not in _RC_LOCAL}


def _rc_apply(value: Any) -> None:
    params = importlib.import_module("matplotlib").rcParams
    for key, item in value.items():
        if key in params and dict.__getitem__(params, key) != item:
            # Validated on the side that set it; _set skips the deprecation warnings a full update would print.
            setter = getattr(params, "_set", None)
            setter(key, item) if setter is not None else dict.__setitem__(params, key, item)


_INLINE_TRAITS = ("figure_formats", "rc", "print_figure_kwargs", "close_figures")


def _shell() -> Any:
    from IPython import get_ipython  # noqa: PLC0415 - IPython is imported wherever a shell exists

    return get_ipython()


def _inline_read() -> Any:
    shell = _shell()
    config = dict(shell.config.InlineBackend) if shell is not None and "InlineBackend" in shell.config else {}
    inline = sys.modules.get("matplotlib_inline.config")   # `%config` works before matplotlib is imported
    backend = inline.InlineBackend if inline is not None else None
    if backend is not None and backend.initialized():
        instance = backend.instance()
        config.update({trait: getattr(instance, trait) for trait in _INLINE_TRAITS})
        config.pop("figure_format", None)   # the old alias; figure_formats says it
    return config


def _inline_apply(value: Any) -> None:
    shell = _shell()
    if shell is not None:
        shell.config.InlineBackend.update(value)
    backend = importlib.import_module("matplotlib_inline.config").InlineBackend
    if backend.initialized():
        instance = backend.instance()
        for trait, item in value.items():
            if trait in _INLINE_TRAITS or trait == "figure_format":
                if getattr(instance, trait) != item:
                    setattr(instance, trait, item)


def _flat(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, item in tree.items():
        if isinstance(item, dict):
            yield from _flat(item, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", item


def _pandas_read() -> Any:
    return dict(_flat(sys.modules["pandas"]._config.config._global_config))


def _pandas_apply(value: Any) -> None:
    pandas = importlib.import_module("pandas")
    current = _pandas_read()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # deprecated options warn on set; they were set already over there
        for key, item in value.items():
            if key in current and current[key] != item:
                pandas.set_option(key, item)


def _warnings_read() -> Any:
    return list(warnings.filters)


def _warnings_apply(value: Any) -> None:
    filters: list[Any] = warnings.filters  # type: ignore[assignment]  # a list at run time
    filters[:] = value
    mutated = getattr(warnings, "_filters_mutated", None) or getattr(warnings, "_filters_mutated_lock_held", None)
    if mutated is not None:
        mutated()


def _warnings_mark() -> Any:
    return tuple(warnings.filters)


_NOT_EXTENSIONS = ("gpucell", "storemagic")   # gpucell drives the worker; storemagic is IPython's default


def _extensions_read() -> Any:
    shell = _shell()
    if shell is None:
        return frozenset()
    return frozenset(n for n in shell.extension_manager.loaded if n.split(".")[0] not in _NOT_EXTENSIONS)


def _extensions_apply(value: Any) -> None:
    shell = _shell()
    if shell is None:
        return
    for name in sorted(set(value) - set(shell.extension_manager.loaded)):
        shell.extension_manager.load_extension(name)


def _cwd_read() -> Any:
    return os.path.relpath(os.getcwd(), set_origin()).replace(os.sep, "/")


def _cwd_apply(value: Any) -> None:
    target = os.path.normpath(os.path.join(set_origin(), *str(value).split("/")))
    if os.getcwd() != target:
        os.chdir(target)   # FileNotFoundError names it: that directory is not on this side


def _path_read() -> Any:
    set_origin()
    base = set(_base_path[0])
    origin = _origin[0] + os.sep
    added = []
    first_base = next((i for i, p in enumerate(sys.path) if p in base), len(sys.path))
    for index, entry in enumerate(sys.path):
        if entry in base or not isinstance(entry, str):
            continue
        where = "front" if index < first_base else "back"
        if entry.startswith(origin):   # under the session's directory: relative, so it means the same there
            added.append((where, "rel", entry[len(origin):].replace(os.sep, "/")))
        else:
            added.append((where, "abs", entry))
    return added


def _path_apply(value: Any) -> None:
    origin = set_origin()
    front = 0
    for where, kind, entry in value:
        path = os.path.join(origin, *entry.split("/")) if kind == "rel" else entry
        if path in sys.path:
            continue
        if where == "front":
            sys.path.insert(front, path)
            front += 1
        else:
            sys.path.append(path)


def _path_mark() -> Any:
    return tuple(sys.path)


BUILTIN: tuple[StateAdapter, ...] = (
    StateAdapter("numpy.random", "numpy", _numpy_read, _numpy_apply, _numpy_mark),
    StateAdapter("random", "random", _random_read, _random_apply),
    StateAdapter("torch.random", "torch", _torch_read, _torch_apply),
    StateAdapter("matplotlib.rcParams", "matplotlib", _rc_read, _rc_apply),
    StateAdapter("InlineBackend", "IPython", _inline_read, _inline_apply),
    StateAdapter("pandas.options", "pandas", _pandas_read, _pandas_apply),
    StateAdapter("warnings.filters", "", _warnings_read, _warnings_apply, _warnings_mark),
    StateAdapter("IPython extensions", "IPython", _extensions_read, _extensions_apply),
    StateAdapter("cwd", "", _cwd_read, _cwd_apply, os.getcwd),
    StateAdapter("sys.path", "", _path_read, _path_apply, _path_mark),
)

_registry: list[StateAdapter] = []


def adapters() -> list[StateAdapter]:
    """The built-in adapters, then those other packages register (entry-point group `gpucell.state`)."""
    if not _registry:
        found = list(BUILTIN)
        found.extend(_entry_point_adapters())
        _registry[:] = found
    return _registry


def _entry_point_adapters() -> Iterable[StateAdapter]:
    from importlib.metadata import entry_points  # noqa: PLC0415 - read once per process, on the first cell

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
            made = loaded() if callable(loaded) and not isinstance(loaded, StateAdapter) else loaded
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not stop cells
            print(f"gpucell: state adapter {point.name!r} failed to load: {exc}", file=sys.stderr)
            continue
        yield from ([made] if isinstance(made, StateAdapter) else made)


def register(adapter: StateAdapter) -> None:
    """Add an adapter in this process (tests, or a package that prefers code to an entry point)."""
    registry = adapters()
    registry[:] = [a for a in registry if a.name != adapter.name] + [adapter]


# ---------------------------------------------------------------- one side's sync table

class StateSync:
    """What the other side is known to have, as this side's fingerprints at the last exchange."""

    def __init__(self) -> None:
        self.synced: dict[str, Any] = {}

    def baseline(self) -> None:
        """Adapters present here that have no fingerprint yet get one (their state is taken as the other
        side's too: it is what an import gives)."""
        for adapter in adapters():
            if adapter.name not in self.synced and adapter.present():
                self.synced[adapter.name] = _mark(adapter)

    def changed(self, *, new_too: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
        """(states to send, fingerprints to record once they are sent) for adapters that moved here.
        `new_too`: adapters without a fingerprint yet count as moved."""
        states: dict[str, Any] = {}
        marks: dict[str, Any] = {}
        for adapter in adapters():
            if not adapter.present():
                continue
            known = self.synced.get(adapter.name, _UNSEEN)
            if known is _UNSEEN and not new_too:
                continue
            mark = _mark(adapter)
            if mark != known:
                try:
                    states[adapter.name] = adapter.read()
                except Exception:  # noqa: BLE001 - unreadable state stays where it is
                    continue
                marks[adapter.name] = mark
        return states, marks

    def apply(self, states: dict[str, Any]) -> list[str]:
        """Apply the other side's states; returns one line per adapter that could not (its package is missing
        here, a directory that does not exist here, ...)."""
        problems = []
        by_name = {a.name: a for a in adapters()}
        for name, value in states.items():
            adapter = by_name.get(name)
            if adapter is None:
                continue
            try:
                adapter.apply(value)
            except Exception as exc:  # noqa: BLE001 - one adapter's failure is a notice, not a failed cell
                problems.append(f"{name}: {' '.join(f'{type(exc).__name__}: {exc}'.split())}")
            try:
                self.synced[name] = _mark(adapter)
            except Exception:  # noqa: BLE001
                self.synced.pop(name, None)
        return problems


class _Unseen:
    pass


_UNSEEN = _Unseen()


def _mark(adapter: StateAdapter) -> Any:
    try:
        return adapter.mark()
    except Exception:  # noqa: BLE001 - an adapter that cannot say is taken as unchanged
        return _UNSEEN


def encode(states: dict[str, Any]) -> bytes:
    return cloudpickle.dumps(states, protocol=5) if states else b""


def decode(data: bytes) -> dict[str, Any]:
    if not data:
        return {}
    loaded = pickle.loads(data)   # from the session's own notebook or worker, as every value is
    return loaded if isinstance(loaded, dict) else {}


__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "StateAdapter", "StateSync", "adapters", "decode", "encode",
           "register", "set_origin"]

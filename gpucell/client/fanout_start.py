"""Starting a fan-out once its caller (the API, or %%gpu_map) has chosen the client, hardware, sink and owner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpucell.client.broker_client import BrokerClient
from gpucell.client.fanout import Fanout, FanoutOptions, Task
from gpucell.client.session import Session
from gpucell.client.sink import Sink
from gpucell.errors import ConfigError
from gpucell.namespace import serialize

DEFAULT_MAX_WORKERS = 8          # when the catalog does not say how large the pool is


def check_fanout_args(workers: int | None, retries: int, timeout: float) -> None:
    """The arguments a map can get wrong, checked before anything connects or starts."""
    if retries < 0:
        raise ConfigError(f"retries={retries}: must be zero or more")
    if timeout < 0:
        raise ConfigError(f"timeout={timeout:g}: must be positive")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers}: must be at least 1")


def pool_size(client: BrokerClient, hardware: str) -> int:
    """How many workers a map on `hardware` may use: the pool's max_workers, capped by its per-session quota."""
    catalog = client.catalog()
    label = (hardware or catalog.get("default_hardware") or "").partition(":")[0].lower()
    for entry in catalog["entries"]:
        if entry["label"].lower() == label and entry["max_workers"]:
            quota = int(entry.get("max_workers_per_session") or 0)
            return min(int(entry["max_workers"]), quota) if quota else int(entry["max_workers"])
    return DEFAULT_MAX_WORKERS


def start_fanout(client: BrokerClient, fn: Callable[..., Any], mode: str, *, hardware: str, workers: int | None,
                 retries: int, timeout: float, ordered: bool, return_exceptions: bool, progress: bool, sink: Sink,
                 owner: str, label_items: bool = True, description: str = "") -> Fanout:
    """A Fanout of `fn` (mode: one, star or call) on up to `workers` fresh workers of `hardware`."""
    check_fanout_args(workers, retries, timeout)
    task = Task(fn, mode, float(timeout or 0.0))
    name = getattr(fn, "__name__", "fn")
    serialize.pack(name, task)   # unpicklable closure: a clear error before anything starts
    hardware = Session(client).check_hardware(hardware)
    count = min(workers, pool_size(client, hardware)) if workers else pool_size(client, hardware)
    options = FanoutOptions(hardware=hardware, workers=count, retries=retries, ordered=ordered,
                            return_exceptions=return_exceptions, progress=progress, label_items=label_items,
                            description=description or f"{name} on {hardware or 'default'}", owner=owner)
    return Fanout(client, task, options, sink)

"""One settings table: every broker setting with its default, read from TOML, overridden by GPUCELL_* variables."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from gpucell.errors import ConfigError
from gpucell.hardware import local_labels, nvml_inventory

# Environment variables shared by client, broker and workers.
ENV_BROKER = "GPUCELL_BROKER"
ENV_TOKEN = "GPUCELL_TOKEN"
ENV_WORKER_TOKEN = "GPUCELL_WORKER_TOKEN"
ENV_CONFIG = "GPUCELL_CONFIG"


@dataclass
class PoolConfig:
    """One pool per hardware label (`[pools.LABEL]` in the TOML file)."""

    label: str
    simulate: bool = False          # local CPU workers that advertise this label
    min_warm: int = 0               # idle, unassigned workers kept ready
    max_workers: int = 4
    idle_timeout: float = 300.0     # seconds idle before a session's worker is released
    price_per_hour: float = 0.0
    provisioner: str = "local"      # entry point name in the gpucell.provisioners group
    preload: list[str] = field(default_factory=list)   # modules the fork server imports up front
    max_workers_per_session: int = 0  # quota: workers one notebook (with its maps) may hold here; 0: none
    gpus: int = 1                   # devices per worker for a real GPU pool (A100:2 → 2); ignored when simulated
    memory_limit_mb: int = 0        # a worker above this RSS is stopped and its cell says why (0: none)
    options: dict[str, Any] = field(default_factory=dict)  # provisioner-specific (e.g. Ray address)


@dataclass
class BrokerConfig:
    """The broker's settings; see SETTINGS below for each one's meaning."""

    host: str = "127.0.0.1"
    port: int = 0
    default_hardware: str = "cpu"
    cpu_fallback: bool = True       # a known GPU label with no pool runs on the cpu pool, with a notice
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    worker_start_timeout: float = 120.0
    max_message_mb: int = 1024
    max_blob_mb: int = 0
    fork_server: bool = True
    state_dir: str = ""             # worker logs, journal; "" = a fresh temp dir
    tls_cert: str = ""
    tls_key: str = ""
    insecure: bool = False
    metrics_port: int = -1
    reattach_grace_s: float = 30.0
    pools: dict[str, PoolConfig] = field(default_factory=dict)


# name -> (default, meaning). The one place a setting is documented.
SETTINGS: dict[str, tuple[Any, str]] = {
    "host": ("127.0.0.1", "address the broker binds; anything but loopback needs TLS"),
    "port": (0, "port the broker binds; 0 picks a free one"),
    "default_hardware": ("cpu", "label used by a bare %%gpu when the notebook has no default"),
    "cpu_fallback": (True, "run a known GPU label that no pool serves on the cpu pool, with a notice"),
    "heartbeat_interval": (1.0, "seconds between worker heartbeats"),
    "heartbeat_timeout": (5.0, "seconds without a heartbeat before a worker is declared lost"),
    "worker_start_timeout": (120.0, "seconds a worker may take to register"),
    "max_message_mb": (1024, "largest gRPC message accepted"),
    "max_blob_mb": (0, "largest single value a cell may send to a worker; 0: no limit"),
    "fork_server": (True, "start local workers by forking a warm template process"),
    "state_dir": ("", "where worker logs and the journal go; empty: a temp dir"),
    "tls_cert": ("", "PEM certificate for the broker's port (required for a non-loopback host)"),
    "tls_key": ("", "PEM private key for tls_cert"),
    "insecure": (False, "allow a non-loopback host without TLS (trusted networks only)"),
    "metrics_port": (-1, "Prometheus /metrics port on the broker's host; 0 picks one, -1 is off"),
    "reattach_grace_s": (30.0, "how long a cell whose client stream dropped keeps running for a reconnect"),
}

# Client side: the CA that signed the broker's certificate; set it to talk TLS.
ENV_TLS_CA = "GPUCELL_TLS_CA"

_POOL_KEYS = {f.name for f in fields(PoolConfig)} - {"label"}


def default_cpu_pool() -> PoolConfig:
    return PoolConfig(label="cpu", max_workers=max(2, os.cpu_count() or 2), idle_timeout=300.0)


def _coerce(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        return type(default)(raw)
    except ValueError:
        raise ConfigError(f"GPUCELL_{name.upper()}={raw!r} is not a valid {type(default).__name__}") from None


def parse_pool(label: str, table: dict[str, Any]) -> PoolConfig:
    unknown = set(table) - _POOL_KEYS
    if unknown:
        raise ConfigError(f"[pools.{label}]: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_POOL_KEYS))})")
    pool = PoolConfig(label=label, **table)
    if pool.max_workers < 1:
        raise ConfigError(f"[pools.{label}]: max_workers must be at least 1")
    if not 0 <= pool.min_warm <= pool.max_workers:
        raise ConfigError(f"[pools.{label}]: min_warm must be between 0 and max_workers")
    if pool.idle_timeout <= 0:
        raise ConfigError(f"[pools.{label}]: idle_timeout must be positive")
    return pool


def load_config(path: str | os.PathLike[str] | None = None) -> BrokerConfig:
    """The broker config: TOML at `path` (or $GPUCELL_CONFIG), then GPUCELL_<SETTING> overrides."""
    path = path or os.environ.get(ENV_CONFIG) or None
    doc: dict[str, Any] = {}
    if path:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{ENV_CONFIG}: no such file {str(path)!r}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    broker_table = dict(doc.get("broker", {}))
    unknown = set(broker_table) - set(SETTINGS)
    if unknown:
        raise ConfigError(f"[broker]: unknown key {sorted(unknown)[0]!r}")
    for name, (default, _meaning) in SETTINGS.items():
        raw = os.environ.get(f"GPUCELL_{name.upper()}")
        if raw is not None:
            broker_table[name] = _coerce(name, raw, default)
    config = BrokerConfig(**broker_table)
    for label, table in doc.get("pools", {}).items():
        config.pools[label] = parse_pool(label, dict(table))
    if not path:
        # The built-in default: the GPUs this machine has, one pool per label, one worker per device.
        for label, count in local_labels(nvml_inventory()).items():
            config.pools.setdefault(label, PoolConfig(label=label, max_workers=count, gpus=1))
            for per_worker in (2, 4, 8):  # A100:2 etc. draw on the same devices, never sharing one
                if per_worker <= count:
                    config.pools.setdefault(f"{label}:{per_worker}", PoolConfig(
                        label=f"{label}:{per_worker}", max_workers=count // per_worker, gpus=per_worker))
    if "cpu" not in config.pools:
        config.pools["cpu"] = default_cpu_pool()
    return config

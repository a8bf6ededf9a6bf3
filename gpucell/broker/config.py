"""The broker config: the TOML file, then GPUCELL_* overrides; each setting's default and meaning is in gpucell.settings."""

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

from gpucell import settings
from gpucell.errors import ConfigError
from gpucell.hardware import local_labels, nvml_inventory
from gpucell.settings import ENV_CONFIG

__all__ = ["BrokerConfig", "PoolConfig", "default_cpu_pool", "load_config", "parse_pool"]


@dataclass
class PoolConfig:
    """One pool per hardware label (`[pools.LABEL]` in the TOML file); each key's default and meaning: gpucell.settings."""

    label: str
    simulate: bool = settings.config_field("simulate")
    min_warm: int = settings.config_field("min_warm")
    max_workers: int = settings.config_field("max_workers")
    idle_timeout: float = settings.config_field("idle_timeout")
    price_per_hour: float = settings.config_field("price_per_hour")
    provisioner: str = settings.config_field("provisioner")
    preload: list[str] = settings.config_field("preload")
    max_workers_per_session: int = settings.config_field("max_workers_per_session")
    gpus: int = settings.config_field("gpus")
    memory_limit_mb: int = settings.config_field("memory_limit_mb")
    options: dict[str, Any] = settings.config_field("options")


@dataclass
class BrokerConfig:
    """The broker's settings (`[broker]` in the TOML file); each one's default and meaning: gpucell.settings."""

    host: str = settings.config_field("host")
    port: int = settings.config_field("port")
    default_hardware: str = settings.config_field("default_hardware")
    cpu_fallback: bool = settings.config_field("cpu_fallback")
    heartbeat_interval: float = settings.config_field("heartbeat_interval")
    heartbeat_timeout: float = settings.config_field("heartbeat_timeout")
    worker_start_timeout: float = settings.config_field("worker_start_timeout")
    max_message_mb: int = settings.config_field("max_message_mb")
    max_blob_mb: int = settings.config_field("max_blob_mb")
    fork_server: bool = settings.config_field("fork_server")
    state_dir: str = settings.config_field("state_dir")
    tls_cert: str = settings.config_field("tls_cert")
    tls_key: str = settings.config_field("tls_key")
    insecure: bool = settings.config_field("insecure")
    metrics_port: int = settings.config_field("metrics_port")
    reattach_grace_s: float = settings.config_field("reattach_grace_s")
    users_file: str = settings.config_field("users_file")
    worker_tokens_file: str = settings.config_field("worker_tokens_file")
    pools: dict[str, PoolConfig] = field(default_factory=dict)


_POOL_KEYS = {f.name for f in fields(PoolConfig)} - {"label"}


def default_cpu_pool() -> PoolConfig:
    return PoolConfig(label="cpu", max_workers=max(2, os.cpu_count() or 2))


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
    path = path or settings.get("config") or None
    doc: dict[str, Any] = {}
    if path:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{ENV_CONFIG}: no such file {str(path)!r}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    broker_table = dict(doc.get("broker", {}))
    known = [s.name for s in settings.section(settings.BROKER)]
    unknown = set(broker_table) - set(known)
    if unknown:
        raise ConfigError(f"[broker]: unknown key {sorted(unknown)[0]!r}")
    for name in known:  # the variable, else the file, else the default
        broker_table[name] = settings.get(name, broker_table.get(name, settings.default(name)))
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

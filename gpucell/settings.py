"""The one settings table: every gpucell setting with its default, type, meaning, who reads it and where it is set.

* A `[broker]` setting is a key of the TOML file named by GPUCELL_CONFIG, overridden by its GPUCELL_<NAME>
  variable (`gpucell.broker.config.load_config`); `BrokerConfig` takes its fields' defaults from here.
* A `[pools.LABEL]` setting is a key of one pool's table in that file; `PoolConfig` takes its defaults from here.
* An environment setting is only a GPUCELL_<NAME> variable.

`get(name)` is the one place a GPUCELL_* variable is read; `env_var(name)` names it for a child's environment.
This module imports nothing heavy (no gRPC, no NVML): the worker, the client and the broker all import it.
docs/settings.md is generated from this table by scripts/gen_settings_doc.py.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from gpucell.errors import ConfigError

BROKER = "broker"      # a [broker] key, overridden by its variable
POOLS = "pools"        # a [pools.LABEL] key (TOML only)
ENV = "env"            # a GPUCELL_<NAME> variable only

# Who reads a setting (Setting.scope): broker, worker, client (the magics, API and CLI), or user code (a variable
# the broker sets on each worker it starts, for the code that runs there).
USER_CODE = "user code"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    meaning: str
    scope: str             # who reads it: "broker", "worker", "client", "user code", or several, comma-separated
    section: str = ENV     # BROKER, POOLS or ENV

    @property
    def type(self) -> type:
        return type(self.default)

    @property
    def env_var(self) -> str:
        """GPUCELL_<NAME>, or "" for a pool key (pools are set in the TOML file only)."""
        return "" if self.section == POOLS else f"GPUCELL_{self.name.upper()}"


_TABLE = [
    # [broker]
    Setting("host", "127.0.0.1", "address the broker binds; anything but loopback needs TLS", "broker", BROKER),
    Setting("port", 0, "port the broker binds; 0 picks a free one", "broker", BROKER),
    Setting("default_hardware", "cpu", "label used by a bare %%gpu when the notebook has no default", "broker", BROKER),
    Setting("cpu_fallback", True, "run a known GPU label that no pool serves on the cpu pool, with a notice",
            "broker", BROKER),
    Setting("heartbeat_interval", 1.0, "seconds between worker heartbeats", "broker", BROKER),
    Setting("heartbeat_timeout", 5.0, "seconds without a heartbeat before a worker is declared lost", "broker", BROKER),
    Setting("worker_start_timeout", 120.0, "seconds a worker may take to register", "broker", BROKER),
    Setting("max_message_mb", 64, "largest gRPC message accepted (values over 1 MB travel on the data path)",
            "broker", BROKER),
    Setting("max_blob_mb", 0, "largest single value a cell may send to a worker; 0: no limit "
            "(the broker passes it to the workers it starts)", "broker, worker", BROKER),
    Setting("fork_server", True, "start local workers by forking a warm template process", "broker", BROKER),
    Setting("state_dir", "", "where worker logs and the journal go; empty: a temp dir", "broker", BROKER),
    Setting("tls_cert", "", "PEM certificate for the broker's port (required for a non-loopback host)", "broker", BROKER),
    Setting("tls_key", "", "PEM private key for tls_cert", "broker", BROKER),
    Setting("insecure", False, "allow a non-loopback host without TLS (trusted networks only)", "broker", BROKER),
    Setting("metrics_port", -1, "Prometheus /metrics port on the broker's host; 0 picks one, -1 is off",
            "broker", BROKER),
    Setting("reattach_grace_s", 30.0, "how long a cell whose client stream dropped keeps running for a reconnect",
            "broker", BROKER),
    Setting("users_file", "", "TOML file of users (`[NAME]` with token_sha256, admin), re-read on change; empty: "
            "GPUCELL_TOKEN is the one admin user `default`", "broker", BROKER),
    Setting("worker_tokens_file", "", "TOML file of hand-started workers' join tokens (`[ID]` with token_sha256), "
            "re-read on change; empty: the broker's GPUCELL_WORKER_TOKEN joins hand-started workers", "broker", BROKER),
    # [pools.LABEL]
    Setting("simulate", False, "local CPU workers that advertise this label (tests, laptops)", "broker", POOLS),
    Setting("min_warm", 0, "idle, unassigned workers kept ready", "broker", POOLS),
    Setting("max_workers", 4, "most workers this pool runs at once; more cells queue", "broker", POOLS),
    Setting("idle_timeout", 300.0, "seconds idle before a session's worker is released", "broker", POOLS),
    Setting("price_per_hour", 0.0, "price of one worker-hour, for the usage report", "broker", POOLS),
    Setting("provisioner", "local", "entry point name in the gpucell.provisioners group (local, ray)", "broker", POOLS),
    Setting("preload", [], "modules the fork server imports up front", "broker", POOLS),
    Setting("max_workers_per_session", 0, "quota: workers one notebook (with its maps) may hold here; 0: none",
            "broker", POOLS),
    Setting("gpus", 1, "devices per worker for a real GPU pool (A100:2 → 2); ignored when simulated", "broker", POOLS),
    Setting("memory_limit_mb", 0, "a worker above this RSS is stopped and its cell says why; 0: none", "broker", POOLS),
    Setting("options", {}, "provisioner-specific options (e.g. the Ray address)", "broker", POOLS),
    # environment only
    Setting("config", "", "the TOML file the broker reads (embedded or `gpucell broker`); empty: built-in defaults "
            "(one pool per local GPU label, and cpu)", "broker"),
    Setting("broker", "", "host:port of the broker; empty: `%load_ext gpucell` starts an embedded broker", "client"),
    Setting("token", "", "the client token: what clients send, and what `gpucell broker` accepts (it makes one "
            "when empty)", "client, broker"),
    Setting("worker_token", "", "broker: its worker key (signs launched workers' reconnect credentials; joins "
            "hand-started workers when there is no worker_tokens_file); worker: its own credential (a join token). "
            "A worker takes it out of its environment before any cell runs", "broker, worker"),
    Setting("worker_token_fd", -1, "set by the broker on a worker it starts: the pipe its credential arrives on "
            "(never the environment)", "worker"),
    Setting("tls_ca", "", "PEM CA that signed the broker's certificate; set: TLS, empty: plaintext (loopback)",
            "client, worker"),
    Setting("shm", True, "values between processes on one host travel through shared memory; 0: over TCP",
            "client, worker"),
    Setting("data_host", "127.0.0.1", "address a worker's data server and lane listen on and advertise "
            "(clients connect there directly)", "worker"),
    Setting("node", "", "node name a worker reports; empty: this host's name", "worker"),
    Setting("worker_reconnect_s", 60.0, "seconds a worker that never served a session keeps redialling a restarted "
            "broker", "worker"),
    Setting("hardware", "", "set on each worker the broker starts: the hardware label it serves", USER_CODE),
    Setting("worker_id", "", "set on each worker the broker starts: its id", USER_CODE),
]

SETTINGS: dict[str, Setting] = {s.name: s for s in _TABLE}
assert len(SETTINGS) == len(_TABLE), "a setting name is in the table twice"


def section(name: str) -> list[Setting]:
    """The settings of one section (BROKER, POOLS or ENV), in table order."""
    return [s for s in _TABLE if s.section == name]


def env_var(name: str) -> str:
    """The variable of setting `name` (GPUCELL_<NAME>), e.g. to set it in a child's environment."""
    var = SETTINGS[name].env_var
    if not var:
        raise KeyError(f"{name!r} is a pool key: it has no environment variable")
    return var


def default(name: str) -> Any:
    """The table's default of setting `name` (a fresh copy of a list or dict)."""
    return copy.copy(SETTINGS[name].default)


def config_field(name: str) -> Any:
    """A dataclass field whose default is the table's: `host: str = config_field("host")`."""
    value = SETTINGS[name].default
    if isinstance(value, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.copy(value))
    return dataclasses.field(default=value)


_UNSET: Any = object()


def parse(name: str, raw: str) -> Any:
    """`raw`, the text of setting `name`'s variable, as the table's type; ConfigError naming the variable if not."""
    setting = SETTINGS[name]
    kind = setting.type
    try:
        if kind is bool:
            word = raw.strip().lower()
            if word not in _TRUE + _FALSE:
                raise ValueError(raw)
            return word in _TRUE
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{setting.env_var}={raw!r} is not a valid {kind.__name__}") from None


def get(name: str, fallback: Any = _UNSET) -> Any:
    """Setting `name` from its GPUCELL_<NAME> variable, as the table's type; unset (or empty, for a number or a
    flag): `fallback` if given, else the table's default. The one place a GPUCELL_* variable is read."""
    setting = SETTINGS[name]
    raw = os.environ.get(env_var(name))
    if raw is None or (not raw.strip() and setting.type is not str):
        return default(name) if fallback is _UNSET else fallback
    return parse(name, raw)


# The fixed names of the contract (DESIGN.md), for code that sets them or names them in a message.
ENV_BROKER = env_var("broker")
ENV_TOKEN = env_var("token")
ENV_WORKER_TOKEN = env_var("worker_token")
ENV_CONFIG = env_var("config")
ENV_TLS_CA = env_var("tls_ca")

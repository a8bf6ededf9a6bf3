"""How workers come to exist: a small async ABC, with implementations found through entry points."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from gpucell.broker.config import BrokerConfig, PoolConfig
from gpucell.errors import ConfigError

ENTRY_POINT_GROUP = "gpucell.provisioners"


@dataclass
class LaunchSpec:
    """Everything a provisioner needs to start one `gpucell worker` that dials the broker."""

    worker_id: str
    pool: PoolConfig
    broker_address: str
    worker_token: str
    env: dict[str, str] = field(default_factory=dict)
    log_dir: str = ""


class Provisioner(abc.ABC):
    """Starts and stops worker processes; the worker registers itself over gRPC (pull model)."""

    def configure(self, config: BrokerConfig) -> None:
        """Broker-wide settings (e.g. the local provisioner's fork_server); called once at broker start."""

    @abc.abstractmethod
    async def launch(self, spec: LaunchSpec) -> None:
        """Start the worker; return once it is on its way (it registers by itself)."""

    @abc.abstractmethod
    async def poll(self, worker_id: str) -> str | None:
        """None while the worker runs; a reason string once it has exited."""

    @abc.abstractmethod
    async def terminate(self, worker_id: str, grace_s: float = 2.0) -> None:
        """Make sure the worker is gone (it was asked to shut down over its stream first)."""

    async def close(self) -> None:
        """Terminate every worker this provisioner started."""


def load_provisioner(name: str) -> type[Provisioner]:
    """The provisioner class registered under `name` in the gpucell.provisioners entry point group."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise ConfigError(f"unknown provisioner {name!r} (known: {known})")
    cls = found[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Provisioner)):
        raise ConfigError(f"provisioner {name!r} is not a gpucell Provisioner")
    return cls

"""The one client of the broker, shared by magics, API, CLI and the Jupyter server extension."""

from gpucell.client.broker_client import BrokerClient, status_to_json

__all__ = ["BrokerClient", "status_to_json"]

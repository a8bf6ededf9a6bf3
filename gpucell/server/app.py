"""The Jupyter server extension: owns this server's broker connection (or broker) and serves the sidebar's API."""

from __future__ import annotations

import os

from jupyter_server.extension.application import ExtensionApp
from traitlets import Unicode

from gpucell.client.embedded import EmbeddedBroker, start_embedded_broker
from gpucell import settings
from gpucell.settings import ENV_BROKER, ENV_TOKEN
from gpucell.server.handlers import HANDLERS, MANAGER_SETTING
from gpucell.server.manager import GpuCellManager


class GpuCellApp(ExtensionApp):
    """Uses GPUCELL_BROKER/GPUCELL_TOKEN if set; otherwise starts one broker that every kernel of this server shares."""

    name = "gpucell"

    broker = Unicode(
        "",
        config=True,
        help="host:port of the broker; empty: GPUCELL_BROKER, or an embedded broker started with the server.",
    )
    token = Unicode("", config=True, help="client token for `broker`; empty: GPUCELL_TOKEN.")

    embedded: EmbeddedBroker | None = None
    manager: GpuCellManager | None = None

    def initialize_settings(self) -> None:
        address = self.broker or settings.get("broker")
        token = self.token or settings.get("token")
        if not address:
            self.embedded = start_embedded_broker()
            address, token = self.embedded.address, self.embedded.token
            self.log.info("gpucell: started a broker for this server at %s", address)
        # Kernels inherit the server's environment: set it so every notebook's %%gpu uses this
        # broker and the sidebar sees all of this server's workers.
        os.environ[ENV_BROKER] = address
        os.environ[ENV_TOKEN] = token
        root = self.serverapp.root_dir if self.serverapp is not None else ""
        self.manager = GpuCellManager(address, token, notebook_root=root)
        self.settings[MANAGER_SETTING] = self.manager

    def initialize_handlers(self) -> None:
        self.handlers.extend(HANDLERS)

    async def stop_extension(self) -> None:
        if self.manager is not None:
            self.manager.close()
            self.manager = None
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
            for name in (ENV_BROKER, ENV_TOKEN):
                os.environ.pop(name, None)

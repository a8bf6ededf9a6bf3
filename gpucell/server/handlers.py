"""Thin Tornado handlers for the sidebar's REST API (documented in openapi.yaml); the work is in manager.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin

from gpucell.errors import GpucellError
from gpucell.server.manager import BrokerUnreachable, GpuCellManager, WorkerNotFound

MANAGER_SETTING = "gpucell_manager"


class GpuCellHandler(ExtensionHandlerMixin, APIHandler):
    """Runs one blocking manager call off the event loop and answers JSON, errors included."""

    @property
    def manager(self) -> GpuCellManager:
        return self.settings[MANAGER_SETTING]  # type: ignore[no-any-return]

    async def answer(self, call: Callable[[], dict[str, Any]]) -> None:
        try:
            # gRPC calls block: a thread keeps the server responsive while the broker answers.
            result = await asyncio.get_running_loop().run_in_executor(None, call)
        except BrokerUnreachable as exc:
            self._fail(503, str(exc))
        except WorkerNotFound as exc:
            self._fail(404, str(exc))
        except GpucellError as exc:
            self._fail(502, f"{type(exc).__name__}: {exc}")
        else:
            self.finish(result)

    def _fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish({"error": message})


class CatalogHandler(GpuCellHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(self.manager.catalog)


class StatusHandler(GpuCellHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(self.manager.status)


class ReleaseHandler(GpuCellHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        try:
            body = self.get_json_body()
        except tornado.web.HTTPError:
            body = None
        worker_id = body.get("worker_id") if isinstance(body, dict) else None
        if not isinstance(worker_id, str) or not worker_id:
            self._fail(400, 'body must be JSON {"worker_id": "<id>"}')
            return
        manager = self.manager
        await self.answer(lambda: manager.release(worker_id))


HANDLERS: list[tuple[str, type[GpuCellHandler]]] = [
    (r"/gpucell/catalog", CatalogHandler),
    (r"/gpucell/status", StatusHandler),
    (r"/gpucell/release", ReleaseHandler),
]

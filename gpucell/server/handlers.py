"""Thin Tornado handlers for the sidebar's REST API (documented in openapi.yaml); the work is in manager.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin

from gpucell.errors import BrokerUnavailableError, ConfigError, GpucellError, NotFoundError
from gpucell.server.manager import GpuCellManager

MANAGER_SETTING = "gpucell_manager"

# The one table from gpucell.errors to HTTP: the most specific class in an error's MRO wins. These answer
# the message alone; any other GpucellError is the broker's failure (502), named by its class.
HTTP_STATUS: dict[type[GpucellError], int] = {
    BrokerUnavailableError: 503,
    NotFoundError: 404,       # no such worker or notebook
    ConfigError: 400,         # a request the broker would refuse: bad path, parameter or label
}


def http_error(exc: GpucellError) -> tuple[int, str]:
    """The HTTP status and the `error` text the sidebar shows for a gpucell error."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls], str(exc)
    return 502, f"{type(exc).__name__}: {exc}"


class GpuCellHandler(ExtensionHandlerMixin, APIHandler):
    """Runs one blocking manager call off the event loop and answers JSON, errors included."""

    @property
    def manager(self) -> GpuCellManager:
        return self.settings[MANAGER_SETTING]  # type: ignore[no-any-return]

    async def answer(self, call: Callable[[], dict[str, Any]], status: int = 200) -> None:
        try:
            # gRPC calls block: a thread keeps the server responsive while the broker answers.
            result = await asyncio.get_running_loop().run_in_executor(None, call)
        except GpucellError as exc:
            self._fail(*http_error(exc))
        else:
            self.set_status(status)
            self.finish(result)

    def _fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish({"error": message})

    def json_body(self) -> dict[str, Any] | None:
        """The request's JSON object, or None when the body is not one."""
        try:
            body = self.get_json_body()
        except tornado.web.HTTPError:
            return None
        return body if isinstance(body, dict) else None


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
        body = self.json_body()
        worker_id = body.get("worker_id") if body is not None else None
        if not isinstance(worker_id, str) or not worker_id:
            self._fail(400, 'body must be JSON {"worker_id": "<id>"}')
            return
        manager = self.manager
        await self.answer(lambda: manager.release(worker_id))


JOB_BODY = '{"path": "<notebook.ipynb>", "hardware": "<label>", "parameters": ["KEY=VALUE", ...]}'


class JobsHandler(GpuCellHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self.answer(self.manager.jobs)

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        if body is None:
            self._fail(400, f"body must be JSON {JOB_BODY}")
            return
        path, hardware, parameters = body.get("path"), body.get("hardware", ""), body.get("parameters", [])
        if not isinstance(path, str) or not path:
            self._fail(400, f"path must be the notebook's path under the server root; body: {JOB_BODY}")
            return
        if not isinstance(hardware, str):
            self._fail(400, "hardware must be a string (a label, or empty for the broker's default)")
            return
        if not isinstance(parameters, list) or not all(isinstance(p, str) for p in parameters):
            self._fail(400, 'parameters must be a list of "KEY=VALUE" strings')
            return
        manager = self.manager
        await self.answer(lambda: manager.submit_job(path, hardware, parameters), status=201)


HANDLERS: list[tuple[str, type[GpuCellHandler]]] = [
    (r"/gpucell/catalog", CatalogHandler),
    (r"/gpucell/status", StatusHandler),
    (r"/gpucell/release", ReleaseHandler),
    (r"/gpucell/jobs", JobsHandler),
]

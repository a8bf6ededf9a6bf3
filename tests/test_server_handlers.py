"""The server extension's REST API through a real Jupyter server (pytest-jupyter's jp_fetch) and a real broker."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from tornado.httpclient import HTTPClientError

from conftest import wait_for
from gpucell.client.embedded import EmbeddedBroker, start_embedded_broker
from gpucell.client import BrokerClient
from gpucell.settings import ENV_BROKER, ENV_CONFIG, ENV_TOKEN
from gpucell.protocol import gpucell_pb2 as pb

# pytest-jupyter's fixtures, imported here rather than registered as a plugin in conftest: its plugin
# adds autouse fixtures (an event loop and a ServerApp cleanup) to every test of the suite.
from pytest_jupyter.jupyter_server import *  # noqa: F403

POOLS_TOML = """
[pools.T4]
simulate = true
max_workers = 2
idle_timeout = 120
price_per_hour = 0.35
"""


@pytest.fixture
def pools_config(tmp_path: Path) -> str:
    path = tmp_path / "gpucell.toml"
    path.write_text(POOLS_TOML)
    return str(path)


@pytest.fixture
def broker(pools_config: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedBroker]:
    """A broker the server is told about through GPUCELL_BROKER/GPUCELL_TOKEN, as a deployment would."""
    started = start_embedded_broker(pools_config)
    monkeypatch.setenv(ENV_BROKER, started.address)
    monkeypatch.setenv(ENV_TOKEN, started.token)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"gpucell.server": True}}}


Fetch = Callable[..., Any]


def call(jp_asyncio_loop: Any, jp_fetch: Fetch, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """One request to /gpucell/<path>; returns status and JSON body, errors included."""
    try:
        response = jp_asyncio_loop.run_until_complete(jp_fetch("gpucell", path, **kwargs))
    except HTTPClientError as exc:
        assert exc.response is not None
        return exc.code, json.loads(exc.response.body)
    return response.code, json.loads(response.body)


def run_cell(broker: EmbeddedBroker, session: str, notebook: str) -> None:
    client = BrokerClient(broker.address, broker.token)
    try:
        events = list(client.execute(pb.CellExecuteRequest(
            session_id=session, cell_id=uuid.uuid4().hex, hardware="T4", source="x = 1", session_name=notebook)))
    finally:
        client.close()
    assert events[-1].finished.ok, events


def test_catalog_and_status(broker: EmbeddedBroker, jp_fetch: Fetch, jp_asyncio_loop: Any, jp_root_dir: Path) -> None:
    code, catalog = call(jp_asyncio_loop, jp_fetch, "catalog")
    assert code == 200
    assert catalog["broker"] == broker.address
    t4 = {e["label"]: e for e in catalog["entries"]}["T4"]
    assert (t4["price_per_hour"], t4["warm"], t4["available"]) == (0.35, 0, 2)

    # Jupyter server gives kernels the absolute path (JPY_SESSION_NAME); the panel lists it as Lab does.
    run_cell(broker, "kernel-1", str(jp_root_dir / "work" / "analysis.ipynb"))
    code, status = call(jp_asyncio_loop, jp_fetch, "status")
    assert code == 200
    (worker,) = status["pools"]["T4"]["workers"]
    assert (worker["state"], worker["session_name"]) == ("idle", "work/analysis.ipynb")
    assert status["usage"]["by_notebook"][0]["notebook"] == "work/analysis.ipynb"


def test_release(broker: EmbeddedBroker, jp_fetch: Fetch, jp_asyncio_loop: Any) -> None:
    run_cell(broker, "kernel-1", "analysis.ipynb")
    _, status = call(jp_asyncio_loop, jp_fetch, "status")
    (worker,) = status["pools"]["T4"]["workers"]

    code, body = call(jp_asyncio_loop, jp_fetch, "release", method="POST", body=json.dumps({"worker_id": worker["id"]}))
    assert (code, body) == (200, {"released": [worker["id"]]})
    _, status = call(jp_asyncio_loop, jp_fetch, "status")
    assert [w for w in status["pools"]["T4"]["workers"] if w["state"] != "releasing"] == []


def test_release_rejects_bad_requests(broker: EmbeddedBroker, jp_fetch: Fetch, jp_asyncio_loop: Any) -> None:
    code, body = call(jp_asyncio_loop, jp_fetch, "release", method="POST", body=json.dumps({"id": "x"}))
    assert code == 400 and "worker_id" in body["error"]
    code, body = call(jp_asyncio_loop, jp_fetch, "release", method="POST", body="not json")
    assert code == 400
    code, body = call(jp_asyncio_loop, jp_fetch, "release", method="POST", body=json.dumps({"worker_id": "t4-999"}))
    assert code == 404 and "t4-999" in body["error"]


def test_broker_gone_is_503_with_address(broker: EmbeddedBroker, jp_fetch: Fetch, jp_asyncio_loop: Any) -> None:
    assert call(jp_asyncio_loop, jp_fetch, "status")[0] == 200
    broker.stop()
    for path in ("status", "catalog"):
        code, body = call(jp_asyncio_loop, jp_fetch, path)
        assert code == 503
        assert body["error"].startswith(f"broker unreachable at {broker.address}: ")


def test_requests_need_the_server_token(broker: EmbeddedBroker, jp_fetch: Fetch, jp_asyncio_loop: Any) -> None:
    code, _ = call(jp_asyncio_loop, jp_fetch, "status", headers={"Authorization": "token wrong"})
    assert code == 403


@pytest.fixture
def no_broker_env(pools_config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_BROKER, raising=False)
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    monkeypatch.setenv(ENV_CONFIG, pools_config)


def test_server_starts_a_shared_broker_for_its_kernels(
    no_broker_env: None, jp_serverapp: Any, jp_fetch: Fetch, jp_asyncio_loop: Any
) -> None:
    address = os.environ[ENV_BROKER]
    code, catalog = call(jp_asyncio_loop, jp_fetch, "catalog")
    assert code == 200 and catalog["broker"] == address
    # What a kernel launched by this server would inherit reaches the same broker.
    client = BrokerClient(address, os.environ[ENV_TOKEN])
    try:
        assert "T4" in client.status()["pools"]
    finally:
        client.close()

    (app,) = jp_serverapp.extension_manager.extension_apps["gpucell.server"]
    process = app.embedded.process
    jp_asyncio_loop.run_until_complete(app.stop_extension())
    wait_for(lambda: process.poll() is not None, 10, what="the server's broker to exit with the server")
    assert ENV_BROKER not in os.environ


def test_jobs_submit_and_list(broker: EmbeddedBroker, jp_fetch: Fetch, jp_asyncio_loop: Any, jp_root_dir: Path) -> None:
    (jp_root_dir / "work").mkdir()
    nbformat.write(new_notebook(cells=[new_code_cell("n = 1", metadata={"tags": ["parameters"]}),
                                       new_code_cell("print(n * 6)")]), jp_root_dir / "work" / "tiny.ipynb")
    code, job = call(jp_asyncio_loop, jp_fetch, "jobs", method="POST",
                     body=json.dumps({"path": "work/tiny.ipynb", "hardware": "T4", "parameters": ["n=7"]}))
    assert code == 201, job
    assert job["id"].startswith("job-") and (job["notebook"], job["state"]) == ("work/tiny.ipynb", "running")

    def listed() -> dict[str, Any]:
        code, body = call(jp_asyncio_loop, jp_fetch, "jobs")
        assert code == 200 and body["broker"] == broker.address
        (row,) = body["jobs"]
        return dict(row)

    assert listed()["id"] == job["id"]
    row = wait_for(lambda: (r := listed())["state"] != "running" and r, 120, interval=0.1, what="the job to end")
    assert (row["state"], row["notebook"], row["hardware"]) == ("succeeded", "work/tiny.ipynb", "T4"), row
    assert row["duration_s"] > 0


def test_jobs_reject_bad_requests(broker: EmbeddedBroker, jp_fetch: Fetch, jp_asyncio_loop: Any, jp_root_dir: Path) -> None:
    nbformat.write(new_notebook(cells=[new_code_cell("1")]), jp_root_dir / "ok.ipynb")

    def post(body: Any) -> tuple[int, dict[str, Any]]:
        return call(jp_asyncio_loop, jp_fetch, "jobs", method="POST",
                    body=body if isinstance(body, str) else json.dumps(body))

    assert post("not json")[0] == 400
    code, body = post({"hardware": "T4"})
    assert code == 400 and "path" in body["error"]
    assert post({"path": "ok.ipynb", "parameters": "n=1"})[0] == 400
    code, body = post({"path": "missing.ipynb"})
    assert code == 404 and "missing.ipynb" in body["error"]
    code, body = post({"path": "../ok.ipynb"})
    assert code == 400 and "outside" in body["error"]
    code, body = post({"path": "ok.ipynb", "parameters": ["1x=2"]})
    assert code == 400 and "KEY=VALUE" in body["error"]
    code, body = post({"path": "ok.ipynb", "hardware": "XYZ"})
    assert code == 400 and "XYZ" in body["error"]
    assert call(jp_asyncio_loop, jp_fetch, "jobs") == (200, {"jobs": [], "broker": broker.address})

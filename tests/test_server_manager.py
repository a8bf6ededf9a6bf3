"""The sidebar's manager against a real embedded broker with simulated pools; no Tornado involved."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest import wait_for
from gpucell.client.jobs_client import JobsClient
from gpucell.client.embedded import EmbeddedBroker, start_embedded_broker
from gpucell.client import BrokerClient
from gpucell.protocol import gpucell_pb2 as pb
from gpucell.errors import BrokerUnavailableError, ConfigError, NotFoundError
from gpucell.server.manager import GpuCellManager

POOLS_TOML = """
[pools.T4]
simulate = true
max_workers = 2
idle_timeout = 120
price_per_hour = 0.35

[pools.cpu]
max_workers = 2
idle_timeout = 120
"""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    config = tmp_path / "gpucell.toml"
    config.write_text(POOLS_TOML)
    started = start_embedded_broker(str(config))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def manager(broker: EmbeddedBroker) -> Iterator[GpuCellManager]:
    made = GpuCellManager(broker.address, broker.token)
    try:
        yield made
    finally:
        made.close()


def run_cell(broker: EmbeddedBroker, session: str, notebook: str, hardware: str = "T4") -> list[str]:
    """Run one cell as a notebook kernel would (through the shared client); returns its stdout."""
    client = BrokerClient(broker.address, broker.token)
    try:
        request = pb.CellExecuteRequest(session_id=session, cell_id=uuid.uuid4().hex, hardware=hardware,
                                        source="import os; print(os.environ['GPUCELL_HARDWARE'])",
                                        session_name=notebook)
        events = list(client.execute(request))
    finally:
        client.close()
    assert events[-1].finished.ok, events
    return [e.stream.text for e in events if e.WhichOneof("kind") == "stream"]


def workers(status: dict) -> list[dict]:
    return [w for pool in status["pools"].values() for w in pool["workers"]]


def test_catalog_lists_each_pool_with_price_and_counts(manager: GpuCellManager, broker: EmbeddedBroker) -> None:
    catalog = manager.catalog()
    entries = {e["label"]: e for e in catalog["entries"]}
    assert set(entries) == {"T4", "cpu"}
    assert entries["T4"]["price_per_hour"] == pytest.approx(0.35)
    assert entries["T4"]["simulate"] is True
    assert (entries["T4"]["warm"], entries["T4"]["available"]) == (0, 2)
    assert catalog["broker"] == broker.address
    assert "T4" in catalog["known_labels"]


def test_status_shows_workers_and_cost_per_notebook(manager: GpuCellManager, broker: EmbeddedBroker) -> None:
    assert run_cell(broker, "kernel-a", "analysis.ipynb") == ["T4\n"]
    assert run_cell(broker, "kernel-b", "train.ipynb") == ["T4\n"]
    # A restarted kernel of the same notebook is a new session; its cost adds to the same notebook.
    assert run_cell(broker, "kernel-a2", "analysis.ipynb", hardware="cpu") == ["cpu\n"]

    status = manager.status()
    live = workers(status)
    assert {w["session_name"] for w in live} == {"analysis.ipynb", "train.ipynb"}
    assert all(w["state"] == "idle" and w["release_in_s"] > 0 for w in live)
    by_notebook = {row["notebook"]: row for row in status["usage"]["by_notebook"]}
    assert set(by_notebook) == {"analysis.ipynb", "train.ipynb"}
    sessions = [s for s in status["usage"]["sessions"] if s["session_name"] == "analysis.ipynb"]
    assert len(sessions) == 2
    assert by_notebook["analysis.ipynb"]["worker_seconds"] == pytest.approx(
        sum(s["worker_seconds"] for s in sessions))
    assert status["usage"]["total_cost"] == pytest.approx(sum(r["cost"] for r in by_notebook.values()), abs=1e-5)
    assert by_notebook["train.ipynb"]["cost"] > 0

    t4 = {e["label"]: e for e in manager.catalog()["entries"]}["T4"]
    # Two idle T4 workers, each held by a session: warm, but the cap leaves none for a new session.
    assert (t4["warm"], t4["available"]) == (2, 0)


def test_release_removes_the_worker(manager: GpuCellManager, broker: EmbeddedBroker) -> None:
    run_cell(broker, "kernel-a", "analysis.ipynb")
    (worker,) = workers(manager.status())
    assert manager.release(worker["id"]) == {"released": [worker["id"]]}
    assert [w for w in workers(manager.status()) if w["state"] != "releasing"] == []
    wait_for(lambda: workers(manager.status()) == [], 15, what="the released worker to leave the status")
    with pytest.raises(NotFoundError, match=worker["id"]):
        manager.release(worker["id"])


def test_unreachable_broker_says_where(broker: EmbeddedBroker) -> None:
    made = GpuCellManager(broker.address, broker.token)
    try:
        made.status()
        broker.stop()
        with pytest.raises(BrokerUnavailableError, match=f"broker unreachable at {broker.address}"):
            made.status()
        with pytest.raises(BrokerUnavailableError):
            made.catalog()
    finally:
        made.close()


def test_notebook_names_are_relative_to_the_server_root(broker: EmbeddedBroker, tmp_path: Path) -> None:
    made = GpuCellManager(broker.address, broker.token, notebook_root=str(tmp_path))
    try:
        assert made.notebook_name(str(tmp_path / "work" / "a.ipynb")) == "work/a.ipynb"
        assert made.notebook_name("/elsewhere/b.ipynb") == "/elsewhere/b.ipynb"
        assert made.notebook_name("my label") == "my label"
        run_cell(broker, "kernel-a", str(tmp_path / "a.ipynb"))
        status = made.status()
        assert [w["session_name"] for w in workers(status)] == ["a.ipynb"]
        assert [row["notebook"] for row in status["usage"]["by_notebook"]] == ["a.ipynb"]
    finally:
        made.close()


def test_submit_a_notebook_as_a_job_and_list_it(broker: EmbeddedBroker, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "greeting.txt").write_text("hello from the notebook's folder")
    nbformat.write(new_notebook(cells=[
        new_code_cell("n = 1", metadata={"tags": ["parameters"]}),
        new_code_cell("print(open('greeting.txt').read())"),  # relative reads: the job runs in the folder
        new_code_cell("%load_ext gpucell"),
        new_code_cell("%%gpu\nimport os\nprint('on', os.environ['GPUCELL_HARDWARE'], 'n', n)"),
    ]), work / "tiny.ipynb")
    made = GpuCellManager(broker.address, broker.token, notebook_root=str(tmp_path))
    try:
        job = made.submit_job("work/tiny.ipynb", "T4", ["n=7", "  "])
        assert job["id"].startswith("job-") and job["state"] == "running"
        assert (job["notebook"], job["hardware"]) == ("work/tiny.ipynb", "T4")

        def ended() -> dict | None:
            (listed,) = [j for j in made.jobs()["jobs"] if j["id"] == job["id"]]
            return listed if listed["state"] != "running" else None

        done = wait_for(ended, 180, what="the job to end")
        assert isinstance(done, dict)
        assert done["state"] == "succeeded", done["error"]
        assert done["notebook"] == "work/tiny.ipynb" and done["cost"] > 0
        assert done["duration_s"] == pytest.approx(done["finished"] - done["started"])
    finally:
        made.close()
    client = JobsClient(broker.address, broker.token)
    try:
        data, _ = client.fetch(job["id"])
    finally:
        client.close()
    outputs = ["".join(o.get("text", "") for o in cell.get("outputs", []))
               for cell in nbformat.reads(data.decode(), as_version=4).cells]
    assert "hello from the notebook's folder" in outputs[2]  # cell 1 is the injected parameters
    assert "on T4 n 7" in outputs[4]


def test_bad_job_requests_fail_before_anything_runs(broker: EmbeddedBroker, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for folder in (tmp_path, root):
        nbformat.write(new_notebook(cells=[new_code_cell("1")]), folder / "ok.ipynb")
    made = GpuCellManager(broker.address, broker.token, notebook_root=str(root))
    try:
        with pytest.raises(NotFoundError, match="missing.ipynb"):
            made.submit_job("missing.ipynb")
        with pytest.raises(ConfigError, match="outside"):
            made.submit_job("../ok.ipynb")
        with pytest.raises(ConfigError, match="not a notebook"):
            made.submit_job("data.csv")
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            made.submit_job("ok.ipynb", parameters=["no equals sign"])
        with pytest.raises(ConfigError, match="XYZ"):  # the broker refuses the label at submit time
            made.submit_job("/ok.ipynb", hardware="XYZ")
        assert made.jobs() == {"jobs": [], "broker": broker.address}
    finally:
        made.close()


def test_job_submit_does_not_follow_a_link_out_of_the_root(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """A symbolic link inside the server's root that leads outside it (to a notebook, or to a folder) is
    refused as outside; one that stays inside the root is followed."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    nbformat.write(new_notebook(cells=[new_code_cell("1")]), outside / "secret.ipynb")
    (root / "link.ipynb").symlink_to(outside / "secret.ipynb")
    (root / "folder").symlink_to(outside)
    made = GpuCellManager(broker.address, broker.token, notebook_root=str(root))
    try:
        for path in ("link.ipynb", "folder/secret.ipynb", "/folder/secret.ipynb"):
            with pytest.raises(ConfigError, match="outside"):
                made.submit_job(path)
        assert made.jobs()["jobs"] == []
        (root / "inside").mkdir()
        nbformat.write(new_notebook(cells=[new_code_cell("1")]), root / "inside" / "real.ipynb")
        (root / "alias.ipynb").symlink_to(root / "inside" / "real.ipynb")
        assert made.resolve_notebook("alias.ipynb") == (root / "inside" / "real.ipynb").resolve()
    finally:
        made.close()

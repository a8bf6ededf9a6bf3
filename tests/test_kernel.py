"""A real ipykernel: notebooks run through nbclient; the embedded broker and its workers die with the kernel."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from conftest import pid_alive, wait_for

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture
def kernel_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No GPUCELL_BROKER: %load_ext gpucell starts its own embedded broker.
    for name in ("GPUCELL_BROKER", "GPUCELL_TOKEN", "GPUCELL_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_env: None) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    if path.name == "quickstart.ipynb":
        text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        assert "trained: loss=" in text and "weights came back: (8,)" in text and "step 2" in text
        assert "caught: IndexError" in text
        assert any("image/png" in o.get("data", {}) for o in outputs if o.output_type == "display_data")
        # Each %%gpu cell shows one phase line, updated in place until it says how it ended.
        phases = [o["data"]["text/plain"] for o in outputs if o.output_type == "display_data"
                  and o.get("data", {}).get("text/plain", "").startswith("gpucell:")]
        assert phases and all(p.startswith(("gpucell: done in", "gpucell: failed in")) for p in phases)
        assert any(" on cpu worker " in p and "$" in p for p in phases)


def _pids(km: KernelManager) -> tuple[int, list[int]]:
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        code = ("%load_ext gpucell\n"
                "get_ipython().run_cell_magic('gpu', 'cpu', 'import os\\nwpid = os.getpid()\\n')\n"
                "print('PIDS', get_ipython()._gpucell_magics.broker.pid, wpid)")
        lines: list[str] = []
        reply = client.execute_interactive(code, timeout=120, output_hook=lambda msg: lines.append(
            msg["content"].get("text", "")) if msg["msg_type"] == "stream" else None)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        client.stop_channels()
    out = "".join(lines)
    _, broker_pid, worker_pid = out[out.index("PIDS"):].split()[:3]
    return int(broker_pid), [int(worker_pid)]


@pytest.mark.parametrize("how", ["shutdown", "sigkill"])
def test_embedded_broker_and_workers_die_with_the_kernel(how: str, kernel_env: None) -> None:
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    try:
        broker_pid, worker_pids = _pids(km)
        assert pid_alive(broker_pid) and all(pid_alive(p) for p in worker_pids)
        if how == "shutdown":
            km.shutdown_kernel(now=False)
        else:
            os.kill(km.provisioner.pid, signal.SIGKILL)  # type: ignore[union-attr]
        for pid in [broker_pid, *worker_pids]:
            wait_for(lambda pid=pid: not pid_alive(pid), timeout=20, what=f"process {pid} to exit")
    finally:
        if km.is_alive():
            km.shutdown_kernel(now=True)

"""input() in a %%gpu cell asks the notebook, as a local cell does (issue 25).

nbclient cannot answer stdin, so a real kernel is driven as a frontend that allows stdin drives it
(jupyter_client: execute with allow_stdin, answer each input_request on the stdin channel), and what the
user sees — the prompts asked and the output — is compared between the plain cell and the %%gpu cell,
on both routes: the first %%gpu cell goes through the broker, the next over the lane.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

CELL = "name = input('who? ')\nimport getpass\npw = getpass.getpass('pw: ')\nprint('hello', name, len(pw))"


class StdinKernel:
    def __init__(self, env: dict[str, str]) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env)
        self.client = self.km.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def run(self, code: str, answers: list[str], timeout: float = 120) -> tuple[list[tuple[str, bool]], str, str]:
        """(prompts asked with their password flag, stdout text, error name) of one cell run with stdin."""
        msg_id = self.client.execute(code, allow_stdin=True)
        prompts: list[tuple[str, bool]] = []
        text, ename = "", ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:   # both channels, each read with a short bound: whichever has a message is answered
                request = self.client.get_stdin_msg(timeout=0.05)
                if request["msg_type"] == "input_request":
                    prompts.append((request["content"]["prompt"], bool(request["content"]["password"])))
                    self.client.input(answers[len(prompts) - 1])
            except queue.Empty:
                pass
            try:
                msg = self.client.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream" and content["name"] == "stdout":
                text += content["text"]
            elif kind == "error":
                ename = content["ename"]
            elif kind == "status" and content["execution_state"] == "idle":
                return prompts, text, ename
        raise AssertionError(f"the cell did not end within {timeout}s: {prompts} {text!r}")

    def shutdown(self) -> None:
        self.client.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[StdinKernel]:
    env = {k: v for k, v in os.environ.items() if k not in ("GPUCELL_BROKER", "GPUCELL_TOKEN", "GPUCELL_CONFIG")}
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    k = StdinKernel(env)
    try:
        yield k
    finally:
        k.shutdown()


def test_input_in_a_gpu_cell_asks_the_notebook_on_both_routes(kernel: StdinKernel) -> None:
    plain = kernel.run(CELL, ["ada", "secret"])
    assert plain == ([("who? ", False), ("pw: ", True)], "hello ada 6\n", "")
    assert kernel.run("%load_ext gpucell", [])[2] == ""
    broker = kernel.run(f"%%gpu cpu\n{CELL}", ["ada", "secret"])    # a first cell: through the broker
    lane = kernel.run(f"%%gpu cpu\n{CELL}", ["ada", "secret"])      # a warm cell: over the lane
    assert broker == plain
    assert lane == plain
    # the answers are the worker's values, and sys.stdin reads a line from the notebook too
    prompts, text, ename = kernel.run("%%gpu cpu\nimport sys\nline = sys.stdin.readline()\nprint(repr(line), name)",
                                      ["typed"])
    assert (prompts, text, ename) == ([("", False)], "'typed\\n' ada\n", "")

"""Bad input: one clear line, raised before anything runs remotely, local namespace untouched."""

from __future__ import annotations

import socket
import threading

import pytest
from IPython.core.interactiveshell import InteractiveShell

from conftest import Cluster
from gpucell.client import BrokerClient
from gpucell.errors import (
    AuthenticationError,
    BrokerUnavailableError,
    ConfigError,
    SerializationError,
    UnknownHardwareError,
)


def _no_cells_ran(cluster: Cluster) -> bool:
    return all(p["workers"] == [] for p in cluster.status()["pools"].values())


def test_syntax_error_names_the_line(shell: InteractiveShell, cluster: Cluster) -> None:
    shell.user_ns["a"] = 1
    before = dict(shell.user_ns)
    with pytest.raises(ConfigError, match=r"line 2") as info:
        shell.run_cell_magic("gpu", "cpu", "a = 2\nb = = 3\n")
    assert "\n" not in str(info.value)
    assert shell.user_ns["a"] == 1 and "b" not in shell.user_ns and set(shell.user_ns) == set(before)
    assert _no_cells_ran(cluster)


def test_unknown_label_lists_the_known_ones(shell: InteractiveShell, cluster: Cluster) -> None:
    with pytest.raises(UnknownHardwareError) as info:
        shell.run_cell_magic("gpu", "A10O", "x = 1\n")
    message = str(info.value)
    assert "'A10O'" in message and "A100" in message and "T4" in message and "cpu" in message
    assert "x" not in shell.user_ns
    assert _no_cells_ran(cluster)


def test_unpicklable_input_names_variable_and_type(shell: InteractiveShell, cluster: Cluster) -> None:
    shell.user_ns["stream"] = (i for i in range(3))
    shell.user_ns["fine"] = 5
    with pytest.raises(SerializationError) as info:
        shell.run_cell_magic("gpu", "cpu", "total = fine + sum(stream)\n")
    message = str(info.value)
    assert "'stream'" in message and "generator" in message and "\n" not in message
    assert "total" not in shell.user_ns
    assert _no_cells_ran(cluster)


@pytest.mark.parametrize("line, fragment", [
    ("cpu --timeout -3", "--timeout"),
    ("cpu --env NOEQUALS", "--env"),
    ("cpu --pull 'a b'", "--pull"),
])
def test_bad_options_are_named(shell: InteractiveShell, line: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        shell.run_cell_magic("gpu", line, "x = 1\n")
    assert "x" not in shell.user_ns


def test_closed_port_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port is closed now: nothing listens there.
    monkeypatch.setenv("GPUCELL_BROKER", f"127.0.0.1:{port}")
    monkeypatch.setenv("GPUCELL_TOKEN", "whatever")
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "gpucell")
    try:
        sh.user_ns["v"] = 1
        outcome: list[BaseException] = []

        def attempt() -> None:
            try:
                sh.run_cell_magic("gpu", "cpu", "v = 2\n")
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                outcome.append(exc)

        thread = threading.Thread(target=attempt)
        thread.start()
        thread.join(20)  # a bound for the test itself; the product's own bound is 5 s
        assert not thread.is_alive(), "the magic hung on a closed port"
        assert outcome and isinstance(outcome[0], BrokerUnavailableError)
        assert f"127.0.0.1:{port}" in str(outcome[0])
        assert sh.user_ns["v"] == 1
    finally:
        sh.run_line_magic("unload_ext", "gpucell")


def test_wrong_token_is_a_clear_error(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    client = BrokerClient(cluster.address, "not-the-token")
    with pytest.raises(AuthenticationError, match="refused the token"):
        client.status()
    client.close()

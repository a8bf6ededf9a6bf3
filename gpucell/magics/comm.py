"""Kernel side of the sidebar's `gpucell` comm: the hardware picked in JupyterLab becomes the bare `%%gpu` default."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import comm as comm_package

log = logging.getLogger(__name__)

COMM_TARGET = "gpucell"

SetDefault = Callable[[str], None]
GetDefault = Callable[[], str]


def handle_message(data: Any, set_default: SetDefault, get_default: GetDefault) -> dict[str, Any] | None:
    """Answer one message from the sidebar; None for messages that need no reply (unknown or empty)."""
    if not isinstance(data, dict) or not data.get("action"):
        return None
    action = data["action"]
    if action == "set_default_hardware":
        hardware = data.get("hardware")
        if not isinstance(hardware, str) or not hardware.strip():
            return {"ok": False, "action": action, "error": "set_default_hardware needs a non-empty 'hardware' string"}
        try:
            set_default(hardware.strip())
        except Exception as exc:  # noqa: BLE001 - the user sees this in the sidebar, not as a kernel traceback
            return {"ok": False, "action": action, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": True, "action": action, "default_hardware": get_default()}
    if action == "get_default_hardware":
        return {"ok": True, "action": action, "default_hardware": get_default()}
    return {"ok": False, "action": action, "error": f"unknown action {action!r}"}


def _attach(comm: Any, set_default: SetDefault, get_default: GetDefault) -> None:
    """Route every message arriving on `comm` through handle_message and send the reply back on it."""

    def on_msg(msg: dict[str, Any]) -> None:
        reply = handle_message(msg.get("content", {}).get("data"), set_default, get_default)
        if reply is not None:
            comm.send(reply)

    comm.on_msg(on_msg)


def register_comm(shell: Any, set_default: SetDefault, get_default: GetDefault) -> None:
    """Register the `gpucell` comm target in this ipykernel and tell an open sidebar that it may send its pick.

    A no-op outside ipykernel (plain IPython, tests with a bare InteractiveShell). Two directions, because
    either side may come first: the sidebar opens a comm when the user picks (answered here), and this
    kernel opens one when `%load_ext gpucell` runs (so a pick made before the extension was loaded still
    arrives; the sidebar replies with set_default_hardware on it).
    """
    kernel = getattr(shell, "kernel", None)
    comm_manager = getattr(kernel, "comm_manager", None)
    if comm_manager is None:
        return

    def on_open(comm: Any, open_msg: dict[str, Any]) -> None:
        _attach(comm, set_default, get_default)
        reply = handle_message(open_msg.get("content", {}).get("data"), set_default, get_default)
        if reply is not None:
            comm.send(reply)

    comm_manager.register_target(COMM_TARGET, on_open)
    try:
        announce = comm_package.create_comm(
            target_name=COMM_TARGET, data={"action": "ready", "default_hardware": get_default()}
        )
        _attach(announce, set_default, get_default)
    except Exception:  # no frontend listening is normal (nbclient, console); the target above still works
        log.debug("could not announce the gpucell comm to the frontend", exc_info=True)

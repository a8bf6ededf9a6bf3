"""The notebook's side of input() in a remote cell: asked on the kernel's main thread, as a local cell asks.

In a kernel, builtins.input and getpass.getpass are ipykernel's while a cell runs: with a frontend that
allows stdin they send an input_request on the stdin channel and wait for the reply; without one they
raise StdinNotImplementedError. The remote cell's input() gets the line, or raises that same error.
A KeyboardInterrupt while the notebook waits is not an answer: it interrupts the cell.
"""

from __future__ import annotations

import builtins
import getpass

from gpucell.protocol import gpucell_pb2 as pb


def answer_input(ask: pb.InputRequest, session_id: str, cell_id: str) -> pb.CellInputRequest:
    reply = pb.CellInputRequest(session_id=session_id, cell_id=cell_id)
    try:
        reply.value = getpass.getpass(ask.prompt) if ask.password else builtins.input(ask.prompt)
    except Exception as exc:  # noqa: BLE001 - the cell's input() raises it there
        etype = type(exc)
        reply.ename = etype.__name__
        reply.evalue = str(exc)
        reply.etype = f"{etype.__module__}:{etype.__qualname__}"
    return reply


__all__ = ["answer_input"]

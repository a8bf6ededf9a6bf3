"""IPython magics of gpucell; `%load_ext gpucell` registers them."""

from __future__ import annotations

from typing import Any

from gpucell.magics import cell_behaviour
from gpucell.magics.comm import register_comm
from gpucell.magics.magics import GPUCell, GPUCellMagics, connect
from gpucell.magics.map_magic import GPUMapMagics

__all__ = ["GPUCell", "GPUCellMagics", "load", "unload"]


def load(shell: Any) -> GPUCellMagics:
    magics = connect(shell)
    shell.register_magics(magics)
    shell.register_magics(GPUMapMagics(shell, magics))

    def set_default(hardware: str) -> None:
        magics.session.default_hardware = magics.session.check_hardware(hardware)

    register_comm(shell, set_default, lambda: magics.session.default_hardware)
    shell._gpucell_magics = magics
    shell._gpucell_syntax_check = cell_behaviour.install(shell)
    return magics


def unload(shell: Any) -> None:
    magics = getattr(shell, "_gpucell_magics", None)
    if magics is not None:
        magics.close()
        del shell._gpucell_magics
    cell_behaviour.uninstall(shell, getattr(shell, "_gpucell_syntax_check", None))
    shell._gpucell_syntax_check = None

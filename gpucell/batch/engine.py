"""papermill's `gpucell` engine: live output, `%%gpu` routing (--gpu), phase lines, a save per cell, resume plans."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, NotebookExecutionManager
from papermill.iorw import write_ipynb
from papermill.utils import merge_kwargs, remove_args
from traitlets.config import Config

from gpucell.batch.quiet_kernel import quiet_kernel_stderr
from gpucell.batch.runner import Echo, write_notebook

DEFAULT_KERNEL = "python3"  # only when the notebook names no kernel and no -k is given


class Cancelled(BaseException):
    """SIGTERM (gpucell cancel, a scheduler): stop after saving what ran."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Cancelled()


def local_transport(directory: str) -> Config:
    """IPC sockets in a private directory: a kernel on this machine needs no TCP, and ipykernel's "running
    over TCP without encryption" warning was the first line every `gpucell run` printed. The path is
    absolute (left to itself, jupyter_client makes it relative to each side's cwd, which differ under
    --cwd), and TCP stays where the directory's path is too long for a Unix socket."""
    prefix = os.path.join(directory, "k")
    if len(prefix) > 90:
        return Config()
    return Config(KernelManager={"transport": "ipc", "ip": prefix})


def _is_local(path: str) -> bool:
    return "://" not in path and path != "-"


class GpucellManager(NotebookExecutionManager):  # type: ignore[misc]
    """papermill's bookkeeping (metadata.papermill, per-cell timing), plus metadata.gpucell, atomic saves of local
    files (`gpucell fetch` or a crash sees a whole notebook) and the cells a resume keeps as they were."""

    def __init__(self, nb: NotebookNode, kept: frozenset[int], **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self.kept = kept

    def save(self, **kwargs: Any) -> None:
        if kwargs.get("nb") is not None:
            self.nb = kwargs["nb"]
        if self.output_path and _is_local(str(self.output_path)):
            write_notebook(self.nb, str(self.output_path))
            self.last_save_time = self.now()
        else:
            super().save()

    def notebook_start(self, **kwargs: Any) -> None:
        kept = {i: (c.get("outputs", []), c.get("execution_count")) for i, c in enumerate(self.nb.cells)
                if i in self.kept}
        meta = self.nb.metadata.setdefault("gpucell", {})
        meta.update({"status": "running", "failed_cell": None, "error": ""})
        meta.setdefault("parameters", dict(self.nb.metadata.get("papermill", {}).get("parameters") or {}))
        super().notebook_start(**kwargs)  # clears every cell, saves
        for index, (outputs, count) in kept.items():
            cell = self.nb.cells[index]
            cell.outputs, cell.execution_count = outputs, count
            cell.metadata.papermill["status"] = "kept"
        if kept:
            self.save()


class GpucellClient(PapermillNotebookClient):  # type: ignore[misc]
    """Runs the planned cells, echoing each output the moment it arrives, with a header per cell."""

    def __init__(self, nb_man: GpucellManager, echo: Echo, plan: list[int], rebuild: frozenset[int],
                 **kwargs: Any) -> None:
        super().__init__(nb_man, **kwargs)
        self.echo = echo
        self.plan = plan
        self.rebuild = rebuild
        self.failure: tuple[str, int | None, str] = ("succeeded", None, "")

    def output(self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None,
               cell_index: int) -> NotebookNode | None:
        out = super().output(outs, msg, display_id, cell_index)
        if out is not None:
            self.echo.output(out)
        return out

    def log_output_message(self, output: NotebookNode) -> None:
        # Every output is already echoed live; papermill's logger would print it twice.
        return None

    def execute(self, **kwargs: Any) -> NotebookNode:
        """papermill's execute, except that a failed run does not wait on the kernel's info reply (after a timeout
        the kernel is still busy, and that wait failed inside nbclient with an AssertionError)."""
        self.reset_execution_trackers()
        with self.setup_kernel(**kwargs):
            self.papermill_execute_cells()
            if self.failure[0] == "succeeded":
                info = self.wait_for_reply(self.kc.kernel_info())
                self.nb.metadata["language_info"] = info["content"]["language_info"]
            self.set_widgets_metadata()
        return self.nb

    def papermill_execute_cells(self) -> None:
        current = -1
        try:
            for current in self.plan:
                cell = self.nb.cells[current]
                note = " (re-run to rebuild the namespace)" if current in self.rebuild else ""
                self.echo.header(current, cell, note)
                try:
                    self.nb_man.cell_start(cell, current)
                    self.execute_cell(cell, current)
                except CellExecutionError as exc:
                    self.nb_man.cell_exception(self.nb.cells[current], cell_index=current, exception=exc)
                    self.failure = ("failed", current, f"{exc.ename}: {exc.evalue}")
                    return
                except CellTimeoutError:
                    self.nb_man.cell_exception(self.nb.cells[current], cell_index=current)
                    timeout = self.timeout
                    self.failure = ("failed", current, f"CellTimeoutError: the cell ran past --timeout {timeout}s")
                    return
                finally:
                    self.echo.phases(self.nb.cells[current])
                    self.nb_man.cell_complete(self.nb.cells[current], cell_index=current)
        except DeadKernelError:
            self.failure = ("failed", current, "DeadKernelError: the kernel died")
            raise
        except Cancelled:
            self.failure = ("cancelled", current if current >= 0 else None, "cancelled (SIGTERM)")
            raise
        except KeyboardInterrupt:
            self.failure = ("cancelled", current if current >= 0 else None, "cancelled (interrupt)")
            raise


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (the Python API from a worker thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class GpucellEngine(NBClientEngine):  # type: ignore[misc]
    """`papermill -e gpucell` and `gpucell run`: papermill's engine contract, gpucell's runner behaviour.

    Extra keyword arguments (papermill passes unknown ones through to the engine): `hardware` (default for a bare
    `%%gpu`), `plan` and `rebuild` (cell indexes to execute, and those re-run only to rebuild state: --resume),
    `echo_to` (where live output goes; stdout, or stderr when the notebook itself goes to stdout).
    """

    @classmethod
    def nb_kernel_name(cls, nb: NotebookNode, name: str | None = None) -> str:
        # The notebook's own kernel (or -k); python3 only for a notebook that names none.
        return name or nb.metadata.get("kernelspec", {}).get("name") or DEFAULT_KERNEL

    @classmethod
    def nb_language(cls, nb: NotebookNode, language: str | None = None) -> str:
        # A notebook written by a script often has no kernelspec or language_info: a Python kernel runs it.
        return (language or nb.metadata.get("kernelspec", {}).get("language")
                or nb.metadata.get("language_info", {}).get("name") or "python")

    @classmethod
    def execute_notebook(cls, nb: NotebookNode, kernel_name: str, output_path: str | None = None,
                         progress_bar: bool = False, log_output: bool = False, autosave_cell_every: int = 30,
                         **kwargs: Any) -> NotebookNode:
        label = kwargs.pop("input_label", None)
        if label is not None:
            nb.metadata.papermill["input_path"] = label
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        plan = list(kwargs.pop("plan", None) or code)
        kept = frozenset(i for i in code if i not in plan)   # --resume: earlier cells that are not re-run
        nb_man = GpucellManager(nb, kept, output_path=output_path, progress_bar=progress_bar,
                                log_output=log_output, autosave_cell_every=autosave_cell_every)
        nb_man.notebook_start()
        client: GpucellClient | None = None
        try:
            client = cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, plan=plan, **kwargs)
        finally:
            nb_man.cleanup_pbar()
            failure = client.failure if client is not None else getattr(nb_man, "gpucell_failure", None)
            status, failed, error = failure or ("failed", None, "the run stopped")
            nb_man.nb.metadata.setdefault("gpucell", {}).update(
                {"status": status, "failed_cell": failed, "error": error})
            nb_man.notebook_complete()
        return nb_man.nb

    @classmethod
    def execute_managed_notebook(cls, nb_man: GpucellManager, kernel_name: str, log_output: bool = False,
                                 stdout_file: TextIO | None = None, stderr_file: TextIO | None = None,
                                 start_timeout: int = 60, execution_timeout: int | None = None,
                                 **kwargs: Any) -> GpucellClient:
        plan: list[int] = kwargs.pop("plan")
        rebuild = frozenset(kwargs.pop("rebuild", None) or ())
        hardware = kwargs.pop("hardware", "") or ""
        echo_to = kwargs.pop("echo_to", None) or sys.stdout
        kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
        sockets = tempfile.mkdtemp(prefix="gpucell-kernel-")
        final = merge_kwargs(kwargs, timeout=execution_timeout, startup_timeout=start_timeout,
                             kernel_name=kernel_name, log_output=False, stdout_file=stdout_file,
                             stderr_file=stderr_file, config=local_transport(sockets),
                             extra_arguments=[f"--GPUCell.default_hardware={hardware}"] if hardware else [],
                             resources={"metadata": {"path": os.getcwd()}})
        client = GpucellClient(nb_man, Echo(echo_to, sys.stderr), plan, rebuild, **final)
        nb_man.gpucell_failure = None
        env = dict(os.environ)
        env.setdefault("JPY_SESSION_NAME", str(Path(nb_man.nb.metadata.get("papermill", {}).get("input_path")
                                                     or "notebook").resolve()))
        try:
            with _sigterm_raises(), quiet_kernel_stderr() as kernel_stderr:
                client.execute(env=env, stderr=kernel_stderr)
        except (DeadKernelError, Cancelled, KeyboardInterrupt):
            nb_man.gpucell_failure = client.failure
            raise
        finally:
            shutil.rmtree(sockets, ignore_errors=True)
        return client


def save_final(nb: NotebookNode, output_path: str) -> None:
    """The notebook as it ends (papermill's error banner included), atomically for local files."""
    if _is_local(output_path):
        write_notebook(nb, output_path)
    else:
        write_ipynb(nb, output_path)


"""Cells that go straight from a client to its warm worker (the lane), as the broker keeps track of them."""

from __future__ import annotations

import time
from collections.abc import Callable

from gpucell.broker import scheduler as sch
from gpucell.broker.metrics import BrokerMetrics
from gpucell.broker.runs import CellRun
from gpucell.protocol import gpucell_pb2 as pb


class LaneBook:
    """Turns a worker's lane reports into scheduler events (busy, idle clock, usage stay true) and keeps a
    run per lane cell, without a client stream: if its worker dies mid-cell the scheduler fails it, and the
    client, whose lane closed, reads the reason with CellAttach."""

    def __init__(self, scheduler: sch.Scheduler, cells: dict[str, CellRun], metrics: BrokerMetrics,
                 handle: Callable[[sch.Event], object], fail: Callable[[CellRun, str, str], None],
                 stimulus: Callable[[str], str]) -> None:
        self.scheduler = scheduler
        self.cells = cells
        self.metrics = metrics
        self.handle = handle
        self.fail = fail
        self.stimulus = stimulus
        self.gone_reasons: dict[str, str] = {}   # worker -> why it went (the last 1,000)
        self._stopped: set[str] = set()          # workers the broker stopped: their reason stays

    def note_gone(self, worker_id: str, reason: str, stopped: bool = False) -> None:
        """Why a worker went, for a lane cell reported later. A reason the broker stopped it for (silence,
        memory) is what its cells were told; the exit status its provisioner reports afterwards does not replace it."""
        if worker_id in self._stopped:
            return
        self.gone_reasons[worker_id] = reason
        if stopped:
            self._stopped.add(worker_id)
        while len(self.gone_reasons) > 1000:
            self._stopped.discard(oldest := next(iter(self.gone_reasons)))
            del self.gone_reasons[oldest]

    def run_lost(self, request: pb.CellAttachRequest) -> CellRun | None:
        """The client lost a lane cell we may never have heard of (short cells are reported when they end)."""
        worker = self.scheduler.workers.get(request.lane_worker_id)
        if worker is not None and worker.session != request.session_id:
            return None
        return self.run(request.session_id, request.cell_id, request.lane_worker_id, time.monotonic())

    def run(self, session_id: str, cell_id: str, worker_id: str, now: float) -> CellRun:
        """A lane cell's run. A worker already gone or on its way out fails it now, with the reason if we know it."""
        worker = self.scheduler.workers.get(worker_id)
        run = CellRun(pb.CellExecuteRequest(session_id=session_id, cell_id=cell_id), worker.pool if worker else "",
                      now, worker_id=worker_id, dispatched=now)
        self.cells[cell_id] = run
        if worker is None and worker_id not in self.gone_reasons:
            # A worker this broker never had: it restarted since the cell started, and the worker went with the
            # broker before it (workers die with their broker).
            self.fail(run, "the broker went away (it restarted as the cell ran); the cell's worker is gone",
                      "worker_lost")
        elif worker is None or worker.state is sch.WorkerState.RELEASING:
            reason = self.gone_reasons.get(worker_id, "it was released or lost as the cell ran")
            self.fail(run, reason if reason.startswith("worker lost") else f"worker lost: {reason}", "worker_lost")
        else:
            self.handle(sch.LaneCellStarted(cell_id, worker_id, now, stimulus_id=self.stimulus(f"lane-{cell_id}")))
        return run

    def on_activity(self, worker_id: str, activity: pb.LaneActivity) -> None:
        """A worker reports a lane cell that started, or ended."""
        now = time.monotonic()
        if activity.finished:
            if activity.cell_id not in self.cells:
                # A short cell is reported once, when it ends: it ran, so the idle clock restarts now.
                self.handle(sch.LaneCellStarted(activity.cell_id, worker_id, now,
                                                stimulus_id=self.stimulus(f"lane-{activity.cell_id}")))
            run = self.cells.pop(activity.cell_id, None)
            if run is not None and not run.done:
                run.done = True
                self.metrics.cells.labels(run.pool, "ok" if activity.ok else "user").inc()
                run.close()
            self.handle(sch.CellFinished(activity.cell_id, now,
                                         stimulus_id=self.stimulus(f"lane-done-{activity.cell_id}")))
        elif activity.cell_id not in self.cells:
            self.run(activity.session_id, activity.cell_id, worker_id, now)

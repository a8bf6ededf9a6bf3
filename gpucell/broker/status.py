"""What StatusGet answers: every pool's workers and the usage so far, for an operator or for one session."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from gpucell.broker import scheduler as sch
from gpucell.broker.config import BrokerConfig
from gpucell.broker.runs import WorkerConn
from gpucell.protocol import gpucell_pb2 as pb


def status_response(config: BrokerConfig, scheduler: sch.Scheduler, conns: Mapping[str, WorkerConn],
                    session_names: Mapping[str, str], shown_in_full: Callable[[str], bool], broker_address: str,
                    metrics_address: str, user_of: Callable[[str], str] = lambda session: "") -> pb.StatusGetResponse:
    """The sessions `shown_in_full` accepts with their workers and usage in detail; every other worker only as
    its state and hardware (no id, session, name, cells or usage: session ids never reach another user)."""
    now = time.monotonic()
    pools = []
    for label, cfg in config.pools.items():
        workers = []
        for w in scheduler.workers.values():
            if w.pool != label:
                continue
            idle = now - w.last_active if w.state is sch.WorkerState.IDLE else 0.0
            release_in = max(0.0, w.idle_timeout - idle) if w.state is sch.WorkerState.IDLE else -1.0
            conn = conns.get(w.id)
            state = pb.WorkerStatus.State.Value(w.state.name)   # the scheduler's states, by the same names
            if not shown_in_full(w.session or ""):
                workers.append(pb.WorkerStatus(id="", state=state, hardware=label,
                                               idle_s=idle, release_in_s=release_in))
                continue
            workers.append(pb.WorkerStatus(
                id=w.id, state=state, session=w.session or "", idle_s=idle, hardware=label,
                release_in_s=release_in, session_name=session_names.get(w.session or "", ""),
                pid=conn.pid if conn else 0, node=conn.node if conn else "", gpus=conn.gpus if conn else []))
        pools.append(pb.PoolStatus(
            label=label, workers=workers, queued=scheduler.queue_length(label),
            max_workers=cfg.max_workers, min_warm=cfg.min_warm, idle_timeout=cfg.idle_timeout,
            price_per_hour=cfg.price_per_hour, simulate=cfg.simulate))
    usage = []
    snapshot = scheduler.usage_snapshot(now)
    others = {s for s, _ in snapshot if not shown_in_full(s)}
    for (session, pool), seconds in sorted(snapshot.items()):
        if session in others:
            continue
        price = config.pools[pool].price_per_hour if pool in config.pools else 0.0
        usage.append(pb.UsageRecord(session=session, hardware=pool, worker_seconds=seconds,
                                    cost=seconds * price / 3600.0, session_name=session_names.get(session, ""),
                                    user=user_of(session)))
    return pb.StatusGetResponse(pools=pools, usage=usage, broker_address=broker_address,
                                metrics_address=metrics_address, other_sessions=len(others))

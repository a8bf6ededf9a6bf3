"""The broker's gRPC services: translate RPCs and worker streams into scheduler events and back."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator

import grpc
from grpc import aio

from gpucell import settings
from gpucell.broker import scheduler as sch
from gpucell.broker.auth import Authenticator, Identity, WorkerCredentials, caller
from gpucell.broker.journal import Journal
from gpucell.broker.lanes import LaneBook
from gpucell.broker.metrics import BrokerMetrics
from gpucell.broker.owners import Owners
from gpucell.broker.provisioners import LaunchSpec, Provisioner, load_provisioner
from gpucell.broker.refusal import Abort
from gpucell.broker.runs import CellRun, LaunchRecord, WorkerConn
from gpucell.broker.token_files import TokenFile
from gpucell.broker.status import status_response
from gpucell.broker.config import BrokerConfig
from gpucell.hardware import KNOWN_LABELS, split_spec
from gpucell.protocol import PROTOCOL_VERSION
from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol import gpucell_pb2_grpc as pb_grpc
from gpucell.protocol.reasons import parsed, shown
from gpucell.settings import ENV_TLS_CA

log = logging.getLogger("gpucell.broker")

TICK_S = 0.1


class BrokerService(pb_grpc.BrokerServicer, pb_grpc.WorkerHubServicer):
    """All broker state lives on one asyncio loop; the scheduler decides, this class does the I/O."""

    def __init__(self, config: BrokerConfig, client_token: str, worker_token: str) -> None:
        self.config = config
        self.client_token = client_token
        self.worker_token = worker_token
        # Who calls (the interceptor in server.py asks this) and what they may touch (every handler asks owners).
        self.credentials = WorkerCredentials(worker_token, TokenFile(config.worker_tokens_file)
                                             if config.worker_tokens_file else None)
        self.authenticator = Authenticator(client_token, config.users_file, self.credentials)
        self.address = ""
        self.scheduler = sch.Scheduler({
            label: sch.PoolLimits(p.min_warm, p.max_workers, p.idle_timeout, p.max_workers_per_session,
                                  p.memory_limit_mb)
            for label, p in config.pools.items()},
            heartbeat_timeout=config.heartbeat_timeout, start_timeout=config.worker_start_timeout)
        self.cells: dict[str, CellRun] = {}
        self.conns: dict[str, WorkerConn] = {}
        self.launches: dict[str, LaunchRecord] = {}
        self.session_names: dict[str, str] = {}
        self.provisioners: dict[str, Provisioner] = {}
        self.log_dir = config.state_dir or tempfile.mkdtemp(prefix="gpucell-broker-")
        self.metrics = BrokerMetrics()
        self.journal = Journal(os.path.join(self.log_dir, "journal.sqlite"))
        self.owners = Owners(self.journal.record_owner, self.journal.owners())
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stimuli = itertools.count(1)
        self._last_checkpoint = time.monotonic()
        self.lanes = LaneBook(self.scheduler, self.cells, self.metrics, self.handle, self._fail, self.stimulus)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for label, pool in self.config.pools.items():
            if pool.provisioner not in self.provisioners:
                self.provisioners[pool.provisioner] = load_provisioner(pool.provisioner)()
                self.provisioners[pool.provisioner].configure(self.config)  # e.g. fork_server
        if self.config.metrics_port >= 0:
            self.metrics.serve(self.config.host, self.config.metrics_port)
        # Usage survives a broker restart: earlier intervals come back from the journal.
        restored = tuple((session, pool, seconds) for (session, pool), seconds in self.journal.usage_totals().items())
        self.handle(sch.UsageRestored(restored, time.monotonic(), stimulus_id=self.stimulus("journal")))
        self.session_names.update(self.journal.session_names())
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())
        self.handle(sch.Tick(time.monotonic(), stimulus_id=self.stimulus("tick")))

    async def close(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        for task in list(self._tasks):
            task.cancel()  # pending launches, terminations, dropped-stream grace waits
        for conn in self.conns.values():
            conn.outbox.put_nowait(pb.WorkerInstruction(shutdown=pb.WorkerShutdown(reason="broker stopping")))
            conn.outbox.put_nowait(None)
        for provisioner in self.provisioners.values():
            await provisioner.close()
        for run in self.cells.values():
            if not run.done:
                self._fail(run, "broker stopping", "worker_lost")
        self._checkpoint_usage()
        self.journal.close()
        self.metrics.close()

    def worker_address(self) -> str:
        """Where local workers dial: loopback when the broker listens on every interface."""
        host, _, port = self.address.rpartition(":")
        return f"127.0.0.1:{port}" if host in ("0.0.0.0", "::", "[::]") else self.address

    # ------------------------------------------------------------ auth and resolution

    async def _session(self, context: aio.ServicerContext, session_id: str) -> Identity:
        """The caller, once it may touch `session_id` (else PERMISSION_DENIED, sent)."""
        identity = caller()
        try:
            self.owners.session(identity, session_id)
        except Abort as abort:
            await abort.send(context)
        return identity

    def known_labels(self) -> list[str]:
        labels = set(self.config.pools)
        if self.config.cpu_fallback and "cpu" in self.config.pools:
            labels.update(KNOWN_LABELS)
        return sorted(labels, key=lambda s: (s == "cpu", s))

    def resolve_pool(self, hardware: str, strict: bool) -> tuple[str, str]:
        """(pool, notice) for a hardware spec, or an INVALID_ARGUMENT abort naming the known labels."""
        spec = hardware.strip() or self.config.default_hardware
        by_lower = {label.lower(): label for label in self.config.pools}
        if spec.lower() in by_lower:
            return by_lower[spec.lower()], ""
        try:
            base, _count = split_spec(spec)
        except ValueError:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, pb.REASON_UNKNOWN_HARDWARE,
                        f"no pool serves {spec!r} (known: {', '.join(self.known_labels())})") from None
        if base.lower() in by_lower:
            # The label is served here, but not with that many devices per worker.
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, pb.REASON_UNKNOWN_HARDWARE,
                        f"no pool serves {spec!r} (known: {', '.join(self.known_labels())})")
        known_lower = {label.lower() for label in KNOWN_LABELS}
        if base.lower() in known_lower and self.config.cpu_fallback and "cpu" in self.config.pools:
            if strict:
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION, pb.REASON_STRICT_HARDWARE,
                            f"no {spec} here and strict mode is on (pools: {', '.join(self.config.pools)})")
            return "cpu", f"gpucell: no {spec} on this broker; running on the local CPU instead"
        raise Abort(grpc.StatusCode.INVALID_ARGUMENT, pb.REASON_UNKNOWN_HARDWARE,
                    f"no pool serves {spec!r} (known: {', '.join(self.known_labels())})")

    # ------------------------------------------------------------ Broker service

    async def CellExecute(self, request: pb.CellExecuteRequest,
                          context: aio.ServicerContext) -> AsyncIterator[pb.CellEvent]:
        try:
            identity = caller()
            self.owners.claim(identity, request.session_id)
            if request.owner:
                self.owners.session(identity, request.owner)   # a fan-out slot works for one of the caller's notebooks
            if not request.cell_id or not request.session_id:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, pb.REASON_BAD_REQUEST,
                            "cell_id and session_id are required")
            if request.cell_id in self.cells:
                raise Abort(grpc.StatusCode.ALREADY_EXISTS, pb.REASON_DUPLICATE_CELL,
                            f"cell {request.cell_id} already submitted")
            pool, notice = self.resolve_pool(request.hardware, request.options.strict)
        except Abort as abort:
            await abort.send(context)
            return
        if request.session_name and self.session_names.get(request.session_id) != request.session_name:
            self.session_names[request.session_id] = request.session_name
            self.journal.record_session(request.session_id, request.session_name)
        now = time.monotonic()
        run = CellRun(request, pool, now)
        self.cells[request.cell_id] = run
        if notice:
            run.push(pb.CellEvent(cell_id=request.cell_id, time=time.time(), notice=pb.Notice(text=notice)))
        self.handle(sch.CellSubmitted(
            request.cell_id, request.session_id, pool, now, fresh=request.options.fresh,
            idle_timeout=request.options.idle_s or None, owner=request.owner, timeout=request.options.timeout_s,
            stimulus_id=self.stimulus(f"submit-{request.cell_id}")))
        async for event in self._follow(run, 0):
            yield event

    async def CellAttach(self, request: pb.CellAttachRequest,
                         context: aio.ServicerContext) -> AsyncIterator[pb.CellEvent]:
        await self._session(context, request.session_id)
        run = self.cells.get(request.cell_id)
        if request.lane_worker_id:
            await self._worker(context, request.lane_worker_id)
        if run is None and request.lane_worker_id:
            run = self.lanes.run_lost(request)
        if run is None or run.request.session_id != request.session_id:
            await Abort(grpc.StatusCode.NOT_FOUND, pb.REASON_CELL_GONE,
                        f"cell {request.cell_id} is gone (it finished more than "
                        f"{self.config.reattach_grace_s:g}s ago, or belongs to another session)").send(context)
            return
        async for event in self._follow(run, request.after_seq):
            yield event

    async def _follow(self, run: CellRun, after: int) -> AsyncIterator[pb.CellEvent]:
        """Stream a cell's events to one client; a dropped stream leaves the cell running for a while."""
        run.attached += 1
        if run.detach_timer is not None:
            run.detach_timer.cancel()
            run.detach_timer = None
        complete = False
        try:
            async for event in run.follow(after):
                yield event
            complete = True
        finally:
            run.attached -= 1
            cell_id = run.request.cell_id
            loop = asyncio.get_running_loop()
            if complete:
                self.cells.pop(cell_id, None)
            elif run.attached == 0:
                # Not an interrupt (that sends CellCancel): the network dropped or the client died.
                run.detach_timer = loop.call_later(self.config.reattach_grace_s, self._abandon, run)

    def _abandon(self, run: CellRun) -> None:
        if run.attached:
            return
        if not run.done:
            self._cancel(run)
        self.cells.pop(run.request.cell_id, None)

    async def CellCancel(self, request: pb.CellCancelRequest, context: aio.ServicerContext) -> pb.CellCancelResponse:
        await self._session(context, request.session_id)
        run = self.cells.get(request.cell_id)
        if run is None or run.request.session_id != request.session_id or run.done:
            return pb.CellCancelResponse(found=False)
        self._cancel(run)
        return pb.CellCancelResponse(found=True)

    async def CellInput(self, request: pb.CellInputRequest, context: aio.ServicerContext) -> pb.CellInputResponse:
        """The notebook answers the input() its cell waits in: passed to the cell's worker, never read here."""
        await self._session(context, request.session_id)
        run = self.cells.get(request.cell_id)
        conn = self.conns.get(run.worker_id) if run is not None and run.worker_id else None
        if run is None or run.request.session_id != request.session_id or run.done or conn is None:
            return pb.CellInputResponse(found=False)
        conn.outbox.put_nowait(pb.WorkerInstruction(input=request))
        return pb.CellInputResponse(found=True)

    async def StatusGet(self, request: pb.StatusGetRequest, context: aio.ServicerContext) -> pb.StatusGetResponse:
        identity = await self._session(context, request.session_id)
        return self.status(request.session_id, identity)

    async def CatalogGet(self, request: pb.CatalogGetRequest, context: aio.ServicerContext) -> pb.CatalogGetResponse:
        caller()
        entries = [pb.CatalogEntry(label=label, price_per_hour=p.price_per_hour, max_workers=p.max_workers,
                                   simulate=p.simulate, served_by=label,
                                   max_workers_per_session=p.max_workers_per_session)
                   for label, p in self.config.pools.items()]
        return pb.CatalogGetResponse(entries=entries, default_hardware=self.config.default_hardware,
                                     known_labels=self.known_labels(),
                                     max_blob_bytes=self.config.max_blob_mb * 1_000_000)

    async def WorkerRelease(self, request: pb.WorkerReleaseRequest,
                            context: aio.ServicerContext) -> pb.WorkerReleaseResponse:
        identity = await self._session(context, request.session_id)
        if not request.session_id and not request.worker_id:
            try:
                self.owners.release_any(identity)
            except Abort as abort:
                await abort.send(context)
        if request.worker_id:
            await self._worker(context, request.worker_id)
        pool = None
        if request.hardware:
            try:
                pool, _ = self.resolve_pool(request.hardware, strict=False)
            except Abort as abort:
                await abort.send(context)
        session = request.session_id
        if request.worker_id:
            worker = self.scheduler.workers.get(request.worker_id)
            owner = (worker.session or "") if worker else ""
            if session and owner != session:
                await Abort(grpc.StatusCode.PERMISSION_DENIED, pb.REASON_NOT_OWNER,
                            f"worker {request.worker_id} does not belong to this session").send(context)
            session = owner
        instructions = self.handle(sch.ReleaseRequested(
            session, time.monotonic(), pool=pool, worker_id=request.worker_id or None,
            stimulus_id=self.stimulus("release")))
        return pb.WorkerReleaseResponse(released=[i.worker_id for i in instructions if isinstance(i, sch.Terminate)])

    async def SessionClose(self, request: pb.SessionCloseRequest,
                           context: aio.ServicerContext) -> pb.SessionCloseResponse:
        await self._session(context, request.session_id)
        self.handle(sch.SessionClosed(request.session_id, time.monotonic(),
                                      stimulus_id=self.stimulus(f"close-{request.session_id}")))
        return pb.SessionCloseResponse()

    async def _worker(self, context: aio.ServicerContext, worker_id: str) -> None:
        """Refuse a worker that serves another user's session (an idle, unassigned one is nobody's)."""
        worker = self.scheduler.workers.get(worker_id)
        identity = caller()
        if worker is not None and worker.session and not identity.admin \
                and self.owners.user_of(worker.session) != identity.user:
            await Abort(grpc.StatusCode.PERMISSION_DENIED, pb.REASON_NOT_OWNER,
                        f"this worker is not {identity.user}'s").send(context)

    # ------------------------------------------------------------ WorkerHub service

    async def WorkerConnect(self, request_iterator: AsyncIterator[pb.WorkerMessage],
                            context: aio.ServicerContext) -> AsyncIterator[pb.WorkerInstruction]:
        identity = caller()
        first = await request_iterator.__anext__()
        if first.WhichOneof("kind") != "register":
            await Abort(grpc.StatusCode.INVALID_ARGUMENT, pb.REASON_BAD_REQUEST,
                        "a worker must register first").send(context)
            return
        reg = first.register
        if reg.protocol_version != PROTOCOL_VERSION:
            log.warning("refused worker %s: protocol %d", reg.worker_id, reg.protocol_version)
            await Abort(grpc.StatusCode.FAILED_PRECONDITION, pb.REASON_PROTOCOL_MISMATCH,
                        f"worker {reg.worker_id} speaks gpucell protocol {reg.protocol_version or 'from before versions'}"
                        f", this broker speaks {PROTOCOL_VERSION}: install the same gpucell release on the worker "
                        "and the broker").send(context)
            return
        refusal = self._registration_refused(identity, reg.worker_id)
        if refusal:
            log.warning("refused worker registration as %r: %s", reg.worker_id, refusal)
            await Abort(grpc.StatusCode.PERMISSION_DENIED, pb.REASON_NOT_OWNER, refusal).send(context)
            return
        conn = WorkerConn(reg.worker_id, reg.hardware, reg.pid, reg.node, dict(reg.versions),
                          lane_address=reg.lane_address, lane_ticket=reg.lane_ticket)
        self.conns[reg.worker_id] = conn
        now = time.monotonic()
        if reg.worker_id in self.launches:
            self.launches[reg.worker_id].ready = now
            self.metrics.cold_start.labels(self.launches[reg.worker_id].pool).observe(
                now - self.launches[reg.worker_id].launched)
            self.handle(sch.WorkerReady(reg.worker_id, now, stimulus_id=self.stimulus(f"ready-{reg.worker_id}")))
        else:
            pool = next((p for p in self.config.pools if p.lower() == reg.hardware.lower()), reg.hardware)
            conn.pool = pool
            self.handle(sch.WorkerJoined(reg.worker_id, pool, now, stimulus_id=self.stimulus(f"join-{reg.worker_id}")))
        reader = asyncio.get_running_loop().create_task(self._read_worker(conn, request_iterator))
        try:
            while True:
                instruction = await conn.outbox.get()
                if instruction is None:
                    break
                yield instruction
        finally:
            reader.cancel()
            if self.conns.get(conn.worker_id) is conn:
                del self.conns[conn.worker_id]
                # A launched worker's provisioner usually knows better why (killed by a signal, its node
                # died): the scheduler gives the tick loop's poll a grace to say so.
                self.handle(sch.WorkerDisconnected(conn.worker_id, time.monotonic(),
                                                   stimulus_id=self.stimulus(f"dropped-{conn.worker_id}")))

    def _registration_refused(self, identity: Identity, worker_id: str) -> str:
        """Why this credential may not register `worker_id` now ("" when it may): each credential is bound to one
        id, a launch secret works once, a live id is never taken over, a launched id needs its own secret."""
        if not worker_id:
            return "a worker id is required"
        if identity.worker_id and identity.worker_id != worker_id:
            return f"this credential registers worker {identity.worker_id}, not {worker_id}"
        if worker_id in self.conns:
            return f"worker {worker_id} is already connected"
        if identity.via == "operator" and worker_id in self.launches:
            return f"worker {worker_id} was launched by this broker: only its own credential registers it"
        if identity.via == "launch" and worker_id not in self.launches:
            return f"worker {worker_id} was not launched by this broker"
        if not self.credentials.consume(identity):
            return f"the registration secret of worker {worker_id} was used already"
        self.credentials.pending.pop(worker_id, None)   # registered: its launch secret is worth nothing now
        return ""

    async def _read_worker(self, conn: WorkerConn, messages: AsyncIterator[pb.WorkerMessage]) -> None:
        try:
            async for message in messages:
                kind = message.WhichOneof("kind")
                rss = message.heartbeat.rss if kind == "heartbeat" else 0
                self.handle(sch.WorkerHeartbeat(conn.worker_id, time.monotonic(), rss,
                                                stimulus_id=f"heard-{conn.worker_id}"))
                if kind == "event":
                    self._on_worker_event(conn, message.event)
                elif kind == "lane":
                    self.lanes.on_activity(conn.worker_id, message.lane)
                elif kind == "heartbeat" and message.heartbeat.gpus:
                    conn.gpus = list(message.heartbeat.gpus)
        except (asyncio.CancelledError, aio.AioRpcError, grpc.RpcError):
            pass
        finally:
            conn.outbox.put_nowait(None)

    def _on_worker_event(self, conn: WorkerConn, event: pb.CellEvent) -> None:
        run = self.cells.get(event.cell_id)
        if run is None or run.done or run.worker_id != conn.worker_id:
            return
        kind = event.WhichOneof("kind")
        if kind == "error" and run.timed_out:
            event.error.kind = pb.Error.TIMEOUT
            event.error.evalue = sch.timeout_reason(run.request.options.timeout_s)
        if kind == "finished":
            event.finished.queue_s = max(0.0, run.dispatched - run.submitted - run.cold_start_s)
            event.finished.cold_start_s = run.cold_start_s
            self._complete(run, event)
            self.handle(sch.CellFinished(run.request.cell_id, time.monotonic(),
                                         stimulus_id=self.stimulus(f"finished-{run.request.cell_id}")))
            return
        if kind == "error":
            run.outcome = shown(pb.Error.Kind, event.error.kind, default="user")
        run.push(event)

    def _worker_gone(self, event: sch.WorkerGone) -> None:
        self.lanes.note_gone(event.worker_id, event.reason)
        self.handle(event)

    # ------------------------------------------------------------ instructions -> I/O

    def stimulus(self, what: str) -> str:
        """A new stimulus id: the broker's log lines name it for every instruction the event caused."""
        return f"{what}-{next(self._stimuli)}"

    def handle(self, event: sch.Event) -> list[sch.Instruction]:
        instructions = self.scheduler.handle(event)
        self.apply(instructions)
        return instructions

    def apply(self, instructions: list[sch.Instruction]) -> None:
        for ins in instructions:
            log.info("%s: %r", ins.stimulus_id, ins)
            if isinstance(ins, sch.Launch):
                self._spawn(self._launch(ins.worker_id, ins.pool))
            elif isinstance(ins, sch.Dispatch):
                self._dispatch(ins)
            elif isinstance(ins, sch.Terminate):
                self._spawn(self._terminate(ins.worker_id, ins.reason))
                # Lane cells the scheduler never saw (queued behind another on this worker) go with it.
                for lost in [r for r in self.cells.values() if r.worker_id == ins.worker_id and not r.done]:
                    self._fail(lost, f"worker lost: {ins.reason}", "timeout" if lost.timed_out else "worker_lost")
            elif isinstance(ins, sch.WorkerLost):
                self.lanes.note_gone(ins.worker_id, ins.reason, stopped=ins.stop_grace_s is not None)
                conn = self.conns.pop(ins.worker_id, None)
                if conn is not None:
                    conn.outbox.put_nowait(None)
                record = self.launches.get(ins.worker_id)
                if record is not None and ins.stop_grace_s is not None:
                    self._spawn(record.provisioner.terminate(ins.worker_id, grace_s=ins.stop_grace_s))
            elif isinstance(ins, sch.InterruptCell):
                run = self.cells.get(ins.cell_id)
                if run is not None and not run.done:
                    run.timed_out = True
                    self._send_cancel(run)
            elif isinstance(ins, sch.FailCell):
                run = self.cells.get(ins.cell_id)
                if run is not None and not run.done:
                    kind = "timeout" if run.timed_out else ins.kind
                    self._fail(run, ins.reason, kind)
                if run is not None and ins.kind == "worker_lost" and run.worker_id:
                    # A lane cell the scheduler saw as queued behind this one died with the same worker.
                    for other in [r for r in self.cells.values() if r.worker_id == run.worker_id and not r.done]:
                        self._fail(other, ins.reason, "worker_lost")
            elif isinstance(ins, sch.WorkerStarting):
                run = self.cells.get(ins.cell_id)
                if run is not None:
                    # Position 0: out of the queue, waiting for a worker that is starting for this cell.
                    run.push(pb.CellEvent(cell_id=ins.cell_id, time=time.time(), queued=pb.Queued(
                        position=0, hardware=ins.pool)))
            elif isinstance(ins, sch.QueuePosition):
                run = self.cells.get(ins.cell_id)
                if run is not None:
                    run.push(pb.CellEvent(cell_id=ins.cell_id, time=time.time(), queued=pb.Queued(
                        position=ins.position, hardware=ins.pool)))
            elif isinstance(ins, sch.UsageRecorded):
                pool_cfg = self.config.pools.get(ins.pool)
                price = pool_cfg.price_per_hour if pool_cfg else 0.0
                self.journal.record_usage(ins.session, ins.pool, ins.worker_id, ins.end - ins.start, price)

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _launch(self, worker_id: str, pool_label: str) -> None:
        pool = self.config.pools[pool_label]
        provisioner = self.provisioners[pool.provisioner]
        self.launches[worker_id] = LaunchRecord(pool_label, time.monotonic(), provisioner)
        env = {settings.env_var("max_blob_mb"): str(self.config.max_blob_mb)}
        if self.config.tls_cert and not settings.get("tls_ca"):
            env[ENV_TLS_CA] = self.config.tls_cert  # a self-signed certificate is its own CA
        # Its own credential: a one-time secret bound to this id, then a reconnect credential for the same id.
        credential = self.credentials.issue(worker_id)
        spec = LaunchSpec(worker_id, pool, self.worker_address(), credential, env=env, log_dir=self.log_dir)
        try:
            await provisioner.launch(spec)
        except Exception as exc:  # any launch failure fails the waiting cell with its reason (logged)
            log.exception("launch of %s failed", worker_id)
            self.launches.pop(worker_id, None)
            self.credentials.pending.pop(worker_id, None)
            self._worker_gone(sch.WorkerGone(worker_id, time.monotonic(), f"launch failed: {exc}",
                                             stimulus_id=self.stimulus(f"launch-failed-{worker_id}")))

    def _dispatch(self, ins: sch.Dispatch) -> None:
        run = self.cells.get(ins.cell_id)
        conn = self.conns.get(ins.worker_id)
        if run is None:
            # Client vanished between queueing and dispatch: free the worker again.
            self.handle(sch.CellFinished(ins.cell_id, time.monotonic(), stimulus_id=ins.stimulus_id))
            return
        if conn is None:
            # The worker's stream just dropped: the cell waits for the scheduler to learn why.
            self.handle(sch.CellUndelivered(ins.cell_id, ins.worker_id, time.monotonic(), stimulus_id=ins.stimulus_id))
            return
        now = time.monotonic()
        run.worker_id = ins.worker_id
        run.dispatched = now
        record = self.launches.get(ins.worker_id)
        if ins.cold and record is not None and record.ready:
            run.cold_start_s = record.ready - max(record.launched, run.submitted)
        conn.outbox.put_nowait(pb.WorkerInstruction(execute=run.request))
        if not ins.cold:
            self.metrics.dispatch.labels(run.pool).observe(now - run.submitted)
        started = pb.Started(worker_id=ins.worker_id, hardware=run.pool, cold=ins.cold, node=conn.node,
                             versions=conn.versions)
        worker = self.scheduler.workers.get(ins.worker_id)
        if conn.lane_address and not self.config.tls_cert and worker is not None:
            # The lane is plaintext TCP: offered only where the broker's own port is (no TLS).
            started.lane_address, started.lane_ticket = conn.lane_address, conn.lane_ticket
            started.idle_timeout_s = worker.idle_timeout
        run.push(pb.CellEvent(cell_id=ins.cell_id, time=time.time(), started=started))

    async def _terminate(self, worker_id: str, reason: str) -> None:
        conn = self.conns.get(worker_id)
        if conn is not None:
            conn.outbox.put_nowait(pb.WorkerInstruction(shutdown=pb.WorkerShutdown(reason=reason)))
        record = self.launches.get(worker_id)
        if record is not None:
            await record.provisioner.terminate(worker_id)
        elif conn is not None:
            conn.outbox.put_nowait(None)

    def _send_cancel(self, run: CellRun) -> None:
        conn = self.conns.get(run.worker_id)
        if conn is not None:
            conn.outbox.put_nowait(pb.WorkerInstruction(cancel=pb.CellCancelRequest(
                session_id=run.request.session_id, cell_id=run.request.cell_id)))

    def _cancel(self, run: CellRun) -> None:
        if run.worker_id:
            self._send_cancel(run)
        else:
            self.handle(sch.CellWithdrawn(run.request.cell_id, time.monotonic(),
                                          stimulus_id=self.stimulus(f"withdraw-{run.request.cell_id}")))

    def _complete(self, run: CellRun, finished: pb.CellEvent) -> None:
        run.done = True
        outcome = "ok" if finished.finished.ok else ("timeout" if run.timed_out else run.outcome)
        self.metrics.cells.labels(run.pool, outcome).inc()
        self.metrics.user_cells.labels(self.owners.user_of(run.request.session_id), outcome).inc()
        run.push(finished)
        run.close()
        if run.attached == 0 and run.detach_timer is None:
            # Nobody is listening now; keep the log for a reconnect, then forget it.
            run.detach_timer = asyncio.get_running_loop().call_later(
                self.config.reattach_grace_s, self._abandon, run)

    def _fail(self, run: CellRun, reason: str, kind: str) -> None:
        """End a cell with an error the broker made: no remote exception, so no ename; the client raises
        the class its table gives the kind (a scheduler kind such as "worker_lost" names an Error.Kind)."""
        if kind == "timeout":
            reason = sch.timeout_reason(run.request.options.timeout_s)
        run.outcome = kind
        run.push(pb.CellEvent(cell_id=run.request.cell_id, time=time.time(),
                              error=pb.Error(evalue=reason, kind=parsed(pb.Error.Kind, kind))))
        self._complete(run, pb.CellEvent(cell_id=run.request.cell_id, time=time.time(),
                                         finished=pb.Finished(ok=False)))

    # ------------------------------------------------------------ housekeeping

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)  # a periodic timer, not synchronisation
            try:
                await self._tick()
            except Exception:  # the broker must not fall over on one bad tick (logged)
                log.exception("tick failed")

    async def _tick(self) -> None:
        """Ask the provisioners which processes ended, then let the scheduler see the time."""
        for worker_id, record in list(self.launches.items()):
            reason = await record.provisioner.poll(worker_id)
            if reason is not None:
                self.launches.pop(worker_id, None)
                conn = self.conns.pop(worker_id, None)
                if conn is not None:
                    conn.outbox.put_nowait(None)
                self._worker_gone(sch.WorkerGone(worker_id, time.monotonic(), reason,
                                                 stimulus_id=self.stimulus(f"exited-{worker_id}")))
        now = time.monotonic()
        self.handle(sch.Tick(now, stimulus_id=self.stimulus("tick")))
        self._update_gauges()
        if now - self._last_checkpoint > 5.0:
            self._checkpoint_usage()

    def _checkpoint_usage(self) -> None:
        """Open intervals (workers still assigned) are written every few seconds, so a crash loses little."""
        self._last_checkpoint = time.monotonic()
        self.journal.checkpoint_open([
            (session, pool, worker_id, seconds, self.config.pools[pool].price_per_hour if pool in self.config.pools else 0.0)
            for session, pool, worker_id, seconds in self.scheduler.open_intervals(self._last_checkpoint)])

    def _update_gauges(self) -> None:
        for label in self.config.pools:
            self.metrics.queue_depth.labels(label).set(self.scheduler.queue_length(label))
            for state in sch.WorkerState:
                self.metrics.workers.labels(label, state.value).set(
                    sum(1 for w in self.scheduler.workers.values() if w.pool == label and w.state is state))

    def status(self, session_id: str = "", identity: Identity | None = None) -> pb.StatusGetResponse:
        """What `identity` may see (None: the broker's own view, everything)."""
        if identity is None or (identity.admin and not session_id):
            def shown_in_full(session: str) -> bool:
                return not session_id or session == session_id
        elif session_id:
            def shown_in_full(session: str) -> bool:
                return session == session_id
        else:
            def shown_in_full(session: str) -> bool:
                return self.owners.mine(identity, session)
        return status_response(self.config, self.scheduler, self.conns, self.session_names, shown_in_full,
                               self.address, self.metrics.address, self.owners.user_of)

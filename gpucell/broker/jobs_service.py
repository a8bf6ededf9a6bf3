"""The broker's `Jobs` gRPC service: thin translation between RPCs and the JobManager."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from grpc import aio

from gpucell.broker.auth import caller
from gpucell.broker.jobs import Job, JobManager, JobRequest
from gpucell.broker.private_files import job_file_name
from gpucell.broker.refusal import Abort
from gpucell.broker.service import BrokerService
from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol import gpucell_pb2_grpc as pb_grpc
from gpucell.protocol.reasons import parsed


class JobsService(pb_grpc.JobsServicer):
    """Jobs run next to the broker; their %%gpu cells come back to it as an ordinary client session."""

    def __init__(self, broker: BrokerService) -> None:
        self.broker = broker
        self.manager = JobManager(broker.log_dir, broker.journal, lambda: broker.address, broker.client_token, self._cost_of)

    def _cost_of(self, session_name: str) -> float:
        return sum(u.cost for u in self.broker.status().usage if u.session_name == session_name)

    async def _check(self, context: aio.ServicerContext) -> None:
        caller()   # the interceptor authenticated the user; a job's owner is checked in _job

    def info(self, job: Job) -> pb.JobInfo:
        return pb.JobInfo(id=job.id, notebook=job.notebook, state=parsed(pb.JobInfo.State, job.state),
                          hardware=job.hardware, submitted=job.submitted, started=job.started, finished=job.finished,
                          cost=self.manager.live_cost(job), error=job.error)

    async def _job(self, job_id: str, context: aio.ServicerContext) -> Job:
        await self._check(context)
        job = await self.manager.get(job_id)
        try:
            self.broker.owners.job(caller(), job_id)
        except Abort as abort:
            await abort.send(context)
        if job is None:
            await Abort(grpc.StatusCode.NOT_FOUND, pb.REASON_NO_JOB,
                        f"no job {job_id!r} (see gpucell jobs)").send(context)
        assert job is not None
        return job

    async def JobSubmit(self, request: pb.JobSubmitRequest, context: aio.ServicerContext) -> pb.JobSubmitResponse:
        await self._check(context)
        if not request.notebook:
            await Abort(grpc.StatusCode.INVALID_ARGUMENT, pb.REASON_BAD_REQUEST, "the notebook is empty").send(context)
        try:
            job_file_name(request.notebook_name)
        except ValueError as exc:
            await Abort(grpc.StatusCode.INVALID_ARGUMENT, pb.REASON_BAD_REQUEST, str(exc)).send(context)
        if request.hardware:
            # An unknown label fails the submit, not the job half an hour later.
            try:
                self.broker.resolve_pool(request.hardware, strict=False)
            except Abort as abort:
                await abort.send(context)
        identity = caller()
        job = await self.manager.submit(JobRequest(
            request.notebook_name, request.notebook, list(request.parameters), request.hardware,
            request.timeout_s, request.workdir), token=self.broker.authenticator.mint(identity))
        self.broker.owners.own_job(identity, job.id)
        return pb.JobSubmitResponse(job=self.info(job))

    async def JobList(self, request: pb.JobListRequest, context: aio.ServicerContext) -> pb.JobListResponse:
        await self._check(context)
        identity = caller()
        return pb.JobListResponse(jobs=[self.info(job) for job in await self.manager.list()
                                        if self.broker.owners.sees_job(identity, job.id)])

    async def JobLogs(self, request: pb.JobLogsRequest, context: aio.ServicerContext) -> AsyncIterator[pb.JobLogChunk]:
        job = await self._job(request.job_id, context)
        async for text in self.manager.logs(job, request.offset, request.follow):
            yield pb.JobLogChunk(text=text)

    async def JobFetch(self, request: pb.JobFetchRequest, context: aio.ServicerContext) -> pb.JobFetchResponse:
        job = await self._job(request.job_id, context)
        data = await self.manager.fetch(job)
        if not data:
            await Abort(grpc.StatusCode.FAILED_PRECONDITION, pb.REASON_JOB_NOT_READY,
                        f"job {job.id} has no output notebook yet (state: {job.state})").send(context)
        return pb.JobFetchResponse(notebook=data, job=self.info(job))

    async def JobCancel(self, request: pb.JobCancelRequest, context: aio.ServicerContext) -> pb.JobCancelResponse:
        job = await self._job(request.job_id, context)
        cancelled = await self.manager.cancel(job.id)
        return pb.JobCancelResponse(cancelled=cancelled, job=self.info(job))

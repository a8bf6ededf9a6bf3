"""The broker's `Jobs` gRPC service: thin translation between RPCs and the batch JobManager."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator

import grpc
from grpc import aio

from gpucell.batch.jobs import Job, JobManager, JobRequest
from gpucell.broker.service import BrokerService
from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol import gpucell_pb2_grpc as pb_grpc


def _authorized(context: aio.ServicerContext, token: str) -> bool:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return hmac.compare_digest(value[len("Bearer "):].encode(), token.encode())
    return False


class JobsService(pb_grpc.JobsServicer):
    """Jobs run next to the broker; their %%gpu cells come back to it as an ordinary client session."""

    def __init__(self, broker: BrokerService) -> None:
        self.broker = broker
        self.manager = JobManager(broker.log_dir, lambda: broker.address, broker.client_token, self._cost_of)

    def _cost_of(self, session_name: str) -> float:
        return sum(u.cost for u in self.broker.status().usage if u.session_name == session_name)

    def info(self, job: Job) -> pb.JobInfo:
        return pb.JobInfo(id=job.id, notebook=job.notebook, state=job.state, hardware=job.hardware,
                          submitted=job.submitted, started=job.started, finished=job.finished,
                          cost=self.manager.live_cost(job), error=job.error)

    async def _job(self, job_id: str, context: aio.ServicerContext) -> Job:
        if not _authorized(context, self.broker.client_token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or missing gpucell token")
        job = await self.manager.get(job_id)
        if job is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id!r} (see gpucell jobs)")
        assert job is not None
        return job

    async def JobSubmit(self, request: pb.JobSubmitRequest, context: aio.ServicerContext) -> pb.JobSubmitResponse:
        if not _authorized(context, self.broker.client_token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or missing gpucell token")
        if not request.notebook:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the notebook is empty")
        if request.hardware:
            # An unknown label fails the submit, not the job half an hour later.
            try:
                self.broker.resolve_pool(request.hardware, strict=False)
            except Exception as exc:  # noqa: BLE001 - the service's own abort type carries code and details
                await context.abort(getattr(exc, "code", grpc.StatusCode.INVALID_ARGUMENT), str(exc))
        job = await self.manager.submit(JobRequest(
            request.notebook_name, request.notebook, list(request.parameters), request.hardware,
            request.timeout_s, request.workdir))
        return pb.JobSubmitResponse(job=self.info(job))

    async def JobList(self, request: pb.JobListRequest, context: aio.ServicerContext) -> pb.JobListResponse:
        if not _authorized(context, self.broker.client_token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or missing gpucell token")
        return pb.JobListResponse(jobs=[self.info(job) for job in await self.manager.list()])

    async def JobLogs(self, request: pb.JobLogsRequest, context: aio.ServicerContext) -> AsyncIterator[pb.JobLogChunk]:
        job = await self._job(request.job_id, context)
        async for text in self.manager.logs(job, request.offset, request.follow):
            yield pb.JobLogChunk(text=text)

    async def JobFetch(self, request: pb.JobFetchRequest, context: aio.ServicerContext) -> pb.JobFetchResponse:
        job = await self._job(request.job_id, context)
        data = await self.manager.fetch(job)
        if not data:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"job {job.id} has no output notebook yet (state: {job.state})")
        return pb.JobFetchResponse(notebook=data, job=self.info(job))

    async def JobCancel(self, request: pb.JobCancelRequest, context: aio.ServicerContext) -> pb.JobCancelResponse:
        job = await self._job(request.job_id, context)
        cancelled = await self.manager.cancel(job.id)
        return pb.JobCancelResponse(cancelled=cancelled, job=self.info(job))

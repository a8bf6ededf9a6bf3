"""Start the broker's gRPC server: in this process (a thread, for tests and the Jupyter server) or as `gpucell broker`."""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
import threading
from pathlib import Path
from dataclasses import dataclass

import grpc
from grpc import aio

from gpucell.broker.auth import AuthInterceptor
from gpucell.broker.jobs_service import JobsService
from gpucell.broker.service import BrokerService
from gpucell.broker.config import BrokerConfig
from gpucell.errors import ConfigError
from gpucell.protocol import gpucell_pb2_grpc as pb_grpc


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1", "[::1]") or host.startswith("127.")


@dataclass
class RunningBroker:
    server: aio.Server
    service: BrokerService
    address: str

    async def stop(self, grace: float = 1.0) -> None:
        await self.service.close()
        await self.server.stop(grace)


async def start_server(config: BrokerConfig, client_token: str, worker_token: str) -> RunningBroker:
    limit = config.max_message_mb * 1024 * 1024
    service = BrokerService(config, client_token, worker_token)
    # Authentication reads only the metadata: a refused call's body is never received, let alone parsed.
    server = aio.server(options=[("grpc.max_send_message_length", limit),
                                 ("grpc.max_receive_message_length", limit),
                                 ("grpc.so_reuseport", 0)],
                        interceptors=[AuthInterceptor(service.authenticator)])
    pb_grpc.add_BrokerServicer_to_server(service, server)
    pb_grpc.add_WorkerHubServicer_to_server(service, server)
    pb_grpc.add_JobsServicer_to_server(JobsService(service), server)  # gpucell run --detach
    address = f"{config.host}:{config.port}"
    if config.tls_cert or config.tls_key:
        try:
            key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
        except OSError as exc:
            raise ConfigError(f"tls_cert/tls_key: {exc}") from None
        port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    elif not is_loopback(config.host) and not config.insecure:
        raise ConfigError(f"refusing to serve {config.host} without TLS: set tls_cert and tls_key "
                          "(or --insecure on a network you trust)")
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {config.host}:{config.port}")
    service.address = f"{config.host}:{port}"
    await server.start()
    service.start()
    return RunningBroker(server, service, service.address)


class BrokerThread:
    """A real broker on its own event loop in a background thread of this process."""

    def __init__(self, config: BrokerConfig, client_token: str | None = None, worker_token: str | None = None) -> None:
        self.config = config
        self.token = client_token or secrets.token_urlsafe(24)
        self.worker_token = worker_token or secrets.token_urlsafe(24)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="gpucell-broker")
        self.broker: RunningBroker | None = None
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        assert self.broker is not None
        return self.broker.address

    @property
    def service(self) -> BrokerService:
        assert self.broker is not None
        return self.broker.service

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.broker = self.loop.run_until_complete(start_server(self.config, self.token, self.worker_token))
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self, timeout: float = 30.0) -> "BrokerThread":
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("broker did not start")
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn, timeout: float = 10.0):  # type: ignore[no-untyped-def]
        """Run fn() on the broker's loop and return its result (for tests that read broker state)."""
        async def wrapper():  # type: ignore[no-untyped-def]
            return fn()
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def stop(self) -> None:
        if self.broker is not None:
            asyncio.run_coroutine_threadsafe(self.broker.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


async def serve_forever(config: BrokerConfig, client_token: str, worker_token: str) -> None:
    """`gpucell broker`: serve until SIGTERM/SIGINT, then release every worker."""
    broker = await start_server(config, client_token, worker_token)
    print(f"gpucell broker listening on {broker.address}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    watch_stdin = "--embedded" in sys.argv
    if watch_stdin:
        # Embedded in a kernel: the parent holds our stdin; EOF means the parent is gone.
        loop.add_reader(sys.stdin.fileno(), lambda: stopping.set() if not sys.stdin.buffer.read1(1024) else None)
    await stopping.wait()
    await broker.stop()

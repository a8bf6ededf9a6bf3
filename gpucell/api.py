"""The Modal-shaped Python API: `@gpucell.function`, `.remote/.map/.starmap/.spawn`, `gpucell.map`, `connect`.

Which broker a call uses, in this order (no hidden global client of our own making):

1. the `client=` passed to the call (see `connect`);
2. in IPython after `%load_ext gpucell`: the magics' client (`get_ipython()._gpucell_magics`), so the API
   and `%%gpu` cells share one broker, and the notebook's default hardware applies to `gpu=None`;
3. `GPUCELL_BROKER` / `GPUCELL_TOKEN`;
4. otherwise an embedded broker on 127.0.0.1, started on first use and owned by the module-level
   `RUNTIME` (a `Runtime`), which stops it, and every worker it started, at interpreter exit.

Every map runs on fresh workers, one session per worker: they do not see the notebook session's remote
namespace, only the function (with its closure and the notebook helpers it uses, sent once per worker)
and the items. When the map ends, fails, or is interrupted, its workers are released at once, so their
billing stops; a pool's `min_warm` keeps spare workers ready for the next map.
"""

from __future__ import annotations

import atexit
import functools
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from gpucell.client.embedded import EmbeddedBroker, start_embedded_broker
from gpucell.client.broker_client import BrokerClient
from gpucell.client.fanout import Fanout, StreamSink
from gpucell.client.fanout_start import check_fanout_args, start_fanout
from gpucell.client.sink import Sink
from gpucell import settings

__all__ = ["Call", "Function", "Runtime", "connect", "function", "map", "status"]

R = TypeVar("R")


class Runtime:
    """The API's own connection when no notebook and no client= supplies one: env, else an embedded broker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], BrokerClient] = {}
        self._broker: EmbeddedBroker | None = None

    def client(self) -> BrokerClient:
        address = settings.get("broker")
        with self._lock:
            if address:
                key = (address, settings.get("token"))
            else:
                if self._broker is None:
                    self._broker = start_embedded_broker()
                key = (self._broker.address, self._broker.token)
            if key not in self._clients:
                self._clients[key] = BrokerClient(*key)
            return self._clients[key]

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
            if self._broker is not None:
                self._broker.stop()
                self._broker = None


RUNTIME = Runtime()
atexit.register(RUNTIME.close)


def _notebook_magics() -> Any:
    ipython_module = sys.modules.get("IPython")   # never import IPython just to look
    if ipython_module is None:
        return None
    shell = ipython_module.get_ipython()
    magics = getattr(shell, "_gpucell_magics", None) if shell is not None else None
    return None if magics is None or getattr(magics, "closed", False) else magics


def connect(address: str | None = None, token: str | None = None) -> BrokerClient:
    """A client of the broker at `address` (token: `token` or GPUCELL_TOKEN), to pass as `client=`.

    The caller owns it (`.close()` it). Without an address: the client calls use by default (notebook,
    environment or embedded broker, see the module docstring), which stays owned by its owner.
    """
    if address:
        return BrokerClient(address, token if token is not None else settings.get("token"))
    return _default_client()


def _default_client() -> BrokerClient:
    magics = _notebook_magics()
    if magics is not None:
        return magics.session.client
    return RUNTIME.client()


def _default_hardware(gpu: str | None) -> str:
    if gpu is not None:
        return gpu
    magics = _notebook_magics()
    return magics.session.default_hardware if magics is not None else ""


def status(client: BrokerClient | None = None) -> dict[str, Any]:
    """Pools, workers, queue and usage, as `gpucell status --json` prints them."""
    return (client or _default_client()).status()


def _in_notebook() -> bool:
    magics_shell = sys.modules.get("IPython")
    shell = magics_shell.get_ipython() if magics_shell is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


class _NotebookSink(StreamSink):
    """Item output in a notebook: streams as text, rich displays as MIME bundles."""

    def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool) -> None:
        from IPython.display import publish_display_data  # noqa: PLC0415 - only reached inside IPython

        publish_display_data(data, metadata)


def make_fanout(fn: Callable[..., Any], mode: str, *, gpu: str | None, workers: int | None, retries: int,
                timeout: float, ordered: bool, return_exceptions: bool, progress: bool | None,
                client: BrokerClient | None, label_items: bool = True, sink: Sink | None = None,
                description: str = "") -> Fanout:
    check_fanout_args(workers, retries, timeout)   # before a default client may start an embedded broker
    client = client or _default_client()
    magics = _notebook_magics()
    # A notebook's maps count against its own quota; a map outside a notebook is its own owner.
    owner = magics.session.session_id if magics is not None else ""
    show = progress if progress is not None else (_in_notebook() or sys.stderr.isatty())
    return start_fanout(client, fn, mode, hardware=_default_hardware(gpu), workers=workers, retries=retries,
                        timeout=timeout, ordered=ordered, return_exceptions=return_exceptions, progress=show,
                        sink=sink or (_NotebookSink() if _in_notebook() else StreamSink()), owner=owner,
                        label_items=label_items, description=description)


def map(fn: Callable[..., R], items: Iterable[Any], *, gpu: str | None = None,  # noqa: A001 - Modal's name
        workers: int | None = None, ordered: bool = True, return_exceptions: bool = False, retries: int = 0,
        timeout: float = 0.0, progress: bool | None = None, client: BrokerClient | None = None) -> Iterator[Any]:
    """`fn(item)` for every item on up to `workers` fresh workers; an iterator of results, in input order
    (`ordered=False`: as they complete). `items` is read lazily, so a huge iterable is never held in memory.

    A failing item is retried `retries` times with backoff; then, with `return_exceptions=True`, its
    `RemoteError` takes its place, otherwise the map stops its workers and raises that `RemoteError`
    (`.index`, `.results_so_far`: completed results not yet yielded). `timeout` bounds each item (seconds).
    Faults that are not the item's own cost nothing from `retries`: the items of a worker that dies run
    again on a fresh one (an item that keeps killing its worker fails after a few tries, naming the loss),
    and a broker that goes away is waited for, with backoff, up to a minute; either way every item's
    result is yielded exactly once.
    `workers` defaults to the pool's `max_workers`; `progress` to a tqdm bar in notebooks and terminals.
    """
    return make_fanout(fn, "one", gpu=gpu, workers=workers, retries=retries, timeout=timeout, ordered=ordered,
                   return_exceptions=return_exceptions, progress=progress, client=client).results(items)


class Call(Generic[R]):
    """A call started by `.spawn()`: runs in the background; `.get()` waits for its result."""

    def __init__(self, fanout: Fanout, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._fanout = fanout
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=((args, kwargs),), daemon=True, name="gpucell-spawn")
        self._thread.start()

    def _run(self, item: tuple[tuple[Any, ...], dict[str, Any]]) -> None:
        try:
            for value in self._fanout.results([item]):
                self._value = value
        except BaseException as exc:  # noqa: BLE001 - handed to whoever calls get()
            self._error = exc
        finally:
            self._done.set()

    def get(self, timeout: float | None = None) -> R:
        """The result (or the remote error, raised); TimeoutError if it is not done within `timeout`."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the call did not finish within {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[no-any-return]

    def cancel(self) -> None:
        """Stop the call on its worker and release the worker."""
        self._fanout.cancel()
        self._done.wait(15.0)

    @property
    def done(self) -> bool:
        return self._done.is_set()


class Function(Generic[R]):
    """A function that runs on remote workers (made by `@gpucell.function`); calling it locally still works."""

    def __init__(self, fn: Callable[..., R], *, gpu: str | None = None, timeout: float = 0.0, retries: int = 0,
                 workers: int | None = None, client: BrokerClient | None = None) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.gpu = gpu
        self.timeout = timeout
        self.retries = retries
        self.workers = workers
        self.client = client

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self.fn(*args, **kwargs)

    def _fanout(self, mode: str, *, ordered: bool = True, return_exceptions: bool = False,
                progress: bool | None = None, workers: int | None = None, label_items: bool = True) -> Fanout:
        return make_fanout(self.fn, mode, gpu=self.gpu, workers=workers or self.workers, retries=self.retries,
                       timeout=self.timeout, ordered=ordered, return_exceptions=return_exceptions,
                       progress=progress, client=self.client, label_items=label_items)

    def remote(self, *args: Any, **kwargs: Any) -> R:
        """Run once on a fresh worker and return the result (a failure raises its RemoteError)."""
        fanout = self._fanout("call", workers=1, progress=False, label_items=False)
        (value,) = fanout.results([(args, kwargs)])
        return value  # type: ignore[no-any-return]

    def spawn(self, *args: Any, **kwargs: Any) -> Call[R]:
        """Start one call in the background; returns at once with a `Call`."""
        return Call(self._fanout("call", workers=1, progress=False, label_items=False), args, kwargs)

    def map(self, items: Iterable[Any], ordered: bool = True, return_exceptions: bool = False, *,
            progress: bool | None = None) -> Iterator[R]:
        """`fn(item)` for every item, fanned out (see `gpucell.map`)."""
        return self._fanout("one", ordered=ordered, return_exceptions=return_exceptions,
                            progress=progress).results(items)

    def starmap(self, items: Iterable[Iterable[Any]], ordered: bool = True, return_exceptions: bool = False, *,
                progress: bool | None = None) -> Iterator[R]:
        """`fn(*args)` for every tuple of arguments, fanned out."""
        return self._fanout("star", ordered=ordered, return_exceptions=return_exceptions,
                            progress=progress).results(items)


def function(fn: Callable[..., R] | None = None, *, gpu: str | None = None, timeout: float = 0.0, retries: int = 0,
             workers: int | None = None, client: BrokerClient | None = None) -> Any:
    """Decorator: `@gpucell.function(gpu="A100", timeout=600, retries=2)` (or bare `@gpucell.function`).

    `timeout` bounds each call/item in seconds (0: none); `retries` retries a failing item with
    backoff; `workers` caps the fan-out (default: the pool's `max_workers`).
    """
    def wrap(f: Callable[..., R]) -> Function[R]:
        return Function(f, gpu=gpu, timeout=timeout, retries=retries, workers=workers, client=client)

    return wrap(fn) if fn is not None else wrap

"""The worker process: dials the broker, registers, runs cells in a persistent shell, streams events."""

from __future__ import annotations

import copy
import functools
import os
import platform
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle
import grpc

from gpucell import hardware, settings
from gpucell.namespace import serialize
from gpucell.namespace.remote_ref import RETURN_LIMIT_MB
from gpucell.namespace.transfer import INLINE_LIMIT, DataServer, SharedCopy, boot_id
from gpucell.process import Members, die_with_parent
from gpucell.protocol import PROTOCOL_VERSION
from gpucell.protocol import gpucell_pb2 as pb
from gpucell.protocol import gpucell_pb2_grpc as pb_grpc
from gpucell.protocol.channels import open_channel
from gpucell.remote_kernel.credential import take_worker_credential
from gpucell.remote_kernel.lane import LaneActivityReporter, LaneOut, LaneServer
from gpucell.remote_kernel.modules import ModuleRefresher
from gpucell.remote_kernel.namespace_diff import Synced, diff, hidden, memory_root, sharing
from gpucell.remote_kernel.output import CoalescedOutput
from gpucell.remote_kernel.process_state import WorkerState, present_as_kernel
from gpucell.remote_kernel.shell import CellStream, WorkerShell, make_shell, mime_json
from gpucell.remote_kernel.stdin import StdinRelay

TRANSFER_TIMEOUT_S = 600.0
HEARTBEAT_S = 1.0
_GPU_FIELDS = {"name", "uuid", "memory_total", "memory_used", "utilization", "label"}


class PrepareError(Exception):
    """The cell could not be set up (an input failed to unpickle, a RemoteRef is gone)."""

    def __init__(self, ename: str, evalue: str) -> None:
        super().__init__(evalue)
        self.ename = ename
        self.evalue = evalue


@functools.cache
def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "cloudpickle": cloudpickle.__version__}
    try:
        import numpy  # noqa: PLC0415 - optional on a worker; reported for the version pre-flight
        found["numpy"] = numpy.__version__
    except ImportError:
        pass
    return found


class Worker:
    """One worker serves one session at a time; its shell keeps the session's remote namespace."""

    def __init__(self, broker: str, hardware_label: str, worker_id: str, token: str, members: Members) -> None:
        self.broker = broker
        # The processes cells start here: interrupted with the cell, ended with the worker.
        self.members = members
        self.hardware = hardware_label
        self.worker_id = worker_id
        self.token = token
        self.outbox: queue.Queue[pb.WorkerMessage | None] = queue.Queue()
        self.inbox: queue.Queue[pb.WorkerInstruction | None] = queue.Queue()
        # Values by content hash, as last bound here: an unchanged input is rebound, never re-sent.
        self.cache: dict[str, Any] = {}
        self.data = DataServer(settings.get("data_host"))
        self.lane = LaneServer(settings.get("data_host"), self)
        self.lane_cells: dict[str, LaneOut] = {}   # cells that came over the lane: their events go back there
        self.lane_activity = LaneActivityReporter(lambda activity: self.outbox.put(pb.WorkerMessage(lane=activity)))
        self.node = settings.get("node") or socket.gethostname()
        self.kept: dict[str, pb.RemoteRefInfo] = {}
        self.synced = Synced()          # per name, what the client holds: such a name is used in place
        self._outgoing_cells: list[set[str]] = []   # large outputs of the last cells, newest last
        self.current_cell = ""
        self.cancelled_cell = ""
        self.interruptible = False
        self.shell: WorkerShell = make_shell(self)
        present_as_kernel(self.shell)
        self.process_state = WorkerState()   # the notebook's RNG seeds, rcParams, options, cwd, ... (state.py)
        self._stop = threading.Event()
        self._refused = False        # the broker turned our token away
        self._dialled = False        # the one-time registration secret is spent
        self._terminating = False    # SIGTERM
        self.served = False          # ran a cell: holds a session's state
        self.devices: list[hardware.GpuDevice] = []
        self.output = CoalescedOutput(self._emit_stream)   # prints coalesced, flushed before any other event
        self.stdin = StdinRelay(self._ask_input)           # input(), getpass, sys.stdin: the notebook answers
        self.modules = ModuleRefresher()                   # the notebook's own modules, reloaded when edited

    # ------------------------------------------------------------ Emitter (called from user code)

    def _emit(self, cell_id: str, **kind: Any) -> None:
        if "stream" not in kind:
            with self.output.lock:   # buffered prints go first: order kept across streams and displays
                self.output.flush()
                self._send_event(cell_id, **kind)
        else:
            self._send_event(cell_id, **kind)

    def _send_event(self, cell_id: str, **kind: Any) -> None:
        event = pb.CellEvent(cell_id=cell_id, time=time.time(), **kind)
        lane = self.lane_cells.get(cell_id)
        if lane is not None and "finished" in kind:
            lane.send_now(event)   # with the result queued before it, on this thread: the round trip's end
        elif lane is not None:
            lane.put(event)
        else:
            self.outbox.put(pb.WorkerMessage(event=event))

    def stream(self, name: str, text: str) -> None:
        if self.current_cell:
            self.output.write(name, text)

    def _emit_stream(self, name: str, text: str) -> None:
        cell = self.current_cell
        if cell:
            self._emit(cell, stream=pb.Stream(name=name, text=text))

    def _ask_input(self, prompt: str, password: bool) -> None:
        if self.current_cell:
            self._emit(self.current_cell, input_request=pb.InputRequest(prompt=prompt, password=password))

    def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool, **fields: Any) -> None:
        if self.current_cell:
            self._emit(self.current_cell, display=pb.Display(
                data_json=mime_json(data), metadata_json=mime_json(metadata), execute_result=execute_result,
                **fields))

    # ------------------------------------------------------------ connection

    def _requests(self, outbox: queue.Queue[pb.WorkerMessage | None]) -> Iterator[pb.WorkerMessage]:
        """Outgoing messages; consecutive stream chunks of one cell are merged when they pile up."""
        pending: pb.WorkerMessage | None = None
        while True:
            msg = pending if pending is not None else outbox.get()
            pending = None
            if msg is None:
                return
            if msg.WhichOneof("kind") == "event" and msg.event.WhichOneof("kind") == "stream":
                while True:
                    try:
                        nxt = outbox.get_nowait()
                    except queue.Empty:
                        break
                    if (nxt is not None and nxt.WhichOneof("kind") == "event"
                            and nxt.event.WhichOneof("kind") == "stream"
                            and nxt.event.cell_id == msg.event.cell_id
                            and nxt.event.stream.name == msg.event.stream.name):
                        msg.event.stream.text += nxt.event.stream.text
                        continue
                    pending = nxt
                    break
            yield msg
            if pending is None and msg is None:
                return

    def _read(self, responses: Iterator[pb.WorkerInstruction],
              inbox: queue.Queue[pb.WorkerInstruction | None]) -> None:
        try:
            for instruction in responses:
                if instruction.WhichOneof("kind") == "cancel":
                    self.cancel(instruction.cancel.cell_id)
                elif instruction.WhichOneof("kind") == "input":
                    self.input_reply(instruction.input)   # the cell waits for it on the main thread
                else:
                    inbox.put(instruction)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                              grpc.StatusCode.FAILED_PRECONDITION):
                # A wrong token, or another protocol version, does not get better by retrying.
                self._refused = True
                print(f"gpucell worker refused by the broker: {exc.details()}", file=sys.__stderr__, flush=True)
        finally:
            inbox.put(None)

    def _heartbeat(self) -> None:
        uuids = [d.uuid for d in self.devices]
        while not self._stop.wait(HEARTBEAT_S):
            gpus = [pb.GpuInfo(**{k: v for k, v in stat.items() if k in _GPU_FIELDS})
                    for stat in hardware.device_stats(uuids)] if uuids else []
            self.outbox.put(pb.WorkerMessage(heartbeat=pb.WorkerHeartbeat(rss=_rss(), gpus=gpus)))

    def submit_lane(self, request: pb.CellExecuteRequest, out: LaneOut) -> None:
        """A cell from the lane (called on its connection's thread): run it in turn on the main thread."""
        self.lane_cells[request.cell_id] = out
        self.inbox.put(pb.WorkerInstruction(execute=request))

    def input_reply(self, reply: pb.CellInputRequest) -> None:
        """The notebook's answer to the cell's input request (from the broker's stream or the lane)."""
        if reply.cell_id == self.current_cell:
            self.stdin.reply(reply)

    def cancel(self, cell_id: str) -> None:
        """Interrupt the cell if it is the one running (from the broker's stream or the lane)."""
        if cell_id != self.current_cell:
            return
        self.cancelled_cell = cell_id
        if self.interruptible:
            # Delivered to the main thread: interrupts time.sleep and pure-Python loops alike.
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        # As a local kernel's interrupt reaches its whole process group: pool workers, subprocesses, ...
        self.members.signal(signal.SIGINT)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interruptible:
            raise KeyboardInterrupt

    def _terminate(self, *_: Any) -> None:
        self._terminating = True
        self.inbox.put(None)

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGTERM, self._terminate)
        sys.stdout = CellStream("stdout", self.stream, self.output.flush)
        sys.stderr = CellStream("stderr", self.stream, self.output.flush)
        self.stdin.install()
        devices = self.devices = hardware.visible_devices(hardware.nvml_inventory())
        gpus = [pb.GpuInfo(name=d.name, uuid=d.uuid, memory_total=d.memory_total, label=d.label) for d in devices]
        register = pb.WorkerMessage(register=pb.WorkerRegister(
            worker_id=self.worker_id, hardware=self.hardware, pid=os.getpid(),
            node=self.node, versions=versions(), gpus=gpus, lane_address=self.lane.address,
            lane_ticket=self.lane.ticket, protocol_version=PROTOCOL_VERSION))
        threading.Thread(target=self._heartbeat, daemon=True, name="gpucell-heartbeat").start()
        # A worker that never served a session redials a restarted broker (with backoff, for a while);
        # one that did holds a session's state that no new broker knows, so it ends instead.
        window = settings.get("worker_reconnect_s")
        deadline = 0.0
        backoff = 0.2
        try:
            while True:
                began = time.monotonic()
                if self._connection(register) == "shutdown" or self._refused or self._terminating or self.served:
                    return 0
                if time.monotonic() - began > 5.0:
                    deadline, backoff = 0.0, 0.2   # it was up: a new outage gets a new window
                deadline = deadline or time.monotonic() + window
                if time.monotonic() + backoff > deadline:
                    return 0
                if self._stop.wait(backoff):  # backoff between redials, not synchronisation
                    return 0
                backoff = min(backoff * 2, 5.0)
        finally:
            self._stop.set()
            self.members.end()  # a released worker leaves nothing behind (the guardian covers a SIGKILL)

    def _connection(self, register: pb.WorkerMessage) -> str:
        """One stream to the broker: "shutdown" when told to stop, "lost" when the stream ended."""
        self.outbox = outbox = queue.Queue()
        outbox.put(register)
        self.inbox = inbox = queue.Queue()
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        channel = open_channel(self.broker, options)
        stub = pb_grpc.WorkerHubStub(channel)
        # A launched worker's credential is "ONE-TIME-SECRET RECONNECT": the secret once, then the reconnect
        # credential (bound to this id) for every redial; a join token is one word, used every time.
        credentials = self.token.split() or [""]
        token, self._dialled = credentials[-1 if self._dialled else 0], True
        responses = stub.WorkerConnect(self._requests(outbox), metadata=(("authorization", f"Bearer {token}"),))
        threading.Thread(target=self._read, args=(responses, inbox), daemon=True, name="gpucell-reader").start()
        try:
            while True:
                instruction = inbox.get()
                if instruction is None:
                    return "shutdown" if self._terminating else "lost"
                if instruction.WhichOneof("kind") == "shutdown":
                    return "shutdown"
                if instruction.WhichOneof("kind") == "execute":
                    self.served = True
                    self.execute(instruction.execute)
        finally:
            outbox.put(None)
            channel.close()

    # ------------------------------------------------------------ cells

    def _prepare(self, req: pb.CellExecuteRequest) -> tuple[int, dict[str, str]]:
        """Bind the cell's inputs; returns the bytes received and the input hashes by name."""
        ns = self.shell.user_ns
        os.environ.update(dict(req.options.env))
        inline = {b.hash: b for b in req.blobs}
        received = sum(len(b.data) + sum(len(x) for x in b.buffers) for b in req.blobs)
        for value in req.inputs:
            if not value.hash:   # the notebook rebound or deleted it since: never read it stale here
                ns.pop(value.name, None)
                self.synced.forget(value.name)
        held = {v.name for v in req.inputs if v.hash and self.synced.holds(v.name, v.hash, v.in_place, ns)}
        together = {n for v in req.inputs if not v.name and v.type_name.startswith(serialize.JOINT)
                    for n in v.type_name[len(serialize.JOINT):].split(",")}   # inputs that come in one pickle
        inputs = [v for v in req.inputs if v.hash and v.name not in held and v.name not in together]
        hashes = {v.name: v.hash for v in req.inputs if v.name in together}
        sources = self.modules.needs(req.modules)   # sources of the notebook's modules this host lacks
        missing = sorted({v.hash for v in inputs if v.hash not in self.cache and v.hash not in inline} | sources)
        if missing:
            self._emit(req.cell_id, transfer=pb.Transfer(address=self.data.address, ticket=self.data.expect(missing),
                                                         hashes=missing))
            before = self.data.bytes_in
            if not self.data.wait_for(set(missing), TRANSFER_TIMEOUT_S, lambda: self.cancelled_cell == req.cell_id):
                raise PrepareError("KeyboardInterrupt" if self.cancelled_cell == req.cell_id else "GpucellError",
                                   "the inputs did not arrive")
            received += self.data.bytes_in - before
        # The notebook's edited modules are reloaded before anything unpickles a function of theirs.
        for line in self.modules.refresh(req.modules, self.data.take):
            self.stream("stderr", line)
        for statement in req.imports:
            try:
                exec(statement, ns)  # noqa: S102 - an import statement the client built from a module value
            except Exception as exc:  # noqa: BLE001
                raise PrepareError(type(exc).__name__, f"{statement!r} failed on the worker: {exc}") from None
        # Read in place: the worker's object stays the object (views, figure<->axes links, autograd graphs).
        bound = {v.name: self.synced.hashes[v.name] if v.name in held else v.hash
                 for v in req.inputs if v.hash and v.name}
        with serialize.session_namespace(ns):   # notebook functions run with this namespace as their globals
            self._bind(ns, inputs, inline, hashes)
        for name in req.refs:
            # Any name this worker holds will do: the client also leaves remote an output it could not load.
            if name not in ns:
                raise PrepareError("RemoteRefError", f"RemoteRef {name!r} is not on this worker ({self.worker_id}); "
                                   "its worker is gone")
        return received, bound

    def _bind(self, ns: dict[str, Any], inputs: list[pb.NamedValue], inline: dict[str, pb.Blob],
              hashes: dict[str, str]) -> None:
        """Bind the inputs the worker does not hold as the client does: from its cache, the request, or
        what came over the data path (`hashes`: those of the values that come in one pickle)."""
        used: set[str] = set()
        for value in inputs:
            if not value.name:   # several inputs in one pickle: one memo, so aliases stay aliases here
                try:
                    values = self._load(value.hash, inline)
                except Exception as exc:  # noqa: BLE001
                    raise PrepareError(type(exc).__name__, f"cannot load {value.type_name[len(serialize.JOINT):]} "
                                       f"on the worker: {exc}") from None
                for name, obj in values.items():
                    ns[name] = obj
                    self.cache.setdefault(hashes[name], obj)
                    self.synced.record(name, hashes[name], obj)
                    self.kept.pop(name, None)
                continue
            try:
                if value.hash in self.cache:
                    obj = self.cache[value.hash]
                    # Names with equal content that are not one object locally must not become one here.
                    ns[value.name] = copy.deepcopy(obj) if value.hash in used or self.synced.bound(obj, value.name) else obj
                else:
                    ns[value.name] = self._load(value.hash, inline)
            except Exception as exc:  # noqa: BLE001
                raise PrepareError(type(exc).__name__, f"cannot load {value.name!r} ({value.type_name}) "
                                   f"on the worker: {exc}") from None
            used.add(value.hash)
            self.cache.setdefault(value.hash, ns[value.name])
            self.synced.record(value.name, value.hash, ns[value.name])
            self.kept.pop(value.name, None)

    def _load(self, digest: str, inline: dict[str, pb.Blob]) -> Any:
        if digest in inline:
            blob = inline[digest]
            return serialize.unpack(blob.data, [bytearray(b) for b in blob.buffers])
        header, buffers = self.data.take(digest) or (b"", [])
        return serialize.unpack(header, buffers)

    def _collect(self, req: pb.CellExecuteRequest, inputs: dict[str, str],
                 before: dict[str, Any] | None = None) -> tuple[pb.Result, int]:
        """What the cell changed goes back (or stays as RemoteRefs): the names it bound or rebound, however
        (`before`: the namespace as the cell began), and inputs it mutated in place, with the arrays that
        share their memory."""
        ns = self.shell.user_ns
        change = diff(before if before is not None else ns, ns, self.shell.user_ns_hidden)
        result = pb.Result(data_address=self.data.address)
        # The previous cell's large outputs stay fetchable while this one runs: a pipelined client (a map
        # keeps two cells per worker) may still be fetching them. The cell before that has had its turn.
        if len(self._outgoing_cells) == 2:
            oldest = self._outgoing_cells.pop(0)
            for digest in oldest - self._outgoing_cells[0]:
                self.data.withdraw(digest)   # never fetched (its client went away)
        mine: set[str] = set()
        moving: list[tuple[str, str, SharedCopy]] = []
        inline: list[tuple[str, Any, serialize.Packed]] = []
        sent = 0
        limit = req.options.return_limit or RETURN_LIMIT_MB * 1_000_000
        rebound = set(change.bound)
        names = change.bound + [n for n in req.assigns if n not in rebound and hidden(n, self.shell.user_ns_hidden)]
        names += [n for n in req.options.pull if n in self.kept and n not in rebound]   # %gpu_pull: a RemoteRef there
        rebound.update(names)
        names += [n for n in inputs if n not in rebound]
        previous = dict(inputs)          # content hashes before the cell, of what was not rebound
        roots: set[int] = set()          # memory of arrays the cell mutated in place
        for name in names:               # grows while it runs: views of a mutated array join it
            if name not in ns:
                continue
            value = ns[name]
            if name in req.options.keep:
                result.refs.append(self._keep(name, value, "kept by --keep", 0))
                continue
            if _device_bound(value):
                result.refs.append(self._keep(name, value, "device-bound", _nbytes(value)))
                continue
            try:
                packed = serialize.pack(name, value, session=ns)
            except Exception as exc:  # noqa: BLE001 - unpicklable values stay remote
                result.refs.append(self._keep(name, value, f"unpicklable: {str(exc).split(': ', 1)[-1]}", 0))
                continue
            self.cache[packed.hash] = value
            if name in previous and name not in rebound and previous[name] == packed.hash:
                continue  # read, not changed: nothing to send back
            if name in previous and previous[name] != packed.hash:
                self.cache.pop(previous[name], None)  # that content no longer exists here
                root = memory_root(value)
                if root is not None and root not in roots:
                    roots.add(root)
                    views = [n for n in sharing(ns, self.synced.names(), {root}) if n not in previous]
                    previous.update((n, self.synced.hashes[n]) for n in views)
                    names += views
            if packed.size > limit and name not in req.options.pull:
                result.refs.append(self._keep(name, value, f"larger than the {limit // 1_000_000} MB return limit",
                                              packed.size))
                continue
            self.kept.pop(name, None)
            self.synced.record(name, packed.hash, value)
            fetch = packed.size > INLINE_LIMIT
            result.outputs.append(pb.NamedValue(name=name, hash=packed.hash, type_name=packed.type_name,
                                                size=packed.size, fetch=fetch, in_place=name not in rebound))
            if fetch:
                shared = self._share(req, packed)
                if shared is None:
                    self.data.offer(packed)
                else:
                    self.data.offer(shared.packed(packed), shared)
                    moving.append((name, packed.hash, shared))
                mine.add(packed.hash)
            else:
                inline.append((name, value, packed))
            sent += packed.size
        result.blobs.extend(self._inline_outputs(result, inline, ns))
        for name in [*req.deletes, *(n for n in change.deleted if n not in req.deletes)]:
            if name not in ns:
                result.deleted.append(name)
                self.kept.pop(name, None)
                self.synced.forget(name)
        self._outgoing_cells.append(mine)
        if mine:
            result.ticket = self.data.ticket_for(mine)   # one-time, for these outputs only
        value = packed = inline = None  # type: ignore[assignment] # no reference of ours may count in _move_onto
        for name, digest, shared in moving:
            self._move_onto(name, digest, shared)
        self._trim_cache()
        return result, sent

    def _send_process_state(self, cell: str) -> None:
        """What the cell moved of the process's state goes back before its result or error, as with a local cell."""
        moved = self.process_state.after()
        if moved:
            self._emit(cell, process_state=pb.ProcessState(data=moved))

    def _inline_outputs(self, result: pb.Result, inline: list[tuple[str, Any, serialize.Packed]],
                        ns: dict[str, Any]) -> list[pb.Blob]:
        """Outputs small enough to ride in the result: several go as one pickle with one memo (an output with
        no name, serialize.JOINT), so names bound to one object here, or to objects that share parts, land
        as such in the notebook."""
        if len(inline) >= 2 and sum(p.size for _, _, p in inline) <= INLINE_LIMIT:
            try:
                joint = serialize.pack("the cell's outputs", {n: v for n, v, _ in inline}, session=ns)
            except Exception:  # noqa: BLE001 - each packed alone: they go alone
                joint = None
            if joint is not None and joint.size <= INLINE_LIMIT:
                result.outputs.append(pb.NamedValue(hash=joint.hash, size=joint.size, type_name=serialize.JOINT
                                                    + ",".join(n for n, _, _ in inline)))
                return [pb.Blob(hash=joint.hash, data=joint.header, buffers=[bytes(b) for b in joint.buffers])]
        return [pb.Blob(hash=p.hash, data=p.header, buffers=[bytes(b) for b in p.buffers]) for _, _, p in inline]

    def _share(self, req: pb.CellExecuteRequest, packed: serialize.Packed) -> SharedCopy | None:
        """A client on this kernel gets large outputs as memfds: written now, on the cell's thread, so that
        the worker's own copy can move onto the same pages (_move_onto)."""
        if not req.client_boot_id or req.client_boot_id != boot_id() or not self.data.shares_memory:
            return None
        try:
            return SharedCopy(packed)
        except OSError:  # e.g. out of descriptors: the GET writes the memfds itself
            return None

    def _move_onto(self, name: str, digest: str, shared: SharedCopy) -> None:
        """A returned numpy array or CPU tensor that nothing else here holds is rebound to an equal one on the
        shared pages its client maps (copy-on-write for both): one copy of the value on this host instead of
        two, and its own memory is free for the next cell at once, while it is still warm."""
        ns = self.shell.user_ns
        value = ns.get(name)
        if not _movable(value):
            return
        # The namespace, the cache, `value` here and getrefcount's argument: no other holder can tell.
        if sys.getrefcount(value) != 4 or self.cache.get(digest) is not value:
            return
        try:
            twin = serialize.unpack(shared.header, list(shared.buffers))
        except Exception:  # noqa: BLE001 - keeping the original is always right
            return
        if type(twin) is type(value) and _layout(twin) == _layout(value):
            ns[name] = self.cache[digest] = twin
            self.synced.record(name, digest, twin)

    def _trim_cache(self) -> None:
        """Keep only cached values that some name here still holds, so memory follows the namespace."""
        live = {id(v) for v in self.shell.user_ns.values()}
        for digest in [h for h, v in self.cache.items() if id(v) not in live]:
            del self.cache[digest]

    def _keep(self, name: str, value: Any, reason: str, size: int) -> pb.RemoteRefInfo:
        info = pb.RemoteRefInfo(name=name, type_name=serialize.type_name(value), size=size, reason=reason,
                                hardware=self.hardware, worker_id=self.worker_id, summary=_summary(value))
        self.kept[name] = info
        self.synced.forget(name)
        return info

    def execute(self, req: pb.CellExecuteRequest) -> None:
        cell = req.cell_id
        self.stdin.begin()   # a reply meant for an earlier (interrupted) cell is not this cell's line
        self.current_cell = cell
        started = time.perf_counter()
        ok = False
        received = sent = 0
        lane = self.lane_cells.get(cell)
        if lane is not None:
            # 'started' reaches the client before user code runs, or the cell does not run at all: a
            # client that never saw it sends the cell through the broker instead (at most once).
            if not lane.send_now(pb.CellEvent(cell_id=cell, time=time.time(), started=pb.Started(
                    worker_id=self.worker_id, hardware=self.hardware, node=self.node, versions=versions()))):
                del self.lane_cells[cell]
                self.current_cell = ""
                return
            self.lane_activity.started(req.session_id, cell)
        try:
            for line in self.process_state.before(req.process_state):
                self.stream("stderr", line)
            received, inputs = self._prepare(req)
            if self.cancelled_cell == cell:
                raise PrepareError("KeyboardInterrupt", "cancelled before it started")
            if req.execution_count:
                self.shell.execution_count = req.execution_count
            self.shell.last_error = None
            before = dict(self.shell.user_ns)   # one C-level copy: the cell's changes are diffed against it
            self.interruptible = True
            try:
                self.shell.run_notebook_cell(req.source, req.cell_filename)
            finally:
                self.interruptible = False
            self.modules.settle()   # the source of each module the cell imported, before anyone edits it
            self._send_process_state(cell)
            error = self.shell.last_error
            if error is not None:
                ename, evalue, stb = error
                cancelled = ename == "KeyboardInterrupt" and self.cancelled_cell == cell
                kind = pb.Error.CANCELLED if cancelled else pb.Error.USER
                # What the cell bound before it failed comes back first, as a local cell leaves it bound.
                partial, sent = self._collect(req, inputs, before)
                self._emit(cell, result=partial)
                self._emit(cell, error=self.shell.error_message(kind))
            else:
                if self.shell.result_name and req.execution_count:
                    req.assigns.append(self.shell.result_name)  # the cell's value returns as `_N` (a result is a result)
                result, sent = self._collect(req, inputs, before)
                self._emit(cell, result=result)
                ok = True
        except PrepareError as exc:
            kind = pb.Error.CANCELLED if exc.ename == "KeyboardInterrupt" else pb.Error.USER
            self._emit(cell, error=pb.Error(ename=exc.ename, evalue=exc.evalue, kind=kind))
        except KeyboardInterrupt:
            # An interrupt that landed outside user code: the cell still ends as cancelled.
            self._emit(cell, error=pb.Error(ename="KeyboardInterrupt", evalue="", kind=pb.Error.CANCELLED))
        finally:
            self._emit(cell, finished=pb.Finished(run_s=time.perf_counter() - started, bytes_in=received,
                                                  bytes_out=sent, ok=ok))
            if lane is not None:
                del self.lane_cells[cell]
                self.lane_activity.finished(req.session_id, cell, ok)
            self.current_cell = ""
            self.cancelled_cell = ""


def _summary(value: Any) -> str:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        device = getattr(value, "device", None)
        where = f", device={device}" if device is not None and str(device) != "cpu" else ""
        return f"shape={tuple(shape)}, dtype={dtype}{where}"
    return ""


def _device_bound(value: Any) -> bool:
    """A CUDA tensor or a module with CUDA parameters (or an object that says so) stays on its worker."""
    if getattr(value, "__gpucell_device_bound__", False):
        return True
    if type(value).__module__.split(".")[0] != "torch":
        return False
    if getattr(value, "is_cuda", False):
        return True
    parameters = getattr(value, "parameters", None)
    if callable(parameters):
        try:
            return any(getattr(p, "is_cuda", False) for p in parameters())
        except Exception:  # noqa: BLE001
            return False
    return False


def _movable(value: Any) -> bool:
    """An array or tensor that owns all of its memory and carries nothing a rebuilt copy would lack."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and type(value) is numpy.ndarray:
        return value.base is None and value.flags.writeable
    torch = sys.modules.get("torch")
    if torch is None or type(value) is not torch.Tensor:
        return False
    return (serialize.whole_cpu_tensor(torch, value) and value._base is None and not value.requires_grad
            and value.grad is None and not value.__dict__)


def _layout(value: Any) -> tuple[Any, ...]:
    strides = value.strides if hasattr(value, "strides") else value.stride()
    writeable = value.flags.writeable if hasattr(value, "flags") else True
    return tuple(value.shape), str(value.dtype), tuple(strides), writeable


def _nbytes(value: Any) -> int:
    size = getattr(value, "nbytes", None)
    if isinstance(size, int):
        return size
    try:
        return int(value.element_size() * value.nelement())
    except Exception:  # noqa: BLE001
        return 0


def _rss() -> int:
    """Resident memory of this process in bytes (the broker enforces a pool's memory_limit_mb on it)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run_worker(broker: str, hardware_label: str, worker_id: str, parent_pid: int = 0) -> int:
    """The one way a worker process starts (`gpucell worker`, `python -m gpucell.remote_kernel`, the fork server)."""
    if parent_pid:
        die_with_parent(parent_pid)
    credential = take_worker_credential()  # before anything else: it may start this process again
    members = Members()
    members.guard()  # before any thread starts: it forks
    return Worker(broker, hardware_label, worker_id, credential, members).run()

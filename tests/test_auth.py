"""Shared brokers (issue 18): users, owners, and worker credentials a cell cannot misuse — attacked, not only used."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory

from conftest import Cluster, make_cluster, wait_for
from gpucell.broker.auth import RPC_ROLES
from gpucell.broker.token_files import add_entry
from gpucell.client import BrokerClient
from gpucell.client.jobs_client import JobsClient
from gpucell.errors import AuthenticationError
from gpucell.protocol import PROTOCOL_VERSION
from gpucell.protocol import gpucell_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
POOLS = """
[pools.cpu]
simulate = true
max_workers = 3
idle_timeout = 300
"""


class Team:
    """A broker with a users file (alice, bob, root the admin) and a worker join token for `w-hand`."""

    def __init__(self, cluster: Cluster, tokens: dict[str, str]) -> None:
        self.cluster = cluster
        self.tokens = tokens

    def client(self, who: str) -> BrokerClient:
        return BrokerClient(self.cluster.address, self.tokens[who])

    def run(self, who: str, session: str, source: str) -> list[pb.CellEvent]:
        client = self.client(who)
        try:
            return list(client.execute(pb.CellExecuteRequest(
                session_id=session, cell_id=uuid.uuid4().hex, hardware="cpu", source=source)))
        finally:
            client.close()


def _stdout(events: list[pb.CellEvent]) -> str:
    errors = [e.error for e in events if e.WhichOneof("kind") == "error"]
    assert not errors, errors
    return "".join(e.stream.text for e in events if e.WhichOneof("kind") == "stream")


@pytest.fixture
def team(tmp_path: Path) -> Iterator[Team]:
    users, workers = tmp_path / "users.toml", tmp_path / "workers.toml"
    tokens = {name: add_entry(str(users), name, admin=name == "root") for name in ("alice", "bob", "root")}
    tokens["worker"] = add_entry(str(workers), "w-hand", None)
    broker = f'users_file = "{users}"\nworker_tokens_file = "{workers}"'
    with make_cluster(tmp_path, POOLS, broker=broker) as cluster:
        yield Team(cluster, tokens)


# ------------------------------------------------------------------ every RPC x every kind of caller

def _methods() -> Iterator[tuple[str, Any]]:
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            yield f"/{service.full_name}/{method.name}", method


def test_every_rpc_has_a_role_and_a_case() -> None:
    """A new RPC fails here until it has a row in the broker's table and a case in the walk below."""
    names = {name for name, _ in _methods()}
    assert names == set(RPC_ROLES)
    assert names == set(CASES)


# For each RPC: the request naming alice's objects (ids from `objs`), and whether it names any (else a caller
# that is not the owner gets an answer, which must not leak alice's ids).
Request = Callable[[dict[str, str]], Any]
CASES: dict[str, tuple[Request, bool]] = {
    "/gpucell.v1.Broker/CellExecute": (lambda o: pb.CellExecuteRequest(
        session_id=o["session"], cell_id=uuid.uuid4().hex, hardware="cpu", source="1 + 1"), True),
    "/gpucell.v1.Broker/CellCancel": (lambda o: pb.CellCancelRequest(session_id=o["session"], cell_id=o["cell"]), True),
    "/gpucell.v1.Broker/CellInput": (lambda o: pb.CellInputRequest(session_id=o["session"], cell_id=o["cell"],
                                                                   value="line"), True),
    "/gpucell.v1.Broker/CellAttach": (lambda o: pb.CellAttachRequest(
        session_id=o["session"], cell_id=o["cell"], lane_worker_id=o["worker"]), True),
    "/gpucell.v1.Broker/StatusGet": (lambda o: pb.StatusGetRequest(session_id=o["session"]), True),
    "/gpucell.v1.Broker/CatalogGet": (lambda o: pb.CatalogGetRequest(), False),
    "/gpucell.v1.Broker/WorkerRelease": (lambda o: pb.WorkerReleaseRequest(worker_id=o["worker"]), True),
    "/gpucell.v1.Broker/SessionClose": (lambda o: pb.SessionCloseRequest(session_id=o["session"]), True),
    "/gpucell.v1.WorkerHub/WorkerConnect": (lambda o: pb.WorkerMessage(register=pb.WorkerRegister(
        worker_id=o["worker"], hardware="cpu", protocol_version=PROTOCOL_VERSION)), True),
    "/gpucell.v1.Jobs/JobSubmit": (lambda o: pb.JobSubmitRequest(), False),
    "/gpucell.v1.Jobs/JobList": (lambda o: pb.JobListRequest(), False),
    "/gpucell.v1.Jobs/JobLogs": (lambda o: pb.JobLogsRequest(job_id=o["job"]), True),
    "/gpucell.v1.Jobs/JobFetch": (lambda o: pb.JobFetchRequest(job_id=o["job"]), True),
    "/gpucell.v1.Jobs/JobCancel": (lambda o: pb.JobCancelRequest(job_id=o["job"]), True),
}


def _call(address: str, name: str, method: Any, request: Any, token: str) -> tuple[grpc.StatusCode, str]:
    """One raw call: (status, everything the caller received, as text)."""
    out_cls = message_factory.GetMessageClass(method.output_type)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address) as channel:
        try:
            if method.client_streaming:
                stub = channel.stream_stream(name, request_serializer=lambda m: m.SerializeToString(),
                                             response_deserializer=out_cls.FromString)
                # A request stream that stays open: an accepted worker waits for work (the deadline ends it).
                answers = list(stub(iter([request]), metadata=metadata, timeout=2))
            elif method.server_streaming:
                stub = channel.unary_stream(name, request_serializer=lambda m: m.SerializeToString(),
                                            response_deserializer=out_cls.FromString)
                answers = list(stub(request, metadata=metadata, timeout=30))
            else:
                stub = channel.unary_unary(name, request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=out_cls.FromString)
                answers = [stub(request, metadata=metadata, timeout=30)]
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, " ".join(str(a) for a in answers)


def test_every_rpc_refuses_everyone_but_the_owner_and_admin(team: Team) -> None:
    address = team.cluster.address
    session = f"alice-{uuid.uuid4().hex}"
    assert _stdout(team.run("alice", session, "print('mine')")) == "mine\n"
    status = team.client("alice").status(session)
    worker = next(w["id"] for p in status["pools"].values() for w in p["workers"] if w["session"] == session)
    jobs = JobsClient(address, team.tokens["alice"])
    notebook = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).encode()
    job_id = jobs.submit("empty.ipynb", notebook, [])["id"]
    objs = {"session": session, "cell": uuid.uuid4().hex, "worker": worker, "job": job_id}

    for name, method in _methods():
        build, names_objects = CASES[name]
        role = RPC_ROLES[name]
        request = build(objs)
        if role == "worker":
            # Users are not workers, whoever they are; a worker's token registers only its own id.
            for who in ("alice", "bob", "root", ""):
                assert _call(address, name, method, request, team.tokens.get(who, ""))[0] == \
                    grpc.StatusCode.UNAUTHENTICATED, (name, who)
            code, details = _call(address, name, method, request, team.tokens["worker"])
            assert code == grpc.StatusCode.PERMISSION_DENIED and "registers worker w-hand" in details, (code, details)
            continue
        if name == "/gpucell.v1.Jobs/JobSubmit":
            request = pb.JobSubmitRequest()   # empty notebook: refused as a bad request, after authentication
        for who, expected in (("", "unauthenticated"), ("worker", "unauthenticated"), ("alice", "ok"),
                              ("root", "ok"), ("bob", "denied" if names_objects else "ok")):
            code, received = _call(address, name, method, request, team.tokens.get(who, ""))
            if expected == "unauthenticated":
                assert code == grpc.StatusCode.UNAUTHENTICATED, (name, who, code)
            elif expected == "denied":
                assert code == grpc.StatusCode.PERMISSION_DENIED, (name, who, code, received)
                assert "is not bob's" in received
            else:
                assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), \
                    (name, who, code, received)
            if who == "bob":
                # Nothing of alice's reaches bob, whatever he asked.
                assert session not in received and job_id not in received and worker not in received, (name, received)
    # After all that, alice's session still runs her cells, and her worker is still hers.
    assert _stdout(team.run("alice", session, "print('still mine')")) == "still mine\n"
    jobs.cancel(job_id)
    jobs.close()


def test_status_shows_other_users_workers_only_anonymously(team: Team) -> None:
    a_session, b_session = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    _stdout(team.run("alice", a_session, "x = 1"))
    _stdout(team.run("bob", b_session, "y = 2"))
    bob = team.client("bob").status()
    text = json.dumps(bob)
    assert a_session not in text and b_session in text
    workers = [w for p in bob["pools"].values() for w in p["workers"]]
    assert sorted(bool(w["id"]) for w in workers) == [False, True]   # alice's worker: state and hardware only
    assert {u["user"] for u in bob["usage"]["sessions"]} == {"bob"}
    everyone = team.client("root").status()
    assert {u["user"] for u in everyone["usage"]["sessions"]} == {"alice", "bob"}
    assert set(everyone["usage"]["users"]) == {"alice", "bob"}
    with pytest.raises(Exception, match="admins"):
        team.client("bob").release("")   # every session's workers: an admin's act


def test_users_file_is_reread_without_restart(team: Team, tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    result = subprocess.run([sys.executable, "-m", "gpucell.cli", "user", "add", "carol", "--file", str(users)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    carol = result.stdout.strip()
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert carol not in users.read_text()           # only its digest is stored
    assert team.client("bob").catalog()             # the others' tokens survived the rewrite
    client = BrokerClient(team.cluster.address, carol)
    assert wait_for(lambda: client.catalog(), what="carol let in")
    # Revoked: her entry leaves the file, and her token with it.
    users.write_text("\n".join(block for block in users.read_text().split("\n\n") if "[carol]" not in block))
    with pytest.raises(AuthenticationError):
        wait_for(lambda: not client.catalog(), timeout=5, what="carol refused")


# ------------------------------------------------------------------ the hijack chain, from inside a cell

ATTACK = textwrap.dedent("""
    import gc, os, threading, grpc
    from pathlib import Path
    from gpucell.protocol import PROTOCOL_VERSION, gpucell_pb2 as pb, gpucell_pb2_grpc as pbg

    seen = dict(os.environ)
    def environ(path):
        try:
            return dict(e.split("=", 1) for e in Path(path).read_bytes().decode(errors="replace").split("\\0") if "=" in e)
        except OSError:
            return {}
    seen.update({"self:" + k: v for k, v in environ("/proc/self/environ").items()})
    seen.update({"parent:" + k: v for k, v in environ(f"/proc/{os.getppid()}/environ").items()})
    for f in Path.cwd().iterdir():
        if f.is_file() and f.stat().st_size < 100_000:
            seen["file:" + f.name] = f.read_text(errors="replace")
    # Even the worker's own credential, out of its memory.
    for obj in gc.get_objects():
        if type(obj).__name__ == "Worker" and isinstance(getattr(obj, "token", None), str):
            for i, word in enumerate(obj.token.split()):
                seen[f"memory:{i}"] = word
    tokens = {v for k, v in seen.items() if len(v) >= 16 and "\\n" not in v}
    tokens |= {w for k, v in seen.items() if k.startswith("file:") for w in v.split() if len(w) >= 16}
    leaked = sorted(k for k in seen if k.upper().endswith("TOKEN"))   # GPUCELL_WORKER_TOKEN_FD is a number

    def register(token, worker_id):
        stop = threading.Event()
        def messages():
            yield pb.WorkerMessage(register=pb.WorkerRegister(worker_id=worker_id, hardware="cpu",
                                                              protocol_version=PROTOCOL_VERSION))
            stop.wait(5)
        with grpc.insecure_channel(BROKER) as channel:
            try:
                next(pbg.WorkerHubStub(channel).WorkerConnect(
                    messages(), metadata=(("authorization", "Bearer " + token),), timeout=1.5))
                return "ACCEPTED"
            except grpc.RpcError as exc:
                return "ACCEPTED" if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED else exc.code().name
            finally:
                stop.set()

    outcomes = {}
    for token in sorted(tokens):
        for target in ("attacker-new-worker", NEIGHBOUR, os.environ.get("GPUCELL_WORKER_ID", "")):
            outcome = register(token, target)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(repr((leaked, sorted(outcomes), len(tokens) > 0)))
""")


@pytest.mark.parametrize("fork_server", [True, False], ids=["forked", "popen"])
def test_a_cell_cannot_register_as_a_worker(tmp_path: Path, fork_server: bool) -> None:
    users = tmp_path / "users.toml"
    tokens = {name: add_entry(str(users), name, admin=False) for name in ("alice", "bob")}
    broker = f'users_file = "{users}"\nfork_server = {str(fork_server).lower()}'
    with make_cluster(tmp_path, POOLS, broker=broker) as cluster:
        team = Team(cluster, tokens)
        victim, attacker = f"v-{uuid.uuid4().hex}", f"a-{uuid.uuid4().hex}"
        _stdout(team.run("alice", victim, "secret = 42"))
        # What StatusGet tells bob about alice's worker: no id.
        seen = team.client("bob").status()
        assert all(not w["id"] for p in seen["pools"].values() for w in p["workers"])
        neighbour = cluster.broker.call(lambda: next(
            w.id for w in cluster.broker.service.scheduler.workers.values() if w.session == victim))
        source = f"BROKER = {cluster.address!r}\nNEIGHBOUR = {neighbour!r}\n" + ATTACK
        out = _stdout(team.run("bob", attacker, source))
        leaked, outcomes, found_some = eval(out)  # noqa: S307 - our own cell's printed tuple
        assert leaked == [] and found_some
        assert "ACCEPTED" not in outcomes and outcomes, outcomes
        # The neighbour is untouched: same worker, same namespace.
        assert _stdout(team.run("alice", victim, "print(secret)")) == "42\n"
        assert cluster.broker.call(lambda: neighbour in cluster.broker.service.conns)


def test_a_hand_started_worker_holds_no_token_where_cells_look(team: Team, tmp_path: Path) -> None:
    env = {**os.environ, "GPUCELL_WORKER_TOKEN": team.tokens["worker"], "PYTHONPATH": str(ROOT)}
    env.pop("GPUCELL_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "gpucell.cli", "worker", "--broker", team.cluster.address,
                             "--hardware", "cpu", "--worker-id", "w-hand"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: team.cluster.broker.call(lambda: "w-hand" in team.cluster.broker.service.conns),
                 timeout=60, what="the hand-started worker")
        # Its join token registers only w-hand, and w-hand is live: a second registration is refused.
        method = pb.DESCRIPTOR.services_by_name["WorkerHub"].methods_by_name["WorkerConnect"]
        request = CASES["/gpucell.v1.WorkerHub/WorkerConnect"][0]({"worker": "w-hand"})
        code, details = _call(team.cluster.address, "/gpucell.v1.WorkerHub/WorkerConnect", method, request,
                              team.tokens["worker"])
        assert code == grpc.StatusCode.PERMISSION_DENIED and "already connected" in details
        assert proc.poll() is None
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        assert b"GPUCELL_WORKER_TOKEN=" not in environ and team.tokens["worker"].encode() not in environ
    finally:
        proc.terminate()
        proc.wait(30)


def test_unauthenticated_giant_requests_are_never_read(tmp_path: Path) -> None:
    """3 x 300 MB without a token: refused from the metadata, the broker's peak RSS barely moves."""
    config = tmp_path / "gpucell.toml"
    config.write_text('[broker]\nhost = "127.0.0.1"\nport = 0\n' + POOLS)
    env = {**os.environ, "GPUCELL_CONFIG": str(config), "GPUCELL_TOKEN": "the-right-token-" + uuid.uuid4().hex}
    broker = subprocess.Popen([sys.executable, "-m", "gpucell.cli", "broker", "--state-dir", str(tmp_path / "s")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = broker.stdout.readline() if broker.stdout else ""
        assert line.startswith("gpucell broker listening on "), line
        address = line.split()[-1]

        def peak_kb() -> int:
            status = Path(f"/proc/{broker.pid}/status").read_text()
            return int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1])

        before = peak_kb()
        body = b"\x0a" + _varint(300_000_000) + bytes(300_000_000)   # StatusGetRequest.session_id, 300 MB
        with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)]) as channel:
            call = channel.unary_unary("/gpucell.v1.Broker/StatusGet", request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as refused:
                    call(body, timeout=60)
                assert refused.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED)
        del body
        assert (peak_kb() - before) < 50_000, f"peak RSS grew by {(peak_kb() - before) // 1000} MB"
    finally:
        broker.terminate()
        broker.wait(30)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)

"""The pure halves of a cell, without a broker: the request built from a namespace, and the namespace
update built from a result (what is bound, deleted, or kept on the worker as a RemoteRef)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from gpucell.client.namespace_update import NamespaceUpdate, apply_update, inline_parts, plan_update, to_fetch
from gpucell.client.request import CellOptions, build_request, cell_names
from gpucell.client.sink import ForwardingSink, Sink
from gpucell.errors import ConfigError, RemoteRefError, SerializationError
from gpucell.namespace import serialize
from gpucell.namespace.remote_ref import RemoteRef
from gpucell.namespace.transfer import INLINE_LIMIT
from gpucell.protocol import gpucell_pb2 as pb


def build(source: str, ns: dict[str, Any], *, skip: set[str] | None = None, options: CellOptions | None = None,
          **kwargs: Any) -> Any:
    kwargs.setdefault("session_id", "s1")
    kwargs.setdefault("hardware", "cpu")
    return build_request(source, cell_names(source), ns, options or CellOptions(), skip or set(), **kwargs)


# ------------------------------------------------------------------ request builder


def test_a_cell_sends_what_it_reads_modules_as_imports_and_refs_by_name() -> None:
    ref = RemoteRef("model", "Net", 10, "cpu", "w1")
    ns = {"x": 3, "os": os, "model": ref, "unused": 99, "In": []}
    out = build("y = x + 1\nos.getpid()\nz = model\nIn\n", ns, skip={"In"}, execution_count=7,
                session_name="nb.ipynb", owner="o1", cell_id="c1")
    request = out.request
    assert (request.session_id, request.cell_id, request.hardware, request.execution_count) == ("s1", "c1", "cpu", 7)
    assert (request.session_name, request.owner) == ("nb.ipynb", "o1")
    assert [v.name for v in request.inputs] == ["x"]
    assert list(request.imports) == ["import os"] and list(request.refs) == ["model"]
    assert set(request.assigns) == {"y", "z"}
    (blob,) = request.blobs   # small: inline, and also ready to upload if the worker asks
    assert serialize.unpack(blob.data, list(blob.buffers)) == 3 and blob.hash in out.uploads


def test_options_travel_as_given() -> None:
    options = CellOptions(timeout_s=5, idle_s=2, fresh=True, env={"K": "V"}, pull=["a"], keep=["b"], retries=1,
                          strict=True, return_limit=1000)
    sent = build("a = b = 1\n", {}, options=options).request.options
    assert (sent.timeout_s, sent.idle_s, sent.fresh, dict(sent.env), list(sent.pull), list(sent.keep), sent.retries,
            sent.strict, sent.return_limit) == (5, 2, True, {"K": "V"}, ["a"], ["b"], 1, True, 1000)


def test_a_cells_values_travel_in_one_pickle_a_large_one_once_under_two_names() -> None:
    big = np.zeros(INLINE_LIMIT // 8 + 1024)
    out = build("s = a.sum() + b.sum() + c\n", {"a": big, "b": big, "c": 1})
    by_name = {v.name: v.hash for v in out.request.inputs}
    joint = [v for v in out.request.inputs if not v.name]   # one pickle, one memo: `a is b` there too
    assert len(joint) == 1 and sorted(joint[0].type_name.split(":", 1)[1].split(",")) == ["a", "b", "c"]
    assert by_name["a"] == by_name["b"] and set(out.uploads) == {joint[0].hash}
    assert not out.request.blobs   # over the inline limit: it goes over the data path when the worker asks


def test_local_mistakes_are_caught_before_anything_is_sent() -> None:
    with pytest.raises(ConfigError, match="syntax error in the cell"):
        cell_names("x = (\n")
    lost = RemoteRef("w", "Tensor", 10, "A100", "w9", execution_count=3)
    lost.lost = True
    with pytest.raises(RemoteRefError):
        build("y = w\n", {"w": lost})
    with pytest.raises(SerializationError, match="cannot send 'gen' \\(generator\\)"):
        build("y = gen\n", {"gen": (i for i in range(3))})
    with pytest.raises(SerializationError, match="larger than the broker's limit"):
        build("y = data\n", {"data": b"x" * 2000}, max_blob_bytes=1000)


def test_a_notebook_function_is_refused_for_a_worker_on_another_python() -> None:
    def helper() -> int:
        return 1
    helper.__module__ = "__main__"
    with pytest.raises(SerializationError, match="Python 3.99"):
        build("y = helper()\n", {"helper": helper}, worker_python="3.99.1")
    assert [v.name for v in build("y = helper()\n", {"helper": helper}).request.inputs] == ["helper"]


# ------------------------------------------------------------------ result → namespace update


def result_of(values: dict[str, Any], *, refs: list[pb.RemoteRefInfo] | None = None, deleted: list[str] | None = None,
              raw: dict[str, bytes] | None = None) -> pb.Result:
    """A worker's result: each value packed as the worker packs it; `raw`: pickles as they arrive."""
    result = pb.Result(refs=refs or [], deleted=deleted or [])
    for name, value in values.items():
        packed = serialize.pack(name, value)
        result.outputs.append(pb.NamedValue(name=name, hash=packed.hash, type_name=packed.type_name,
                                            size=packed.size))
        result.blobs.append(pb.Blob(hash=packed.hash, data=packed.header, buffers=[bytes(b) for b in packed.buffers]))
    for name, data in (raw or {}).items():
        result.outputs.append(pb.NamedValue(name=name, hash=f"h-{name}", type_name="Thing", size=len(data)))
        result.blobs.append(pb.Blob(hash=f"h-{name}", data=data))
    return result


def plan(result: pb.Result) -> NamespaceUpdate:
    return plan_update(result, inline_parts(result), hardware="T4", worker_id="w1", execution_count=5)


def test_values_bind_refs_stay_remote_and_deletes_go() -> None:
    result = result_of({"y": 2, "arr": np.arange(4)}, deleted=["gone"],
                       refs=[pb.RemoteRefInfo(name="model", type_name="Net", size=10, reason="on the GPU")])
    update = plan(result)
    assert update.assigned == ["y", "arr"] and update.refs == ["model"] and list(update.deletes) == ["gone"]
    ns: dict[str, Any] = {"gone": 1, "y": 0, "model": 1}
    refs: dict[str, RemoteRef] = {}
    apply_update(update, ns, refs)
    assert ns["y"] == 2 and list(ns["arr"]) == [0, 1, 2, 3] and "gone" not in ns
    model = ns["model"]
    assert isinstance(model, RemoteRef) and refs == {"model": model}
    assert (model.hardware, model.worker_id, model.execution_count, model.reason) == ("T4", "w1", 5, "on the GPU")


def test_an_output_that_cannot_load_here_stays_on_the_worker_and_says_why() -> None:
    missing = b"\x80\x04cno_such_module_here\nThing\n."  # a pickle of a class only the worker has
    update = plan(result_of({"ok": 1}, raw={"thing": missing}))
    assert update.assigned == ["ok"] and update.refs == ["thing"]
    (note,) = update.kept_remote
    assert "'thing' (Thing) stays on the worker as a RemoteRef" in note and "no_such_module_here" in note
    assert isinstance(update.binds["thing"], RemoteRef)


def test_a_name_that_comes_back_as_a_value_is_no_longer_a_ref_and_a_deleted_ref_is_forgotten() -> None:
    old = RemoteRef("x", "Net", 10, "T4", "w0")
    other = RemoteRef("z", "Net", 10, "T4", "w0")
    ns: dict[str, Any] = {"x": old, "z": other}
    refs = {"x": old, "z": other}
    apply_update(plan(result_of({"x": 1}, deleted=["z"])), ns, refs)
    assert ns == {"x": 1} and refs == {}


def test_nothing_is_applied_until_the_plan_is_complete() -> None:
    result = result_of({"a": 1, "b": 2})
    parts = inline_parts(result)
    del parts[result.outputs[1].hash]   # a value that did not arrive: loading it fails, it stays remote
    update = plan_update(result, parts, hardware="T4", worker_id="w1")
    assert update.assigned == ["a"] and update.refs == ["b"]
    ns: dict[str, Any] = {}
    assert update.binds and not ns   # planning touched nothing


def test_values_too_large_for_the_result_are_fetched_by_hash() -> None:
    result = result_of({"small": 1})
    result.outputs.append(pb.NamedValue(name="big", hash="h-big", type_name="ndarray", size=1 << 30, fetch=True))
    assert to_fetch(result) == ["h-big"]


# ------------------------------------------------------------------ sinks


def test_a_forwarding_sink_passes_output_on_but_not_the_status_line(capsys: pytest.CaptureFixture[str]) -> None:
    class Recording(Sink):
        def __init__(self) -> None:
            self.seen: list[tuple[str, Any]] = []

        def display(self, data: dict[str, Any], metadata: dict[str, Any], execute_result: bool) -> None:
            self.seen.append(("display", data))

        def status(self, text: str, final: bool = False) -> None:
            self.seen.append(("status", text))

    inner = Recording()
    outer = ForwardingSink(inner)
    outer.stream("stdout", "hi\n")
    outer.display({"text/plain": "1"}, {}, True)
    outer.phase("a notice")
    outer.status("running", False)
    outer.begin()
    assert inner.seen == [("display", {"text/plain": "1"})]
    captured = capsys.readouterr()
    assert captured.out == "hi\n" and captured.err == "a notice\n"

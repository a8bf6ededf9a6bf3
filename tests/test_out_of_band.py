"""Large buffers travel out of band: pickling a value copies none of its bytes, rebuilding it copies none
either (numpy arrays, CPU torch tensors and the parameters of torch modules)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell

from conftest import magics_of
from gpucell.namespace import serialize


def _address(buf: Any) -> int:
    return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data)


def test_a_numpy_array_is_pickled_without_a_copy_and_rebuilt_in_place() -> None:
    arr = np.arange(4_000_000, dtype=np.float64)
    packed = serialize.pack("arr", arr)
    assert len(packed.header) < 1000
    assert [_address(b) for b in packed.buffers] == [arr.ctypes.data]  # a view of the array's own memory
    received = [bytearray(b) for b in packed.buffers]  # what a receiver holds: its own buffer (or a mapping)
    back = serialize.unpack(packed.header, received)
    assert back.ctypes.data == _address(received[0]) and np.array_equal(back, arr)


def test_a_cpu_tensor_is_pickled_without_a_copy_and_rebuilt_in_place() -> None:
    torch = pytest.importorskip("torch")
    t = torch.arange(4_000_000, dtype=torch.float32).reshape(2000, 2000)
    packed = serialize.pack("t", t)
    assert len(packed.header) < 1000  # torch's own pickling puts every byte in here, copied several times
    assert [_address(b) for b in packed.buffers] == [t.data_ptr()]
    received = [bytearray(b) for b in packed.buffers]
    back = serialize.unpack(packed.header, received)
    assert type(back) is torch.Tensor and back.data_ptr() == _address(received[0])
    assert back.shape == t.shape and back.dtype == t.dtype and torch.equal(back, t)
    # a module's parameters go the same way
    layer = torch.nn.Linear(1000, 1000)
    packed = serialize.pack("layer", layer)
    assert sorted(b.nbytes for b in packed.buffers) == [4000, 4_000_000] and len(packed.header) < 4000
    back = serialize.unpack(packed.header, [bytearray(b) for b in packed.buffers])
    assert type(back.weight) is torch.nn.Parameter and back.weight.requires_grad
    assert torch.equal(back.weight, layer.weight) and torch.equal(back.bias, layer.bias)


def test_tensors_torch_must_pickle_itself_still_round_trip() -> None:
    torch = pytest.importorskip("torch")
    base = torch.arange(12, dtype=torch.float64)
    cases = {
        "bfloat16": torch.ones(5, dtype=torch.bfloat16),       # numpy has no bfloat16
        "part of a storage": base[2:5],                          # a view: torch's way
        "transposed": base.reshape(3, 4).t(),                    # strides kept
        "requires_grad": torch.ones(3, requires_grad=True),
        "integer": torch.arange(7, dtype=torch.int16),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
    }
    for what, t in cases.items():
        packed = serialize.pack("t", t)
        back = serialize.unpack(packed.header, [bytearray(b) for b in packed.buffers])
        assert type(back) is torch.Tensor, what
        assert back.dtype == t.dtype and back.shape == t.shape and back.stride() == t.stride(), what
        assert torch.equal(back.detach(), t.detach()) and back.requires_grad == t.requires_grad, what


def test_tensors_and_modules_through_the_magics(shell: InteractiveShell) -> None:
    torch = pytest.importorskip("torch")
    t = torch.ones(2_000_000)  # 8 MB: over the data path
    layer = torch.nn.Linear(512, 512)
    shell.run_cell("import torch")
    shell.user_ns.update(t=t, layer=layer)
    shell.run_cell_magic("gpu", "cpu", "total = float(t.sum())\nt.mul_(2)\n"
                                       "out = layer(torch.ones(1, 512)).detach()\n"
                                       "with torch.no_grad():\n    layer.weight.zero_()\n")
    report = magics_of(shell).session.last_report
    assert report.finished.bytes_in >= 8_000_000 + 512 * 512 * 4
    ns = shell.user_ns
    assert ns["total"] == 2_000_000.0
    assert ns["t"] is t and bool((t == 2).all())  # mutated there, written back into this tensor (issue 17)
    assert ns["out"].shape == (1, 512)
    assert ns["layer"] is layer and not bool(layer.weight.any())
    assert type(ns["layer"].weight) is torch.nn.Parameter and ns["layer"].weight.requires_grad

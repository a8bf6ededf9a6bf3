"""Tests for gpucell.hardware: NVML-absent path, name→label table, specs, GPU partitioning."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpucell.hardware import (
    CPU_LABEL,
    KNOWN_LABELS,
    GpuAllocator,
    GpuDevice,
    HardwareSpec,
    cuda_visible_devices,
    device_stats,
    label_for_name,
    local_labels,
    nvml_inventory,
    parse_spec,
    visible_devices,
)


class FixedInventory:
    """A host's GPU list, fixed: the one thing these tests fake (this machine has no GPU)."""

    def __init__(self, devices: list[GpuDevice]) -> None:
        self._devices = devices

    def devices(self) -> list[GpuDevice]:
        return list(self._devices)


def _device(index: int, name: str) -> GpuDevice:
    return GpuDevice(
        index=index,
        name=name,
        label=label_for_name(name),
        uuid=f"GPU-{index:08x}-aaaa-bbbb-cccc-{index:012x}",
        memory_total=80 << 30,
        memory_used=0,
        utilization=0,
    )


@pytest.fixture
def host() -> FixedInventory:
    """A100×4 + T4×2, interleaved so that allocation order is not just list order."""
    names = ["NVIDIA A100-SXM4-80GB", "Tesla T4", "NVIDIA A100-SXM4-80GB",
             "NVIDIA A100-SXM4-80GB", "Tesla T4", "NVIDIA A100-SXM4-80GB"]
    return FixedInventory([_device(i, n) for i, n in enumerate(names)])


# ---------------------------------------------------------------- NVML absent (this machine)

# Probed for real: CI and dev machines have no GPU; bench/gpu_check.sh runs this file on one that has.
HAS_NVML = bool(nvml_inventory().devices())
needs_no_nvml = pytest.mark.skipif(HAS_NVML, reason="this machine has an NVIDIA GPU")
needs_nvml = pytest.mark.skipif(not HAS_NVML, reason="no NVIDIA GPU (NVML) on this machine")


@needs_no_nvml
def test_nvml_absent_gives_no_devices_quietly(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="gpucell")
    inv = nvml_inventory()
    assert inv.devices() == []
    assert local_labels(inv) == {}
    assert device_stats(["GPU-00000000-0000-0000-0000-000000000000"]) == []
    assert visible_devices(inv) == []
    # CPU-only is the normal case, not a problem worth a warning or a traceback.
    assert caplog.records == []
    assert capsys.readouterr() == ("", "")


@needs_no_nvml
def test_nvml_absent_allocator_hands_out_nothing() -> None:
    allocator = GpuAllocator(nvml_inventory())
    assert allocator.allocate("w1", "A100", 1) is None
    assert allocator.allocate("w1", CPU_LABEL, 0) == []


def test_without_nvidia_ml_py_installed() -> None:
    # A real interpreter where `import pynvml` fails: the module must still import and be CPU-only.
    code = (
        "import sys; sys.modules['pynvml'] = None\n"
        "from gpucell import hardware\n"
        "assert hardware.pynvml is None\n"
        "print(hardware.nvml_inventory().devices(), hardware.device_stats(['GPU-1']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] []"
    assert out.stderr == ""


@needs_nvml
def test_nvml_present_reads_real_devices() -> None:
    inv = nvml_inventory()
    devices = inv.devices()
    assert [d.index for d in devices] == list(range(len(devices)))
    for device in devices:
        assert device.name and device.uuid.startswith(("GPU-", "MIG-"))
        assert device.label == label_for_name(device.name)
        assert 0 <= device.memory_used <= device.memory_total
        assert 0 <= device.utilization <= 100
    stats = device_stats([d.uuid for d in devices] + ["GPU-not-a-device"])
    assert [s["uuid"] for s in stats] == [d.uuid for d in devices]
    assert sum(local_labels(inv).values()) == len(devices)
    # The whole host, partitioned one device per worker.
    allocator = GpuAllocator(inv)
    label = devices[0].label
    got = [allocator.allocate(f"w{i}", label, 1) for i in range(local_labels(inv)[label])]
    assert all(g is not None for g in got)
    assert allocator.allocate("one-too-many", label, 1) is None


# ---------------------------------------------------------------- NVML name → label


@pytest.mark.parametrize(
    ("nvml_name", "label"),
    [
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100-SXM4-40GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA A100-PCIE-40GB", "A100"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("NVIDIA H100 NVL", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA H200 NVL", "H200"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA B200", "B200"),
        ("Tesla T4", "T4"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A40", "A40"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("Tesla V100-PCIE-32GB", "V100"),
        ("Tesla P100-PCIE-16GB", "P100"),
        ("Tesla K80", "K80"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("NVIDIA GeForce RTX 3090", "RTX3090"),
        ("NVIDIA RTX A6000", "A6000"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX6000Ada"),
    ],
)
def test_label_for_name(nvml_name: str, label: str) -> None:
    assert label_for_name(nvml_name) == label
    assert label in KNOWN_LABELS


@pytest.mark.parametrize("nvml_name", ["Quadro RTX 8000", "NVIDIA Graphics Device", "Radeon 9000"])
def test_unknown_names_kept_verbatim(nvml_name: str) -> None:
    assert label_for_name(nvml_name) == nvml_name
    assert label_for_name(f"  {nvml_name} ") == nvml_name


def test_known_labels_include_cpu_and_are_unique() -> None:
    assert CPU_LABEL in KNOWN_LABELS
    assert len({label.casefold() for label in KNOWN_LABELS}) == len(KNOWN_LABELS)


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "label", "count", "text"),
    [
        ("A100", "A100", 1, "A100"),
        ("A100:2", "A100", 2, "A100:2"),
        ("a100:2", "A100", 2, "A100:2"),
        ("h100", "H100", 1, "H100"),
        (" T4:1 ", "T4", 1, "T4"),
        ("l40s:8", "L40S", 8, "L40S:8"),
        ("cpu", "cpu", 0, "cpu"),
        ("CPU", "cpu", 0, "cpu"),
    ],
)
def test_parse_spec_good(spec: str, label: str, count: int, text: str) -> None:
    parsed = parse_spec(spec)
    assert parsed == HardwareSpec(label, count)
    assert str(parsed) == text
    assert parse_spec(str(parsed)) == parsed


@pytest.mark.parametrize("spec", ["A100:x", "A100:0", "A100:-1", "A100:", "", "   ", ":2", "A100:2:3", "A 100", "cpu:2"])
def test_parse_spec_malformed(spec: str) -> None:
    with pytest.raises(ValueError, match="malformed hardware spec") as info:
        parse_spec(spec)
    assert "\n" not in str(info.value)


def test_parse_spec_unknown_label_names_it_and_the_known_ones() -> None:
    with pytest.raises(ValueError) as info:
        parse_spec("A10O")
    message = str(info.value)
    assert "'A10O'" in message and "A100" in message and "cpu" in message
    assert "\n" not in message


def test_parse_spec_extra_labels() -> None:
    with pytest.raises(ValueError):
        parse_spec("TPUv5")
    assert parse_spec("tpuv5:4", extra_labels=["TPUv5"]) == HardwareSpec("TPUv5", 4)
    # A raw NVML name kept verbatim is a label too, once a pool serves it.
    assert parse_spec("Quadro", extra_labels=["Quadro"]) == HardwareSpec("Quadro", 1)


# ---------------------------------------------------------------- partitioning


def test_local_labels(host: FixedInventory) -> None:
    assert local_labels(host) == {"A100": 4, "T4": 2}


def test_allocator_partitions_a100s(host: FixedInventory) -> None:
    allocator = GpuAllocator(host)
    first = allocator.allocate("w1", "A100", 2)
    second = allocator.allocate("w2", "A100", 2)
    assert first is not None and second is not None
    assert len(first) == 2 and len(second) == 2
    assert {d.uuid for d in first}.isdisjoint({d.uuid for d in second})
    assert all(d.label == "A100" for d in first + second)
    assert allocator.allocate("w3", "A100", 2) is None
    assert allocator.allocate("w3", "A100", 1) is None
    # T4s are a separate partition and still free.
    t4 = allocator.allocate("w3", "T4", 2)
    assert t4 is not None and {d.label for d in t4} == {"T4"}
    assert allocator.allocate("w4", "T4", 1) is None

    freed = allocator.free("w1")
    assert [d.uuid for d in freed] == [d.uuid for d in first]
    again = allocator.allocate("w4", "A100", 2)
    assert again is not None
    assert {d.uuid for d in again} == {d.uuid for d in first}
    assert {d.uuid for d in again}.isdisjoint({d.uuid for d in second})


def test_allocator_cpu_and_edge_cases(host: FixedInventory) -> None:
    allocator = GpuAllocator(host)
    assert allocator.allocate("cpu-worker", "cpu", 0) == []
    assert allocator.allocate("cpu-worker", "cpu", 1) == []
    assert allocator.allocate("w1", "H100", 1) is None  # a label this host lacks
    assert allocator.allocate("w1", "A100", 5) is None  # more than the host has
    assert allocator.free("never-allocated") == []
    got = allocator.allocate("w1", "a100", 1)  # labels match case-insensitively
    assert got is not None and got[0].label == "A100"
    with pytest.raises(ValueError, match="already holds"):
        allocator.allocate("w1", "A100", 1)
    assert allocator.free_count("A100") == 3
    assert allocator.held("w1") == got


def test_cuda_visible_devices_by_uuid(host: FixedInventory) -> None:
    allocator = GpuAllocator(host)
    devices = allocator.allocate("w1", "A100", 2)
    assert devices is not None
    value = GpuAllocator.cuda_visible_devices(devices)
    assert value == ",".join(d.uuid for d in devices)
    assert cuda_visible_devices([]) == ""
    # What a worker started with that value sees of the host.
    seen = visible_devices(host, env={"CUDA_VISIBLE_DEVICES": value})
    assert [d.uuid for d in seen] == [d.uuid for d in devices]


def test_visible_devices_forms(host: FixedInventory) -> None:
    all_devices = host.devices()
    assert visible_devices(host, env={}) == all_devices
    assert visible_devices(host, env={"CUDA_VISIBLE_DEVICES": ""}) == []
    assert [d.index for d in visible_devices(host, env={"CUDA_VISIBLE_DEVICES": "3,1"})] == [3, 1]
    # CUDA stops at the first entry it cannot resolve.
    assert [d.index for d in visible_devices(host, env={"CUDA_VISIBLE_DEVICES": "2,9,0"})] == [2]
    short = all_devices[4].uuid[:12]
    assert visible_devices(host, env={"CUDA_VISIBLE_DEVICES": short}) == [all_devices[4]]


def test_cuda_visible_devices_without_uuids_uses_indices() -> None:
    devices = [_device(i, "Tesla T4") for i in (0, 3)]
    devices[1].uuid = ""
    assert cuda_visible_devices(devices) == "0,3"


_workers = st.sampled_from([f"w{i}" for i in range(6)])
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("allocate"), _workers, st.sampled_from(["A100", "T4", "H100", "cpu"]),
                  st.integers(min_value=0, max_value=5)),
        st.tuples(st.just("free"), _workers, st.just(""), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=_ops)
def test_allocator_never_shares_a_device(ops: list[tuple[str, str, str, int]]) -> None:
    devices = FixedInventory(
        [_device(i, "NVIDIA A100-SXM4-80GB") for i in range(4)]
        + [_device(i, "Tesla T4") for i in range(4, 6)]
    )
    totals = local_labels(devices)
    allocator = GpuAllocator(devices)
    model: dict[str, list[str]] = {}  # worker → uuids it holds, per the allocator's answers
    for op, worker, label, count in ops:
        if op == "free":
            freed = allocator.free(worker)
            assert sorted(d.uuid for d in freed) == sorted(model.pop(worker, []))
            continue
        if worker in model and label != "cpu" and count > 0:
            with pytest.raises(ValueError):
                allocator.allocate(worker, label, count)
            continue
        held_of_label = sum(
            1 for uuids in model.values() for d in devices.devices() if d.uuid in uuids and d.label == label
        )
        free_before = totals.get(label, 0) - held_of_label
        got = allocator.allocate(worker, label, count)
        if label == "cpu" or count == 0:
            assert got == []
        elif count > free_before:
            assert got is None  # refused only when there really are too few free
        else:
            assert got is not None and len(got) == count
            assert all(d.label == label for d in got)
            model[worker] = [d.uuid for d in got]
        held = [u for uuids in model.values() for u in uuids]
        assert len(held) == len(set(held)), "a device was given to two workers"
        assert allocator.owners() == {u: w for w, uuids in model.items() for u in uuids}

"""GPU hardware: NVML inventory, NVML name → label table, hardware specs, and GPU partitioning."""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol

try:
    import pynvml
except ImportError:  # nvidia-ml-py is a dependency, but a trimmed install must still run on CPU
    pynvml = None

__all__ = [
    "KNOWN_LABELS",
    "CPU_LABEL",
    "HardwareSpec",
    "GpuDevice",
    "Inventory",
    "GpuAllocator",
    "label_for_name",
    "parse_spec",
    "split_spec",
    "nvml_inventory",
    "local_labels",
    "cuda_visible_devices",
    "visible_devices",
    "device_stats",
]

log = logging.getLogger(__name__)

CPU_LABEL = "cpu"

# Data-centre parts first, then workstation/consumer cards; "cpu" last. These are the labels a
# user may write after %%gpu without configuring anything; pools may add more (extra_labels).
KNOWN_LABELS: tuple[str, ...] = (
    "GB200", "B200", "B100", "GH200", "H200", "H100", "H800", "A100", "A800",
    "L40S", "L40", "L4", "A40", "A30", "A10G", "A10", "A16", "A2",
    "V100", "T4", "P100", "P40", "P4", "K80",
    "RTX6000Ada", "A6000", "RTX5090", "RTX4090", "RTX4080", "RTX3090", "RTX3080",
    CPU_LABEL,
)

# The one table from NVML device names to labels. NVML spells the same part many ways
# ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe", "A100-PCIE-40GB"), so each row is a regex
# matched against the name with the vendor/brand words removed. Order matters only where one
# model's name is a prefix of another's; the trailing (?![0-9A-Z]) keeps "A10" off "A100".
_END = r"(?![0-9A-Z])"
_NAME_TABLE: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), label)
    for pattern, label in (
        (r"^GB200" + _END, "GB200"),
        (r"^B200" + _END, "B200"),
        (r"^B100" + _END, "B100"),
        (r"^GH200" + _END, "GH200"),
        (r"^H200" + _END, "H200"),
        (r"^H100" + _END, "H100"),
        (r"^H800" + _END, "H800"),
        (r"^A100" + _END, "A100"),
        (r"^A800" + _END, "A800"),
        (r"^L40S" + _END, "L40S"),
        (r"^L40" + _END, "L40"),
        (r"^L4" + _END, "L4"),
        (r"^A40" + _END, "A40"),
        (r"^A30" + _END, "A30"),
        (r"^A10G" + _END, "A10G"),
        (r"^A10" + _END, "A10"),
        (r"^A16" + _END, "A16"),
        (r"^A2" + _END, "A2"),
        (r"^V100" + _END, "V100"),
        (r"^T4" + _END, "T4"),
        (r"^P100" + _END, "P100"),
        (r"^P40" + _END, "P40"),
        (r"^P4" + _END, "P4"),
        (r"^K80" + _END, "K80"),
        (r"^RTX 6000 ADA" + _END, "RTX6000Ada"),
        (r"^RTX A6000" + _END, "A6000"),
        (r"^RTX 5090" + _END, "RTX5090"),
        (r"^RTX 4090" + _END, "RTX4090"),
        (r"^RTX 4080" + _END, "RTX4080"),
        (r"^RTX 3090" + _END, "RTX3090"),
        (r"^RTX 3080" + _END, "RTX3080"),
    )
)
# Brand words NVML puts in front of the model ("NVIDIA GeForce RTX 4090", "Tesla T4").
_BRAND_PREFIX = re.compile(r"^(?:NVIDIA\s+)?(?:Tesla\s+|GeForce\s+|Quadro\s+)?", re.IGNORECASE)
_SPEC = re.compile(r"^([^:\s]+)(?::(\S*))?$")


def label_for_name(nvml_name: str) -> str:
    """The gpucell label for an NVML device name; an unknown name is kept verbatim (stripped)."""
    name = " ".join(nvml_name.split())
    model = _BRAND_PREFIX.sub("", name)
    for pattern, label in _NAME_TABLE:
        if pattern.match(model):
            return label
    return name


@dataclass(frozen=True)
class HardwareSpec:
    """What a cell asks for: a label and how many GPU devices of it.

    `count` is the number of GPU devices a worker gets, so `cpu` has count 0: a CPU worker
    holds no device, and the allocator hands it an empty list without touching the GPUs.
    """

    label: str
    count: int

    @property
    def is_cpu(self) -> bool:
        return self.label == CPU_LABEL

    def __str__(self) -> str:
        return self.label if self.count <= 1 else f"{self.label}:{self.count}"


def split_spec(spec: str) -> tuple[str, int | None]:
    """The syntax of a hardware spec, shared by client, broker and provisioners: "A100:2" -> ("A100", 2),
    "T4" -> ("T4", None). Raises ValueError naming what is malformed; which labels exist is the caller's."""
    text = spec.strip()
    match = _SPEC.match(text)
    if not text or match is None:
        raise ValueError("expected LABEL or LABEL:COUNT, e.g. A100:2")
    raw_label, raw_count = match.group(1), match.group(2)
    if raw_count is None:
        return raw_label, None
    if not raw_count.isdigit() or int(raw_count) < 1:
        raise ValueError("the count after ':' must be a whole number ≥ 1")
    return raw_label, int(raw_count)


def parse_spec(spec: str, extra_labels: Iterable[str] = ()) -> HardwareSpec:
    """Parse "A100", "a100:2" or "cpu" into a HardwareSpec with the label's canonical spelling.

    Labels match case-insensitively against KNOWN_LABELS and `extra_labels` (pool labels from
    the broker's config). Raises ValueError with a one-line message for anything else.
    """
    try:
        raw_label, count = split_spec(spec)
    except ValueError as exc:
        raise ValueError(f"malformed hardware spec {spec!r}: {exc}") from None
    known = {label.casefold(): label for label in (*KNOWN_LABELS, *extra_labels)}
    label = known.get(raw_label.casefold())
    if label is None:
        names = ", ".join(sorted(set(known.values()), key=str.casefold))
        raise ValueError(f"unknown hardware label {raw_label!r} (known: {names})")
    if label == CPU_LABEL:
        if count is not None:
            raise ValueError(f"malformed hardware spec {spec!r}: 'cpu' takes no device count")
        return HardwareSpec(CPU_LABEL, 0)
    return HardwareSpec(label, count or 1)


@dataclass
class GpuDevice:
    """One GPU as NVML reports it. Memory in bytes; utilization in percent (0 when NVML cannot say)."""

    index: int
    name: str
    label: str
    uuid: str
    memory_total: int
    memory_used: int
    utilization: int

    def as_dict(self) -> dict[str, Any]:
        """The GpuInfo fields of gpucell.proto plus the index: for status JSON and the sidebar."""
        return {
            "index": self.index,
            "name": self.name,
            "label": self.label,
            "uuid": self.uuid,
            "memory_total": self.memory_total,
            "memory_used": self.memory_used,
            "utilization": self.utilization,
        }


class DeviceSource(Protocol):
    """Anything that lists the host's GPUs: the NVML Inventory, or a fixed list in tests."""

    def devices(self) -> list[GpuDevice]: ...


_nvml_lock = threading.Lock()
# None: not tried yet; then whether nvmlInit succeeded. Not retried: a host does not gain a driver
# while a broker or worker runs, and retrying would cost a failed dlopen on every status poll.
_nvml_state: bool | None = None
_query_failure_logged = False


def _nvml_ready() -> bool:
    """Initialise NVML once per process; False (quietly) where there is no NVML."""
    global _nvml_state
    with _nvml_lock:
        if _nvml_state is None:
            if pynvml is None:
                _nvml_state = False
            else:
                try:
                    pynvml.nvmlInit()
                    _nvml_state = True
                except pynvml.NVMLError as exc:
                    # The normal case on a CPU machine: one debug line, no traceback.
                    log.debug("NVML unavailable, CPU only: %s", exc)
                    _nvml_state = False
        return _nvml_state


def _text(value: str | bytes) -> str:
    # nvidia-ml-py before 11.5 returned bytes; later versions return str.
    return value.decode() if isinstance(value, bytes) else value


def _read_device(index: int, handle: Any) -> GpuDevice:
    assert pynvml is not None
    name = _text(pynvml.nvmlDeviceGetName(handle))
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        utilization = int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except pynvml.NVMLError:  # not supported on some parts (MIG, vGPU)
        utilization = 0
    return GpuDevice(
        index=index,
        name=name,
        label=label_for_name(name),
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
        memory_total=int(memory.total),
        memory_used=int(memory.used),
        utilization=utilization,
    )


class Inventory:
    """The host's GPUs, read live from NVML on each call (memory and utilisation change)."""

    def __init__(self, nvml: bool) -> None:
        self.nvml = nvml

    def devices(self) -> list[GpuDevice]:
        if not self.nvml or pynvml is None:
            return []
        try:
            count = pynvml.nvmlDeviceGetCount()
            return [_read_device(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        except pynvml.NVMLError as exc:
            # A driver that goes away under us (GPU fell off the bus) reads as no GPUs, not a crash;
            # said once, since status polls this every second.
            global _query_failure_logged
            if not _query_failure_logged:
                _query_failure_logged = True
                log.warning("NVML query failed, reporting no GPUs: %s", exc)
            return []

    def __repr__(self) -> str:
        return f"Inventory(nvml={self.nvml})"


def nvml_inventory() -> Inventory:
    """The NVML-backed inventory; with no NVML (no driver, no library) it simply has no devices."""
    return Inventory(nvml=_nvml_ready())


def local_labels(inv: DeviceSource) -> dict[str, int]:
    """Label → number of devices of that label on this host ({} on a CPU-only host)."""
    counts: dict[str, int] = {}
    for device in inv.devices():
        counts[device.label] = counts.get(device.label, 0) + 1
    return counts


def cuda_visible_devices(devices: Iterable[GpuDevice]) -> str:
    """The CUDA_VISIBLE_DEVICES value that exposes exactly `devices` to a worker.

    UUIDs, not indices: NVML numbers devices in PCI bus order while CUDA's default order is
    "fastest first", so an NVML index can name a different GPU inside CUDA; a UUID names the
    same physical device everywhere. Indices only if some device has no UUID.
    """
    chosen = list(devices)
    if chosen and all(d.uuid for d in chosen):
        return ",".join(d.uuid for d in chosen)
    return ",".join(str(d.index) for d in chosen)


def visible_devices(inv: DeviceSource, env: Mapping[str, str] | None = None) -> list[GpuDevice]:
    """The devices a process may use: NVML sees every GPU, so filter by CUDA_VISIBLE_DEVICES.

    A worker reports these (not the whole host) in its registration and heartbeats.
    """
    environ = os.environ if env is None else env
    devices = inv.devices()
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return devices
    chosen: list[GpuDevice] = []
    for token in (t.strip() for t in visible.split(",")):
        if not token:
            continue
        if token.isdigit():
            match = [d for d in devices if d.index == int(token)]
        else:  # a UUID, with or without the "GPU-" prefix, possibly abbreviated as CUDA allows
            key = token.removeprefix("GPU-").lower()
            match = [d for d in devices if key and d.uuid.removeprefix("GPU-").lower().startswith(key)]
        if len(match) != 1:
            break  # CUDA stops at the first entry it cannot resolve
        if match[0] not in chosen:
            chosen.append(match[0])
    return chosen


def device_stats(uuids: Iterable[str]) -> list[dict[str, Any]]:
    """Utilisation and memory of the given devices, as GpuDevice.as_dict(); [] without NVML."""
    wanted = list(uuids)
    if not wanted or not _nvml_ready():
        return []
    by_uuid = {d.uuid: d for d in nvml_inventory().devices()}
    return [by_uuid[u].as_dict() for u in wanted if u in by_uuid]


def _device_key(device: GpuDevice) -> str:
    return device.uuid or f"index:{device.index}"


class GpuAllocator:
    """Partitions the host's GPUs among workers: each device belongs to at most one worker.

    Thread-safe, because the broker's gRPC threads and its autoscaler allocate concurrently.
    Reads the inventory on every allocation, so a device that disappears is never handed out.
    """

    # Here too, so that code holding an allocator needs nothing else to launch a worker.
    cuda_visible_devices = staticmethod(cuda_visible_devices)

    def __init__(self, inventory: DeviceSource) -> None:
        self._inventory = inventory
        self._lock = threading.Lock()
        self._owner: dict[str, str] = {}  # device key → worker id
        self._held: dict[str, list[GpuDevice]] = {}  # worker id → its devices, in order

    def allocate(self, worker_id: str, label: str, count: int = 1) -> list[GpuDevice] | None:
        """Reserve `count` free devices of `label` for `worker_id`; None when too few are free.

        A CPU request (label "cpu" or count 0) gets [] and reserves nothing. A worker holds one
        allocation at a time: allocating again for the same id without free() is a bug upstream.
        """
        if label.casefold() == CPU_LABEL or count <= 0:
            return []
        with self._lock:
            if worker_id in self._held:
                raise ValueError(f"worker {worker_id!r} already holds GPUs; free() it first")
            wanted = label.casefold()
            free = [
                d
                for d in sorted(self._inventory.devices(), key=lambda d: d.index)
                if d.label.casefold() == wanted and _device_key(d) not in self._owner
            ]
            if len(free) < count:
                return None
            chosen = free[:count]
            for device in chosen:
                self._owner[_device_key(device)] = worker_id
            self._held[worker_id] = chosen
            return list(chosen)

    def free(self, worker_id: str) -> list[GpuDevice]:
        """Give back the worker's devices (none if it held none); returns what was freed."""
        with self._lock:
            devices = self._held.pop(worker_id, [])
            for device in devices:
                self._owner.pop(_device_key(device), None)
            return devices

    def held(self, worker_id: str) -> list[GpuDevice]:
        with self._lock:
            return list(self._held.get(worker_id, []))

    def free_count(self, label: str) -> int:
        """How many devices of `label` are unallocated right now (what the scheduler may promise)."""
        wanted = label.casefold()
        with self._lock:
            return sum(
                1
                for d in self._inventory.devices()
                if d.label.casefold() == wanted and _device_key(d) not in self._owner
            )

    def owners(self) -> dict[str, str]:
        """Device key (UUID) → worker id, for status."""
        with self._lock:
            return dict(self._owner)

"""Task bodies run on peer workers; importable there because the agent puts bench/ on PYTHONPATH."""
from __future__ import annotations

import time

import numpy as np

STAMP = "@@t="


def noop() -> None:
    return None


def identity(x: int) -> int:
    return x


def sleep_item(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


def nbytes(arr: np.ndarray) -> int:
    return int(arr.nbytes)


def make_array(n: int) -> np.ndarray:
    # np.ones writes every page, as a real result would
    return np.ones(n, dtype=np.uint8)


def stamp_print() -> None:
    print(f"{STAMP}{time.time()!r}@@", flush=True)


def stamp_print_dask() -> None:
    from distributed import print as dask_print  # noqa: PLC0415 - dask forwards this print to the client
    dask_print(f"{STAMP}{time.time()!r}@@")

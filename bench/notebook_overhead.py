"""Per-cell overhead of `%%gpu` on real tutorial notebooks: the same cells plain and with `%%gpu cpu`.

    python bench/notebook_overhead.py [--rounds 3] [--json]

Runs each notebook of tests/conformance/corpus/ through nbclient on a real ipykernel, plain and with
`%%gpu cpu` on every code cell (the embedded broker, as a new user gets it), and times each cell from
nbclient's own timing (execute_input to execute_reply). A cell's overhead is its median %%gpu time minus
its median plain time over the rounds; the first %%gpu cell of each notebook (the cold start) is left
out and reported apart. Prints the median and p90 over all cells, in bench/run.py's JSON line format.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "conformance" / "corpus"


def cell_seconds(cell: Any) -> float:
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not start or not end:
        return float("nan")
    return (datetime.fromisoformat(end.replace("Z", "+00:00"))
            - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()


def run(path: Path, gpu: bool, cwd: str) -> list[float]:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.source = f"%%gpu cpu\n{cell.source}" if gpu else cell.source
    nb.cells.insert(0, nbformat.v4.new_code_cell("%load_ext gpucell"))
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True, record_timing=True,
                   resources={"metadata": {"path": cwd}}).execute()
    return [cell_seconds(c) for c in nb.cells[1:]]


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for name in ("GPUCELL_BROKER", "GPUCELL_TOKEN", "GPUCELL_CONFIG"):
        os.environ.pop(name, None)
    overheads: list[float] = []
    colds: list[float] = []
    with tempfile.TemporaryDirectory() as cwd:
        for path in sorted(CORPUS.glob("*.ipynb")):
            plain = [run(path, False, cwd) for _ in range(args.rounds)]
            remote = [run(path, True, cwd) for _ in range(args.rounds)]
            per_cell_plain = [statistics.median(t) for t in zip(*plain)]
            per_cell_remote = [statistics.median(t) for t in zip(*remote)]
            colds.append((per_cell_remote[0] - per_cell_plain[0]) * 1000)
            overheads += [(r - p) * 1000 for p, r in zip(per_cell_plain[1:], per_cell_remote[1:])]
            print(f"[bench] {path.stem}: {len(per_cell_plain)} cells", file=sys.stderr)
    lines = [
        {"system": "gpucell", "metric": "notebook_cell_overhead_ms", "value": round(statistics.median(overheads), 2),
         "unit": "ms", "n": len(overheads), "p90": round(nearest_rank(overheads, 0.9), 2),
         "note": f"warm %%gpu cell minus the same cell plain, {len(list(CORPUS.glob('*.ipynb')))} tutorial "
                 f"notebooks (tests/conformance/corpus), median of {args.rounds} rounds per cell"},
        {"system": "gpucell", "metric": "notebook_cell_overhead_ms", "variant": "first_cell",
         "value": round(statistics.median(colds), 1), "unit": "ms", "n": len(colds),
         "note": "the first %%gpu cell of each notebook (a cold worker) minus the same cell plain"},
    ]
    for line in lines:
        print(json.dumps(line) if args.json else f"{line['metric']} {line.get('variant', '')}: "
              f"median {line['value']} ms" + (f", p90 {line['p90']} ms" if "p90" in line else "") + f" (n={line['n']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

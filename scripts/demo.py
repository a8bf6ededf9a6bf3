"""`make demo`: run notebooks/quickstart.ipynb on the embedded broker and print what each cell printed."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    path = ROOT / "notebooks" / "quickstart.ipynb"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    failed = False
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        print(f"\n--- In [{index}] ---\n{cell.source}")
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                print(out.text, end="")
            elif out.output_type in ("display_data", "execute_result"):
                data = out.get("data", {})
                print("[image/png]" if "image/png" in data else data.get("text/plain", ""))
            elif out.output_type == "error":
                failed = True
                print(f"{out.ename}: {out.evalue}")
    print("\nquickstart ran on the embedded broker" + (" with errors" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

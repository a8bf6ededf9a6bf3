"""Regenerate gpucell/protocol/*_pb2*.py from gpucell.proto; `--check` fails if the checked-in code is stale."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("gpucell/protocol/gpucell.proto")
GENERATED = ("gpucell_pb2.py", "gpucell_pb2.pyi", "gpucell_pb2_grpc.py")


def generate(into: Path) -> None:
    # Compiled from the repo root so the generated import reads `from gpucell.protocol import ...`.
    (into / PROTO.parent).mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / PROTO, into / PROTO)
    args = ["protoc", f"-I{into}", f"--python_out={into}", f"--pyi_out={into}", f"--grpc_python_out={into}", str(into / PROTO)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for name in GENERATED:
            fresh = (Path(tmp) / PROTO.parent / name).read_text()
            target = ROOT / PROTO.parent / name
            if args.check:
                if not target.exists() or target.read_text() != fresh:
                    stale.append(str(target.relative_to(ROOT)))
            else:
                target.write_text(fresh)
    if stale:
        print(f"generated code is stale: {', '.join(stale)}; run python scripts/gen_protocol.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

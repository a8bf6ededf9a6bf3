"""Write docs/settings.md from the settings table (gpucell/settings.py); `--check` fails if the checked-in page is stale."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpucell import settings  # noqa: E402 - after the path, so a checkout works without an install

DOC = Path("docs/settings.md")

INTRO = """\
# Settings

<!-- Generated from gpucell/settings.py by scripts/gen_settings_doc.py: edit the table there, then run the script. -->

Every gpucell setting is in one table, `gpucell/settings.py`; this page is made from it. Where a value
comes from, first found wins:

* **`[broker]` settings**: the `GPUCELL_<NAME>` variable in the broker's environment; then the key in the
  `[broker]` table of the TOML file named by `GPUCELL_CONFIG` (or `gpucell broker --config`); then the
  default. The `gpucell broker` flags (`--host`, `--port`, `--state-dir`, ...) override all three.
* **`[pools.LABEL]` settings**: the key in that pool's table of the TOML file; then the default. A `cpu`
  pool is added when the file has none (`max_workers`: this machine's CPU count, at least 2); with no file
  at all, also one pool per local GPU label (and `LABEL:2`, `:4`, `:8` pools where the devices allow).
* **Environment settings**: the variable; then the default.

A flag takes `1`, `true`, `yes`, `on` or `0`, `false`, `no`, `off`; an empty variable counts as unset for a
number or a flag. A value that does not parse is an error that names the variable.
"""


def _value(value: Any) -> str:
    """A default as it is written in the TOML file."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, (list, dict)):
        return "`[]`" if isinstance(value, list) else "`{}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    out = [INTRO]
    out += ["## `[broker]`", "",
            "| Key | Variable | Type | Default | Read by | Meaning |",
            "|---|---|---|---|---|---|"]
    for s in settings.section(settings.BROKER):
        out.append(f"| `{s.name}` | `{s.env_var}` | {s.type.__name__} | {_value(s.default)} | {s.scope} "
                   f"| {_cell(s.meaning)} |")
    out += ["", "## `[pools.LABEL]`", "", "One table per hardware label (`[pools.A100]`, `[pools.cpu]`, ...).", "",
            "| Key | Type | Default | Meaning |",
            "|---|---|---|---|"]
    for s in settings.section(settings.POOLS):
        out.append(f"| `{s.name}` | {s.type.__name__} | {_value(s.default)} | {_cell(s.meaning)} |")
    out += ["", "## Environment", "",
            "| Variable | Type | Default | Read by | Meaning |",
            "|---|---|---|---|---|"]
    for s in settings.section(settings.ENV):
        out.append(f"| `{s.env_var}` | {s.type.__name__} | {_value(s.default)} | {s.scope} | {_cell(s.meaning)} |")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    target = ROOT / DOC
    fresh = render()
    if args.check:
        if not target.exists() or target.read_text() != fresh:
            print(f"{DOC} is stale; run python scripts/gen_settings_doc.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Renders benchmark results: a plain table for the terminal and the results section of bench/README.md."""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import TextIO

from harness import GB, HIGHER_IS_BETTER, LATENCY_METRICS, MAIN_METRICS, Profile, Result

PEERS = ["dask", "ray", "ipyparallel"]
BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"


def fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.01:
        return f"{v:.3g}"
    return f"{v:.2g}"


def label(metric: str, variant: str) -> str:
    return f"{metric} [{variant}]" if variant else metric


def print_table(results: list[Result], out: TextIO) -> None:
    """One line per figure, readable in a terminal."""
    rows = [("system", "metric", "value", "unit", "p99", "min–max", "n", "note")]
    for r in results:
        spread = f"{fmt(r.min)}–{fmt(r.max)}" if r.value is not None else ""
        rows.append((r.system, label(r.metric, r.variant), fmt(r.value), r.unit,
                     fmt(r.p99) if r.p99 is not None else "", spread, str(r.n), r.note))
    widths = [max(len(row[i]) for row in rows) for i in range(7)]
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row[:7], widths)) + "  " + row[7] + "\n")


def _cell(r: Result | None) -> str:
    if r is None:
        return ""
    if r.value is None:
        return "n/a"
    if r.metric in LATENCY_METRICS and r.p99 is not None:
        return f"{fmt(r.value)} (p99 {fmt(r.p99)})"
    if r.n > 1:
        return f"{fmt(r.value)} ({fmt(r.min)}–{fmt(r.max)})"
    return fmt(r.value)


def floors(results: list[Result], profile: Profile) -> dict[tuple[str, str], str]:
    """What the machine itself allows for each row, from the baselines of the same run."""
    base = {(r.metric, r.variant): r.value for r in results if r.system == "baseline" and r.value is not None}
    out: dict[tuple[str, str], str] = {}
    if ("fork_ready_ms", "") in base:
        out[("cold_start_ms", "")] = f"{fmt(base[('fork_ready_ms', '')])} (fork)"
    if ("python_start_ms", "worker_imports") in base:
        out[("cold_start_ms", "incl_broker")] = f"{fmt(base[('python_start_ms', 'worker_imports')])} (start+imports)"
    if ("grpc_unary_rtt_ms", "") in base:
        rtt = base[("grpc_unary_rtt_ms", "")]
        out[("warm_rtt_ms", "")] = f"{fmt(rtt)} (gRPC rtt)"
        out[("stream_latency_ms", "")] = f"{fmt(rtt / 2)} (½ gRPC rtt)"
    out[("map_tasks_per_s", "10ms")] = f"{fmt(2 / profile.map_slow_s)} (2 workers)"
    if ("tcp_loopback_gb_per_s", "") in base:
        tcp = base[("tcp_loopback_gb_per_s", "")]
        for metric, size in (("send_100mb_s", profile.send_small), ("send_1gb_s", profile.send_big),
                             ("return_100mb_s", profile.return_bytes)):
            out[(metric, "")] = f"{fmt(size / GB / tcp)} (TCP)"
    return out


def machine() -> str:
    model = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
        model = m.group(1).strip() if m else ""
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))  # type: ignore[union-attr]
        mem = f"{kb / 1024 / 1024:.1f} GiB memory"
    except (OSError, AttributeError):
        pass
    parts = [model or platform.processor() or platform.machine(), f"{os.cpu_count()} cores", mem,
             f"{platform.system()} {platform.release()}", f"Python {platform.python_version()}"]
    return ", ".join(p for p in parts if p)


def markdown(results: list[Result], command: str, profile: Profile, elapsed_s: float) -> str:
    by_key = {(r.system, r.metric, r.variant): r for r in results}
    systems = ["gpucell"] + [p for p in PEERS if any(r.system == p for r in results)]
    peers = systems[1:]
    floor = floors(results, profile)
    head = ["metric", "unit", *systems, *[f"gpucell/{p}" for p in peers], "floor"]
    lines = [
        f"Measured {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {machine()}.",
        "",
        f"Command: `{command}` (profile `{profile.name}`: {profile.rounds} round(s), systems interleaved; "
        f"took {elapsed_s:.0f} s).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    notes: list[str] = []
    present = {(r.metric, r.variant) for r in results if r.system != "baseline"}
    for metric, variant in [k for k in MAIN_METRICS if k in present]:
        cells = [label(metric, variant), next((r.unit for r in results if r.metric == metric), "")]
        for s in systems:
            r = by_key.get((s, metric, variant))
            cell = _cell(r)
            if r is not None and r.note:
                notes.append(f"{s} {label(metric, variant)}: {r.note}")
                cell += f" [{len(notes)}]"
            cells.append(cell)
        g = by_key.get(("gpucell", metric, variant))
        for p in peers:
            r = by_key.get((p, metric, variant))
            ok = g is not None and r is not None and g.value is not None and r.value
            cells.append(f"{g.value / r.value:.2f}×" if ok else "")  # type: ignore[union-attr,operator]
        cells.append(floor.get((metric, variant), ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Latencies show the median and (p99); other figures the median and (min–max) over rounds. "
              "Ratios are gpucell's median over the peer's: below 1 is better for times and memory, above 1 "
              f"for {', '.join(sorted(HIGHER_IS_BETTER & {m for m, _ in MAIN_METRICS}))}.", ""]
    base = [r for r in results if r.system == "baseline"]
    if base:
        lines += ["Baselines (same run):", "", "| baseline | value | unit | p99 | min–max | n | note |",
                  "|---|---|---|---|---|---|---|"]
        for r in base:
            spread = f"{fmt(r.min)}–{fmt(r.max)}" if r.value is not None else ""
            lines.append(f"| {label(r.metric, r.variant)} | {fmt(r.value)} | {r.unit} | "
                         f"{fmt(r.p99) if r.p99 is not None else ''} | {spread} | {r.n} | {r.note} |")
        lines.append("")
    if notes:
        lines += ["Notes:", ""] + [f"{i}. {n}" for i, n in enumerate(notes, 1)] + [""]
    return "\n".join(lines)


def write_markdown(results: list[Result], path: str, command: str, profile: Profile, elapsed_s: float) -> None:
    """Replaces the results section of the README (between the markers), keeping the rest."""
    section = f"{BEGIN}\n{markdown(results, command, profile, elapsed_s)}\n{END}"
    text = Path(path).read_text() if os.path.exists(path) else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Latest results\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)

"""%gpu_status rendering: an HTML table in a notebook, plain text in a terminal."""

from __future__ import annotations

import html
from typing import Any


def _rows(status: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for label, pool in status["pools"].items():
        for w in pool["workers"]:
            idle = f"{w['idle_s']:.0f}s" if w["state"] == "idle" else ""
            release = f"{w['release_in_s']:.0f}s" if w["release_in_s"] >= 0 else ""
            gpus = "".join(f" [{g['name']}: {g['utilization']}%, {g['memory_used'] / 2**30:.1f}/"
                           f"{g['memory_total'] / 2**30:.0f} GiB]" for g in w.get("gpus", []))
            rows.append((label, (w["id"] or "(another session)") + gpus, w["state"], idle, release))
    return rows


def _usage(status: dict[str, Any], session: str) -> tuple[float, float]:
    mine = [u for u in status["usage"]["sessions"] if u["session"] == session]
    return sum(u["worker_seconds"] for u in mine), sum(u["cost"] for u in mine)


def status_text(status: dict[str, Any], session: str) -> str:
    lines = []
    for label, pool in status["pools"].items():
        lines.append(f"{label}: {len(pool['workers'])}/{pool['max_workers']} workers, {pool['queued']} queued, "
                     f"${pool['price_per_hour']:.2f}/h, idle timeout {pool['idle_timeout']:g}s")
    for label, wid, state, idle, release in _rows(status):
        lines.append(f"  {wid:<14} {state:<9} idle {idle or '-':>5}  released in {release or '-'}")
    seconds, cost = _usage(status, session)
    lines.append(f"this session: {seconds:.1f} worker-seconds, ${cost:.4f}")
    return "\n".join(lines)


def status_html(status: dict[str, Any], session: str) -> str:
    head = "<tr><th>pool</th><th>workers</th><th>queued</th><th>$/h</th><th>idle timeout</th></tr>"
    pools = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{len(p['workers'])}/{p['max_workers']}</td><td>{p['queued']}</td>"
        f"<td>{p['price_per_hour']:.2f}</td><td>{p['idle_timeout']:g}s</td></tr>" for label, p in status["pools"].items())
    workers = "".join(f"<tr><td>{html.escape(label)}</td><td>{html.escape(wid)}</td><td>{state}</td><td>{idle}</td>"
                      f"<td>{release}</td></tr>" for label, wid, state, idle, release in _rows(status))
    seconds, cost = _usage(status, session)
    return (f"<table>{head}{pools}</table>"
            f"<table><tr><th>pool</th><th>worker</th><th>state</th><th>idle</th><th>released in</th></tr>{workers}</table>"
            f"<p>This session: {seconds:.1f} worker-seconds, ${cost:.4f}</p>")

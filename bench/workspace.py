"""What a workspace holds: suites run there, their invocations and status (for ``bench ls``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.cache import process_alive
from todsynth.files import read_log_lines


def invocation_status(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pair start/end events per (pid, started); a start without end is running (pid alive) or killed."""
    runs: dict[tuple[Any, Any], dict[str, Any]] = {}
    for e in events:
        key = (e.get("pid"), e.get("started"))
        run = runs.setdefault(key, {**e, "status": None})
        if e.get("event") == "end":
            run.update(e)
    for run in runs.values():
        if run.get("event") != "end":
            pid = run.get("pid")
            run["status"] = "RUNNING" if isinstance(pid, int) and pid > 0 and process_alive(pid) else "KILLED"
    return list(runs.values())


def list_suites(workspace: Path) -> list[dict[str, Any]]:
    """One row per suite dir in the workspace: runs, last status/time, results summary."""
    rows: list[dict[str, Any]] = []
    ws = Path(workspace)
    if not ws.is_dir():
        return rows
    for d in sorted(p for p in ws.iterdir() if p.is_dir()):
        log, res = d / "runs.jsonl", d / "results.json"
        if not log.is_file() and not res.is_file():
            continue
        runs = invocation_status(read_log_lines(log)) if log.is_file() else []
        last = runs[-1] if runs else {}
        row: dict[str, Any] = {
            "suite": d.name,
            "runs": len(runs),
            "last_status": last.get("status", "-"),
            "last_started": last.get("started", "-"),
            "config_hash": last.get("config_hash", "-"),
            "variants": 0,
            "results": str(res) if res.is_file() else None,
        }
        if res.is_file():
            try:
                data = json.loads(res.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                data = None
            if isinstance(data, dict) and isinstance(data.get("variants", []), list):
                row["variants"] = len(data.get("variants", []))
                row["config_hash"] = data.get("config_hash", row["config_hash"])
            else:
                row["results"] = f"{res} (unreadable)"
        rows.append(row)
    return rows

"""The report's sample images.

Each variant's synthesize outputs (found through ``stages.json`` in the workspace cache) side by side with their
masks and real images in ``samples.png``, and a rerender ceiling's painted images of the same masks; the logged
``grid.png`` artifacts when the outputs are gone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.report.gather import ReportData
from bench.schema import Suite

GRID_ROWS = 4
GRID_CELL = 128  # px: small (32-64 px) samples are upscaled (nearest) to stay readable


def _stage_variant(key: str, stage: str = "synthesize") -> tuple[str, int] | None:
    """A node key of ``stage`` -> (variant, seed): ``synthesize[crfm,seed=0]`` -> ("crfm", 0); None for others."""
    if not key.startswith(f"{stage}[") or not key.endswith("]"):
        return None
    name, _, seed = key[len(stage) + 1:-1].rpartition(",seed=")
    return (name, int(seed)) if name and seed.lstrip("-").isdigit() else None


def _stage(suite: Suite, row: dict[str, Any]) -> Any:
    """The finished cache entry of a stages.json row (by workspace + hash; the logged dir as a fallback)."""
    from bench.cache import StageCache

    cached = StageCache(suite.workspace).lookup(row["stage"], row["hash"])
    if cached is None and row.get("dir") and Path(row["dir"], "done.json").is_file():
        from bench.cache import CachedStage

        cached = CachedStage(Path(row["dir"]), json.loads(Path(row["dir"], "done.json").read_text()))
    return cached


def grid_columns(suite: Suite, data: ReportData) -> tuple[int | None, list[tuple[str, Path]]]:
    """(seed, [(variant, first manifest.json of its synthesize stage)]) for the first seed: plain first."""
    found: dict[int, dict[str, Path]] = {}
    for row in data.stages:
        parsed = _stage_variant(row.get("key", ""))
        if parsed is None:
            continue
        cached = _stage(suite, row)
        copies = cached.artifacts.get("copies") if cached is not None else None
        if not copies:
            continue
        manifest = cached.dir / str(copies[0]) / "manifest.json"
        if manifest.is_file():
            found.setdefault(parsed[1], {})[parsed[0]] = manifest
    if not found:
        return None, []
    seed = min(found)
    order = {v["name"]: i for i, v in enumerate(data.results["variants"])}
    rs = {v["name"]: v.get("params", {}).get("crfm", {}).get("rectified_step", 0) for v in data.results["variants"]}
    names = sorted(found[seed], key=lambda n: (rs.get(n, 0) != 0, order.get(n, 1 << 30)))
    return seed, [(n, found[seed][n]) for n in names]


def rerender_columns(suite: Suite, data: ReportData, seed: int) -> list[tuple[str, Path]]:
    """[(declared variant, images dir)] of the rerender ceilings at ``seed``: the first copy its downstream stage painted.

    One column per declared variant: a mask's first painted copy does not depend on the subset size (``perfect@n16``
    and ``perfect@n48`` paint the same scene alike), so the first stage found stands for all.
    """
    from bench.stages.synthesis import rerender_dir
    from todsynth.data.loveda import IMAGES_DIR

    rows = {v["name"]: v for v in data.results["variants"] if v.get("kind") == "rerender"}
    out: dict[str, Path] = {}
    for row in data.stages:
        parsed = _stage_variant(row.get("key", ""), "downstream")
        if parsed is None or parsed[1] != seed or parsed[0] not in rows:
            continue
        declared = rows[parsed[0]].get("declared", parsed[0])
        cached = _stage(suite, row)
        painted = rerender_dir(cached.dir, 0) / IMAGES_DIR if cached is not None else None
        if declared not in out and painted is not None and painted.is_dir():
            out[declared] = painted
    return list(out.items())


def _real_image(entry: dict[str, Any], suite: Suite, data: ReportData) -> Path | None:
    """The real image of a manifest entry: beside its source mask (LoveDA layout), else in the data stage."""
    from todsynth.data.loveda import IMAGES_DIR

    src = Path(entry.get("source_mask", ""))
    candidate = src.parent.parent / IMAGES_DIR / src.name
    if candidate.is_file():
        return candidate
    for row in data.stages:
        if row.get("stage") == "data":
            cached = _stage(suite, row)
            if cached is not None and "root" in cached.artifacts:
                from bench.stages import artifact_path

                p: Path = artifact_path(cached, "root") / "Train" / entry["domain"] / IMAGES_DIR / f"{entry['id']}.png"
                if p.is_file():
                    return p
    return None


def image_grid(suite: Suite, data: ReportData, path: Path, n_rows: int = GRID_ROWS) -> tuple[Path, list[str]] | None:
    """PNG grid: per row the mask (palette colours), the real image, then each variant's sample (same seed).

    Returns (path, column headers) or None when no synthesize stage output is on disk.
    """
    import numpy as np

    from bench.grids import mask_rgb, read_rgb, save_grid

    seed, columns = grid_columns(suite, data)
    if seed is None or not columns:
        return None
    manifests = {n: json.loads(p.read_text()) for n, p in columns}
    by_id = {n: {(e["domain"], e["id"]): e for e in m["images"]} for n, m in manifests.items()}
    first = columns[0][0]
    ids = [k for k in ((e["domain"], e["id"]) for e in manifests[first]["images"]) if all(k in b for b in by_id.values())]
    ids = ids[:n_rows]
    if not ids:
        return None
    # a ceiling's column where its painted image of every row's mask is still on disk
    painted = [(n, d) for n, d in rerender_columns(suite, data, seed) if all((d / f"{i}.png").is_file() for _, i in ids)]
    headers = ["mask", "real"] + [n for n, _ in columns] + [n for n, _ in painted]
    rows = []
    for key in ids:
        e0 = by_id[first][key]
        mask = mask_rgb(columns[0][1].parent / e0["mask"])
        real_path = _real_image(e0, suite, data)
        real = read_rgb(real_path) if real_path else np.zeros_like(mask)
        rows.append([mask, real] + [read_rgb(p.parent / by_id[name][key]["image"]) for name, p in columns]
                    + [read_rgb(d / f"{key[1]}.png") for _, d in painted])
    save_grid(rows, path, headers=headers, min_cell=GRID_CELL, pad=4)
    data.notes.append(
        f"Samples: seed {seed}, ids {', '.join(f'{d}/{i}' for d, i in ids)}; every variant's image of an id comes from "
        "the same initial noise (per-sample seeds depend on the run seed and the id only)."
        + "".join(f" Column {n} is a ceiling, not a sample: the same scene painted anew by the renderer "
                  "(what a perfect generator would draw from the mask)." for n, _ in painted)
    )
    return path, headers


def logged_grids(data: ReportData, dst: Path) -> dict[str, Path]:
    """Fallback: the ``grid.png`` artifacts of the synthesize child runs (first seed), by variant."""
    from bench.tracking import fetch_artifact

    out: dict[str, Path] = {}
    for row in data.stages:
        parsed = _stage_variant(row.get("key", ""))
        if parsed is None or not row.get("mlflow_run_id") or parsed[0] in out:
            continue
        got = fetch_artifact(data.tracking_uri, row["mlflow_run_id"], "grid.png", dst / row["mlflow_run_id"])
        if got is not None:
            out[parsed[0]] = got
    return out

"""The input stages: ``data`` and ``prompts``.

``data``: procedural scenes or a validated LoveDA root, listed per split; ``prompts``: every training mask's prompt
vectorized once.

Imports :mod:`bench.stages.common` and (lazily) ``todsynth.data``, ``todsynth.text``, ``todsynth.errors``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.cache import CachedStage
from bench.specs import DataSpec, PromptsSpec
from bench.stages.common import split_samples, write_json

SAMPLES_FILE = "samples.json"


def stage_data(spec: DataSpec, inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """Procedural scenes (written here) or a validated LoveDA root (listed): ``samples.json`` per split."""
    from todsynth.data.loveda import list_samples

    skip: dict[Path, str] | None = None
    if spec.procedural is not None:
        from todsynth.data.procedural import generate_dataset

        p = spec.procedural
        root = generate_dataset(out_dir / "data", p.n_train, p.n_val, p.size, p.seed, progress=spec.runtime.progress)
    else:
        from todsynth.data.validate import validate_dataset
        from todsynth.errors import DataValidationError, first_few

        root = Path(str(spec.root))
        problems = validate_dataset(root)
        skip = bad_sample_files(root, problems) if spec.on_bad_sample == "skip" else None
        if problems and skip is None:
            hint = "fix or remove the files, or set dataset.on_bad_sample: skip"
            raise DataValidationError(f"dataset.root {root}: {first_few(problems, sep='; ')}; {hint} (`todsynth data "
                                      f"validate {root}` lists all)",
                                      problems)
    skip = skip or {}
    for path, reason in skip.items():  # one warning line per skipped file (also kept in skipped.json)
        print(f"warning: skipping bad sample {path}: {reason}", file=sys.stderr)
    listing: dict[str, list[dict[str, Any]]] = {}
    for split in ("Train", "Val"):
        listing[split] = [
            {"id": s.id, "domain": s.domain, "image": s.image_path.relative_to(root).as_posix(),
             "mask": s.mask_path.relative_to(root).as_posix() if s.mask_path else None}
            for s in list_samples(root, split, spec.domains, skip=set(skip))
        ]
    out: dict[str, Any] = {
        "root": root,
        "samples": write_json(out_dir / SAMPLES_FILE, listing),
        "metrics": {"n_train": len(listing["Train"]), "n_val": len(listing["Val"]), "skipped_samples": len(skip)},
    }
    if skip:
        out["skipped"] = write_json(out_dir / "skipped.json", {str(p): r for p, r in skip.items()})
    return out


def bad_sample_files(root: Path, problems: list[str]) -> dict[Path, str]:
    """Faulty file -> reason from ``validate_dataset`` problems; raises when a problem is not about one file.

    Directory-level problems (missing images/masks folder, no LoveDA layout) cannot be skipped.
    """
    from todsynth.errors import DataValidationError

    bad: dict[Path, str] = {}
    for problem in problems:
        head, _, reason = problem.partition(": ")
        path = Path(head)
        if path.suffix.lower() != ".png":
            raise DataValidationError(f"dataset.root {root}: {problem} (not a single sample: cannot be skipped)")
        bad[path] = reason
    return bad


def stage_prompts(spec: PromptsSpec, inputs: dict[str, CachedStage], out_dir: Path) -> dict[str, Any]:
    """Vectorize every training mask's prompt and the empty prompt once (safetensors per prompt)."""
    from todsynth.data.classes import prompt_for_labels, reduce_labels
    from todsynth.data.loveda import read_raw_mask
    from todsynth.text import PromptCache, preset_prompt_encoder

    encoder = preset_prompt_encoder(spec.text, sd3_dir=spec.sd3_dir, device=spec.runtime.device)
    prompts = sorted({prompt_for_labels(reduce_labels(read_raw_mask(s.mask_path)))
                      for s in split_samples(inputs["data"], "Train")})
    prompts.append("")
    cache = PromptCache(out_dir / "cache", encoder)
    cache.get(prompts)
    return {
        "cache": out_dir / "cache",
        "encoder_name": encoder.name,
        "prompts": write_json(out_dir / "prompts.json", prompts),
        "metrics": {"n_prompts": len(prompts)},
    }

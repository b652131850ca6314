"""Checks over a whole suite.

:func:`check_suite` (cross-field, ``bench validate``) and :func:`check_runnable` (local files that must exist,
``bench run``).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from bench.metrics import needs_downstream
from bench.schema.base import ENV_INCEPTION, ENV_LOVEDA_ROOT, ENV_SD3_DIR, first_error
from bench.schema.sections import GeneratorSpec, Segmenter, saved_generator_problem
from bench.schema.suite import Suite, resolve_variants
from bench.schema.tuning import Tune
from bench.schema.variants import CEILING_KINDS, SECTIONS, ResolvedVariant
from bench.tracking.server import damaged_store, server_problem
from todsynth.files import folder_problem
from todsynth.sample.config import rectified_step_problem


def check_suite(suite: Suite) -> list[str]:
    """Cross-field problems, each prefixed with its key path; empty when the suite is consistent."""
    problems: list[str] = []
    try:
        variants = resolve_variants(suite, per_subset=False)
    except ValueError as exc:
        return [str(exc)]
    if not variants:
        problems.append("variants: the suite declares no variant (add `variants:` or `matrix:`)")
    seen: dict[str, str] = {}
    by_kind: dict[str, list[str]] = {kind: [] for kind in ("baseline", *CEILING_KINDS)}
    for v in variants:
        if v.name in seen:
            problems.append(f"{v.origin}.name: duplicate variant name {v.name!r} (first at {seen[v.name]})")
        seen.setdefault(v.name, v.origin)
        if v.kind != "synthetic":
            by_kind[v.kind].append(v.origin)
            continue
        why = rectified_step_problem(v.crfm.rectified_step, v.sampling.num_inference_steps,
                                     "sampling.num_inference_steps")
        if why:
            problems.append(f"{v.origin}.crfm.rectified_step: {why}")
    for origin in by_kind["baseline"][1:]:
        problems.append(f"{origin}: a second baseline variant (real-only training is one row; remove it)")
    for kind in CEILING_KINDS:
        for origin in by_kind[kind][1:]:
            problems.append(f"{origin}: a second {kind} variant (a ceiling is one row; remove it)")
    for i, declared in enumerate(suite.variants):
        if declared.kind != "synthetic" and (declared.sampling.overrides() or declared.crfm.overrides()):
            article = "an" if declared.kind == "oracle" else "a"
            problems.append(f"variants[{i}]: {article} {declared.kind} variant takes no sampling/crfm settings")
        if declared.kind == "oracle" and suite.dataset.subsets is None:
            problems.append(f"variants[{i}]: an oracle variant needs dataset.subsets (its held-out real scenes are "
                            "training scenes outside the labelled subset)")
        if declared.kind == "rerender" and suite.dataset.kind != "procedural":
            problems.append(f"variants[{i}]: a rerender variant needs dataset.kind procedural (it paints the training "
                            "masks' scenes anew with the procedural renderer; real data has no second image of a mask)")
    same_ckpt = suite.judge.checkpoint is not None and suite.judge.checkpoint == suite.evaluator.checkpoint
    same_train = (
        suite.judge.checkpoint is None
        and suite.evaluator.checkpoint is None
        and suite.judge.model_dump() == suite.evaluator.model_dump()
    )
    if same_ckpt or same_train:
        problems.append(
            "evaluator: identical to judge; mask fidelity must be scored by an independent model "
            "(change evaluator.seed or evaluator.model)"
        )
    rows = [v for v in variants if v.origin.startswith("matrix[")]
    if suite.matrix is not None and rows and all(v.crfm.rectified_step == 0 for v in rows):
        problems += [f"matrix.axes.{key}: has no effect: every row's crfm.rectified_step is 0 (CRFM off), so the rows "
                     "would be one plain variant; add a crfm.rectified_step axis or set it in matrix.base"
                     for key in suite.matrix.axes if key.startswith("crfm.")]
    problems += _subset_problems(suite)
    if suite.tune is not None:
        problems += _tune_problems(suite.tune, variants, suite)
    problems += _preset_problems(suite.generator)
    return problems


def _subset_problems(suite: Suite) -> list[str]:
    """``dataset.subsets`` checks: sizes the procedural training split can hold; no tuning over several sizes."""
    ds = suite.dataset
    if ds.subsets is None:
        return []
    problems = []
    if ds.kind == "procedural" and max(ds.subsets) > ds.procedural.n_train:
        problems.append(f"dataset.subsets: {max(ds.subsets)} > dataset.procedural.n_train {ds.procedural.n_train} "
                        "(subsets are drawn from the training scenes)")
    elif ds.kind == "procedural" and max(ds.subsets) == ds.procedural.n_train and any(
            v.kind == "oracle" for v in suite.variants):
        problems.append(f"dataset.subsets: {max(ds.subsets)} is every training scene (dataset.procedural.n_train), "
                        "so the oracle variant has no held-out scene there")
    if suite.judge.checkpoint is not None:
        problems.append("judge.checkpoint: with dataset.subsets the judge is trained on each labelled subset; "
                        "remove the checkpoint")
    if suite.tune is not None:
        problems.append("tune: not supported together with dataset.subsets (tune in a suite without subsets, "
                        "then use the tuned settings as a variant here)")
    return problems


def _tune_problems(tune: Tune, variants: list[ResolvedVariant], suite: Suite) -> list[str]:
    """``tune:`` checks that need the rest of the suite.

    Base variant, field types of each dimension, ``rectified_step`` against the step count, constraint
    references, grid-sampler discreteness.
    """
    problems: list[str] = []
    by_name = {v.name: v for v in variants}
    base_steps = suite.sampling.num_inference_steps
    if tune.base_variant is not None:
        base = by_name.get(tune.base_variant)
        if base is None:
            problems.append(f"tune.base_variant: {tune.base_variant!r} is not a variant ({', '.join(sorted(by_name))})")
        elif base.kind != "synthetic":
            problems.append(f"tune.base_variant: {tune.base_variant!r} is a {base.kind}; name a synthetic variant")
        else:
            base_steps = base.sampling.num_inference_steps
    for key, dim in tune.search_space.items():
        section, _, field = key.partition(".")
        model = SECTIONS[section]  # Tune checked the key
        for value in dim.probe_values():
            try:
                model.model_validate({field: value})
            except Exception as exc:  # pydantic ValidationError
                problems.append(f"tune.search_space.{key}: value {value!r} is not a valid {key} ({first_error(exc)})")
                break
        if tune.sampler == "grid" and dim.type == "float" and dim.step is None:
            problems.append(f"tune.search_space.{key}: the grid sampler needs a step (or type: categorical)")
    steps_dim = tune.search_space.get("sampling.num_inference_steps")
    if steps_dim is not None:
        values = steps_dim.probe_values()
        base_steps = int(min(values))
    rs = tune.search_space.get("crfm.rectified_step")
    base = by_name.get(tune.base_variant or "")
    base_rs = base.crfm.rectified_step if base is not None else suite.crfm.rectified_step
    if rs is None and base_rs == 0:
        problems += [f"tune.search_space.{key}: has no effect: the base variant's crfm.rectified_step is 0 (CRFM off), "
                     "so every trial would sample plain; search crfm.rectified_step too, or name a CRFM variant as "
                     "tune.base_variant" for key in tune.search_space if key.startswith("crfm.")]
    if rs is not None:
        top = max(v for v in rs.probe_values() if isinstance(v, int | float))
        why = rectified_step_problem(int(top), base_steps, "sampling.num_inference_steps")
        if why:
            what = "high" if rs.type != "categorical" else "choices"
            problems.append(f"tune.search_space.crfm.rectified_step.{what}: {why} "
                            "(rectified steps cannot exceed the sampling steps)")
    for i, c in enumerate(tune.constraints):
        if c.relative_to is None:
            continue
        ref = by_name.get(c.relative_to)
        if ref is None:
            problems.append(f"tune.constraints[{i}].relative_to: {c.relative_to!r} is not a variant "
                            f"({', '.join(sorted(by_name))})")
        elif ref.kind != "synthetic" and not needs_downstream(c.metric):
            problems.append(f"tune.constraints[{i}].relative_to: {ref.kind} {c.relative_to!r} has no {c.metric} "
                            "(only downstream_* metrics)")
    return problems


def _budget_override_clashes(gen: GeneratorSpec) -> list[str]:
    """``generator.overrides.train``/``vae_train`` keys that ``generator.train``/``vae_train`` set too.

    The stages would drop them without a word: the suite's section wins, and its ``seed`` always applies.
    """
    problems = []
    for section, given in (("train", gen.train), ("vae_train", gen.vae_train)):
        values = given.model_dump(exclude_none=True)
        for key in sorted(gen.overrides.get(section) or {}):
            if key in given.model_fields_set and key in values:
                problems.append(f"generator.overrides.{section}.{key}: generator.{section}.{key} sets it too (and "
                                "wins); set it in one place")
            elif key in values:
                problems.append(f"generator.overrides.{section}.{key}: generator.{section}.{key} (default "
                                f"{values[key]}) applies instead; set it there")
    return problems


def _preset_problems(gen: GeneratorSpec) -> list[str]:
    """Preset overrides the library refuses (unknown keys), named under ``generator.overrides``."""
    from todsynth.data.classes import NUM_CLASSES
    from todsynth.errors import ConfigError
    from todsynth.models.presets import resolve_preset

    if "source" in gen.overrides:
        return ["generator.overrides.source: set generator.sd3_dir (or $TODSYNTH_SD3_DIR) instead"]
    from todsynth.train.config import TrainConfig

    try:
        preset = resolve_preset(gen.preset, gen.overrides)
    except ConfigError as exc:
        return [f"generator.overrides: {exc}"]
    if "train" in gen.overrides:  # the budget the generator stage will train with: keys and values
        try:
            TrainConfig.from_preset(gen.preset, preset_overrides=gen.overrides)
        except ConfigError as exc:
            return [f"generator.overrides.train: {exc}"]
    if problems := _budget_override_clashes(gen):
        return problems
    if gen.scratch and "vae_path" in gen.overrides:  # generator_preset sets it to the autoencoder stage's output
        return [f"generator.overrides.vae_path: preset {gen.preset}'s VAE is the autoencoder stage's output, which "
                "replaces it; remove the key"]
    if gen.train.mask_init is not None and "init" in (gen.overrides.get("mask_stream") or {}):
        return ["generator.overrides.mask_stream.init: generator.train.mask_init sets it too (and wins); set it in "
                "one place"]
    if preset.get("num_classes") != NUM_CLASSES:  # every dataset a suite reads is LoveDA-format
        return [f"generator.overrides.num_classes: {preset.get('num_classes')} is not the {NUM_CLASSES} LoveDA classes "
                "every suite dataset has"]
    kind = (preset.get("text") or {}).get("kind")
    if kind is not None and gen.text_encoder != kind:
        return [f"generator.text_encoder: {gen.text_encoder} does not match preset {gen.preset}'s text encoder {kind} "
                "(the transformer's text widths come from the preset)"]
    return []


def workspace_problem(workspace: Path) -> str | None:
    """Why ``workspace`` cannot hold a workspace (a file on its path; a folder this user cannot write in), or None."""
    problem = folder_problem(workspace)
    return None if problem is None else (
        f"workspace: {problem}; pick another --workspace (or the suite's workspace key)")


def check_runnable(suite: Suite, stages: Collection[str] | None = None) -> list[str]:
    """Problems that only matter when running: local data/weights that must exist (one per path), a usable workspace.

    ``stages``: the stage names the run computes (``bench.graph.build_graph``'s, which keeps what the variants read);
    weights are checked only where a stage reads them (SD3.5: generator, judge/evaluator checkpoints, Inception:
    real_features). None: every stage (``bench tune``'s trials synthesize and measure whatever the variants are).
    """
    problems: list[str] = []
    ws = workspace_problem(suite.workspace)
    if ws is not None:
        problems.append(ws)
    ws_dir = suite.workspace
    for entry, folder in ((ws_dir / suite.name, True), (ws_dir / "cache", True), (ws_dir / "mlartifacts", True),
                          (ws_dir / suite.name / "results.json", False)):
        if entry.exists() and entry.is_dir() != folder:  # what the run writes there; was a traceback (after the stages)
            problems.append(f"workspace: {entry} is a {'file' if folder else 'folder'}, where the run keeps its "
                            f"{'folder' if folder else 'results file'}; move it away")
    if (store := damaged_store(suite.tracking_uri) or server_problem(suite.tracking_uri)) is not None:
        problems.append(f"tracking: {store}")
    if suite.dataset.kind == "loveda":
        root = suite.dataset.root
        if root is None:
            problems.append(
                f"dataset.root: not set; put the LoveDA root (holding Train/ and Val/) in the suite "
                f"or export {ENV_LOVEDA_ROOT}=/path/to/LoveDA"
            )
        elif not (root / "Train").is_dir() or not (root / "Val").is_dir():
            problems.append(
                f"dataset.root: {root} has no Train/ and Val/ folders; download LoveDA "
                f"(zenodo.org/record/5706578) there, or set dataset.root / {ENV_LOVEDA_ROOT}"
            )

    def reads(stage: str) -> bool:
        return stages is None or stage in stages

    gen = suite.generator
    if reads("generator") and (gen.preset != "tiny" or gen.text_encoder == "sd3"):
        if gen.sd3_dir is None:
            problems.append(
                f"generator.sd3_dir: not set; point it (or {ENV_SD3_DIR}) at a local "
                "stabilityai/stable-diffusion-3.5-medium snapshot"
            )
        elif not (gen.sd3_dir / "model_index.json").is_file():
            problems.append(
                f"generator.sd3_dir: {gen.sd3_dir} holds no model_index.json; download "
                f"stabilityai/stable-diffusion-3.5-medium there, or set generator.sd3_dir / {ENV_SD3_DIR}"
            )
    if reads("generator") and gen.init_from is not None and (why := saved_generator_problem(gen.init_from)):
        problems.append(f"generator.init_from: {why}; write one with `todsynth gen train`, or remove the key")
    for role in ("judge", "evaluator"):
        seg: Segmenter = getattr(suite, role)
        if reads(role) and seg.checkpoint is not None and not seg.checkpoint.is_file():
            problems.append(f"{role}.checkpoint: {seg.checkpoint} does not exist; fix the path or remove the key to train one")
    w = suite.fid.inception_weights
    if reads("real_features") and suite.fid.extractor == "inception" and (w is None or not w.is_file()):
        problems.append(
            f"fid.inception_weights: {w or 'not set'} is not a file; put the pt_inception-2015-12-05 weights "
            f"there (fid.inception_weights or {ENV_INCEPTION}), or use fid.extractor: auto"
        )
    elif reads("real_features") and suite.fid.extractor == "auto" and w is not None and not w.is_file():
        # auto would fall back to the evaluator's features without a word: a mistyped path is not a choice
        problems.append(f"fid.inception_weights: {w} is not a file; fix the path, or drop it (and {ENV_INCEPTION}) "
                        "to use the evaluator's features (not comparable with published FIDs)")
    if (gpu := gpu_problem(suite.resources.device, suite.resources.gpus)) is not None:
        problems.append(gpu)
    return problems


def gpu_problem(device: str, gpus: int) -> str | None:
    """Why ``resources`` asks for GPUs this machine does not show, or None (torch is imported only to ask)."""
    if device != "cuda" and gpus == 1:
        return None  # auto falls back to the CPU; cpu needs no GPU
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" and visible == 0:
        return "resources.device: cuda, but torch sees no CUDA GPU here; use device: auto (the CPU when there is none) or cpu"
    if gpus > max(visible, 1):  # with no GPU visible, one process (on the CPU) is all there is
        return f"resources.gpus: {gpus}, but torch sees {visible} CUDA GPU(s) here; set gpus to at most {max(visible, 1)}"
    return None

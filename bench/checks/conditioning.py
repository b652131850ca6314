"""Mask-conditioning acceptance check: does the generator draw the layout of the mask it is given?

Procedure (issue "Generator", acceptance point 3): write a procedural dataset, train an evaluator
segmenter on its REAL training images, train the preset's VAE + generator, then sample one image per
mask of ``n_masks`` masks (a) from its own mask and (b) from a shuffled mask list (a cyclic shift, so
no mask keeps its place; the prompt follows the mask the image is generated from). Both sets are
scored against the ORIGINAL masks with the evaluator: a mask-conditioned generator gives (a) >> (b),
while one that ignores its mask scores the same in both. Same seeds in (a) and (b).

Dataset, evaluator, autoencoder and each generator setting are stages of the bench stage cache
(:mod:`bench.cache`) under ``work_dir/cache/<stage>/<hash>``: the hash covers the stage's settings and its
inputs' hashes, outputs are written to a temp dir and renamed into place, and a lock per key makes two checks
on one work dir train a shared stage once. The generator trains in ``cache/generator/.work-<hash>``
(checkpoints survive a kill), so a killed check resumes; sweeping generator settings reuses the rest. Prompt
vectors go to one ``PromptCache`` per text encoder (``work_dir/prompts/<hash>``: a file per prompt, named by
its hash, written atomically). Sampling and scoring run on every call and write ``conditioning.json`` and
``samples.png`` to ``work_dir/results/<hash>``. Train times are reported as wall and process-CPU seconds
together with the load average (the machine may be shared).

Run: ``todsynth bench check-conditioning WORK_DIR [--set train.steps=800 --set transformer.patch_size=1 ...]``
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.cache import CODE_VERSION, CachedStage, StageCache, canonical, stage_hash
from bench.checks.scoring import miou
from bench.schema.sections import saved_generator_problem
from bench.suites import apply_overrides
from todsynth.data.classes import NUM_CLASSES
from todsynth.errors import ConfigError

CHECK_VERSION = 1  # in every hash of the check: bump when a stage's output changes meaning
RESULT_FILE = "conditioning.json"
GRID_FILE = "samples.png"
MASK_SPLITS = ("Train", "Val")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """Everything the check depends on (see :func:`measure_conditioning` for the meaning of each)."""

    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    n_train: int = 400
    n_val: int = 64
    size: int = 64
    data_seed: int = 0
    n_masks: int = 16
    mask_split: str = "Val"
    evaluator: str = "dcnn"
    evaluator_iters: int = 500
    evaluator_lr: float = 2e-3
    num_inference_steps: int = 12
    seed: int = 0
    guidance_scale: float = 1.5
    mask_guidance: bool = True


def check_settings(s: Settings) -> dict[str, Any]:
    """The resolved preset, or :class:`ConfigError` naming the bad setting (before any work)."""
    from todsynth.models.presets import resolve_preset

    if s.n_masks < 2:
        raise ConfigError(f"n_masks must be >= 2 (shuffling needs two masks), got {s.n_masks}")
    if s.mask_split not in MASK_SPLITS:
        raise ConfigError(f"mask_split={s.mask_split!r} is not one of {', '.join(MASK_SPLITS)}")
    count = s.n_val if s.mask_split == "Val" else s.n_train
    if count < s.n_masks:
        raise ConfigError(f"{s.mask_split} has {count} items, fewer than n_masks={s.n_masks}")
    from todsynth.sample.config import SamplerConfig

    for name, value in (("guidance_scale", s.guidance_scale), ("mask_guidance", s.mask_guidance)):
        if why := SamplerConfig.field_problem(name, value):
            raise ConfigError(f"{name} {why}")
    resolved = resolve_preset(s.preset, s.overrides)
    if int(resolved["image_size"]) != s.size:
        raise ConfigError(f"dataset size {s.size} != preset image_size {resolved['image_size']}")
    cfg = train_config(s, vae_dir=None)  # the generator's budget (train.* overrides), before the evaluator trains
    if cfg.init_from is not None and (why := saved_generator_problem(Path(cfg.init_from))):
        raise ConfigError(f"train.init_from: {why}")
    return resolved


def train_config(s: Settings, vae_dir: str | None) -> Any:
    """The generator's :class:`TrainConfig`: the preset's budget with the ``train.*`` overrides on top."""
    from todsynth.train import TrainConfig

    gen_overrides = {k: v for k, v in s.overrides.items() if k not in ("train", "vae_train")}
    return TrainConfig.from_preset(s.preset, preset_overrides=gen_overrides, vae_dir=vae_dir,
                                   **(s.overrides.get("train") or {}))


def parse_overrides(sets: Sequence[str]) -> dict[str, Any]:
    """``a.b=value`` strings (value parsed as YAML, as ``--set`` of a suite) -> nested preset overrides.

    A string value that reads as a number becomes a float: YAML 1.1 reads ``4e-3`` (no dot) as a string.
    """
    def numbers(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: numbers(v) for k, v in node.items()}
        if isinstance(node, str):
            try:
                return float(node)
            except ValueError:
                return node
        return node

    overrides: dict[str, Any] = numbers(apply_overrides({}, list(sets)))
    return overrides


def short_hash(obj: Any) -> str:
    """16 hex digits of the sha256 of a JSON-able object (directory names outside the stage cache)."""
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:16]


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """(result, wall seconds, process CPU seconds) of ``fn(*args, **kwargs)``."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w0, time.process_time() - c0


@dataclass(frozen=True)
class _Stages:
    """The check's stages in the bench stage cache of ``work_dir``; each reported on ``log``."""

    cache: StageCache
    log: Log | None = None

    def run(self, stage: str, spec: dict[str, Any], inputs: Mapping[str, CachedStage],
            fn: Callable[[Path, Path], dict[str, Any]]) -> tuple[CachedStage, bool]:
        """Reuse or compute ``fn(tmp_dir, work_dir)``; ``work_dir`` is a resumable dir kept until publication."""
        input_hashes = {role: str(c.marker["hash"]) for role, c in inputs.items()}
        h = stage_hash(stage, spec, input_hashes, f"{CODE_VERSION}/check-conditioning-{CHECK_VERSION}")
        work = self.cache.root / stage / f".work-{h}"
        self._say(f"{stage} ...")
        t0 = time.perf_counter()
        done, computed = self.cache.compute(
            stage, h, lambda tmp: fn(tmp, work), {"key": stage, "spec": spec, "inputs": input_hashes},
            on_wait=lambda: self._say(f"{stage}: another check is computing it; waiting to reuse its output"))
        shutil.rmtree(work, ignore_errors=True)
        self._say(f"{stage}: done in {time.perf_counter() - t0:.1f}s" if computed else f"{stage}: cached")
        return done, computed

    def _say(self, line: str) -> None:
        if self.log is not None:
            self.log(line)


@dataclass
class _Trained:
    """What sampling needs, and the training facts the result reports."""

    root: Path
    evaluator: torch.nn.Module
    vae: CachedStage
    vae_computed: bool
    generator: CachedStage
    gen_computed: bool
    prompts: Any
    hashes: dict[str, str]


def _train(s: Settings, resolved: dict[str, Any], work_dir: Path, stages: _Stages, progress: bool) -> _Trained:
    """Dataset, evaluator, autoencoder and generator: each reused from the cache or computed into it."""
    from todsynth.data.loveda import LoveDA, list_samples
    from todsynth.seg.io import load_segmentor, save_segmentor
    from todsynth.seg.train import train_segmentor
    from todsynth.text import PromptCache, preset_prompt_encoder
    from todsynth.train import train_generator, train_vae

    def data_fn(tmp: Path, _: Path) -> dict[str, Any]:
        from todsynth.data.procedural import generate_dataset

        return {"root": generate_dataset(tmp / "loveda", s.n_train, s.n_val, s.size, s.data_seed)}

    data, _ = stages.run("data", {"n_train": s.n_train, "n_val": s.n_val, "size": s.size, "seed": s.data_seed}, {},
                         data_fn)
    root = data.path("root")

    def evaluator_fn(tmp: Path, _: Path) -> dict[str, Any]:  # AdamW on the real Train images
        model = train_segmentor(s.evaluator, list_samples(root, "Train"), tmp / "work", max_iters=s.evaluator_iters,
                                batch_size=8, lr=s.evaluator_lr, seed=s.seed, optimizer="adamw", progress=progress)
        save_segmentor(model, s.evaluator, tmp / "model", NUM_CLASSES)
        return {"model": tmp / "model"}

    evaluator_spec = {"name": s.evaluator, "optimizer": "adamw", "iters": s.evaluator_iters, "lr": s.evaluator_lr,
                      "batch_size": 8, "seed": s.seed}
    evaluator, _ = stages.run("evaluator", evaluator_spec, {"data": data}, evaluator_fn)
    train_set = LoveDA(root, "Train")
    budget = dict(resolved.get("vae_train") or {})

    def vae_fn(tmp: Path, _: Path) -> dict[str, Any]:
        kl = {k: budget[k] for k in ("kl_weight", "mask_fraction") if k in budget}
        _, wall, cpu = _timed(train_vae, train_set, resolved["vae"], tmp / "vae", steps=budget["steps"],
                              batch_size=budget["batch_size"], lr=budget["lr"], seed=int(budget.get("seed", 0)),
                              image_size=s.size, progress=progress, **kl)
        return {"vae": tmp / "vae", "wall_s": wall, "cpu_s": cpu}

    vae, vae_computed = stages.run("autoencoder", {"vae": resolved["vae"], "budget": budget, "image_size": s.size},
                                   {"data": data}, vae_fn)
    text = dict(resolved["text"])
    prompts = PromptCache(work_dir / "prompts" / short_hash(text), preset_prompt_encoder(text, sd3_dir=resolved.get("source")))
    cfg = train_config(s, vae_dir=str(vae.path("vae")))

    def generator_fn(tmp: Path, work: Path) -> dict[str, Any]:  # checkpoints in `work`: a killed run resumes
        gen_dir, wall, cpu = _timed(train_generator, cfg, train_set, prompts, work, progress=progress)
        shutil.copytree(gen_dir, tmp / "generator")
        for name in ("train_summary.json", "log.jsonl"):
            if (work / name).is_file():
                shutil.copy(work / name, tmp / name)
        return {"generator": tmp / "generator", "wall_s": wall, "cpu_s": cpu}

    spec: dict[str, Any] = {"preset": s.preset, "resolved": resolved}
    if cfg.init_from is not None:  # keyed by the weights' bytes, as the suites' generator stage keys them
        from bench.graph import saved_weights_digest

        spec["init_digest"] = saved_weights_digest(Path(cfg.init_from))
    generator, gen_computed = stages.run("generator", spec, {"data": data, "autoencoder": vae}, generator_fn)
    hashes = {k: str(c.marker["hash"]) for k, c in (("data", data), ("evaluator", evaluator), ("generator", generator))}
    return _Trained(root, load_segmentor(evaluator.path("model")).eval(), vae, vae_computed, generator, gen_computed,
                    prompts, hashes)


def _sample_and_score(s: Settings, t: _Trained) -> dict[str, Any]:
    """Samples from the true and the shuffled masks, scored against the true masks (+ real, reconstructions)."""
    from todsynth.data.loveda import LoveDA
    from todsynth.models.generator import load_generator
    from todsynth.models.vae import reconstruct
    from todsynth.sample.config import SamplerConfig
    from todsynth.sample.sampler import cfg_negative, sample
    from todsynth.train.evaluate import conditioning_gap

    gen = load_generator(t.generator.path("generator"))
    masks_set = LoveDA(t.root, s.mask_split)
    items = [masks_set[i] for i in range(s.n_masks)]
    masks = torch.stack([it["mask"] for it in items])
    real = torch.stack([it["image"] for it in items])
    perm = torch.roll(torch.arange(s.n_masks), 1)  # derangement: image k is drawn from mask k-1
    embeds, pooled = t.prompts.get([it["prompt"] for it in items])
    scfg = SamplerConfig(num_inference_steps=s.num_inference_steps, batch_size=8, guidance_scale=s.guidance_scale,
                         mask_guidance=s.mask_guidance)
    negative = cfg_negative(t.prompts.get, scfg)
    seeds = [s.seed * 100_000 + k for k in range(s.n_masks)]
    true_imgs = sample(gen, masks, embeds, pooled, seeds, scfg, negative=negative).images
    shuf_imgs = sample(gen, masks[perm], embeds[perm], pooled[perm], seeds, scfg, negative=negative).images
    loss = conditioning_gap(gen, masks_set, t.prompts, seed=s.seed)
    with torch.no_grad():  # the autoencoder's cap: what the evaluator still sees after encode -> decode
        recon = reconstruct(gen.vae, real)
    m = {name: miou(t.evaluator, imgs, masks)
         for name, imgs in (("true", true_imgs), ("shuffled", shuf_imgs), ("real", real), ("recon", recon))}
    return {"miou": m, "loss_gap": loss["relative_gap"], "grid": (masks, real, true_imgs, shuf_imgs)}


def _result(s: Settings, t: _Trained, scored: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The figures, the train times and the settings of one check (``conditioning.json``)."""
    m = scored["miou"]

    def of_real(v: float) -> float:
        return v / m["real"] if m["real"] > 0 else float("nan")

    gen_summary = json.loads((t.generator.dir / "train_summary.json").read_text())
    return {
        "miou_true": m["true"],
        "miou_shuffled": m["shuffled"],
        "miou_real": m["real"],
        "miou_recon": m["recon"],
        "ae_cap": of_real(m["recon"]),  # target >= 0.9
        "fidelity_true": of_real(m["true"]),  # target >= 0.6
        "fidelity_shuffled": of_real(m["shuffled"]),  # target <= fidelity_true / 2
        "ratio": m["true"] / m["shuffled"] if m["shuffled"] > 0 else float("inf"),
        "gap": m["true"] - m["shuffled"],
        "loss_gap": scored["loss_gap"],
        "vae_wall_s": t.vae.artifacts["wall_s"],
        "vae_cpu_s": t.vae.artifacts["cpu_s"],
        "vae_cached": not t.vae_computed,
        "vae_l1": json.loads((t.vae.path("vae") / "train_summary.json").read_text())["final_l1"],
        "gen_wall_s": t.generator.artifacts["wall_s"] if t.gen_computed else 0.0,
        "gen_cpu_s": t.generator.artifacts["cpu_s"] if t.gen_computed else 0.0,
        "gen_cached": not t.gen_computed,
        "final_loss": gen_summary.get("final_loss"),
        "loadavg": os.getloadavg()[0],
        "threads": torch.get_num_threads(),
        "preset": s.preset,
        "overrides": s.overrides,
        "mask_split": s.mask_split,
        "n_masks": s.n_masks,
        "num_inference_steps": s.num_inference_steps,
        "guidance_scale": s.guidance_scale,
        "mask_guidance": s.mask_guidance,
        "run_dir": str(run_dir),
    }


def measure_conditioning(
    work_dir: str | Path,
    *,
    preset: str = "tiny",
    overrides: Mapping[str, Any] | None = None,
    n_train: int = 400,
    n_val: int = 64,
    size: int = 64,
    data_seed: int = 0,
    n_masks: int = 16,
    mask_split: str = "Val",
    evaluator: str = "dcnn",
    evaluator_iters: int = 500,
    evaluator_lr: float = 2e-3,
    num_inference_steps: int = 12,
    seed: int = 0,
    guidance_scale: float = 1.5,
    mask_guidance: bool = True,
    progress: bool = False,
    log: Log | None = None,
) -> dict[str, Any]:
    """Evaluator mIoU of samples from true vs shuffled masks for a preset (+ overrides); see module docstring.

    Args:
        work_dir: stage cache, prompt vectors and results (``results/<hash>/conditioning.json``, ``samples.png``).
        overrides: deep-merged into the preset (``resolve_preset``); its ``train``/``vae_train`` budgets
            are the training settings used (``TrainConfig.from_preset`` fields / ``train_vae`` kwargs).
        n_masks: masks sampled from ``mask_split`` (``"Val"``: held out from generator training; ``"Train"``).
        num_inference_steps: Euler steps of plain sampling (no CRFM).
        guidance_scale, mask_guidance: CFG as in ``SamplerConfig`` (1.0 = off; the negative is the empty prompt,
            and with ``mask_guidance`` no mask); the defaults are the smoke suite's sampler.
        progress: the training functions' progress bars. log: receives one line per stage (computed or cached).

    Returns:
        ``miou_true``, ``miou_shuffled``, ``miou_real`` (evaluator on the real images of the same masks),
        ``miou_recon`` (on their autoencoder reconstructions), the fractions of ``miou_real``: ``ae_cap``
        (reconstructions), ``fidelity_true`` and ``fidelity_shuffled`` (samples),
        ``ratio``, ``gap``, the held-out ``loss_gap`` (``conditioning_gap`` on the masks' split), train
        seconds (``vae_wall_s``/``vae_cpu_s``, recorded when the shared VAE was trained; ``gen_wall_s``/``gen_cpu_s``,
        0 when the generator was cached), ``vae_cached``, ``gen_cached``, ``loadavg`` and the settings.

    Raises:
        ConfigError: a bad setting (``n_masks`` < 2 or more than the split holds, unknown preset or override,
            ``size`` != the preset's ``image_size``), before any work.
    """
    s = Settings(preset, dict(overrides or {}), n_train, n_val, size, data_seed, n_masks, mask_split, evaluator,
                 evaluator_iters, evaluator_lr, num_inference_steps, seed, guidance_scale, mask_guidance)
    resolved = check_settings(s)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    cache = StageCache(work_dir)
    cache.cleanup_stale()
    trained = _train(s, resolved, work_dir, _Stages(cache, log), progress)
    scored = _sample_and_score(s, trained)
    run_dir = work_dir / "results" / short_hash({"settings": asdict(s), "stages": trained.hashes,
                                                     "version": CHECK_VERSION})
    run_dir.mkdir(parents=True, exist_ok=True)
    result = _result(s, trained, scored, run_dir)
    _replace(run_dir / RESULT_FILE, lambda tmp: tmp.write_text(json.dumps(result, indent=2, default=str)))
    _replace(run_dir / GRID_FILE, lambda tmp: _save_grid(tmp, *scored["grid"]))
    return result


def _replace(path: Path, write: Callable[[Path], Any]) -> None:
    """Write ``path`` through a temp file and a rename (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_grid(path: Path, masks: torch.Tensor, real: torch.Tensor, true_imgs: torch.Tensor,
               shuf_imgs: torch.Tensor) -> None:
    """Rows: colourised mask, real image, sample from that mask, sample from the shuffled mask."""
    import numpy as np

    from bench.grids import save_grid
    from todsynth.data.classes import colorize

    rows = [[colorize(m.numpy()) for m in masks]]
    for imgs in (real, true_imgs, shuf_imgs):
        rows.append([(i.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for i in imgs])
    save_grid(rows, path)

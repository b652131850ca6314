"""Mask-conditioning acceptance check: does the generator draw the layout of the mask it is given?

Procedure (issue "Generator", acceptance point 3): write a procedural dataset, train an evaluator
segmenter on its REAL training images, train the preset's VAE + generator, then sample one image per
mask of ``n_masks`` masks (a) from its own mask and (b) from a shuffled mask list (a cyclic shift, so
no mask keeps its place; the prompt follows the mask the image is generated from). Both sets are
scored against the ORIGINAL masks with the evaluator: a mask-conditioned generator gives (a) >> (b),
while one that ignores its mask scores the same in both. Same seeds in (a) and (b).

Dataset, evaluator and each (VAE, generator) setting are cached under ``work_dir`` (keyed by their
settings), so sweeping generator settings re-uses the rest. Train times are reported as wall and
process-CPU seconds together with the load average (the machine may be shared).

Run: ``python -m bench.conditioning WORK_DIR [--set train.steps=800 --set transformer.patch_size=1 ...]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from todsynth.data.classes import IGNORE_INDEX, NUM_CLASSES

RESULT_FILE = "conditioning.json"
TIMING_FILE = "timing.json"


def _key(obj: Any) -> str:
    """Short stable hash of a JSON-able object (cache directory names)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """(result, wall seconds, process CPU seconds) of ``fn(*args, **kwargs)``."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w0, time.process_time() - c0


def _dataset(work_dir: Path, n_train: int, n_val: int, size: int, seed: int) -> Path:
    """The procedural LoveDA tree for these settings (written once)."""
    from todsynth.data.procedural import generate_dataset

    root = work_dir / f"data-{n_train}-{n_val}-{size}-{seed}"
    if not (root / "Val").is_dir():
        generate_dataset(root, n_train, n_val, size, seed, overwrite=True)
    return root


def _evaluator(work_dir: Path, root: Path, name: str, iters: int, lr: float, seed: int) -> torch.nn.Module:
    """Segmenter trained (AdamW) on the real Train images (trained once per setting, then loaded)."""
    from todsynth.data.loveda import list_samples
    from todsynth.seg.io import CONFIG_FILE, load_segmentor, save_segmentor
    from todsynth.seg.train import train_segmentor

    out = work_dir / f"evaluator-{name}-adamw-{iters}-{lr}-{seed}-{root.name}"
    if not (out / CONFIG_FILE).is_file():
        model = train_segmentor(name, list_samples(root, "Train"), out / "work", max_iters=iters, batch_size=8,
                                lr=lr, seed=seed, optimizer="adamw", progress=False)
        save_segmentor(model, name, out, NUM_CLASSES)
    return load_segmentor(out).eval()


@torch.no_grad()
def miou(evaluator: torch.nn.Module, images_01: torch.Tensor, masks: torch.Tensor) -> float:
    """Dataset-wide mIoU of the evaluator's predictions on images (B,3,H,W) [0,1] vs reduced masks (B,H,W)."""
    from todsynth.metrics.segmentation import confusion_matrix, scores_from_confusion
    from todsynth.seg.evaluate import predict

    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    for lo in range(0, len(images_01), 8):
        pred = predict(evaluator, images_01[lo : lo + 8]).cpu()
        cm += confusion_matrix(pred, masks[lo : lo + 8], NUM_CLASSES, IGNORE_INDEX)
    return float(scores_from_confusion(cm)["miou"])


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
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluator mIoU of samples from true vs shuffled masks for a preset (+ overrides); see module docstring.

    Args:
        work_dir: cache and output directory (``conditioning.json`` per generator setting is written too).
        overrides: deep-merged into the preset (``resolve_preset``); its ``train``/``vae_train`` budgets
            are the training settings used (``TrainConfig.from_preset`` fields / ``train_vae`` kwargs).
        n_masks: masks sampled from ``mask_split`` (``"Val"``: held out from generator training; ``"Train"``).
        num_inference_steps: Euler steps of plain sampling (no CRFM, no CFG).

    Returns:
        ``miou_true``, ``miou_shuffled``, ``miou_real`` (evaluator on the real images of the same masks),
        ``miou_recon`` (on their autoencoder reconstructions), the fractions of ``miou_real``: ``ae_cap``
        (reconstructions), ``fidelity_true`` and ``fidelity_shuffled`` (samples),
        ``ratio``, ``gap``, the held-out ``loss_gap`` (``conditioning_gap`` on the masks' split), train
        seconds (``vae_wall_s``/``vae_cpu_s``, recorded when the shared VAE was trained; ``gen_wall_s``/``gen_cpu_s``,
        0 when the generator run was already complete), ``loadavg`` and the settings.
    """
    from todsynth.data.loveda import LoveDA
    from todsynth.models.generator import load_generator
    from todsynth.models.presets import resolve_preset
    from todsynth.models.vae import reconstruct
    from todsynth.sample.sampler import SamplerConfig, sample
    from todsynth.text import PromptCache, build_prompt_encoder
    from todsynth.train import TrainConfig, train_generator, train_vae
    from todsynth.train.evaluate import conditioning_gap

    if n_masks < 2:
        raise ValueError(f"n_masks must be >= 2 (shuffling needs two masks), got {n_masks}")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    overrides = dict(overrides or {})
    resolved = resolve_preset(preset, overrides)
    if int(resolved["image_size"]) != size:
        raise ValueError(f"dataset size {size} != preset image_size {resolved['image_size']}")
    root = _dataset(work_dir, n_train, n_val, size, data_seed)
    model = _evaluator(work_dir, root, evaluator, evaluator_iters, evaluator_lr, seed)

    train_set = LoveDA(root, "Train")
    vae_budget = dict(resolved.get("vae_train") or {})
    vae_dir = work_dir / f"vae-{_key([resolved['vae'], vae_budget, root.name])}"  # shared by generator settings
    run = work_dir / f"gen-{preset}-{_key([resolved, vae_dir.name])}"
    vae_cached = (vae_dir / TIMING_FILE).is_file()
    if not vae_cached:
        kl = {k: vae_budget[k] for k in ("kl_weight", "mask_fraction") if k in vae_budget}
        _, vae_wall, vae_cpu = _timed(
            train_vae, train_set, resolved["vae"], vae_dir, steps=vae_budget["steps"],
            batch_size=vae_budget["batch_size"], lr=vae_budget["lr"], seed=int(vae_budget.get("seed", 0)),
            image_size=size, progress=progress, **kl,
        )
        (vae_dir / TIMING_FILE).write_text(json.dumps({"wall_s": vae_wall, "cpu_s": vae_cpu}))
    vae_timing = json.loads((vae_dir / TIMING_FILE).read_text())
    text = dict(resolved["text"])
    cache = PromptCache(work_dir / f"prompts-{_key(text)}", build_prompt_encoder(text.pop("kind"), **text))
    gen_overrides = {k: v for k, v in overrides.items() if k not in ("train", "vae_train")}
    cfg = TrainConfig.from_preset(preset, preset_overrides=gen_overrides, vae_dir=str(vae_dir),
                                  **(overrides.get("train") or {}))
    gen_dir, gen_wall, gen_cpu = _timed(train_generator, cfg, train_set, cache, run / "train", progress=progress)
    gen = load_generator(gen_dir)

    masks_set = LoveDA(root, mask_split)
    if len(masks_set) < n_masks:
        raise ValueError(f"{mask_split} has {len(masks_set)} items, fewer than n_masks={n_masks}")
    items = [masks_set[i] for i in range(n_masks)]
    masks = torch.stack([it["mask"] for it in items])
    real = torch.stack([it["image"] for it in items])
    prompts = [it["prompt"] for it in items]
    perm = torch.roll(torch.arange(n_masks), 1)  # derangement: image k is drawn from mask k-1
    embeds, pooled = cache.get(prompts)
    scfg = SamplerConfig(num_inference_steps=num_inference_steps, batch_size=8)
    seeds = [seed * 100_000 + k for k in range(n_masks)]
    true_imgs = sample(gen, masks, embeds, pooled, seeds, scfg).images
    shuf_imgs = sample(gen, masks[perm], embeds[perm], pooled[perm], seeds, scfg).images
    loss = conditioning_gap(gen, masks_set, cache, seed=seed)

    m_true, m_shuf, m_real = miou(model, true_imgs, masks), miou(model, shuf_imgs, masks), miou(model, real, masks)
    with torch.no_grad():  # the autoencoder's cap: what the evaluator still sees after encode -> decode
        m_recon = miou(model, reconstruct(gen.vae, real), masks)

    def of_real(m: float) -> float:
        return m / m_real if m_real > 0 else float("nan")

    result = {
        "miou_true": m_true,
        "miou_shuffled": m_shuf,
        "miou_real": m_real,
        "miou_recon": m_recon,
        "ae_cap": of_real(m_recon),  # target >= 0.9
        "fidelity_true": of_real(m_true),  # target >= 0.6
        "fidelity_shuffled": of_real(m_shuf),  # target <= fidelity_true / 2
        "ratio": m_true / m_shuf if m_shuf > 0 else float("inf"),
        "gap": m_true - m_shuf,
        "loss_gap": loss["relative_gap"],
        "vae_wall_s": vae_timing["wall_s"],
        "vae_cpu_s": vae_timing["cpu_s"],
        "vae_cached": vae_cached,
        "vae_l1": json.loads((vae_dir / "train_summary.json").read_text())["final_l1"],
        "gen_wall_s": gen_wall,
        "gen_cpu_s": gen_cpu,
        "final_loss": json.loads((run / "train" / "train_summary.json").read_text()).get("final_loss"),
        "loadavg": os.getloadavg()[0],
        "threads": torch.get_num_threads(),
        "preset": preset,
        "overrides": overrides,
        "mask_split": mask_split,
        "n_masks": n_masks,
        "num_inference_steps": num_inference_steps,
        "run_dir": str(run),
    }
    (run / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str))
    _save_grid(run / "samples.png", masks, real, true_imgs, shuf_imgs)
    return result


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


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``a.b=value`` strings (value parsed as YAML) -> nested override dict."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY.PATH=VALUE, got {item!r}")
        path, value = item.split("=", 1)
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 4e-3 (no dot) as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        node[leaf] = parsed
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m bench.conditioning WORK_DIR [--preset tiny] [--set key.path=value ...]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.conditioning", description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="preset override, e.g. train.steps=800 or transformer.num_layers=4")
    parser.add_argument("--n-train", type=int, default=400, help="procedural Train scenes")
    parser.add_argument("--n-val", type=int, default=64, help="procedural Val scenes")
    parser.add_argument("--masks", type=int, default=16)
    parser.add_argument("--mask-split", default="Val", choices=["Train", "Val"])
    parser.add_argument("--steps", type=int, default=12, help="Euler steps (the smoke suite's)")
    parser.add_argument("--evaluator", default="dcnn", help="the instrument (smoke's evaluator: dcnn, 500 it)")
    parser.add_argument("--evaluator-iters", type=int, default=500)
    parser.add_argument("--evaluator-lr", type=float, default=2e-3, help="AdamW peak LR of the evaluator")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure_conditioning(
        args.work_dir, preset=args.preset, overrides=_parse_set(args.set), n_train=args.n_train, n_val=args.n_val,
        n_masks=args.masks,
        mask_split=args.mask_split, num_inference_steps=args.steps, evaluator=args.evaluator,
        evaluator_iters=args.evaluator_iters, evaluator_lr=args.evaluator_lr, progress=args.progress,
    )
    print(json.dumps({k: v for k, v in result.items() if k != "run_dir"}, default=str))


if __name__ == "__main__":
    main()

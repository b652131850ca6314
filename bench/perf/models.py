"""The measured models and inputs: random-init generator and judge of a preset's shape, random masks and prompts.

Weights are random: speed does not depend on weight values. ``tiny`` is the scratch preset; ``sd3.5-medium``
is built from SD3.5-medium's published transformer and VAE configs without the checkpoint (GPU sizes). The
judge is ``fcn-tiny`` for tiny, ``fcn-r18`` otherwise (random init, frozen, eval mode).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bench.perf.config import PerfConfig
from todsynth.errors import ConfigError

SD35_TEXT = {"seq_len": 77 + 256, "joint_dim": 4096, "pooled_dim": 2048}  # CLIP-L/G + T5 (256 tokens)


def perf_preset(name: str, res: int) -> dict[str, Any]:
    """A scratch preset of ``name`` at ``res`` px: tiny as is; sd3.5-medium from its published configs."""
    from todsynth.models.presets import SD35_MEDIUM_TRANSFORMER, SD35_MEDIUM_VAE, resolve_preset

    if name == "tiny":
        return resolve_preset("tiny", {"image_size": res})
    preset = resolve_preset("sd3.5-medium", {"image_size": res})
    preset.update(
        source="scratch",
        transformer=dict(SD35_MEDIUM_TRANSFORMER),
        vae=dict(SD35_MEDIUM_VAE),
        scheduler={"shift": 3.0, "num_train_timesteps": 1000},
        text={"kind": "sd3", **SD35_TEXT},
    )
    return preset


def build_perf_models(cfg: PerfConfig) -> tuple[Any, nn.Module]:
    """Random-init generator and judge for ``cfg`` (resolved), on its device (fp32 weights)."""
    from todsynth.models.generator import build_generator
    from todsynth.seg.judge import SegmentorLogits
    from todsynth.seg.models import build_segmentor

    preset = perf_preset(cfg.preset, int(cfg.res))  # type: ignore[arg-type]
    try:
        with torch.device(cfg.device):  # initialise in place on the GPU (SD3.5 in fp32 is ~14 GB)
            gen = build_generator(preset)
    except ConfigError as exc:  # the preset's sizes come from --res (image_size = res)
        raise ConfigError(f"--res {cfg.res}: {exc}") from None
    gen.to(cfg.device)
    gen.transformer.requires_grad_(False).eval()
    judge = SegmentorLogits(build_segmentor(str(cfg.judge), gen.num_classes, seed=cfg.seed), num_classes=gen.num_classes)
    return gen, judge.to(cfg.device)


def perf_inputs(gen: Any, batch: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Blocky random masks long (B,H,W) and random prompt embeddings of the preset's text widths (CPU)."""
    text = gen.config.get("text", {})
    seq_len, joint, pooled_dim = int(text.get("seq_len", 16)), int(text.get("joint_dim", 64)), int(text.get("pooled_dim", 64))
    g = torch.Generator("cpu").manual_seed(seed)
    size = int(gen.image_size)
    coarse = torch.randint(0, gen.num_classes, (batch, 1, max(1, size // 8), max(1, size // 8)), generator=g)
    masks = nn.functional.interpolate(coarse.float(), size=(size, size), mode="nearest")[:, 0].long()
    return masks, torch.randn(batch, seq_len, joint, generator=g), torch.randn(batch, pooled_dim, generator=g)


def autocast(device: torch.device, precision: str | None) -> Any:
    """bf16 autocast on ``device`` when ``precision`` is bf16 (a disabled context otherwise)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

"""``todsynth bench perf``: where the time goes, measured on one device.

Sections (each timed after a warm-up, ``repeats`` times; median, min and max):

* ``transformer``: one MaskMMDiT forward on the sampling batch, its FLOPs (``FlopCounterMode``, with the CPU
  flash-attention kernel counted too) and the achieved FLOP/s against the device's peak (``device``);
* ``plain`` / ``crfm``: seconds per image of Euler sampling without / with CRFM (``rectified`` of ``steps``
  steps rectified), CRFM's in-loop breakdown (transformer, VAE decode fwd+bwd, judge fwd+bwd, Euler, final
  decode, rest) and each variant's peak memory (one extra, untimed run);
* ``vae`` / ``judge``: the passes CRFM cannot avoid, timed standalone on the same shapes, interleaved with
  the sampling runs (``todsynth.sample.profile.profile_sampling``), plus the plain final decode;
* ``train``: one generator training step (flow-matching loss, backward, clipping, AdamW) in samples/s and peak
  memory (process RSS polled with psutil on CPU, ``torch.cuda.max_memory_allocated`` on GPU);
* ``fid``: FID feature extraction in images/s (Inception when ``TODSYNTH_INCEPTION_WEIGHTS`` is set, else the
  segmenter fallback on the judge's network).

Headline ratios: ``crfm_over_plain`` (CRFM over plain seconds per image) and ``crfm_overhead_vs_parts`` (the
measured extra CRFM time over the summed time of its necessary passes, ``rectified x (VAE decode fwd+bwd +
judge fwd+bwd)``). Each round is symmetric, passes, plain, CRFM, passes, CRFM, plain, so a ratio formed within
a round (``mean(CRFM) - mean(plain)`` over the passes) cancels load drifts over the round; the headline
is the median of the per-round ratios (``crfm.rounds`` holds every round). The ``*_min`` variants divide the
minima over rounds instead, which on a shared machine can pair a lucky plain round with an unlucky CRFM round.
``crfm.extra_breakdown_seconds_per_image`` says where the extra goes (CRFM's sections minus plain's, per round)
and ``crfm.beyond_parts_fraction`` what exceeds the passes, as a fraction of them: the transformer running
slower after a correction (cold caches), the in-loop passes over their standalone time (the loss, autograd),
and the rest (Euler, bookkeeping).

Weights are random: speed does not depend on weight values. ``tiny`` is the scratch preset; ``sd3.5-medium``
is built from SD3.5-medium's published transformer and VAE configs without the checkpoint (GPU sizes). The
judge is ``fcn-tiny`` for tiny, ``fcn-r18`` otherwise (random init, frozen, eval mode).
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from todsynth.errors import ConfigError

SCHEMA = "todsynth.perf/1"
PERF_PRESETS: tuple[str, ...] = ("tiny", "sd3.5-medium")
DEFAULT_JUDGE = {"tiny": "fcn-tiny", "sd3.5-medium": "fcn-r18"}
# Sampling batch per preset: tiny samples 8 at a time like the smoke suite and the release's scripts (at batch 2
# the CPU figures mostly measure per-call overhead); SD3.5-medium at 512 px keeps 2 (CRFM's decoder backward).
DEFAULT_BATCH = {"tiny": 8, "sd3.5-medium": 2}
# Dense bf16 tensor-core peaks (NVIDIA datasheets, SXM): H100 989.4, H200 989.4 TFLOP/s.
GPU_PEAK_TFLOPS_BF16 = {"H100": 989.0, "H200": 989.0}
SD35_TEXT = {"seq_len": 77 + 256, "joint_dim": 4096, "pooled_dim": 2048}  # CLIP-L/G + T5 (256 tokens)
ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class PerfConfig:
    """What ``bench perf`` measures; None fields resolve per device (see :meth:`resolved`).

    Args:
        preset: ``tiny`` or ``sd3.5-medium``; device: ``cpu`` or ``cuda``.
        batch: images per sampling call (None = the preset's, :data:`DEFAULT_BATCH`); res: image size in pixels
            (None = the preset's).
        steps: Euler steps; rectified: leading CRFM steps (the release: 4 of 23).
        repeats: timed rounds per measurement (after one warm-up; a sampling round runs each variant twice).
        train_batch: samples per training step (None = the preset's training batch size).
        clock: ``wall`` or ``cpu`` (process CPU seconds) on CPU; CUDA always uses events.
        precision: ``fp32`` or ``bf16`` (None: bf16 weights + autocast on CUDA, fp32 on CPU).
        channels_last: NHWC VAE and judge (None: on; measured -20% VAE decode fwd+bwd, -10% judge on CPU).
        compile: ``torch.compile`` the transformer (off by default; compile time is not in the figures).
        fid_images: images per FID feature-extraction round; judge: segmentor name (None = per preset).
        threads: torch intra-op threads for the run (None = torch's default, one per core); restored after.
        seed: seeds of the random weights and inputs.
    """

    preset: str = "tiny"
    device: str = "cpu"
    batch: int | None = None
    res: int | None = None
    steps: int = 23
    rectified: int = 4
    repeats: int = 20
    train_batch: int | None = None
    clock: str = "wall"
    precision: str | None = None
    channels_last: bool | None = None
    compile: bool = False
    fid_images: int = 16
    judge: str | None = None
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.preset not in PERF_PRESETS:
            raise ConfigError(f"--preset {self.preset!r}: choose one of {', '.join(PERF_PRESETS)}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"--device {self.device!r}: choose cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is visible to torch (see `todsynth doctor`); use --device cpu")
        for name, low in (("batch", 1), ("steps", 1), ("rectified", 1), ("repeats", 1), ("fid_images", 2)):
            value = getattr(self, name)
            if name == "batch" and value is None:  # the preset's (resolved)
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"--{name.replace('_', '-')} {value!r}: must be an int >= {low}")
        if self.rectified > self.steps:
            raise ConfigError(f"--rectified {self.rectified} exceeds --steps {self.steps}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads {self.threads}: must be >= 1")
        if self.train_batch is not None and self.train_batch < 1:
            raise ConfigError(f"--train-batch {self.train_batch}: must be >= 1")
        if self.res is not None and self.res < 8:
            raise ConfigError(f"--res {self.res}: must be >= 8 pixels")
        if self.clock not in ("wall", "cpu"):
            raise ConfigError(f"--clock {self.clock!r}: choose wall or cpu")
        if self.precision not in (None, "fp32", "bf16"):
            raise ConfigError(f"--precision {self.precision!r}: choose fp32 or bf16")

    def resolved(self) -> PerfConfig:
        """This config with every None replaced by its device/preset default."""
        from todsynth.models.presets import PRESETS

        cuda = self.device == "cuda"
        preset = PRESETS[self.preset]
        return replace(
            self,
            batch=self.batch if self.batch is not None else DEFAULT_BATCH[self.preset],
            res=self.res if self.res is not None else int(preset["image_size"]),
            train_batch=self.train_batch if self.train_batch is not None else int(preset["train"]["batch_size"]),
            precision=self.precision or ("bf16" if cuda else "fp32"),
            channels_last=self.channels_last if self.channels_last is not None else True,
            judge=self.judge or DEFAULT_JUDGE[self.preset],
            threads=self.threads or torch.get_num_threads(),
        )


# ---------------------------------------------------------------------- measurement helpers
def stats(values: Sequence[float]) -> dict[str, float]:
    """``{"median", "min", "max", "n"}`` of repeated measurements."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no measurements")
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls (CUDA synchronised around each)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


class PeakMemory:
    """Peak memory of a block in MiB: ``torch.cuda.max_memory_allocated`` on CUDA, else the process RSS
    polled by a psutil thread every ``interval`` s (use around untimed runs: the poller takes the GIL).

    Attributes after the block: ``peak_mb``, ``baseline_mb`` (at entry), ``kind``.
    """

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.device, self.interval = device, interval
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss"
        self.peak_mb = self.baseline_mb = float("nan")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0

    def _poll(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self._peak = max(self._peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            import psutil

            self._peak = psutil.Process().memory_info().rss
            self.baseline_mb = self._peak / 2**20
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            import psutil

            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._peak = max(self._peak, psutil.Process().memory_info().rss)
            self.peak_mb = self._peak / 2**20

    def as_dict(self) -> dict[str, Any]:
        return {"peak_mb": self.peak_mb, "baseline_mb": self.baseline_mb, "kind": self.kind}


# ---------------------------------------------------------------------- device and peak
def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an ``n x n`` matmul in ``dtype``: the practical peak of this device and thread count."""
    g = torch.Generator("cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    best = min(_timed(lambda: a @ b, device, repeats, warmup=2))
    return 2.0 * n**3 / best


def device_info(cfg: PerfConfig) -> dict[str, Any]:
    """Name, threads, versions and the peak FLOP/s the transformer's achieved FLOP/s is compared with."""
    device = torch.device(cfg.device)
    bf16 = cfg.precision == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    info: dict[str, Any] = {
        "type": device.type,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "precision": cfg.precision,
    }
    flags = _cpu_flags()
    info["cpu_features"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        info["name"] = name
        known = next((v for k, v in GPU_PEAK_TFLOPS_BF16.items() if k in name), None)
        if bf16 and known is not None:
            info["peak_tflops"] = known
            info["peak_source"] = f"datasheet: {name} dense bf16 {known:g} TFLOP/s"
        else:
            info["peak_tflops"] = matmul_peak_flops(device, dtype, n=8192) / 1e12
            info["peak_source"] = f"measured: best 8192^3 {cfg.precision} matmul"
    else:
        info["name"] = info["cpu"]
        info["peak_tflops"] = matmul_peak_flops(device, dtype) / 1e12
        info["peak_source"] = (
            f"measured: best 2048^3 {cfg.precision} matmul on {torch.get_num_threads()} torch threads "
            "(this machine's practical peak; no vendor figure is published per vCPU)"
        )
    return info


# ---------------------------------------------------------------------- models and inputs
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
    with torch.device(cfg.device):  # initialise in place on the GPU (SD3.5 in fp32 is ~14 GB)
        gen = build_generator(preset)
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


def _autocast(device: torch.device, precision: str | None) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ---------------------------------------------------------------------- sections
def _attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                     **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


def transformer_flops(transformer: Callable[..., Tensor], args: tuple[Tensor, ...]) -> int:
    """FLOPs of one forward (matmuls, convolutions and attention; the CPU flash kernel counted as SDPA)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        transformer(*args)
    return int(counter.get_total_flops())


def measure_transformer(gen: Any, masks: Tensor, embeds: Tensor, pooled: Tensor, cfg: PerfConfig,
                        peak_tflops: float) -> dict[str, Any]:
    """Forward seconds of the transformer on the sampling batch, FLOPs, achieved TFLOP/s and fraction of peak."""
    device = torch.device(cfg.device)
    dtype = next(gen.transformer.parameters()).dtype
    with torch.no_grad(), _autocast(device, cfg.precision):
        m = gen.encode_mask(masks.to(device)).to(dtype)
        g = torch.Generator("cpu").manual_seed(cfg.seed)
        x = torch.randn(m.shape, generator=g).to(device, dtype)
        t = torch.full((m.shape[0],), 500.0, device=device)
        args = (x, m, t, embeds.to(device, dtype), pooled.to(device, dtype))
        seconds = _timed(lambda: gen.transformer(*args), device, cfg.repeats)
        flops = transformer_flops(gen.transformer, args)
    s = stats(seconds)
    achieved = flops / s["median"] / 1e12
    base = getattr(gen.transformer, "_orig_mod", gen.transformer)
    return {
        "forward_seconds": s,
        "batch": int(m.shape[0]),
        "tokens": {
            "image": int(m.shape[-1] * m.shape[-2] // base.config.patch_size**2),
            "mask": int(m.shape[-1] * m.shape[-2] // base.config.patch_size**2),
            "text": int(embeds.shape[1]),
        },
        "params": sum(p.numel() for p in base.parameters()),
        "flops_per_forward": flops,
        "achieved_tflops": achieved,
        "achieved_tflops_best": flops / s["min"] / 1e12,
        "peak_tflops": peak_tflops,
        "fraction_of_peak": achieved / peak_tflops if peak_tflops > 0 else float("nan"),
    }


def measure_sampling(gen: Any, judge: nn.Module, masks: Tensor, embeds: Tensor, pooled: Tensor,
                     cfg: PerfConfig) -> dict[str, Any]:
    """Plain vs CRFM seconds per image, CRFM's breakdown, standalone VAE/judge passes, peak memory, ratios."""
    from todsynth.sample.crfm import CRFMConfig
    from todsynth.sample.profile import profile_sampling
    from todsynth.sample.sampler import SamplerConfig, sample

    device = torch.device(cfg.device)
    clock = "cuda" if device.type == "cuda" else cfg.clock
    scfg = SamplerConfig(num_inference_steps=cfg.steps, batch_size=cfg.batch, clock=clock,  # type: ignore[arg-type]
                         precision=cfg.precision)  # type: ignore[arg-type]
    crfm = CRFMConfig(rectified_step=cfg.rectified)
    with _autocast(device, cfg.precision):  # the standalone passes run like the in-loop ones
        prof = profile_sampling(gen, judge, masks, embeds, pooled, scfg, crfm, repeats=cfg.repeats)
    runs = prof["runs"]
    seeds = list(range(masks.shape[0]))
    with PeakMemory(device) as plain_mem:
        sample(gen, masks, embeds, pooled, seeds, scfg)
    with PeakMemory(device) as crfm_mem:
        sample(gen, masks, embeds, pooled, seeds, scfg, crfm, judge)

    sections = ("transformer", "vae_decode", "judge", "euler", "final_decode", "encode_mask")

    def section_rows(timings: list[dict[str, float]]) -> list[dict[str, float]]:
        rows = []
        for t in timings:
            row = {k: t.get(k, 0.0) for k in sections}
            row["other"] = t["total"] - sum(row.values())
            rows.append(row)
        return rows

    per_round, plain_round = section_rows(runs["crfm_timings"]), section_rows(runs["plain_timings"])
    breakdown = {k: stats([r[k] for r in per_round]) for k in (*sections, "other")}
    # Where the extra goes, round by round: CRFM's section minus plain's (vae_decode/judge: the in-loop passes),
    # and the part beyond the necessary passes (extra - standalone passes), as a fraction of those passes.
    extra = {k: stats([c[k] - p[k] for c, p in zip(per_round, plain_round, strict=True)]) for k in (*sections, "other")}
    beyond = {
        "transformer": [(c["transformer"] - p["transformer"]) / n
                        for c, p, n in zip(per_round, plain_round, runs["necessary"], strict=True)],
        "passes_in_loop_vs_standalone": [(c["vae_decode"] + c["judge"] - n) / n
                                         for c, n in zip(per_round, runs["necessary"], strict=True)],
        "rest": [sum(c[k] - p[k] for k in ("euler", "final_decode", "encode_mask", "other")) / n
                 for c, p, n in zip(per_round, plain_round, runs["necessary"], strict=True)],
    }
    plain_min, crfm_min, parts_min = min(runs["plain"]), min(runs["crfm"]), min(runs["necessary"])
    paired = [(c - p) / n for p, c, n in zip(runs["plain"], runs["crfm"], runs["necessary"], strict=True)]
    corrections = cfg.rectified
    return {
        "plain": {
            "seconds_per_image": stats(runs["plain"]),
            "transformer_seconds_per_step_per_image": prof["breakdown"]["transformer_step"],
            "breakdown_seconds_per_image": {k: stats([r[k] for r in plain_round]) for k in (*sections, "other")
                                            if k not in ("vae_decode", "judge")},
            "memory": plain_mem.as_dict(),
        },
        "crfm": {
            "seconds_per_image": stats(runs["crfm"]),
            "rectified_steps": cfg.rectified,
            "breakdown_seconds_per_image": breakdown,
            "extra_seconds_per_image": crfm_min - plain_min,
            "extra_breakdown_seconds_per_image": extra,  # CRFM section - plain section, per round
            "beyond_parts_fraction": {k: statistics.median(v) for k, v in beyond.items()},  # of the necessary passes
            "necessary_seconds_per_image": stats(runs["necessary"]),
            "rounds": {k: runs[k] for k in ("plain", "crfm", "necessary")},  # seconds per image, round by round
            "in_loop_ratio": prof["in_loop_ratio"],
            "memory": crfm_mem.as_dict(),
        },
        "vae": {
            "decode_fwd_bwd_seconds_per_image": stats(runs["vae_decode_fwd_bwd"]),
            "decode_fwd_bwd_in_loop_seconds_per_image": stats([r["vae_decode"] / corrections for r in per_round]),
            "final_decode_seconds_per_image": stats([t["final_decode"] for t in runs["crfm_timings"]]),
            "params": sum(p.numel() for p in gen.vae.parameters()),
        },
        "judge": {
            "model": cfg.judge,
            "fwd_bwd_seconds_per_image": stats(runs["judge_fwd_bwd"]),
            "fwd_bwd_in_loop_seconds_per_image": stats([r["judge"] / corrections for r in per_round]),
            "params": sum(p.numel() for p in judge.parameters()),
        },
        "crfm_over_plain": statistics.median(c / p for p, c in zip(runs["plain"], runs["crfm"], strict=True)),
        "crfm_over_plain_min": crfm_min / plain_min,
        "crfm_overhead_vs_parts": statistics.median(paired),
        "crfm_overhead_vs_parts_min": (crfm_min - plain_min) / parts_min,
    }


def measure_train(gen: Any, cfg: PerfConfig) -> dict[str, Any]:
    """One generator training step (branches trainable, flow-matching MSE, backward, clip 1.0, AdamW):
    seconds, samples/s and peak memory. Mirrors ``todsynth.train.generator``'s step on random latents."""
    from todsynth.train.flow import flow_matching_loss, noisy_latents
    from todsynth.train.trainable import configure_trainable

    device = torch.device(cfg.device)
    model = getattr(gen.transformer, "_orig_mod", gen.transformer)
    model.to(torch.float32)  # fp32 master weights; bf16 is autocast, as accelerate's mixed precision
    checkpointing = bool(gen.config.get("train", {}).get("gradient_checkpointing", False))
    model.gradient_checkpointing = checkpointing
    params = configure_trainable(model, "branches")
    opt = torch.optim.AdamW(list(params.values()), lr=1e-6)
    b = int(cfg.train_batch)  # type: ignore[arg-type]
    g = torch.Generator("cpu").manual_seed(cfg.seed + 1)
    shape = (b, *gen.latent_shape)
    x0, noise, m = (torch.randn(shape, generator=g).to(device) for _ in range(3))
    _, embeds, pooled = perf_inputs(gen, b, cfg.seed + 2)
    embeds, pooled = embeds.to(device), pooled.to(device)
    sigma = torch.rand(b, generator=g).to(device)
    t = sigma * gen.num_train_timesteps

    def step() -> None:
        with _autocast(device, cfg.precision):
            pred = model(noisy_latents(x0, noise, sigma), m, t, embeds, pooled)
        loss = flow_matching_loss(pred, x0, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    try:
        seconds = _timed(step, device, cfg.repeats, warmup=2)
        with PeakMemory(device) as mem:
            step()
    finally:
        model.requires_grad_(False).eval()
        model.gradient_checkpointing = False
        opt.state.clear()  # free the AdamW moments before sampling is measured
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "batch": b,
        "step_seconds": stats(seconds),
        "samples_per_s": stats([b / s for s in seconds]),
        "precision": cfg.precision,
        "gradient_checkpointing": checkpointing,
        "trainable_params": sum(p.numel() for p in params.values()),
        "memory": mem.as_dict(),
    }


def measure_fid(judge: nn.Module, cfg: PerfConfig) -> dict[str, Any]:
    """FID feature extraction throughput (images/s) on random [0,1] images at the sampling size."""
    from todsynth.metrics.fid import build_extractor, extract_features

    device = torch.device(cfg.device)
    extractor = build_extractor("auto", evaluator=getattr(judge, "model", judge), device=device)
    n = cfg.fid_images
    images = torch.rand(n, 3, int(cfg.res), int(cfg.res), generator=torch.Generator("cpu").manual_seed(cfg.seed))
    feats: list[Any] = []
    seconds = _timed(lambda: feats.append(extract_features(images, extractor, batch_size=16)), device, cfg.repeats)
    return {
        "extractor": getattr(extractor, "name", type(extractor).__name__),
        "comparable": bool(getattr(extractor, "comparable", False)),
        "n_images": n,
        "feature_dim": int(feats[-1].shape[1]),
        "images_per_s": stats([n / s for s in seconds]),
    }


# ---------------------------------------------------------------------- the run
@contextmanager
def _phase(progress: ProgressFn | None, name: str) -> Iterator[None]:
    if progress is not None:
        progress(name)
    yield


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the body with ``n`` torch intra-op threads (None: unchanged); the previous count is restored after."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_perf(cfg: PerfConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Measure everything ``cfg`` asks for and return the JSON-ready report (see the module docstring)."""
    cfg = cfg.resolved()
    with torch_threads(cfg.threads):
        return _run(cfg, progress)


def _run(cfg: PerfConfig, progress: ProgressFn | None) -> dict[str, Any]:
    from todsynth.sample.speed import prepare_for_sampling

    t_start = time.perf_counter()
    device = torch.device(cfg.device)
    with _phase(progress, "building models"):
        gen, judge = build_perf_models(cfg)
        masks, embeds, pooled = perf_inputs(gen, cfg.batch, cfg.seed)
    with _phase(progress, "device peak"):
        dev = device_info(cfg)
    with _phase(progress, "training step"):
        train = measure_train(gen, cfg)
    dtype = torch.bfloat16 if (cfg.precision == "bf16" and device.type == "cuda") else None
    prepare_for_sampling(gen, judge, dtype=dtype, channels_last=bool(cfg.channels_last), compile=cfg.compile)
    with _phase(progress, "transformer forward + FLOPs"):
        transformer = measure_transformer(gen, masks, embeds, pooled, cfg, float(dev["peak_tflops"]))
    with _phase(progress, "plain vs CRFM sampling"):
        sampling = measure_sampling(gen, judge, masks, embeds, pooled, cfg)
    with _phase(progress, "FID features"):
        fid = measure_fid(judge, cfg)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": asdict(cfg),
        "crfm_over_plain": sampling.pop("crfm_over_plain"),
        "crfm_overhead_vs_parts": sampling.pop("crfm_overhead_vs_parts"),
        "crfm_over_plain_min": sampling.pop("crfm_over_plain_min"),
        "crfm_overhead_vs_parts_min": sampling.pop("crfm_overhead_vs_parts_min"),
        "device": dev,
        "transformer": transformer,
        **sampling,
        "train": train,
        "fid": fid,
    }
    report["seconds"] = time.perf_counter() - t_start
    return report


# ---------------------------------------------------------------------- output
def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as standard JSON (non-finite -> null), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    tmp.replace(path)
    return path


def _fmt_s(s: dict[str, float]) -> str:
    def f(x: float) -> str:
        return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"

    return f"{f(s['median'])}  [{f(s['min'])} .. {f(s['max'])}]"


def _fmt_rate(s: dict[str, float], unit: str) -> str:
    return f"{s['median']:.1f} {unit}  [{s['min']:.1f} .. {s['max']:.1f}]"


def _fmt_mem(m: dict[str, Any]) -> str:
    return f"{m['peak_mb']:.0f} MiB ({'RSS' if m['kind'] == 'rss' else 'CUDA max allocated'})"


def perf_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, value, note) rows of a report, in reading order (the CLI prints them as a table)."""
    c, cr, tr, t = r["config"], r["crfm"], r["transformer"], r["train"]
    b = cr["breakdown_seconds_per_image"]
    rows = [
        ("device", r["device"]["name"], f"{r['device']['torch_threads']} threads, {c['precision']}, torch {r['device']['torch']}"),
        ("transformer forward", _fmt_s(tr["forward_seconds"]), f"batch {tr['batch']}, {tr['flops_per_forward'] / 1e9:.3g} GFLOP"),
        ("transformer FLOP/s", f"{tr['achieved_tflops'] * 1e3:.2f} GFLOP/s",
         f"{100 * tr['fraction_of_peak']:.1f}% of peak {tr['peak_tflops'] * 1e3:.0f} GFLOP/s ({r['device']['peak_source'].split(':')[0]})"),
        ("plain sampling", _fmt_s(r["plain"]["seconds_per_image"]) + " /image", f"{c['steps']} steps, batch {c['batch']}, {c['res']} px"),
        ("CRFM sampling", _fmt_s(cr["seconds_per_image"]) + " /image", f"{c['rectified']} of {c['steps']} steps rectified"),
        ("  transformer", _fmt_s(b["transformer"]) + " /image", "in loop, all steps"),
        ("  VAE decode fwd+bwd", _fmt_s(b["vae_decode"]) + " /image", "in loop, all rectified steps"),
        ("  judge fwd+bwd", _fmt_s(b["judge"]) + " /image", f"in loop, {r['judge']['model']}"),
        ("  Euler + final decode", _fmt_s({k: b["euler"][k] + b["final_decode"][k] for k in ("median", "min", "max")}) + " /image", ""),
        ("  other", _fmt_s(b["other"]) + " /image", "loop bookkeeping"),
        ("VAE decode fwd+bwd (standalone)", _fmt_s(r["vae"]["decode_fwd_bwd_seconds_per_image"]) + " /image", "per rectified step"),
        ("judge fwd+bwd (standalone)", _fmt_s(r["judge"]["fwd_bwd_seconds_per_image"]) + " /image", "per rectified step"),
        ("CRFM / plain", f"{r['crfm_over_plain']:.3f}x", f"median of rounds; from minima {r['crfm_over_plain_min']:.3f}x"),
        ("CRFM overhead vs parts", f"{r['crfm_overhead_vs_parts']:.3f}x",
         f"extra / ({c['rectified']} x (decode+judge fwd+bwd)), median of rounds; from minima {r['crfm_overhead_vs_parts_min']:.3f}x"),
        ("  beyond the passes", ", ".join(f"{k.replace('_', ' ')} {100 * v:+.1f}%" for k, v in cr["beyond_parts_fraction"].items()),
         "of the passes, median of rounds"),
        ("peak memory plain / CRFM", f"{_fmt_mem(r['plain']['memory'])} / {_fmt_mem(cr['memory'])}", ""),
        ("training step", _fmt_rate(t["samples_per_s"], "samples/s"),
         f"batch {t['batch']}, {_fmt_s(t['step_seconds'])}, peak {_fmt_mem(t['memory'])}"),
        ("FID features", _fmt_rate(r["fid"]["images_per_s"], "images/s"), f"{r['fid']['extractor']}, {r['fid']['feature_dim']} dims"),
        ("total", f"{r['seconds']:.1f} s", f"{c['repeats']} repeats after warm-up; [min .. max]"),
    ]
    return rows


def log_perf(report: dict[str, Any], tracking_uri: str, json_path: Path | None = None) -> str:
    """Log a report to MLflow (experiment ``todsynth/perf``): config as params, numbers as metrics, the JSON
    as an artifact. Returns the run id."""
    import tempfile

    import yaml

    from bench.tracking import Tracker

    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        lock_dir, artifacts = db.parent, str(db.parent / "mlartifacts")
    else:
        lock_dir, artifacts = Path(tempfile.gettempdir()) / "todsynth-perf-locks", None
    tracker = Tracker(tracking_uri, artifacts, "todsynth/perf", lock_dir)
    c = report["config"]
    run = tracker.start_parent(
        f"perf-{c['preset']}-{c['device']}-{c['res']}px",
        params=c,
        tags={"todsynth.device": report["device"]["name"], "todsynth.schema": SCHEMA},
        resolved_yaml=yaml.safe_dump(c, sort_keys=True),
        kind="perf",
    )
    try:
        metrics = {k: v for k, v in report.items() if k not in ("config", "schema", "created")}
        tracker.log_metrics(run, metrics)
        if json_path is not None:
            tracker.log_artifact(run, Path(json_path))
        else:
            tracker.log_text(run, json.dumps(_json_safe(report), indent=2), "perf.json")
    except BaseException:
        tracker.end(run, "FAILED")
        raise
    tracker.end(run)
    return run

"""Generator training with accelerate: flow matching on the mask-conditioned MM-DiT.

Usable in-process on CPU and under ``accelerate launch`` (DDP, bf16/fp16). All randomness (data
order, orientations, caption dropout, timesteps, noise) comes from one CPU ``torch.Generator`` seeded by
``cfg.seed``; every process draws the global batch and takes its own slice, so the generator state
is the same on all processes and one saved copy resumes them all. A resumed run restores weights,
optimizer, LR schedule, EMA, that generator and the epoch permutation, so it ends with exactly the
weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from todsynth.errors import ConfigError
from todsynth.files import atomic_write_bytes, read_json, read_log_lines
from todsynth.models.generator import (
    Generator,
    build_generator,
    draw_noise,
    load_transformer_weights,
    save_generator,
    seeded_init,
)
from todsynth.models.presets import is_scratch, mask_stream, resolve_preset
from todsynth.progress import progress_bar
from todsynth.text.base import PromptSource
from todsynth.train.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    read_state,
    save_checkpoint,
)
from todsynth.train.config import TrainConfig
from todsynth.train.data import (
    LatentSet,
    encode_dataset,
    encode_pairs,
    load_items,
    orientation_code,
    orientations,
)
from todsynth.train.flow import sample_sigmas, train_sigma_table
from todsynth.train.step import TrainBatch, train_step
from todsynth.train.trainable import configure_trainable, ema_update, merge_lora

SUMMARY_FILE = "train_summary.json"
LOG_FILE = "log.jsonl"
GENERATOR_DIR = "generator"


def generator_preset(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved generator preset a training config describes (VAE dir and mask init folded in)."""
    overrides = dict(cfg.preset_overrides)
    if cfg.vae_dir is not None:
        overrides["vae_path"] = str(cfg.vae_dir)
    if cfg.mask_init is not None:
        overrides["mask_stream"] = {**overrides.get("mask_stream", {}), "init": cfg.mask_init}
    preset = resolve_preset(cfg.preset, overrides)
    if is_scratch(preset) and not preset.get("vae_path"):
        raise ConfigError(
            f"preset {cfg.preset!r} is trained from scratch and needs a trained VAE: set vae_dir "
            "(todsynth.train.train_vae writes one; `todsynth gen train` trains it first)"
        )
    if cfg.mask_dropout > 0 and mask_stream(preset)["tokens"]:
        raise ConfigError(
            f"mask_dropout={cfg.mask_dropout} needs a generator without a mask token stream "
            "(preset mask_stream.tokens: false; a token stream cannot be dropped per sample)"
        )
    return preset


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Batches:
    """Epoch-wise shuffled indices drawn from the training generator (state: permutation + position)."""

    def __init__(self, n: int, rng: torch.Generator) -> None:
        self.n, self.rng = n, rng
        self.perm = torch.randperm(n, generator=rng)
        self.pos = 0

    def take(self, count: int) -> Tensor:
        out: list[Tensor] = []
        need = count
        while need:
            if self.pos >= self.n:
                self.perm = torch.randperm(self.n, generator=self.rng)
                self.pos = 0
            k = min(need, self.n - self.pos)
            out.append(self.perm[self.pos : self.pos + k])
            self.pos += k
            need -= k
        return torch.cat(out)


def _batch_tensors(
    gen: Generator,
    data: LatentSet | None,
    dataset: Any,
    prompts: PromptSource,
    idx: Tensor,
    code: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x0 latents, mask latents, prompt embeds, pooled) of a batch, on CPU, float32."""
    if data is not None:
        k = data.rows(code)
        x0 = data.latents[k, idx]
        m = data.mask_latents[k, idx]
        rows = data.prompt_index[idx]
        return x0, m, data.embeds[rows], data.pooled[rows]
    images, masks, texts = load_items(dataset, idx.tolist(), gen.image_size)
    x0, m = encode_pairs(gen, images, masks, code)
    e, p = prompts.get(texts)
    return x0, m, e.float().cpu(), p.float().cpu()


class _MicroBatches:
    """Draws micro-batches from the training generator.

    Each process draws the global batch (order, orientations, caption dropout, timesteps, noise) and keeps its own slice,
    so the generator state is the same everywhere.
    """

    def __init__(self, cfg: TrainConfig, gen: Generator, data: LatentSet | None, dataset: Any,
                 prompts: PromptSource, uncond: tuple[Tensor, Tensor], rng: torch.Generator, order: _Batches,
                 accelerator: Any) -> None:
        self.cfg, self.gen, self.data, self.dataset, self.prompts, self.uncond = cfg, gen, data, dataset, prompts, uncond
        self.rng, self.order, self.device = rng, order, accelerator.device
        self.size = cfg.batch_size * accelerator.num_processes
        rank = accelerator.process_index
        self.mine = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
        self.sigmas, self.timesteps = train_sigma_table(gen.num_train_timesteps, gen.shift)

    def draw(self) -> TrainBatch:
        """The next micro-batch, this process's slice, on the device."""
        cfg, rng, g, mine = self.cfg, self.rng, self.size, self.mine
        idx = self.order.take(g)
        flip = torch.rand(g, generator=rng) < 0.5 if cfg.hflip else torch.zeros(g, dtype=torch.bool)
        turns = torch.randint(4, (g,), generator=rng) if cfg.rot90 else torch.zeros(g, dtype=torch.long)
        code = orientation_code(flip.long(), turns)
        u = torch.rand(g, generator=rng)  # one draw decides both dropouts (nested: equal rates drop together)
        drop = u < cfg.caption_dropout
        sigma, t = sample_sigmas(cfg.timestep_sampling, g, self.sigmas, self.timesteps, rng, cfg.logit_mean, cfg.logit_std)
        noise = draw_noise((g, *self.gen.latent_shape), rng, self.gen.noise_offset, self.gen.noise_groups)
        x0, m, e, p = _batch_tensors(self.gen, self.data, self.dataset, self.prompts, idx[mine], code[mine])
        d = drop[mine]
        e = torch.where(d[:, None, None], self.uncond[0].expand_as(e), e)
        p = torch.where(d[:, None], self.uncond[1].expand_as(p), p)
        x0, noise_b, m, e, p = (v.to(self.device) for v in (x0, noise[mine], m, e, p))
        keep = (u[mine] >= cfg.mask_dropout).float().to(self.device) if cfg.mask_dropout > 0 else None
        return TrainBatch(x0, m, e, p, noise_b, sigma[mine].to(self.device), t[mine].to(self.device), keep)


def _completed(out_dir: Path, cfg: TrainConfig) -> bool:
    """True when ``out_dir`` holds a finished run of this config (its generator is saved)."""
    path = out_dir / SUMMARY_FILE
    if not path.is_file() or not (out_dir / GENERATOR_DIR / "config.json").is_file():
        return False
    summary = read_json(path)  # a damaged summary is named (ConfigError), not a JSON traceback
    if not isinstance(summary, dict):
        raise ConfigError(f"{path} is not a training summary (a JSON object); delete {out_dir} to train again")
    return bool(summary.get("completed")) and not cfg.resume_mismatch(summary.get("config", {}))


@dataclass
class _Run:
    """The training run's live objects (what a checkpoint saves and restores, and what the loop steps)."""

    accelerator: Any
    gen: Generator
    prepared: Any  # the transformer as accelerate prepared it (DDP / mixed-precision forward)
    params: dict[str, torch.nn.Parameter]
    optimizer: Any
    lr_scheduler: Any
    ema: dict[str, Tensor] | None
    mask_stream_params: int  # counted once the trainable set is configured (LoRA adapters included)


def _setup(cfg: TrainConfig, preset: dict[str, Any], accelerator: Any) -> _Run:
    """Build the generator, its trainable set, AdamW, the cosine schedule and the EMA; prepare them."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    gen = build_generator(preset)
    if cfg.init_from is not None:
        load_transformer_weights(gen, cfg.init_from)
    gen.vae.to(accelerator.device)
    model = gen.transformer
    model.gradient_checkpointing = cfg.gradient_checkpointing
    with seeded_init(cfg.seed + 2):
        params = configure_trainable(model, cfg.trainable, cfg.lora_rank, cfg.lora_alpha)
    optimizer = torch.optim.AdamW(
        list(params.values()), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    ema = {n: p.detach().clone().float() for n, p in params.items()} if cfg.ema_decay is not None else None
    n_mask = sum(p.numel() for p in model.mask_stream_parameters())
    return _Run(accelerator, gen, prepared, params, optimizer, lr_scheduler, ema, n_mask)


def _resume(out_dir: Path, cfg: TrainConfig, run: _Run, rng: torch.Generator, order: _Batches, resume: bool) -> int:
    """Restore the newest checkpoint into ``run``, ``rng`` and ``order`` (resume) or discard them; the start step.

    ``log.jsonl`` keeps only the lines up to the start step.
    """
    start = 0
    ckpts = list_checkpoints(out_dir)
    if ckpts and resume:
        saved = read_state(ckpts[-1])["config"]
        mismatch = cfg.resume_mismatch(saved)
        if mismatch:
            raise ConfigError(
                f"cannot resume {ckpts[-1]}: config differs in {mismatch}; use another out_dir or resume=False"
            )
        scaler = run.accelerator.scaler
        st = load_checkpoint(ckpts[-1], run.params, run.optimizer, run.lr_scheduler, run.ema, scaler)
        rng.set_state(st.rng_state)
        order.perm, order.pos, start = st.perm, st.pos, st.step
    elif ckpts:
        prune_checkpoints(out_dir, 0)
    log_path = out_dir / LOG_FILE
    kept = [r for r in read_log_lines(log_path) if r.get("step", start + 1) <= start] if log_path.exists() else []
    if run.accelerator.is_main_process:  # a line cut by a kill is dropped, not a reason to refuse the resume
        atomic_write_bytes(log_path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return start


def train_generator(
    cfg: TrainConfig,
    dataset: Any,
    prompt_cache: PromptSource,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Train the mask-conditioned generator; returns ``out_dir/generator`` (a ``save_generator`` dir).

    Args:
        cfg: training settings. dataset: items ``{"image" (3,H,W) [0,1], "mask" long (H,W), "prompt"}``
            (``todsynth.data.loveda.LoveDA``); resized to the preset's image size.
        prompt_cache: ``get(prompts) -> (embeds, pooled)`` (``todsynth.text.PromptCache``); the empty
            prompt "" is the caption-dropout / CFG unconditional embedding.
        out_dir: run directory: ``checkpoint-<step>/``, ``log.jsonl``, ``train_summary.json``, ``generator/``.
        resume: continue from the newest checkpoint (its config must match, except cadence fields);
            False discards existing checkpoints. A finished run of the same config returns at once.
        progress: show a rich progress bar (step, loss, it/s) on the main process.
    """
    from accelerate import Accelerator

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume and _completed(out_dir, cfg):
        return out_dir / GENERATOR_DIR
    preset = generator_preset(cfg)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    run = _setup(cfg, preset, accelerator)

    t_encode = time.perf_counter()
    uncond_embeds, uncond_pooled = (t.float().cpu() for t in prompt_cache.get([""]))
    codes = orientations(cfg.hflip, cfg.rot90)
    data = encode_dataset(run.gen, dataset, prompt_cache, codes=codes) if cfg.cache_latents else None
    t_encode = time.perf_counter() - t_encode
    rng = torch.Generator().manual_seed(cfg.seed)
    order = _Batches(len(data) if data is not None else len(dataset), rng)
    start = _resume(out_dir, cfg, run, rng, order, resume)
    draws = _MicroBatches(cfg, run.gen, data, dataset, prompt_cache, (uncond_embeds, uncond_pooled), rng, order,
                          accelerator)
    t0 = time.perf_counter()
    losses = _train_loop(cfg, run, draws, out_dir, start, progress)
    return _finish(cfg, run, out_dir, losses, start, time.perf_counter() - t0, t_encode)


def _train_loop(cfg: TrainConfig, run: _Run, draws: _MicroBatches, out_dir: Path, start: int,
                progress: bool) -> list[float]:
    """Steps ``start .. cfg.steps - 1``: train_step, LR schedule, EMA, log lines, checkpoints; returns the losses."""
    accelerator = run.accelerator
    params = list(run.params.values())
    samples_per_step = draws.size * cfg.grad_accum
    window: list[float] = []
    losses: list[float] = []
    t0 = time.perf_counter()
    with progress_bar("gen train", cfg.steps, enabled=progress and accelerator.is_main_process,
                      completed=start) as update:
        for step in range(start, cfg.steps):
            run.prepared.train()
            micro = [draws.draw() for _ in range(cfg.grad_accum)]
            step_loss = train_step(run.prepared, micro, run.optimizer, params, max_grad_norm=cfg.max_grad_norm,
                                   backend=accelerator)
            run.lr_scheduler.step()
            if run.ema is not None:
                ema_update(run.ema, run.params, cfg.ema_decay)  # type: ignore[arg-type]
            done = step + 1
            window.append(step_loss)
            losses.append(step_loss)
            its = (done - start) / max(time.perf_counter() - t0, 1e-9)
            update(done, 0, **{"loss": step_loss, "it/s": its})
            if done % cfg.log_every == 0 or done == cfg.steps:
                if accelerator.is_main_process:
                    line = {"step": done, "loss": sum(window) / len(window), "lr": run.lr_scheduler.get_last_lr()[0],
                            "it_per_s": its, "samples_per_s": its * samples_per_step}
                    with (out_dir / LOG_FILE).open("a") as fh:
                        fh.write(json.dumps(line) + "\n")
                window = []
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                if accelerator.is_main_process:
                    save_checkpoint(out_dir, done, run.params, run.optimizer, run.lr_scheduler, draws.rng,
                                    draws.order.perm, draws.order.pos, cfg.to_dict(), run.ema, accelerator.scaler)
                    prune_checkpoints(out_dir, cfg.keep_checkpoints)
                accelerator.wait_for_everyone()
    return losses


def _finish(cfg: TrainConfig, run: _Run, out_dir: Path, losses: list[float], start: int, elapsed: float,
            t_encode: float) -> Path:
    """Final weights (EMA copied in, LoRA merged) saved as ``out_dir/generator`` with ``train_summary.json``."""
    accelerator = run.accelerator
    model = accelerator.unwrap_model(run.prepared, keep_fp32_wrapper=False)
    if run.ema is not None:
        with torch.no_grad():
            for name, p in run.params.items():
                p.copy_(run.ema[name])
    if cfg.trainable == "lora":
        merge_lora(model)
    model.gradient_checkpointing = False
    model.requires_grad_(False).eval()
    gen_dir = out_dir / GENERATOR_DIR
    if accelerator.is_main_process:
        save_generator(run.gen, gen_dir)
        g = cfg.batch_size * accelerator.num_processes
        steps_run = cfg.steps - start
        tail = losses[-max(1, len(losses) // 10) :]
        summary = {
            "completed": True,
            "config": cfg.to_dict(),
            "steps": cfg.steps,
            "resumed_from": start,
            "final_loss": sum(tail) / len(tail) if tail else None,
            "train_seconds": elapsed,
            "encode_seconds": t_encode,
            "samples_per_s": steps_run * g * cfg.grad_accum / elapsed if steps_run else None,
            "peak_rss_mb": _peak_rss_mb(),
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            "trainable_params": sum(p.numel() for p in run.params.values()),
            "mask_stream_params": run.mask_stream_params,
            "num_processes": accelerator.num_processes,
            "device": str(accelerator.device),
        }
        atomic_write_bytes(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2).encode())
    accelerator.wait_for_everyone()
    return gen_dir

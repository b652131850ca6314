"""What ``todsynth bench perf`` measures: :class:`PerfConfig` (one per CLI call) and the per-preset defaults."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from todsynth.errors import ConfigError
from todsynth.sample.config import rectified_step_problem

SCHEMA = "todsynth.perf/1"
PERF_PRESETS: tuple[str, ...] = ("tiny", "sd3.5-medium")
DEFAULT_JUDGE = {"tiny": "fcn-tiny", "sd3.5-medium": "fcn-r18"}
# Sampling batch per preset: tiny samples 8 at a time like the smoke suite and the release's scripts (at batch 2
# the CPU figures mostly measure per-call overhead); SD3.5-medium at 512 px keeps 2 (CRFM's decoder backward).
DEFAULT_BATCH = {"tiny": 8, "sd3.5-medium": 2}


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
        clock: ``wall`` or ``cpu`` (process CPU seconds) for the sampling rows on CPU; CUDA always uses events. The
            train-step, transformer and FID rows are wall time (``timing.timed``).
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
        if why := rectified_step_problem(self.rectified, self.steps, "--steps"):
            raise ConfigError(f"--rectified {why}")
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

"""The sampler's and CRFM's settings: two frozen dataclasses, the one definition of every knob.

Torch-free, so suite validation (``bench/schema``) and the CLI build and check them before any work. A suite's
``sampling:``/``crfm:`` sections are generated from these classes' fields (``bench.schema.sections``), a
variant's override is a partial mapping applied with :func:`dataclasses.replace`, and every stage, tune trial,
perf run and CLI command samples with instances of them.

Each field's rule is written once, in ``field_problem``: ``__post_init__`` raises on the first problem and the
suite schema reports it under the field's key. The one rule between the two configs, CRFM rectifies the first
``rectified_step`` of the sampler's ``num_inference_steps`` Euler steps (METHOD.md), is
:func:`rectified_step_problem`; every place that checks it (CRFM's step sizes, the sampler, suite and tune
validation, ``todsynth gen sample``, ``bench perf``) calls it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal, get_args

StepScheme = Literal["C", "LI", "LD", "cosine"]
STEP_SCHEMES: tuple[str, ...] = get_args(StepScheme)
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def is_int(x: object) -> bool:
    """An int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def rectified_step_problem(rectified_step: object, num_inference_steps: object,
                           steps_name: str = "num_inference_steps") -> str | None:
    """None when ``rectified_step`` is an int in ``[0, num_inference_steps]``; else why not, in one phrase.

    The phrase names the steps as the caller's user knows them (``steps_name``), e.g.
    ``"30 > sampling.num_inference_steps 23"``.
    """
    if not is_int(num_inference_steps) or num_inference_steps < 1:  # type: ignore[operator]
        return f"{steps_name} must be an int >= 1, got {num_inference_steps!r}"
    if not is_int(rectified_step) or rectified_step < 0:  # type: ignore[operator]
        return f"must be an int >= 0, got {rectified_step!r}"
    if rectified_step > num_inference_steps:  # type: ignore[operator]
        return f"{rectified_step} > {steps_name} {num_inference_steps}"
    return None


def _raise_first_problem(config: object) -> None:
    """``ValueError("<Class>.<field> <why>")`` for the first field whose ``field_problem`` objects."""
    for f in fields(config):  # type: ignore[arg-type]
        why = type(config).field_problem(f.name, getattr(config, f.name))  # type: ignore[attr-defined]
        if why:
            raise ValueError(f"{type(config).__name__}.{f.name} {why}")


@dataclass(frozen=True)
class CRFMConfig:
    """Every CRFM knob. Defaults are the paper's/release's; ``rectified_step=0`` switches CRFM off.

    Args:
        rectified_step: number of leading sampling steps that are rectified (0 = off).
        num_rectified: corrections per rectified step (release: 1).
        max_step_size: ``alpha_max`` of the step-size schedule (release: 0.1).
        step_scheme: "C" constant, "LI" linear increasing, "LD" linear decreasing (default), "cosine".
        l2_norm: divide each sample's gradient by its L2 norm.
        shrink: the release's ``is_synth`` option, ``v *= (1 - alpha)`` before the gradient step.
        clamp: clamp the corrected velocity to ``[-clamp, clamp]`` (None disables).
        error_only: count the CE only on pixels the judge gets wrong (argmax != target).
        ignore_index: target label excluded from the loss.
        skip_below_error: beyond the paper; leave a sample's velocity untouched when the fraction of valid
            pixels its judge gets wrong is already below this value (None disables).
        judge_size: beyond the paper; run the judge at this square size (decoded image resized bilinearly
            with antialiasing, target nearest) to make the correction cheaper (None = full size).
        micro_batch: memory knob, results unchanged: decode + judge + backward this many samples at a time
            (bounds the VAE decoder's autograd memory, the CRFM peak at 512 px; None = the whole batch).
        return_x0: keep the intermediate clean-latent estimates ``x0_hat`` of every step.
    """

    rectified_step: int = 0
    num_rectified: int = 1
    max_step_size: float = 0.1
    step_scheme: StepScheme = "LD"
    l2_norm: bool = False
    shrink: bool = False
    clamp: float | None = 1.0
    error_only: bool = True
    ignore_index: int = 255
    skip_below_error: float | None = None
    judge_size: int | None = None
    micro_batch: int | None = None
    return_x0: bool = False

    def __post_init__(self) -> None:
        _raise_first_problem(self)

    @staticmethod
    def field_problem(name: str, value: object) -> str | None:
        """None when ``value`` is valid for field ``name``; else why not (``"must be an int >= 0, got -1"``)."""
        match name:
            case "rectified_step" if not (is_int(value) and value >= 0):  # type: ignore[operator]
                return f"must be an int >= 0, got {value!r}"
            case "num_rectified" if not (is_int(value) and value >= 1):  # type: ignore[operator]
                return f"must be an int >= 1, got {value!r}"
            case "max_step_size" if not (_is_number(value) and value >= 0):  # type: ignore[operator]
                return f"must be a finite number >= 0, got {value!r}"
            case "step_scheme" if value not in STEP_SCHEMES:
                return f"must be one of {STEP_SCHEMES}, got {value!r}"
            case "l2_norm" | "shrink" | "error_only" | "return_x0" if not isinstance(value, bool):
                return f"must be a bool, got {value!r}"
            case "clamp" if value is not None and not (_is_number(value) and value > 0):  # type: ignore[operator]
                return f"must be > 0 or None, got {value!r}"
            case "ignore_index" if not is_int(value):
                return f"must be an int, got {value!r}"
            case "skip_below_error" if value is not None and not (_is_number(value) and 0.0 <= value <= 1.0):  # type: ignore[operator]
                return f"must be in [0, 1] or None, got {value!r}"
            case "judge_size" | "micro_batch" if value is not None and not (is_int(value) and value >= 1):  # type: ignore[operator]
                return f"must be an int >= 1 or None, got {value!r}"
        return None

    @property
    def enabled(self) -> bool:
        """True when at least one step is rectified."""
        return self.rectified_step > 0


@dataclass(frozen=True)
class SamplerConfig:
    """Sampling settings.

    Args:
        num_inference_steps: Euler steps (release: 28 plain, 23 with CRFM).
        shift: timestep shift; None uses the generator's (SD3: 3.0).
        guidance_scale: classifier-free guidance; 1.0 = off (the release's setting). Above 1 the
            unconditional branch keeps the mask and swaps the prompt for the empty-prompt embedding.
        mask_guidance: the unconditional branch has no mask either (the transformer runs with ``mask_latents``
            None), so guidance strengthens the mask as well as the prompt. For a generator trained with
            ``TrainConfig.mask_dropout`` > 0; acts only with ``guidance_scale`` > 1.
        batch_size: samples per transformer call; results do not depend on it.
        precision: "fp32", or "bf16": transformer, VAE and judge run under ``torch.autocast(bfloat16)`` on the
            generator's device (the GPU setting; with bf16 weights, see ``todsynth.sample.speed``); the Euler
            update and the CRFM arithmetic stay float32.
    """

    num_inference_steps: int = 28
    shift: float | None = None
    guidance_scale: float = 1.0
    mask_guidance: bool = False
    batch_size: int = 4
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        _raise_first_problem(self)

    @staticmethod
    def field_problem(name: str, value: object) -> str | None:
        """None when ``value`` is valid for field ``name``; else why not (``"must be an int >= 1, got 0"``)."""
        match name:
            case "num_inference_steps" | "batch_size" if not (is_int(value) and value >= 1):  # type: ignore[operator]
                return f"must be an int >= 1, got {value!r}"
            case "shift" if value is not None and not (_is_number(value) and value > 0):  # type: ignore[operator]
                return f"must be > 0 or None, got {value!r}"
            case "guidance_scale" if not (_is_number(value) and value >= 1.0):  # type: ignore[operator]
                return f"must be >= 1.0 (1.0 = CFG off), got {value!r}"
            case "mask_guidance" if not isinstance(value, bool):
                return f"must be true or false, got {value!r}"
            case "precision" if value not in PRECISIONS:
                return f"must be one of {PRECISIONS}, got {value!r}"
        return None

"""``todsynth bench perf``: where the time goes, measured on one device.

Sections (each timed after a warm-up, ``repeats`` times; median, min and max):

* ``transformer``: one MaskMMDiT forward on the sampling batch, its FLOPs (``FlopCounterMode``, with the CPU
  flash-attention kernel counted too) and the achieved FLOP/s against the device's peak (``device``);
* ``plain`` / ``crfm``: seconds per image of Euler sampling without / with CRFM (``rectified`` of ``steps``
  steps rectified), CRFM's in-loop breakdown (transformer, VAE decode fwd+bwd, judge fwd+bwd, Euler, final
  decode, rest) and each variant's peak memory (one extra, untimed run);
* ``vae`` / ``judge``: the passes CRFM cannot avoid, timed standalone on the same shapes, interleaved with
  the sampling runs (``bench.perf.rounds.profile_sampling``), plus the plain final decode;
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

The sampler and CRFM hold no timing code: ``timing.Stopwatch`` is passed to ``sample(..., observer=...)`` and
times the loop's sections and, through wrapped ``decode``/``judge`` callables, CRFM's forward and backward passes.

Rooms, one job each: ``config`` (PerfConfig), ``models`` (random-init models and inputs), ``timing``
(Stopwatch, repeats, stats), ``memory`` (PeakMemory), ``device`` (name, peak FLOP/s), one module per measured
part (``transformer``, ``rounds`` + ``sampling``, ``train``, ``fid``), ``run`` (run_perf), ``output`` (JSON,
table rows, MLflow). This package re-exports their public names.
"""

from bench.perf.config import DEFAULT_BATCH, DEFAULT_JUDGE, PERF_PRESETS, SCHEMA, PerfConfig
from bench.perf.memory import PeakMemory
from bench.perf.models import build_perf_models, perf_inputs, perf_preset
from bench.perf.output import log_perf, perf_rows, perf_tracker, write_json
from bench.perf.rounds import profile_sampling
from bench.perf.run import run_perf, torch_threads
from bench.perf.timing import Stopwatch, stats
from bench.perf.transformer import transformer_flops

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_JUDGE",
    "PERF_PRESETS",
    "SCHEMA",
    "PeakMemory",
    "PerfConfig",
    "Stopwatch",
    "build_perf_models",
    "log_perf",
    "perf_tracker",
    "perf_inputs",
    "perf_preset",
    "perf_rows",
    "profile_sampling",
    "run_perf",
    "stats",
    "torch_threads",
    "transformer_flops",
    "write_json",
]

"""Speed changes keep results: no host reads inside the sampling loop, micro-batched CRFM equals one pass,
channels_last / decoder checkpointing / bf16 preparation, FLOP counting, bench.perf helpers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_sample_sampler import _inputs, generator, judge  # noqa: F401  (fixtures: tiny preset 32 px, 1x1 judge)

from bench.perf import PeakMemory, PerfConfig, perf_preset, stats, transformer_flops
from todsynth.errors import ConfigError
from todsynth.models.generator import build_generator
from todsynth.models.presets import TINY_SCRATCH_VAE_OVERRIDES, deep_merge, resolve_preset
from todsynth.sample.config import CRFMConfig, SamplerConfig
from todsynth.sample.sampler import sample
from todsynth.sample.speed import prepare_for_sampling

HOST_READS = ("cpu", "item", "tolist", "numpy", "__bool__", "__float__", "__int__")


def _count_host_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Patch Tensor methods that read device values on the host; returns the live call counter."""
    counts = dict.fromkeys(HOST_READS, 0)
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _name=name, _orig=original, **kw):
            counts[_name] += 1
            return _orig(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return counts


def test_sampling_loop_reads_nothing_on_the_host_per_step(generator, judge, monkeypatch) -> None:  # noqa: F811
    """Host reads (the CUDA syncs) do not grow with the number of steps or rectified steps."""
    masks, embeds, pooled, seeds = _inputs(2)
    counts = _count_host_reads(monkeypatch)
    totals = []
    for steps, rectified in ((3, 1), (6, 4)):
        for k in counts:
            counts[k] = 0
        cfg = SamplerConfig(num_inference_steps=steps, batch_size=2)
        out = sample(generator, masks, embeds, pooled, seeds, cfg, CRFMConfig(rectified_step=rectified, return_x0=True), judge)
        assert out.judge_loss.shape == (2, rectified) and len(out.x0) == steps
        totals.append(dict(counts))
    assert totals[0] == totals[1], totals


@pytest.mark.parametrize("micro_batch", [1, 2])
def test_micro_batched_crfm_equals_one_pass(generator, judge, micro_batch) -> None:  # noqa: F811
    masks, embeds, pooled, seeds = _inputs(3)
    cfg = SamplerConfig(num_inference_steps=3, batch_size=3)
    whole = sample(generator, masks, embeds, pooled, seeds, cfg, CRFMConfig(rectified_step=2, max_step_size=0.5), judge)
    micro = sample(generator, masks, embeds, pooled, seeds, cfg,
                   CRFMConfig(rectified_step=2, max_step_size=0.5, micro_batch=micro_batch), judge)
    plain = sample(generator, masks, embeds, pooled, seeds, cfg)
    assert not torch.allclose(whole.images, plain.images, atol=1e-4)  # CRFM did change the images
    assert torch.allclose(micro.images, whole.images, atol=1e-5)
    assert torch.allclose(micro.judge_loss, whole.judge_loss, atol=1e-5)
    assert torch.equal(micro.error_fraction, whole.error_fraction)


def test_micro_batch_with_skips_matches(generator, judge) -> None:  # noqa: F811
    masks, embeds, pooled, seeds = _inputs(3)
    cfg = SamplerConfig(num_inference_steps=2, batch_size=3)
    crfm = CRFMConfig(rectified_step=2, max_step_size=0.5, skip_below_error=0.9)
    whole = sample(generator, masks, embeds, pooled, seeds, cfg, crfm, judge)
    micro = sample(generator, masks, embeds, pooled, seeds, cfg, CRFMConfig(**{**crfm.__dict__, "micro_batch": 1}), judge)
    assert torch.allclose(micro.images, whole.images, atol=1e-5)


def test_outputs_are_normal_tensors(generator, judge) -> None:  # noqa: F811
    """Inference mode inside the loop does not leak: callers may modify outputs in place."""
    masks, embeds, pooled, seeds = _inputs(2)
    cfg = SamplerConfig(num_inference_steps=3, batch_size=2)
    for crfm in (None, CRFMConfig(rectified_step=1, return_x0=True)):
        out = sample(generator, masks, embeds, pooled, seeds, cfg, crfm, judge)
        assert not out.images.is_inference()
        out.images.mul_(1.0)
        for x0 in out.x0 or []:
            assert not x0.is_inference()


def test_micro_batch_is_validated() -> None:
    with pytest.raises(ValueError, match="micro_batch"):
        CRFMConfig(rectified_step=1, micro_batch=0)


def test_bf16_precision_runs_close_to_fp32(generator, judge) -> None:  # noqa: F811
    masks, embeds, pooled, seeds = _inputs(2)
    cfg = SamplerConfig(num_inference_steps=3, batch_size=2)
    fp32 = sample(generator, masks, embeds, pooled, seeds, cfg, CRFMConfig(rectified_step=1), judge)
    bf16 = sample(generator, masks, embeds, pooled, seeds, SamplerConfig(num_inference_steps=3, batch_size=2,
                  precision="bf16"), CRFMConfig(rectified_step=1), judge)
    assert bf16.images.dtype == torch.float32
    diff = (bf16.images - fp32.images).abs()
    assert 0 < diff.max() < 0.1, diff.max()  # autocast did run (rounding), and stays close
    with pytest.raises(ValueError, match="precision"):
        SamplerConfig(precision="fp8")  # type: ignore[arg-type]


def _fresh() -> tuple[object, torch.nn.Module]:
    """The tiny preset on a trainable scratch VAE (SD3.5's kind: convolutions to lay out and checkpoint)."""
    overrides = deep_merge(TINY_SCRATCH_VAE_OVERRIDES, {"image_size": 32, "mask_stream": {"init": "image"}})
    gen = build_generator(resolve_preset("tiny", overrides))
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 7, 1))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return gen, conv.requires_grad_(False)


def test_prepare_for_sampling_keeps_results() -> None:
    masks, embeds, pooled, seeds = _inputs(2)
    cfg = SamplerConfig(num_inference_steps=3, batch_size=2)
    crfm = CRFMConfig(rectified_step=2, max_step_size=0.5)
    gen, judge_net = _fresh()
    ref = sample(gen, masks, embeds, pooled, seeds, cfg, crfm, judge_net)
    gen2, judge2 = prepare_for_sampling(*_fresh(), channels_last=True, decoder_checkpointing=True)
    conv = next(m for m in gen2.vae.decoder.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert judge2[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert gen2.vae.decoder.gradient_checkpointing
    out = sample(gen2, masks, embeds, pooled, seeds, cfg, crfm, judge2)
    assert torch.allclose(out.images, ref.images, atol=1e-5)
    assert torch.allclose(out.judge_loss, ref.judge_loss, atol=1e-5)
    gen3, _ = prepare_for_sampling(*_fresh(), dtype=torch.bfloat16)
    assert next(gen3.transformer.parameters()).dtype == torch.bfloat16 and gen3.vae.dtype == torch.bfloat16


def test_transformer_flops_count_attention() -> None:
    """The CPU flash-attention kernel is counted as SDPA: 4 * B * heads * N^2 * d for one call."""
    q = torch.randn(2, 4, 50, 16)

    def attn(x: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(x, x, x)

    assert transformer_flops(attn, (q,)) == 4 * 2 * 4 * 50 * 50 * 16
    lin = torch.nn.Linear(16, 32, bias=False)
    assert transformer_flops(lin, (torch.randn(10, 16),)) == 2 * 10 * 16 * 32


def test_perf_config_and_helpers() -> None:
    cfg = PerfConfig().resolved()
    assert (cfg.res, cfg.judge, cfg.precision, cfg.channels_last, cfg.train_batch) == (64, "fcn-tiny", "fp32", True, 8)
    assert cfg.threads == torch.get_num_threads()
    with pytest.raises(ConfigError, match="--batch 0"):
        PerfConfig(batch=0)
    with pytest.raises(ConfigError, match="--precision 'fp16'"):
        PerfConfig(precision="fp16")
    assert stats([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    with pytest.raises(ValueError):
        stats([])
    sd = perf_preset("sd3.5-medium", 512)
    assert sd["source"] == "scratch" and sd["transformer"]["num_layers"] == 24 and sd["vae"]["latent_channels"] == 16
    with PeakMemory(torch.device("cpu")) as mem:
        block = torch.ones(64, 2**20 // 4 * 4)  # 64 MiB (float32), held while the poller runs
        block.add_(1)
    assert mem.peak_mb >= mem.baseline_mb > 0 and mem.kind == "rss"


def test_prepare_sampling_run_resolves_precision_and_keeps_results() -> None:
    """The entry points' preparation: CPU default fp32 (weights kept), channels_last, same images to rounding."""
    from todsynth.sample.speed import default_precision, prepare_sampling_run

    masks, embeds, pooled, seeds = _inputs(2)
    cfg = SamplerConfig(num_inference_steps=3, batch_size=2)
    crfm = CRFMConfig(rectified_step=2, max_step_size=0.5)
    gen, judge_net = _fresh()
    ref = sample(gen, masks, embeds, pooled, seeds, cfg, crfm, judge_net)
    gen2, judge2 = _fresh()
    cfg2 = prepare_sampling_run(gen2, judge2, cfg)
    assert cfg2 == cfg and cfg2.precision == default_precision("cpu") == "fp32"
    assert default_precision("cuda") == "bf16"
    assert judge2[0].weight.is_contiguous(memory_format=torch.channels_last)
    out = sample(gen2, masks, embeds, pooled, seeds, cfg2, crfm, judge2)
    assert torch.allclose(out.images, ref.images, atol=1e-5)
    gen3, _ = _fresh()
    cfg3 = prepare_sampling_run(gen3, None, cfg, precision="bf16")  # CPU: autocast only, weights stay fp32
    assert cfg3.precision == "bf16" and next(gen3.transformer.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        prepare_sampling_run(gen3, None, cfg, precision="fp16")


class _TiedLogits(torch.nn.Module):
    """An MMSeg-style ``model(x, mode="tensor")`` whose logits tie: channels 2 and 5 share the maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, mode: str = "tensor") -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        logits = torch.randn(x.shape[0], 7, *x.shape[-2:], generator=g) * self.scale
        logits[:, :, :4] = 0.0
        logits[:, 2, :4] = logits[:, 5, :4] = 1.0  # first rows: a tie, the first maximal index (2) wins
        return logits


def test_predict_labels_are_the_first_maximal_index() -> None:
    """seg.evaluate.predict uses max(1).indices (fast on CPU): the same labels as argmax(1), ties included."""
    from todsynth.seg.evaluate import predict
    from todsynth.seg.judge import segment_logits
    from todsynth.seg.models import build_segmentor

    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for model in (_TiedLogits(), build_segmentor("fcn-tiny", 7, seed=2)):
        labels = predict(model, images)
        with torch.no_grad():
            expected = segment_logits(model.eval(), images).argmax(1)
        assert labels.dtype == torch.long and labels.shape == (2, 32, 32)
        assert torch.equal(labels, expected)
    assert (predict(_TiedLogits(), images)[:, :4] == 2).all()


def test_stopwatch_traced_times_forward_and_backward_per_function() -> None:
    """Stopwatch.traced: each function's forward, and its part of one backward pass through both, under its name."""
    from bench.perf.timing import Stopwatch

    ticks = iter(range(100))
    sw = Stopwatch("wall")
    sw._now = lambda: float(next(ticks))  # a fake clock: 0, 1, 2, ...
    double = sw.traced("double", lambda x: x * 2)
    square = sw.traced("square", lambda x: x**2)
    leaf = torch.ones(3, requires_grad=True)
    y = square(double(leaf))  # forwards: double 0 .. 1, square 2 .. 3
    y.sum().backward()  # square's output grad 4, double's output grad 5 (its begin hook first), square done 6, leaf 7
    assert sw.totals() == {"double": 1.0 + 2.0, "square": 1.0 + 2.0}
    with torch.no_grad():
        double(leaf)  # no graph: forward only (8 .. 9), no hooks
    assert sw.totals()["double"] == 4.0


def test_crfm_timings_cover_judge_and_decoder_backward(generator, judge) -> None:  # noqa: F811
    """One backward pass through judge and decoder, still timed per model (the hooks on their inputs fire)."""
    import unittest.mock

    from bench.perf.timing import Stopwatch

    masks, embeds, pooled, seeds = _inputs(2)
    original = Stopwatch._time_backward
    traced, finished = [], []

    def spy(self, name, x, y):  # noqa: ANN001, ANN202
        traced.append(name)
        x.register_hook(lambda _grad: finished.append(name))
        original(self, name, x, y)

    sw = Stopwatch("wall")
    with unittest.mock.patch.object(Stopwatch, "_time_backward", spy):
        sample(generator, masks, embeds, pooled, seeds, SamplerConfig(num_inference_steps=3, batch_size=2),
               CRFMConfig(rectified_step=2), judge, observer=sw)
    assert traced == ["vae_decode", "judge"] * 2 and sorted(finished) == sorted(traced)  # every backward part ran
    timings = sw.totals()
    assert timings["judge"] > 0 and timings["vae_decode"] > 0

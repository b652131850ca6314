"""The transformer's forward: seconds on the sampling batch, FLOPs (attention included), achieved FLOP/s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bench.perf.config import PerfConfig
from bench.perf.models import autocast
from bench.perf.timing import stats, timed


def _attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                     **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return int(sdpa_flop_count(query_shape, key_shape, value_shape))  # type: ignore[no-untyped-call]  # torch leaves it unannotated


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
    with torch.no_grad(), autocast(device, cfg.precision):
        m = gen.encode_mask(masks.to(device)).to(dtype)
        g = torch.Generator("cpu").manual_seed(cfg.seed)
        x = torch.randn((m.shape[0], *gen.latent_shape), generator=g).to(device, dtype)
        t = torch.full((m.shape[0],), 500.0, device=device)
        args = (x, m, t, embeds.to(device, dtype), pooled.to(device, dtype))
        seconds = timed(lambda: gen.transformer(*args), device, cfg.repeats)
        flops = transformer_flops(gen.transformer, args)
    s = stats(seconds)
    achieved = flops / s["median"] / 1e12
    base = getattr(gen.transformer, "_orig_mod", gen.transformer)
    return {
        "forward_seconds": s,
        "batch": int(m.shape[0]),
        "tokens": {
            "image": int(m.shape[-1] * m.shape[-2] // base.config.patch_size**2),
            "mask": int(m.shape[-1] * m.shape[-2] // base.config.patch_size**2) if base.mask_embed is not None else 0,
            "text": int(embeds.shape[1]),
        },
        "params": sum(p.numel() for p in base.parameters()),
        "flops_per_forward": flops,
        "achieved_tflops": achieved,
        "achieved_tflops_best": flops / s["min"] / 1e12,
        "peak_tflops": peak_tflops,
        "fraction_of_peak": achieved / peak_tflops if peak_tflops > 0 else float("nan"),
    }

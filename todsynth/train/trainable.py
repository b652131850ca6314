"""Which parameters train: ``branches`` (image + mask streams, text frozen) or ``lora``; LoRA merge; EMA."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from todsynth.models.mmdit import MaskMMDiT, is_text_stream
from todsynth.train.config import Trainable

# The image stream's attention (joint attention's image projections and SD3.5's image-only attn2).
LORA_TARGETS = r"transformer_blocks\.\d+\.attn2?\.(to_q|to_k|to_v|to_out\.0)"


def inject_lora(model: MaskMMDiT, rank: int, alpha: float | None = None) -> None:
    """Add peft LoRA adapters (gaussian A, zero B: no change at init) to the image stream's attention."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,  # type: ignore[arg-type]  # peft says int; scaling = alpha / r takes a float
        init_lora_weights="gaussian",
        target_modules=LORA_TARGETS,
    )
    inject_adapter_in_model(config, model.transformer)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base layer and drop the adapter; returns the number merged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
            merged += 1
    return merged


def configure_trainable(
    model: MaskMMDiT, mode: Trainable, lora_rank: int = 16, lora_alpha: float | None = None
) -> dict[str, nn.Parameter]:
    """Set ``requires_grad`` for a training mode; returns the trainable parameters by name.

    ``branches``: everything but the text stream (context embedder, time-text embedding, text AdaLN,
    text Q/K/V/qk-norm/output/FFN). ``lora``: LoRA adapters on the image attention + the mask stream.
    """
    model.requires_grad_(False)
    match mode:
        case "branches":
            for name, p in model.named_parameters():
                p.requires_grad_(not is_text_stream(name))
        case "lora":
            inject_lora(model, lora_rank, lora_alpha)
            model.transformer.requires_grad_(False)
            for name, p in model.transformer.named_parameters():
                if "lora_" in name:
                    p.requires_grad_(True)
            for p in model.mask_stream_parameters():
                p.requires_grad_(True)
        case _:
            raise ValueError(f"trainable must be 'branches' or 'lora', got {mode!r}")
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def ema_update(shadow: dict[str, Tensor], params: dict[str, nn.Parameter], decay: float) -> None:
    """Shadow <- decay * shadow + (1 - decay) * param, for every trained parameter."""
    for name, p in params.items():
        shadow[name].lerp_(p.detach().to(shadow[name].dtype), 1.0 - decay)

"""Generator training: scratch VAE, flow-matching fine-tuning of the mask-conditioned MM-DiT (accelerate).

Re-exports resolve lazily (PEP 562), as in ``todsynth.data``: ``todsynth.train.config`` (``TrainConfig``, which suite
validation reads) does not pull in torch and diffusers.
"""

from __future__ import annotations

from todsynth.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "TrainConfig": "config",
    "train_generator": "generator",
    "TrainBatch": "step",
    "train_step": "step",
    "configure_trainable": "trainable",
    "merge_lora": "trainable",
    "train_vae": "vae",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)

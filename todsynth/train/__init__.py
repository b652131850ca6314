"""Generator training: scratch VAE, flow-matching fine-tuning of the mask-conditioned MM-DiT (accelerate)."""

from todsynth.train.config import TrainConfig
from todsynth.train.generator import train_generator
from todsynth.train.step import TrainBatch, train_step
from todsynth.train.trainable import configure_trainable, merge_lora
from todsynth.train.vae import train_vae

__all__ = ["TrainBatch", "TrainConfig", "configure_trainable", "merge_lora", "train_generator", "train_step", "train_vae"]

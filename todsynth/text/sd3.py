"""SD3's prompt encoding (CLIP-L + CLIP-G + T5) from a local Stable Diffusion 3(.5) directory.

Follows ``StableDiffusion3Pipeline.encode_prompt`` (diffusers) without the pipeline:
``prompt_embeds`` = [CLIP-L penultimate hidden states ++ CLIP-G penultimate hidden states on the
feature axis, zero-padded to T5's width] ++ T5 last hidden states on the sequence axis, i.e.
(N, 77 + t5_max_length, d_T5); ``pooled`` = CLIP-L text_embeds ++ CLIP-G text_embeds, (N, 768 + 1280)
for SD3.5. Weights are read with ``local_files_only=True``; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F

from todsynth.errors import WeightsNotFoundError

HOW_TO_GET_SD3 = (
    "obtain SD3.5-medium: accept the licence at https://huggingface.co/stabilityai/stable-diffusion-3.5-medium, "
    "then `huggingface-cli download stabilityai/stable-diffusion-3.5-medium --local-dir DIR` and pass "
    "--sd3-dir DIR (or set TODSYNTH_SD3_DIR=DIR)"
)
ENCODER_DIRS: tuple[str, ...] = ("text_encoder", "text_encoder_2", "text_encoder_3")
TOKENIZER_DIRS: tuple[str, ...] = ("tokenizer", "tokenizer_2", "tokenizer_3")
CLIP_MAX_LENGTH = 77


def missing_parts(sd3_dir: str | Path) -> list[Path]:
    """Sub-folders (or their ``config.json``) needed for prompt encoding that are absent."""
    root = Path(sd3_dir)
    missing: list[Path] = []
    for sub in ENCODER_DIRS:
        if not (root / sub / "config.json").is_file():
            missing.append(root / sub if not (root / sub).is_dir() else root / sub / "config.json")
    missing += [root / sub for sub in TOKENIZER_DIRS if not (root / sub).is_dir()]
    return missing


def _fingerprint(root: Path) -> str:
    """Short hash of the encoders' configs and weight-file sizes: identifies the weights, not the path."""
    h = hashlib.sha256()
    for sub in ENCODER_DIRS + TOKENIZER_DIRS:
        for f in sorted((root / sub).iterdir()):
            h.update(f"{sub}/{f.name}:{f.stat().st_size}\n".encode())
            if f.name == "config.json":
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


class SD3PromptEncoder:
    """CLIP-L, CLIP-G and T5 with their tokenizers, encoding prompts as SD3/SD3.5 expects.

    Build with :meth:`from_local`. ``encode`` returns tensors on ``device`` in the encoders' dtype.
    """

    def __init__(
        self,
        tokenizers: tuple[Any, Any, Any],
        text_encoders: tuple[Any, Any, Any],
        *,
        t5_max_length: int = 256,
        name: str = "sd3",
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ) -> None:
        if t5_max_length < 1 or batch_size < 1:
            raise ValueError(f"t5_max_length={t5_max_length} and batch_size={batch_size} must be positive")
        self.tokenizers = tokenizers
        self.text_encoders = tuple(m.to(device).eval().requires_grad_(False) for m in text_encoders)
        self.t5_max_length = t5_max_length
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.name = name
        clip_l, clip_g, t5 = self.text_encoders
        self.clip_max_length = self._clip_length(tokenizers[0])
        self.joint_dim = int(t5.config.d_model)
        self.pooled_dim = int(clip_l.config.projection_dim) + int(clip_g.config.projection_dim)
        self.seq_len = self.clip_max_length + t5_max_length

    @staticmethod
    def _clip_length(tokenizer: Any) -> int:
        n = getattr(tokenizer, "model_max_length", CLIP_MAX_LENGTH)
        return int(n) if n and n < 100_000 else CLIP_MAX_LENGTH  # unset lengths are huge sentinels

    @classmethod
    def from_local(
        cls,
        sd3_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        t5_max_length: int = 256,
    ) -> SD3PromptEncoder:
        """Load the three text encoders and tokenizers from ``sd3_dir`` (local files only).

        A missing directory or sub-folder raises :class:`WeightsNotFoundError` naming the paths and
        how to obtain SD3.5-medium.
        """
        root = Path(sd3_dir).expanduser()
        if not root.is_dir():
            raise WeightsNotFoundError(f"SD3 directory not found: {root}; {HOW_TO_GET_SD3}")
        missing = missing_parts(root)
        if missing:
            raise WeightsNotFoundError(
                f"SD3 directory {root} lacks {', '.join(str(p) for p in missing)}; {HOW_TO_GET_SD3}"
            )
        from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

        def load(loader: Any, sub: str, **kw: Any) -> Any:
            try:
                return loader.from_pretrained(root / sub, local_files_only=True, **kw)
            except (OSError, ValueError) as exc:
                raise WeightsNotFoundError(f"cannot load {root / sub}: {exc}; {HOW_TO_GET_SD3}") from exc

        tokenizers = tuple(load(AutoTokenizer, sub) for sub in TOKENIZER_DIRS)
        encoders = (
            load(CLIPTextModelWithProjection, "text_encoder", dtype=dtype),
            load(CLIPTextModelWithProjection, "text_encoder_2", dtype=dtype),
            load(T5EncoderModel, "text_encoder_3", dtype=dtype),
        )
        dtype_name = str(dtype).removeprefix("torch.")
        name = f"sd3-{_fingerprint(root)}-t5len{t5_max_length}-{dtype_name}"
        return cls(tokenizers, encoders, t5_max_length=t5_max_length, name=name, device=device)

    def _clip(self, index: int, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate hidden states (N, 77, d_clip) and projected text_embeds (N, proj) of CLIP ``index``."""
        tokenizer, encoder = self.tokenizers[index], self.text_encoders[index]
        ids = tokenizer(
            prompts, padding="max_length", max_length=self.clip_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        out = encoder(ids.to(self.device), output_hidden_states=True)
        return out.hidden_states[-2].to(dtype=self.text_encoders[0].dtype), out[0]

    def _t5(self, prompts: list[str]) -> torch.Tensor:
        """T5 last hidden states (N, t5_max_length, d_T5)."""
        ids = self.tokenizers[2](
            prompts,
            padding="max_length",
            max_length=self.t5_max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids
        t5 = self.text_encoders[2]
        return cast("torch.Tensor", t5(ids.to(self.device))[0].to(dtype=t5.dtype))

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``prompts`` (N) -> ``prompt_embeds`` (N, 77 + t5_max_length, d_T5), ``pooled`` (N, P_L + P_G)."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, not a single string")
        prompts = list(prompts)
        embeds, pooled = [], []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            l_embeds, l_pooled = self._clip(0, chunk)
            g_embeds, g_pooled = self._clip(1, chunk)
            t5_embeds = self._t5(chunk)
            clip_embeds = torch.cat([l_embeds, g_embeds], dim=-1)
            clip_embeds = F.pad(clip_embeds, (0, t5_embeds.shape[-1] - clip_embeds.shape[-1]))
            embeds.append(torch.cat([clip_embeds, t5_embeds], dim=-2))
            pooled.append(torch.cat([l_pooled, g_pooled], dim=-1))
        if not embeds:
            return (
                torch.zeros(0, self.seq_len, self.joint_dim, dtype=self.text_encoders[2].dtype),
                torch.zeros(0, self.pooled_dim, dtype=self.text_encoders[0].dtype),
            )
        return torch.cat(embeds), torch.cat(pooled)


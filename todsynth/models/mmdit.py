"""Mask-conditioned MM-DiT ("unified triple attention") around diffusers' ``SD3Transformer2DModel``.

The semantic mask becomes a third token stream beside text and image tokens: the mask's VAE latents
go through their own ``PatchEmbed`` (own positional embedding), and every block gives the mask stream
its own AdaLN-Zero modulation (from the same time + pooled-text embedding), Q/K/V (+ qk-norm), output
projection and FFN. Text, image and mask tokens meet in ONE joint ``scaled_dot_product_attention``
call per block. The text and image streams are the base transformer's own modules, kept as the
submodule ``transformer`` so SD3/SD3.5 state dicts load unchanged (dual attention, RMS qk-norm).

In the last block SD3 marks text ``context_pre_only`` (its tokens only serve as keys/values and the
stream ends). The mask stream mirrors it: there it has a continuous AdaLN, keys and values only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward, JointTransformerBlock
from diffusers.models.embeddings import PatchEmbed
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, RMSNorm
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

MaskInit = Literal["fresh", "image"]
Prediction = Literal["velocity", "sample"]


def _qk_norm(kind: str | None, head_dim: int) -> nn.Module | None:
    """The per-head q/k norm SD3 uses for ``qk_norm`` (None, "rms_norm" or "layer_norm")."""
    match kind:
        case None:
            return None
        case "rms_norm":
            return RMSNorm(head_dim, eps=1e-6)
        case "layer_norm":
            return nn.LayerNorm(head_dim, eps=1e-6)
        case _:
            raise ValueError(f"qk_norm={kind!r} is not supported by the mask stream (None, 'rms_norm', 'layer_norm')")


class MaskStreamBlock(nn.Module):
    """The mask stream's own modules for one SD3 block (no forward: see :func:`joint_block_forward`).

    ``pre_only`` (the last block) mirrors SD3's ``context_pre_only`` text stream: a continuous AdaLN
    and keys/values only, since nothing reads the mask tokens after that block.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, qk_norm: str | None, pre_only: bool) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.heads = num_heads
        if pre_only:
            self.norm1: AdaLayerNormContinuous | AdaLayerNormZero = AdaLayerNormContinuous(
                dim, dim, elementwise_affine=False, eps=1e-6, bias=True, norm_type="layer_norm"
            )
        else:
            self.norm1 = AdaLayerNormZero(dim)
            self.to_q = nn.Linear(dim, dim, bias=True)
            self.norm_q = _qk_norm(qk_norm, head_dim)
        self.to_k = nn.Linear(dim, dim, bias=True)
        self.to_v = nn.Linear(dim, dim, bias=True)
        self.norm_k = _qk_norm(qk_norm, head_dim)
        if not pre_only:
            self.to_out = nn.Linear(dim, dim, bias=True)
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.ff = FeedForward(dim=dim, dim_out=dim, activation_fn="gelu-approximate")


def _heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, heads*d) -> (B, heads, N, d)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _norm(norm: nn.Module | None, x: Tensor) -> Tensor:
    return x if norm is None else norm(x)


def joint_block_forward(
    block: JointTransformerBlock,
    mask_block: MaskStreamBlock | None,
    hidden: Tensor,
    context: Tensor,
    mask_hidden: Tensor | None,
    temb: Tensor,
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """One MM-DiT block over image (B,N,D), text (B,L,D) and mask (B,M,D) tokens -> (text, image, mask).

    Uses the SD3 block's own weights for text and image (its ``attn2`` dual attention stays image-only)
    and ``mask_block`` for the mask stream; all queries, keys and values go through one SDPA call.
    With ``mask_block=None`` this is exactly diffusers' ``JointTransformerBlock.forward``.
    Returned text/mask are None after a ``context_pre_only`` block.
    """
    attn = block.attn
    heads = attn.heads
    pre_only = block.context_pre_only
    if block.use_dual_attention:
        norm_x, gate_msa, shift_mlp, scale_mlp, gate_mlp, norm_x2, gate_msa2 = block.norm1(hidden, emb=temb)
    else:
        norm_x, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(hidden, emb=temb)
    if pre_only:
        norm_c = block.norm1_context(context, temb)
    else:
        norm_c, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(context, emb=temb)

    # Image queries always; text and mask queries only where their outputs are read (not pre_only).
    q = [_norm(attn.norm_q, _heads(attn.to_q(norm_x), heads))]
    k = [_norm(attn.norm_k, _heads(attn.to_k(norm_x), heads)), _norm(attn.norm_added_k, _heads(attn.add_k_proj(norm_c), heads))]
    v = [_heads(attn.to_v(norm_x), heads), _heads(attn.add_v_proj(norm_c), heads)]
    if not pre_only:
        q.append(_norm(attn.norm_added_q, _heads(attn.add_q_proj(norm_c), heads)))
    if mask_block is not None:
        if mask_hidden is None:
            raise ValueError("mask_hidden is required when mask_block is given")
        if mask_block.pre_only:
            norm_m = mask_block.norm1(mask_hidden, temb)
        else:
            norm_m, m_gate_msa, m_shift_mlp, m_scale_mlp, m_gate_mlp = mask_block.norm1(mask_hidden, emb=temb)
            q.append(_norm(mask_block.norm_q, _heads(mask_block.to_q(norm_m), heads)))
        k.append(_norm(mask_block.norm_k, _heads(mask_block.to_k(norm_m), heads)))
        v.append(_heads(mask_block.to_v(norm_m), heads))

    out = F.scaled_dot_product_attention(torch.cat(q, dim=2), torch.cat(k, dim=2), torch.cat(v, dim=2))
    out = out.transpose(1, 2).flatten(2).to(q[0].dtype)
    n_img, n_txt = hidden.shape[1], context.shape[1]
    out_x = out[:, :n_img]

    # Image stream (SD3's residual path, dual attention on image tokens only).
    hidden = hidden + gate_msa.unsqueeze(1) * attn.to_out[1](attn.to_out[0](out_x))
    if block.use_dual_attention:
        hidden = hidden + gate_msa2.unsqueeze(1) * block.attn2(hidden_states=norm_x2)
    ff_in = block.norm2(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    hidden = hidden + gate_mlp.unsqueeze(1) * block.ff(ff_in)

    if pre_only:
        return None, hidden, None

    out_c = out[:, n_img : n_img + n_txt]
    context = context + c_gate_msa.unsqueeze(1) * attn.to_add_out(out_c)
    ff_in = block.norm2_context(context) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
    context = context + c_gate_mlp.unsqueeze(1) * block.ff_context(ff_in)

    if mask_block is None or mask_block.pre_only:
        return context, hidden, None
    out_m = out[:, n_img + n_txt :]
    mask_hidden = mask_hidden + m_gate_msa.unsqueeze(1) * mask_block.to_out(out_m)
    ff_in = mask_block.norm2(mask_hidden) * (1 + m_scale_mlp[:, None]) + m_shift_mlp[:, None]
    mask_hidden = mask_hidden + m_gate_mlp.unsqueeze(1) * mask_block.ff(ff_in)
    return context, hidden, mask_hidden


def _joint_blocks(transformer: SD3Transformer2DModel) -> Iterable[JointTransformerBlock]:
    """``transformer.transformer_blocks`` as what they are (a ModuleList's items are typed ``nn.Module``)."""
    return cast("Iterable[JointTransformerBlock]", transformer.transformer_blocks)


class MaskMMDiT(nn.Module):
    """SD3 MM-DiT with a third (mask) token stream in every block's joint attention.

    Args:
        transformer: the base ``SD3Transformer2DModel`` (kept as ``self.transformer``; its text and
            image streams are used unchanged, so SD3/SD3.5 weights load into it as they are).
        mask_init: ``"fresh"``: new mask modules with their AdaLN-Zero modulation zero-initialised, so
            the mask residual stream is the identity at first (mask tokens still enter the joint
            attention as keys/values, so the output is not the base model's; see ``forward``);
            ``"image"``: copy the image stream's weights (patch embedding, modulation, Q/K/V, qk-norm,
            output projection, FFN) into the mask stream.
        gradient_checkpointing: recompute each block in the backward pass (memory for compute).
        mask_hint: also add the mask's latents to the image tokens through a zero-initialised patch
            projection (ControlNet's zero convolution), position by position, before the first block. Off
            for SD3.5 (the paper's pure triple attention). The tiny preset turns it on: trained for minutes
            on a CPU, joint attention alone did not learn to route each image token to the mask token at
            its own position (samples from true and shuffled masks scored the same; docs/measurements.md "The tiny preset").
        mask_tokens: the mask token stream (``mask_embed``, ``mask_blocks``) exists and joins the joint attention
            (the paper's MM-DiT; SD3.5). False builds no mask stream: the hint alone carries the mask (needs
            ``mask_hint``). Measured on the tiny preset: the mask tokens double the attention's sequence and cost
            1.8x the training time per step for the same fidelity per step (docs/measurements.md "The tiny preset").
        mask_channels: channels of ``mask_latents`` when they are not image latents (a one-hot mask,
            ``Generator.encode_mask``); None = the transformer's ``in_channels``. Needs ``mask_tokens=False``.
        prediction: what the network's output means. ``"velocity"`` (SD3): it is ``v = noise - x0``.
            ``"sample"``: it is ``x0_hat`` and ``forward`` returns ``v = (z - x0_hat) / max(sigma, sigma_floor)``
            with ``sigma = timestep / num_train_timesteps`` ("Back to Basics", Li & He 2025: a narrow network
            that predicts clean pixels learns faster than one that must predict the noise). Every caller
            (loss, sampler, CRFM) sees a velocity either way.
    """

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        mask_init: MaskInit = "fresh",
        gradient_checkpointing: bool = False,
        mask_hint: bool = False,
        mask_tokens: bool = True,
        prediction: Prediction = "velocity",
        sigma_floor: float = 0.05,
        num_train_timesteps: int = 1000,
        mask_channels: int | None = None,
    ) -> None:
        super().__init__()
        if mask_init not in ("fresh", "image"):
            raise ValueError(f"mask_init must be 'fresh' or 'image', got {mask_init!r}")
        if prediction not in ("velocity", "sample"):
            raise ValueError(f"prediction must be 'velocity' or 'sample', got {prediction!r}")
        if not 0.0 < sigma_floor <= 1.0:
            raise ValueError(f"sigma_floor must be in (0, 1], got {sigma_floor}")
        if not mask_tokens and not mask_hint:
            raise ValueError("mask_tokens=False needs mask_hint=True (otherwise the mask never reaches the model)")
        if mask_channels is not None and mask_tokens:
            raise ValueError("mask_channels needs mask_tokens=False (the mask token stream embeds image-shaped latents)")
        self.prediction = prediction
        self.sigma_floor = float(sigma_floor)
        self.num_train_timesteps = int(num_train_timesteps)
        cfg = transformer.config
        dim = transformer.inner_dim
        self.transformer = transformer
        self.mask_init = mask_init
        self.mask_channels = int(cfg["in_channels"] if mask_channels is None else mask_channels)
        self.gradient_checkpointing = gradient_checkpointing
        # Registered in this order (embed, blocks) so state-dict and parameter order match the original layout.
        self.mask_embed: PatchEmbed | None = PatchEmbed(  # type: ignore[no-untyped-call]  # diffusers leaves PatchEmbed.__init__ unannotated
            height=cfg["sample_size"],
            width=cfg["sample_size"],
            patch_size=cfg["patch_size"],
            in_channels=cfg["in_channels"],
            embed_dim=dim,
            pos_embed_max_size=cfg["pos_embed_max_size"],
        ) if mask_tokens else None
        self.mask_blocks = nn.ModuleList(
            MaskStreamBlock(dim, cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["qk_norm"],
                            b.context_pre_only)
            for b in (_joint_blocks(transformer) if mask_tokens else ())
        )
        if mask_tokens:
            self._init_mask_stream(mask_init)
        self.mask_hint: nn.Conv2d | None = None
        if mask_hint:
            self.mask_hint = nn.Conv2d(self.mask_channels, dim, cfg["patch_size"], stride=cfg["patch_size"])
            nn.init.zeros_(self.mask_hint.weight)
            nn.init.zeros_(cast("Tensor", self.mask_hint.bias))  # bias=True: never None

    @property
    def config(self) -> dict[str, Any]:
        """The base transformer's config (patch size, channels, widths)."""
        return self.transformer.config

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the transformer's weights."""
        return self.transformer.dtype

    @property
    def device(self) -> torch.device:
        """Device of the transformer's weights."""
        return self.transformer.device

    @torch.no_grad()
    def _init_mask_stream(self, mask_init: MaskInit) -> None:
        """Zero the AdaLN-Zero modulation (``fresh``) or copy the image stream's weights (``image``)."""
        if mask_init == "fresh":
            for mb in self._mask_blocks():
                nn.init.zeros_(mb.norm1.linear.weight)
                nn.init.zeros_(mb.norm1.linear.bias)
            return
        cast("PatchEmbed", self.mask_embed).load_state_dict(self.transformer.pos_embed.state_dict())
        dim = self.transformer.inner_dim
        for block, mb in zip(_joint_blocks(self.transformer), self._mask_blocks(), strict=True):
            w, b = block.norm1.linear.weight, block.norm1.linear.bias  # chunks: shift, scale, gate, ... (6 or 9)
            if mb.pre_only:  # AdaLayerNormContinuous chunks are (scale, shift)
                mb.norm1.linear.weight.copy_(torch.cat([w[dim : 2 * dim], w[:dim]]))
                mb.norm1.linear.bias.copy_(torch.cat([b[dim : 2 * dim], b[:dim]]))
            else:
                mb.norm1.linear.weight.copy_(w[: 6 * dim])
                mb.norm1.linear.bias.copy_(b[: 6 * dim])
                mb.to_q.load_state_dict(block.attn.to_q.state_dict())
                if mb.norm_q is not None:  # the block's own norm exists too (same qk_norm)
                    mb.norm_q.load_state_dict(cast("nn.Module", block.attn.norm_q).state_dict())
                mb.to_out.load_state_dict(block.attn.to_out[0].state_dict())
                mb.ff.load_state_dict(block.ff.state_dict())
            mb.to_k.load_state_dict(block.attn.to_k.state_dict())
            mb.to_v.load_state_dict(block.attn.to_v.state_dict())
            if mb.norm_k is not None:
                mb.norm_k.load_state_dict(cast("nn.Module", block.attn.norm_k).state_dict())

    def _mask_blocks(self) -> Iterable[MaskStreamBlock]:
        """``mask_blocks`` as what they are (a ModuleList's items are typed ``nn.Module``)."""
        return cast("Iterable[MaskStreamBlock]", self.mask_blocks)

    def mask_stream_parameters(self) -> list[nn.Parameter]:
        """Parameters of the new mask stream (patch embedding + per-block mask modules + the optional hint)."""
        embed = [] if self.mask_embed is None else list(self.mask_embed.parameters())
        hint = [] if self.mask_hint is None else list(self.mask_hint.parameters())
        return [*embed, *self.mask_blocks.parameters(), *hint]

    def forward(
        self,
        latents: Tensor,
        mask_latents: Tensor | None,
        timestep: Tensor,
        prompt_embeds: Tensor,
        pooled: Tensor,
        mask_keep: Tensor | None = None,
    ) -> Tensor:
        """Velocity for noisy latents given the mask's latents, the timestep and the prompt.

        Args:
            latents: (B, c, h, w) noisy image latents, h and w divisible by the patch size.
            mask_latents: (B, mask_channels, h, w) the mask on the latents' grid (``Generator.encode_mask``; VAE
                latents of its grey image unless ``mask_channels`` says otherwise);
                None runs the base SD3 transformer alone (text + image streams, identical to diffusers').
            timestep: (B,) on the 0..1000 scale (sigma * num_train_timesteps).
            prompt_embeds: (B, L, joint_attention_dim); pooled: (B, pooled_projection_dim).
            mask_keep: (B,) 1 where a sample keeps its mask, 0 where it is computed as with ``mask_latents``
                None (mask dropout for mask guidance; the hint is multiplied by it). Only without mask tokens:
                a token stream cannot be dropped per sample. None keeps every mask.

        Returns:
            velocity (B, c, h, w), the flow-matching target ``noise - x0``.
        """
        tr = self.transformer
        if latents.ndim != 4:
            raise ValueError(f"latents must be (B,c,h,w), got {tuple(latents.shape)}")
        want = (latents.shape[0], self.mask_channels, *latents.shape[2:])
        if mask_latents is not None and tuple(mask_latents.shape) != want:
            raise ValueError(f"mask_latents {tuple(mask_latents.shape)} must be {want} (the latents' batch and grid, "
                             f"{self.mask_channels} channels)")
        b = latents.shape[0]
        if mask_keep is not None:
            if self.mask_embed is not None:
                raise ValueError("mask_keep needs mask_tokens=False (a mask token stream cannot be dropped per sample)")
            if mask_keep.shape != (b,):
                raise ValueError(f"mask_keep must be ({b},), got {tuple(mask_keep.shape)}")
        if timestep.ndim == 0:
            timestep = timestep.expand(b)
        height, width = latents.shape[-2:]
        hidden = tr.pos_embed(latents).contiguous()
        temb = tr.time_text_embed(timestep, pooled)
        context = tr.context_embedder(prompt_embeds)
        mask_hidden = (None if mask_latents is None or self.mask_embed is None
                       else self.mask_embed(mask_latents.to(latents.dtype)).contiguous())
        if mask_latents is not None and self.mask_hint is not None:  # (B, d, h/p, w/p) -> (B, tokens, d)
            hint = self.mask_hint(mask_latents.to(latents.dtype)).flatten(2).transpose(1, 2)
            hidden = hidden + (hint if mask_keep is None else hint * mask_keep.to(hint.dtype).view(b, 1, 1))

        blocks = list(_joint_blocks(tr))
        # no mask stream (mask_latents None, or mask_tokens=False): SD3's own blocks alone
        mask_blocks: list[MaskStreamBlock | None] = (
            list(self._mask_blocks()) if mask_hidden is not None else [None] * len(blocks))
        for block, mask_block in zip(blocks, mask_blocks, strict=True):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                context, hidden, mask_hidden = checkpoint(
                    joint_block_forward, block, mask_block, hidden, context, mask_hidden, temb, use_reentrant=False
                )
            else:
                context, hidden, mask_hidden = joint_block_forward(block, mask_block, hidden, context, mask_hidden,
                                                                   temb)

        hidden = tr.proj_out(tr.norm_out(hidden, temb))
        p = tr.config["patch_size"]
        h, w = height // p, width // p
        hidden = hidden.reshape(b, h, w, p, p, tr.out_channels)
        out = torch.einsum("nhwpqc->nchpwq", hidden).reshape(b, tr.out_channels, h * p, w * p)
        if self.prediction == "velocity":
            return out
        sigma = (timestep.to(out.dtype) / self.num_train_timesteps).clamp_min(self.sigma_floor).view(b, 1, 1, 1)
        return (latents.to(out.dtype) - out) / sigma


def mask_stream_param_count(
    num_layers: int, dim: int, head_dim: int, in_channels: int, patch_size: int, qk_norm: str | None
) -> int:
    """Closed-form size of the mask stream (what :class:`MaskMMDiT` adds to the base transformer).

    Per full block: AdaLN-Zero 6d^2+6d, Q/K/V 3(d^2+d), output d^2+d, FFN 8d^2+5d, qk-norm 2*hd;
    last (pre-only) block: continuous AdaLN 2d^2+2d, K/V 2(d^2+d), k-norm hd; patch embed c*p*p*d+d.
    """
    qk = {None: 0, "rms_norm": 1, "layer_norm": 2}[qk_norm] * head_dim
    d = dim
    full = 18 * d * d + 15 * d + 2 * qk
    last = 4 * d * d + 4 * d + qk
    return (num_layers - 1) * full + last + in_channels * patch_size * patch_size * d + d


# Text-stream parameters (relative to MaskMMDiT): frozen in training, never changed by todsynth, so a
# fine-tuned SD3.5 generator can be saved without them and rebuilt from the base directory.
_TEXT_STREAM = re.compile(
    r"^transformer\.(context_embedder|time_text_embed)\."
    r"|^transformer\.transformer_blocks\.\d+\.(norm1_context|norm2_context|ff_context)\."
    r"|^transformer\.transformer_blocks\.\d+\.attn\.(add_q_proj|add_k_proj|add_v_proj|norm_added_q|norm_added_k|to_add_out)\."
)


def is_text_stream(name: str) -> bool:
    """True for a ``MaskMMDiT`` parameter name of the text stream.

    The text stream: context embedder, time-text embedding, text AdaLN, text Q/K/V/qk-norm/output and FFN.
    """
    return _TEXT_STREAM.match(name) is not None

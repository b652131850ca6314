"""FID / KID with clean-fid's estimators and an offline choice of feature extractor.

Extractors:

* ``inception``: clean-fid's TorchScript Inception-v3 (``inception-2015-12-05.pt``) from a local file
  (argument, or env ``TODSYNTH_INCEPTION_WEIGHTS``); images are quantised to uint8 and resized with
  clean-fid's "clean" resizer (PIL bicubic to 299x299, no re-quantisation), as ``cleanfid`` does.
  Nothing is ever downloaded. Only these numbers are comparable with published FIDs
  (``fid_comparable=True``).
* ``segmenter``: the fallback when no Inception file is available: global-average-pooled features of
  every backbone stage of the suite's *evaluator* segmentor, each reduced to at most 64 values by
  channel-group averaging, concatenated (see :class:`SegmenterExtractor`). The evaluator is trained on
  the same remote-sensing domain, so its features encode the land-cover content, colours and
  textures the synthetic data must reproduce; an untrained network would only be self-consistent.
  Values are comparable between runs with the same evaluator only (``fid_comparable=False``).

Small sample sets: with fewer samples than feature dimensions the sample covariances are singular
and ``sqrtm`` of their product is ill-posed (spurious imaginary parts, non-finite values). When
``min(n_real, n_fake) <= feature_dim`` both covariances get a diagonal offset of
``cov_offset = 1e-6 * mean(diag)``; the offset used is returned. Where clean-fid still refuses (an imaginary
component), the trace term comes from the eigenvalues of the symmetric ``sqrt(S1) S2 sqrt(S1)`` at the same offset:
the same quantity, which cannot turn complex. Fewer than 2 samples on either side gives NaN (FID and KID are
undefined), never an exception; a NaN or inf feature is a ValueError. FID is clamped at 0 (tiny negatives are
round-off). KID uses clean-fid's ``kernel_distance`` with a seeded NumPy state restored afterwards.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from todsynth.data.imagenet import normalize_01
from todsynth.errors import ConfigError, WeightsNotFoundError
from todsynth.files import atomic_write_bytes

INCEPTION_ENV = "TODSYNTH_INCEPTION_WEIGHTS"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
ExtractorKind = Literal["auto", "inception", "segmenter"]


class InceptionExtractor(nn.Module):
    """clean-fid's TorchScript Inception: images (B,3,H,W) in [0,1] -> pool features (B, 2048)."""

    name = "inception"
    comparable = True
    resize_label = "clean-fid clean: PIL bicubic to 299x299 (uint8 input)"

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu") -> None:
        super().__init__()
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"Inception weights not found: {path}. Download inception-2015-12-05.pt from {INCEPTION_URL} "
                f"on a connected machine and pass its path (--inception-weights or {INCEPTION_ENV})"
            )
        try:
            self.base = torch.jit.load(str(path), map_location=device).eval()  # type: ignore[no-untyped-call]  # torch leaves jit.load unannotated
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"{path} is not clean-fid's TorchScript Inception ({INCEPTION_URL}): {exc}") from exc
        from cleanfid.resize import build_resizer

        self.resize = build_resizer("clean")
        self.device = torch.device(device)
        self.weights = str(path)

    @torch.no_grad()
    def forward(self, images_01: torch.Tensor) -> torch.Tensor:
        """Features (B, D) float32 for RGB images (B, 3, H, W) in [0, 1]."""
        arr = (images_01.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)).permute(0, 2, 3, 1).cpu().numpy()
        resized = np.stack([self.resize(a) for a in arr])  # (B, 299, 299, 3) float32 in 0..255
        x = torch.from_numpy(resized).permute(0, 3, 1, 2).to(self.device)
        feats: torch.Tensor = self.base.layers((x - 128.0) / 128.0)  # clean-fid's normalisation (InceptionV3W)
        return feats.reshape(x.shape[0], -1).float()


class SegmenterExtractor(nn.Module):
    """Pooled backbone features of an MMSeg segmentor: (B,3,H,W) in [0,1] -> (B, D), D <= 4 * per_stage_dim.

    Each backbone stage is global-average-pooled, then its channels are averaged in contiguous groups
    down to at most ``per_stage_dim`` values (a fixed, parameter-free reduction), and the stages are
    concatenated: 176 dims for ``fcn-tiny``, 256 for the ResNet-18/50 models. Keeping D small keeps
    ``sqrtm`` fast on CPU and the covariances less degenerate on small sets.
    """

    comparable = False
    resize_label = "none: native resolution"

    def __init__(self, segmentor: nn.Module, label: str = "evaluator", per_stage_dim: int = 64) -> None:
        super().__init__()
        if per_stage_dim < 1:
            raise ValueError(f"per_stage_dim must be >= 1, got {per_stage_dim}")
        self.segmentor: Any = getattr(segmentor, "model", segmentor).eval()  # an mmseg model (extract_feat)
        self.per_stage_dim = per_stage_dim
        self.name = f"segmenter:{label}"

    @torch.no_grad()
    def forward(self, images_01: torch.Tensor) -> torch.Tensor:
        """Features float32 (B, D) for RGB images (B, 3, H, W) in [0, 1]."""
        import torch.nn.functional as F

        device = next(self.segmentor.parameters()).device
        stages = self.segmentor.extract_feat(normalize_01(images_01.float().to(device)))
        pooled = []
        for s in stages:
            v = s.mean(dim=(2, 3))
            if v.shape[1] > self.per_stage_dim:
                v = F.adaptive_avg_pool1d(v[:, None, :], self.per_stage_dim)[:, 0]
            pooled.append(v)
        return torch.cat(pooled, dim=1).float()


def build_extractor(kind: ExtractorKind = "auto", weights: str | Path | None = None,
                    evaluator: nn.Module | None = None, *, evaluator_label: str = "evaluator",
                    device: str | torch.device = "cpu") -> nn.Module:
    """The feature extractor for FID/KID.

    ``auto``: Inception when a weights path is given or ``TODSYNTH_INCEPTION_WEIGHTS`` is set, else the
    segmenter fallback. A given path that does not exist is an error, never a silent fallback.

    Raises:
        WeightsNotFoundError: the Inception file is missing.
        ConfigError: unknown kind, or the segmenter fallback without an evaluator.
    """
    if weights is None and os.environ.get(INCEPTION_ENV):
        weights = os.environ[INCEPTION_ENV]
    match kind:
        case "inception":
            if weights is None:
                raise WeightsNotFoundError(
                    f"no Inception weights given: download inception-2015-12-05.pt from {INCEPTION_URL} "
                    f"and pass its path or set {INCEPTION_ENV}"
                )
            return InceptionExtractor(weights, device)
        case "segmenter" | "auto":
            if kind == "auto" and weights is not None:
                return InceptionExtractor(weights, device)
            if evaluator is None:
                raise ConfigError("the segmenter FID extractor needs the evaluator segmentor (none given)")
            return SegmenterExtractor(evaluator, evaluator_label)
        case _:
            raise ConfigError(f"unknown FID extractor {kind!r}; choose auto, inception or segmenter")


def _load_batch(batch: Sequence[Any]) -> list[torch.Tensor]:
    from todsynth.data.loveda import load_image

    return [b if isinstance(b, torch.Tensor) else load_image(b) for b in batch]


def extract_features(images: torch.Tensor | Sequence[Any], extractor: Callable[[torch.Tensor], torch.Tensor],
                     batch_size: int = 16) -> np.ndarray:
    """Features float64 (N, D) of images: a tensor (N,3,H,W) in [0,1], or PNG paths / (3,H,W) tensors."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(images)
    if n == 0:
        raise ValueError("no images to extract features from")
    out: list[np.ndarray] = []
    for start in range(0, n, batch_size):
        if isinstance(images, torch.Tensor):
            groups = [images[start : start + batch_size]]
        else:
            loaded = _load_batch(images[start : start + batch_size])
            groups, cur = [], [loaded[0]]
            for t in loaded[1:]:
                if t.shape == cur[-1].shape:
                    cur.append(t)
                else:
                    groups.append(torch.stack(cur))
                    cur = [t]
            groups.append(torch.stack(cur))
        for g in groups:
            out.append(extractor(g).detach().cpu().double().numpy())
    return np.concatenate(out, axis=0)


def frechet_eigh(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """The Fréchet distance, ``tr sqrt(S1 S2)`` from the eigenvalues of the symmetric PSD ``sqrt(S1) S2 sqrt(S1)``.

    The sum of their square roots (negative round-off clipped at 0): clean-fid's value, without ``sqrtm``'s complex
    parts.
    """
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root @ s2 @ root
    trace = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * trace)


def _frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray, offset: float) -> float:
    """clean-fid's Fréchet distance with ``offset`` on both diagonals; where clean-fid refuses, :func:`frechet_eigh`.

    clean-fid raises ValueError on an ill-conditioned product ("Imaginary component") and, with scipy >= 1.16, on a
    1-D feature space (``sqrtm`` returns no tuple there). The eigenproblem gives the same quantity at the same
    offset. Before, the offset grew 100-fold per refusal, up to the features' mean variance, which moved FID by up
    to half of its value (a forced refusal at n=100, d=256: 160.5 against 327.9). None of our recorded runs had
    refused (every ``cov_offset`` is the small-sample rule's).
    """
    from cleanfid.fid import frechet_distance

    eye = np.eye(s1.shape[0]) * offset
    try:
        return float(frechet_distance(mu1, s1 + eye, mu2, s2 + eye))
    except ValueError:
        return frechet_eigh(mu1, s1 + eye, mu2, s2 + eye)


def fid_kid(real_feats: np.ndarray, fake_feats: np.ndarray, *, extractor: str = "custom", comparable: bool = False,
            kid_subsets: int = 100, kid_max_subset_size: int = 1000, seed: int = 0) -> dict[str, Any]:
    """FID and KID between two feature sets (N, D).

    Returns ``{"fid", "kid", "fid_extractor", "fid_comparable", "n_real", "n_fake", "feature_dim",
    "cov_offset"}``; see the module docstring for the small-sample rule.
    """
    from cleanfid.fid import kernel_distance

    real = np.asarray(real_feats, dtype=np.float64)
    fake = np.asarray(fake_feats, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with equal D, got {real.shape} and {fake.shape}")
    n_real, n_fake, d = real.shape[0], fake.shape[0], real.shape[1]
    bad = {name: int((~np.isfinite(x)).any(axis=1).sum()) for name, x in (("real", real), ("synthetic", fake))}
    if any(bad.values()):  # was LinAlgError "Eigenvalues did not converge" (FID) or rows silently left out (P/R)
        raise ValueError(f"feature rows with NaN or inf: {bad['real']} real, {bad['synthetic']} synthetic")
    result: dict[str, Any] = {
        "fid": math.nan, "kid": math.nan, "fid_extractor": extractor, "fid_comparable": bool(comparable),
        "n_real": int(n_real), "n_fake": int(n_fake), "feature_dim": int(d), "cov_offset": 0.0,
    }
    if min(n_real, n_fake) < 2:
        return result
    mu1, mu2 = real.mean(axis=0), fake.mean(axis=0)
    s1, s2 = np.atleast_2d(np.cov(real, rowvar=False)), np.atleast_2d(np.cov(fake, rowvar=False))
    offset = 0.0
    if min(n_real, n_fake) <= d:
        offset = 1e-6 * float((np.mean(np.diag(s1)) + np.mean(np.diag(s2))) / 2) + 1e-12
    fid = _frechet(mu1, s1, mu2, s2, offset)
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        kid = kernel_distance(real, fake, num_subsets=kid_subsets, max_subset_size=kid_max_subset_size)
    finally:
        np.random.set_state(state)
    result.update(fid=max(0.0, fid), kid=float(kid), cov_offset=offset)
    return result


def compute_fid(real: torch.Tensor | Sequence[Any], fake: torch.Tensor | Sequence[Any], extractor: nn.Module,
                batch_size: int = 16, **kw: Any) -> dict[str, Any]:
    """Extract features of both sets with ``extractor`` and return :func:`fid_kid`'s dict."""
    return fid_kid(extract_features(real, extractor, batch_size), extract_features(fake, extractor, batch_size),
                   extractor=getattr(extractor, "name", "custom"),
                   comparable=bool(getattr(extractor, "comparable", False)), **kw)


def save_features(path: str | Path, feats: np.ndarray, meta: dict[str, Any]) -> Path:
    """Write features (N, D) and a JSON-able ``meta`` to a safetensors file, atomically."""
    from safetensors.numpy import save

    p = Path(path)
    atomic_write_bytes(p, save({"features": np.ascontiguousarray(feats, dtype=np.float64)},
                               metadata={"meta": json.dumps(meta, sort_keys=True)}))
    return p


def load_features(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Features and meta written by :func:`save_features`.

    Raises:
        ConfigError: the file is unreadable (a corrupt cache fails loudly, it is not a silent miss).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            feats = f.get_tensor("features")
    except Exception as exc:  # safetensors raises its own error types
        raise ConfigError(f"cannot read feature cache {path}: {exc}; delete it to recompute") from exc
    return feats, meta


def real_stats_cache(path: str | Path, compute: Callable[[], np.ndarray], meta: dict[str, Any]) -> np.ndarray:
    """Real-set features from ``path`` when its meta equals ``meta``; else ``compute()`` and store them.

    The caller keys ``path``/``meta`` by (split, extractor, resolution, ...), e.g.
    ``cache/fid/Val-segmenter:fcn-r18-64.safetensors``.
    """
    p = Path(path)
    wanted = json.loads(json.dumps(meta, sort_keys=True))
    if p.is_file():
        feats, stored = load_features(p)
        if stored == wanted:
            return feats
    feats = compute()
    save_features(p, feats, wanted)
    return feats

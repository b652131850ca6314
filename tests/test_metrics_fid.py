"""FID/KID: behaviour under perturbation, small samples, extractors (Inception file / segmenter fallback), caching."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from todsynth.errors import ConfigError, WeightsNotFoundError
from todsynth.metrics.fid import (
    INCEPTION_ENV,
    build_extractor,
    compute_fid,
    extract_features,
    fid_kid,
    load_features,
    real_stats_cache,
    save_features,
)

KEYS = {"fid", "kid", "fid_extractor", "fid_comparable", "n_real", "n_fake", "feature_dim"}


def _feats(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 1.0, (n, d))  # non-negative, like pooled ReLU features


def test_fid_zero_on_itself_and_grows_with_perturbation() -> None:
    a = _feats(80, 16, 0)
    noise = np.random.default_rng(1).standard_normal(a.shape)
    same = fid_kid(a, a)
    assert KEYS <= same.keys()
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    fids = [fid_kid(a, a + s * noise + s)["fid"] for s in (0.1, 0.5, 1.5)]
    assert 0 < fids[0] < fids[1] < fids[2]


def test_kid_near_zero_for_same_distribution_and_grows() -> None:
    a, b = _feats(80, 16, 0), _feats(80, 16, 2)  # independent draws of one distribution
    noise = np.random.default_rng(3).standard_normal(b.shape)
    kid_same = fid_kid(a, b, kid_subsets=20)["kid"]
    kids = [fid_kid(a, b + s * noise + s, kid_subsets=20)["kid"] for s in (0.5, 1.5)]
    assert abs(kid_same) < 0.2 * kids[0]
    assert kids[0] < kids[1]
    # seeded and leaves NumPy's global state alone
    np.random.seed(11)
    expected = np.random.rand()
    np.random.seed(11)
    k1 = fid_kid(a, b, kid_subsets=5)["kid"]
    assert np.random.rand() == expected
    assert fid_kid(a, b, kid_subsets=5)["kid"] == k1


def test_small_samples_stay_finite() -> None:
    a, b = _feats(6, 64, 0), _feats(5, 64, 1)  # n < d: singular covariances
    r = fid_kid(a, b)
    assert math.isfinite(r["fid"]) and math.isfinite(r["kid"]) and r["cov_offset"] > 0
    assert r["n_real"] == 6 and r["n_fake"] == 5 and r["feature_dim"] == 64
    assert fid_kid(a, a)["fid"] == pytest.approx(0.0, abs=1e-3)
    one = fid_kid(a[:1], b)
    assert math.isnan(one["fid"]) and math.isnan(one["kid"])
    with pytest.raises(ValueError, match="equal D"):
        fid_kid(a, b[:, :10])


def test_frechet_falls_back_to_the_symmetric_eigenproblem(monkeypatch: pytest.MonkeyPatch) -> None:
    """When clean-fid finds an imaginary component, the same distance comes from the eigenvalues of
    sqrt(S1) S2 sqrt(S1) at the same offset; on well-conditioned sets that value is clean-fid's. Before, the offset
    grew 100-fold per refusal first, which moved FID by up to half its value."""
    import cleanfid.fid

    from todsynth.metrics.fid import frechet_eigh

    a, b = _feats(200, 16, 0), _feats(150, 16, 1) + 0.3
    reference = fid_kid(a, b)["fid"]
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert frechet_eigh(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-9)
    calls: list[float] = []

    def complex_always(mu1, s1, mu2, s2):  # noqa: ANN001, ANN202
        calls.append(float(s1[0, 0]))
        raise ValueError("Imaginary component 1.0")

    monkeypatch.setattr(cleanfid.fid, "frechet_distance", complex_always)
    r = fid_kid(a, b)
    assert len(calls) == 1 and r["cov_offset"] == 0.0  # n > d: no offset, and none added on the way
    assert r["fid"] == pytest.approx(reference, rel=1e-9)
    small, other = _feats(100, 256, 2), _feats(100, 256, 3) + 0.1  # n <= d: the small-sample offset only
    r = fid_kid(small, other)
    eye = np.eye(256) * r["cov_offset"]
    exact = frechet_eigh(small.mean(0), np.cov(small, rowvar=False) + eye, other.mean(0),
                         np.cov(other, rowvar=False) + eye)
    assert r["fid"] == pytest.approx(exact, rel=1e-9)
    assert r["cov_offset"] == pytest.approx(1e-6 * (np.cov(small, rowvar=False).diagonal().mean()
                                                    + np.cov(other, rowvar=False).diagonal().mean()) / 2, rel=1e-3)


def test_one_feature_and_non_finite_features() -> None:
    """A 1-D feature space (clean-fid's sqrtm refuses it with scipy >= 1.16) is the 1-D closed form; a NaN or inf
    feature is a ValueError (was scipy's "Eigenvalues did not converge")."""
    a, b = _feats(300, 1, 0), _feats(200, 1, 1) * 2 + 1
    m1, m2, v1, v2 = a.mean(), b.mean(), a.var(ddof=1), b.var(ddof=1)
    assert fid_kid(a, b)["fid"] == pytest.approx((m1 - m2) ** 2 + v1 + v2 - 2 * np.sqrt(v1 * v2), rel=1e-9)
    bad = a.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf: 1 real, 0 synthetic"):
        fid_kid(bad, b)


def test_segmenter_fallback_without_inception(monkeypatch: pytest.MonkeyPatch) -> None:
    from todsynth.seg.models import build_segmentor

    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    evaluator = build_segmentor("fcn-tiny", 7, seed=0).eval()
    ext = build_extractor("auto", evaluator=evaluator, evaluator_label="fcn-tiny")
    g = torch.Generator().manual_seed(0)
    real = torch.rand(6, 3, 32, 32, generator=g)
    fake = (real + 0.3 * torch.randn(real.shape, generator=g)).clamp(0, 1)
    r = compute_fid(real, fake, ext, batch_size=4, kid_subsets=5)
    assert r["fid_extractor"] == "segmenter:fcn-tiny" and r["fid_comparable"] is False
    assert r["feature_dim"] == 16 + 32 + 64 + 64 and math.isfinite(r["fid"]) and r["fid"] > 0
    assert compute_fid(real, real, ext, kid_subsets=5)["fid"] == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ConfigError, match="needs the evaluator"):
        build_extractor("segmenter")


def test_missing_inception_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "inception-2015-12-05.pt"
    with pytest.raises(WeightsNotFoundError, match=r"inception-2015-12-05.pt.*nvlabs"):
        build_extractor("inception", weights=missing)
    monkeypatch.setenv(INCEPTION_ENV, str(missing))
    with pytest.raises(WeightsNotFoundError, match=str(missing)):
        build_extractor("auto", evaluator=nn.Identity())
    monkeypatch.delenv(INCEPTION_ENV)
    with pytest.raises(WeightsNotFoundError, match="no Inception weights given"):
        build_extractor("inception")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(ConfigError, match="not clean-fid's TorchScript Inception"):
        build_extractor("inception", weights=bad)


class _FakeInceptionLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3), keepdim=True)


class _FakeInception(nn.Module):
    """Same interface as clean-fid's TorchScript file: a ``layers`` submodule on normalised 299x299 input."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = _FakeInceptionLayers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_inception_path_runs_a_torchscript_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(_FakeInception()), str(path))
    ext = build_extractor("auto", weights=path)
    images = torch.rand(3, 3, 40, 24, generator=torch.Generator().manual_seed(0))
    feats = extract_features(images, ext, batch_size=2)
    assert feats.shape == (3, 8) and feats.dtype == np.float64
    r = compute_fid(images, images.flip(-1), ext, kid_subsets=5)
    assert r["fid_extractor"] == "inception" and r["fid_comparable"] is True and r["feature_dim"] == 8


def test_extract_from_paths_and_cache(tmp_path: Path) -> None:
    from PIL import Image

    paths = []
    for k in range(3):
        p = tmp_path / f"{k}.png"
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8), "RGB").save(p)
        paths.append(p)

    def mean_rgb(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    feats = extract_features(paths, mean_rgb, batch_size=2)
    np.testing.assert_allclose(feats[:, 0], [0, 40 / 255, 80 / 255], atol=1e-6)
    meta = {"split": "Val", "extractor": "mean", "resolution": 8}
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return feats

    cache = tmp_path / "cache" / "val.safetensors"
    np.testing.assert_array_equal(real_stats_cache(cache, compute, meta), feats)
    np.testing.assert_array_equal(real_stats_cache(cache, compute, meta), feats)
    assert len(calls) == 1
    real_stats_cache(cache, compute, {**meta, "resolution": 16})
    assert len(calls) == 2
    loaded, m = load_features(save_features(tmp_path / "f.safetensors", feats, meta))
    np.testing.assert_array_equal(loaded, feats)
    assert m == meta
    (tmp_path / "corrupt.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="delete it to recompute"):
        load_features(tmp_path / "corrupt.safetensors")

"""mmcv-lite compat: mmseg imports, pure-torch point_sample, clear errors for compiled ops, model builds."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from todsynth.errors import ConfigError, TodsynthError
from todsynth.seg.compat import MmcvOpUnavailableError, ensure_mmseg, point_sample


def test_ensure_mmseg_is_idempotent_and_mmseg_imports() -> None:
    flavour = ensure_mmseg()
    assert flavour in ("mmcv-lite", "mmcv-full")
    assert ensure_mmseg() == flavour
    import mmseg.apis  # noqa: F401
    import mmseg.datasets  # noqa: F401
    import mmseg.models  # noqa: F401

    if flavour == "mmcv-lite":
        import mmcv.ops

        assert sys.modules["mmcv.ops"] is mmcv.ops
        assert mmcv.ops.point_sample is point_sample


def test_point_sample_matches_grid_sample() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 5, 7, generator=g)
    pts = torch.rand(2, 11, 2, generator=g)
    out = point_sample(feats, pts)
    assert out.shape == (2, 3, 11)
    ref = F.grid_sample(feats, 2 * pts[:, :, None] - 1, align_corners=False)[..., 0]
    torch.testing.assert_close(out, ref)
    grid = torch.rand(2, 4, 6, 2, generator=g)
    assert point_sample(feats, grid, align_corners=True).shape == (2, 3, 4, 6)
    # the centre of pixel (row 2, col 3) in normalised [0,1] coordinates samples that pixel exactly
    centre = torch.tensor([[[(3 + 0.5) / 7, (2 + 0.5) / 5]]]).expand(2, 1, 2)
    torch.testing.assert_close(point_sample(feats, centre)[..., 0], feats[:, :, 2, 3])


def test_stub_ops_raise_clear_error() -> None:
    if ensure_mmseg() != "mmcv-lite":
        pytest.skip("full mmcv installed: no stand-in ops")
    from mmcv.ops import CrissCrossAttention, sigmoid_focal_loss

    with pytest.raises(MmcvOpUnavailableError, match=r"CrissCrossAttention needs full mmcv.*CCNet"):
        CrissCrossAttention(16)
    with pytest.raises(TodsynthError, match="sigmoid_focal_loss needs full mmcv"):
        sigmoid_focal_loss(torch.zeros(1), torch.zeros(1))
    # mmseg's CCHead picks the stand-in up and fails with our message, not an opaque ImportError
    from todsynth.seg.compat import register_mmseg

    register_mmseg()
    from mmseg.registry import MODELS

    with pytest.raises(MmcvOpUnavailableError, match="pip install 'todsynth\\[mmcv-full\\]'"):
        MODELS.build(dict(type="CCHead", in_channels=8, channels=4, num_classes=2))


def test_fcn_r18_builds_and_trains_a_step_on_cpu() -> None:
    from todsynth.seg.models import build_segmentor

    model = build_segmentor("fcn-r18", num_classes=7)
    assert type(model).__name__ == "EncoderDecoder"
    assert not any("SyncBatchNorm" in type(m).__name__ for m in model.modules())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    model.train()
    logits = model(x, mode="tensor")
    assert logits.shape == (2, 7, 4, 4)  # output stride 8
    logits.logsumexp(1).mean().backward()
    assert model.decode_head.conv_seg.weight.grad is not None
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_seeded_build_is_deterministic_and_leaves_global_rng() -> None:
    from todsynth.seg.models import build_segmentor

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_segmentor("fcn-tiny", seed=1)
    after = torch.rand(3)
    b = build_segmentor("fcn-tiny", seed=1)
    c = build_segmentor("fcn-tiny", seed=2)
    torch.testing.assert_close(after, expected)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["backbone.stem.0.weight"], sc["backbone.stem.0.weight"])


def test_shipped_loveda_config_and_unknown_name() -> None:
    from todsynth.seg.models import segmentor_config, shipped_config_path

    assert shipped_config_path("pspnet-r50") is not None
    cfg = segmentor_config("pspnet-r50", 7)
    assert cfg["decode_head"]["type"] == "PSPHead" and cfg["decode_head"]["num_classes"] == 7
    assert cfg["auxiliary_head"]["num_classes"] == 7
    assert cfg["backbone"]["norm_cfg"]["type"] == "BN" and cfg["decode_head"]["norm_cfg"]["type"] == "BN"
    assert cfg["pretrained"] is None and cfg["backbone"]["init_cfg"] is None
    with pytest.raises(ConfigError, match="unknown segmentation model 'unet-x'.*fcn-r18"):
        segmentor_config("unet-x")

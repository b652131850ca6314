"""Named MMSeg segmentors, configured in code (no pretrained downloads: ``init_cfg=None``).

``fcn-tiny`` and ``fcn-r18`` are the CPU models (tests, smoke suites); ``deeplabv3plus-r18`` is a
small GPU/CPU model; ``pspnet-r50`` and ``deeplabv3plus-r50`` are MMSeg's LoveDA configs, read from
the config files shipped inside the mmseg wheel (``mmseg/.mim/configs``) when present, with an
in-code equivalent otherwise. Normalisation is plain BN unless a distributed GPU job asks for
SyncBN, so every model runs on a single CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from todsynth.data.classes import NUM_CLASSES
from todsynth.data.imagenet import IMAGENET_MEAN_255, IMAGENET_STD_255
from todsynth.errors import ConfigError

# Shipped LoveDA configs, relative to mmseg/.mim/configs.
SHIPPED_CONFIGS: dict[str, str] = {
    "pspnet-r50": "pspnet/pspnet_r50-d8_4xb4-80k_loveda-512x512.py",
    "deeplabv3plus-r50": "deeplabv3plus/deeplabv3plus_r50-d8_4xb4-80k_loveda-512x512.py",
}


def _data_preprocessor(crop_size: tuple[int, int] | None) -> dict[str, Any]:
    """SegDataPreProcessor: BGR (cv2-loaded) -> RGB, ImageNet normalisation, padding.

    Pads to ``crop_size`` (or to a multiple of 32 without a crop; mmseg needs exactly one of the two when training).
    """
    cfg: dict[str, Any] = dict(
        type="SegDataPreProcessor",
        mean=list(IMAGENET_MEAN_255),
        std=list(IMAGENET_STD_255),
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
    )
    if crop_size is not None:
        cfg["size"] = tuple(crop_size)
    else:
        cfg["size_divisor"] = 32
    return cfg


def _resnet_v1c(depth: int, norm: dict[str, Any], *, base_channels: int = 64, stem_channels: int = 64) -> dict[str, Any]:
    """Dilated (output stride 8) ResNetV1c backbone, as in MMSeg's ``*-d8`` configs."""
    return dict(
        type="ResNetV1c",
        depth=depth,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        stem_channels=stem_channels,
        base_channels=base_channels,
        norm_cfg=norm,
        norm_eval=False,
        style="pytorch",
        contract_dilation=True,
        init_cfg=None,
    )


def _ce(weight: float) -> dict[str, Any]:
    # avg_non_ignore: mean over labelled pixels only (PyTorch's semantics), so filtered masks don't shrink the loss.
    return dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=weight, avg_non_ignore=True)


def _fcn_head(in_channels: int, channels: int, num_classes: int, norm: dict[str, Any], *, in_index: int,
              num_convs: int, concat_input: bool, dropout: float = 0.1, loss_weight: float = 1.0) -> dict[str, Any]:
    """MMSeg's ``FCNHead`` on backbone output ``in_index``."""
    return dict(
        type="FCNHead",
        in_channels=in_channels,
        in_index=in_index,
        channels=channels,
        num_convs=num_convs,
        concat_input=concat_input,
        dropout_ratio=dropout,
        num_classes=num_classes,
        norm_cfg=norm,
        align_corners=False,
        loss_decode=_ce(loss_weight),
    )


def _fcn_aux(in_channels: int, channels: int, num_classes: int, norm: dict[str, Any]) -> dict[str, Any]:
    """The auxiliary FCN head on stage 3 (loss weight 0.4), as in MMSeg's configs."""
    return _fcn_head(in_channels, channels, num_classes, norm, in_index=2, num_convs=1, concat_input=False,
                     loss_weight=0.4)


def _encoder_decoder(backbone: dict[str, Any], decode_head: dict[str, Any], aux: dict[str, Any] | None) -> dict[str, Any]:
    cfg: dict[str, Any] = dict(
        type="EncoderDecoder",
        data_preprocessor=_data_preprocessor(None),
        pretrained=None,
        backbone=backbone,
        decode_head=decode_head,
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )
    if aux is not None:
        cfg["auxiliary_head"] = aux
    return cfg


def fcn_tiny(num_classes: int, norm: dict[str, Any]) -> dict[str, Any]:
    """ResNetV1c-18 at a quarter width (16-128 channels) + FCNHead: fastest CPU model (~0.9 M params)."""
    backbone = _resnet_v1c(18, norm, base_channels=16, stem_channels=16)
    head = _fcn_head(128, 64, num_classes, norm, in_index=3, num_convs=1, concat_input=True)
    return _encoder_decoder(backbone, head, None)


def fcn_r18(num_classes: int, norm: dict[str, Any]) -> dict[str, Any]:
    """ResNetV1c-18-d8 + FCNHead (+ auxiliary FCN head), MMSeg's ``fcn_r18-d8`` layout."""
    head = _fcn_head(512, 128, num_classes, norm, in_index=3, num_convs=2, concat_input=True)
    return _encoder_decoder(_resnet_v1c(18, norm), head, _fcn_aux(256, 64, num_classes, norm))


def dcnn(num_classes: int, norm: dict[str, Any]) -> dict[str, Any]:
    """Full-resolution dilated CNN (7 layers, 48 wide, receptive field 39 px) + a 1x1 classifier (~0.1 M params).

    No downsampling at all: built for small tiles whose thinnest structures are 2-3 px wide (the
    procedural scenes); an architecture unlike the ResNet-FCN judges (the ``dcnn`` evaluator).
    """
    backbone = dict(type="DilatedCNN", in_channels=3, channels=48, dilations=(1, 1, 2, 4, 8, 2, 1))
    head = _fcn_head(48, 48, num_classes, norm, in_index=0, num_convs=0, concat_input=False, dropout=0.0)
    return _encoder_decoder(backbone, head, None)


def _deeplabv3plus(depth: int, num_classes: int, norm: dict[str, Any]) -> dict[str, Any]:
    wide = depth >= 50
    head = dict(
        type="DepthwiseSeparableASPPHead",
        in_channels=2048 if wide else 512,
        in_index=3,
        channels=512 if wide else 128,
        dilations=(1, 12, 24, 36),
        c1_in_channels=256 if wide else 64,
        c1_channels=48 if wide else 12,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm,
        align_corners=False,
        loss_decode=_ce(1.0),
    )
    aux = _fcn_aux(1024 if wide else 256, 256 if wide else 64, num_classes, norm)
    return _encoder_decoder(_resnet_v1c(depth, norm), head, aux)


def deeplabv3plus_r18(num_classes: int, norm: dict[str, Any]) -> dict[str, Any]:
    """ResNetV1c-18-d8 + DepthwiseSeparableASPPHead (DeepLabV3+), MMSeg's LoveDA r18 layout."""
    return _deeplabv3plus(18, num_classes, norm)


def deeplabv3plus_r50(num_classes: int, norm: dict[str, Any]) -> dict[str, Any]:
    """MMSeg's DeepLabV3+-R50 LoveDA model (shipped config when present)."""
    return _shipped("deeplabv3plus-r50", num_classes, norm) or _deeplabv3plus(50, num_classes, norm)


def pspnet_r50(num_classes: int, norm: dict[str, Any]) -> dict[str, Any]:
    """MMSeg's PSPNet-R50 LoveDA model (shipped config when present)."""
    shipped = _shipped("pspnet-r50", num_classes, norm)
    if shipped is not None:
        return shipped
    head = dict(
        type="PSPHead",
        in_channels=2048,
        in_index=3,
        channels=512,
        pool_scales=(1, 2, 3, 6),
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm,
        align_corners=False,
        loss_decode=_ce(1.0),
    )
    return _encoder_decoder(_resnet_v1c(50, norm), head, _fcn_aux(1024, 256, num_classes, norm))


SEG_MODELS: dict[str, Callable[[int, dict[str, Any]], dict[str, Any]]] = {
    "fcn-tiny": fcn_tiny,
    "dcnn": dcnn,
    "fcn-r18": fcn_r18,
    "deeplabv3plus-r18": deeplabv3plus_r18,
    "pspnet-r50": pspnet_r50,
    "deeplabv3plus-r50": deeplabv3plus_r50,
}


def shipped_config_path(name: str) -> Path | None:
    """Path of MMSeg's shipped LoveDA config for ``name``, or None when absent from the wheel."""
    rel = SHIPPED_CONFIGS.get(name)
    if rel is None:
        return None
    import importlib.util

    spec = importlib.util.find_spec("mmseg")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / ".mim" / "configs" / rel
    return path if path.is_file() else None


def _replace_norm(cfg: Any, norm: dict[str, Any]) -> Any:
    """Replace every ``norm_cfg`` in a nested config with ``norm`` (SyncBN -> BN on one device)."""
    if isinstance(cfg, dict):
        return {k: (dict(norm) if k == "norm_cfg" else _replace_norm(v, norm)) for k, v in cfg.items()}
    if isinstance(cfg, list | tuple):
        return type(cfg)(_replace_norm(v, norm) for v in cfg)
    return cfg


def _shipped(name: str, num_classes: int, norm: dict[str, Any]) -> dict[str, Any] | None:
    """Model dict from MMSeg's shipped config, without pretrained weights, with our norm and class count."""
    path = shipped_config_path(name)
    if path is None:
        return None
    from mmengine.config import Config

    model: dict[str, Any] = Config.fromfile(str(path)).model.to_dict()
    model = _replace_norm(model, norm)
    model["pretrained"] = None
    model["backbone"]["init_cfg"] = None
    model["data_preprocessor"] = _data_preprocessor(None)
    for head in ("decode_head", "auxiliary_head"):
        if head in model:
            model[head]["num_classes"] = num_classes
    return model


def default_norm() -> dict[str, Any]:
    """SyncBN only inside an initialised distributed job on GPU; BN everywhere else."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    kind = "SyncBN" if distributed and torch.cuda.is_available() else "BN"
    return dict(type=kind, requires_grad=True)


def require_model(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is one of :data:`SEG_MODELS`."""
    if not isinstance(name, str) or name not in SEG_MODELS:
        raise ConfigError(f"unknown segmentation model {name!r}; choose one of {', '.join(SEG_MODELS)}")


def segmentor_config(name: str, num_classes: int = NUM_CLASSES, *, crop_size: tuple[int, int] | None = None,
                     norm: dict[str, Any] | None = None) -> dict[str, Any]:
    """The MMSeg model config (plain dict) for a named model.

    Raises:
        ConfigError: unknown model name or a non-positive class count.
    """
    require_model(name)
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
    cfg = copy.deepcopy(SEG_MODELS[name](num_classes, norm or default_norm()))
    cfg["data_preprocessor"] = _data_preprocessor(crop_size)
    return cfg


def build_segmentor(name: str, num_classes: int = NUM_CLASSES, *, crop_size: tuple[int, int] | None = None,
                    norm: dict[str, Any] | None = None, seed: int = 0) -> nn.Module:
    """Build a seeded, randomly initialised MMSeg ``EncoderDecoder`` (no download, CPU-safe).

    The seed is applied inside ``torch.random.fork_rng``, so the global RNG state is left untouched.
    """
    from mmengine.config import ConfigDict

    from todsynth.seg.compat import quiet_mmengine, register_mmseg

    register_mmseg()
    from mmseg.registry import MODELS

    cfg = segmentor_config(name, num_classes, crop_size=crop_size, norm=norm)
    with torch.random.fork_rng(devices=[]), quiet_mmengine():
        torch.manual_seed(seed)
        model = MODELS.build(ConfigDict(cfg))
        model.init_weights()
    return cast("nn.Module", model)

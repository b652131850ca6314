"""Small backbones of our own, registered in MMSeg's model registry beside its ResNets.

``DilatedCNN`` keeps full resolution (no stride, no pooling) and grows its receptive field with
dilated 3x3 convolutions: 2-3 px roads and 3 px building edges of 64 px scenes survive, where an
output-stride-8 ResNet sees them as a fraction of one feature pixel. It is the ``dcnn`` evaluator:
an architecture unlike the ResNet judges, so the two do not share blind spots.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class DilatedCNN(nn.Module):
    """Conv3x3-BN-ReLU layers at full resolution, one per dilation; returns ``(features,)``.

    Args:
        in_channels: image channels (3).
        channels: width of every layer.
        dilations: one layer per entry; the receptive field is ``1 + 2 * sum(dilations)`` pixels.

    Shapes: images (B, in_channels, H, W) -> a 1-tuple of features (B, channels, H, W).
    """

    def __init__(self, in_channels: int = 3, channels: int = 48, dilations: Sequence[int] = (1, 1, 2, 4, 8, 2, 1)) -> None:
        super().__init__()
        if not dilations or any(int(d) < 1 for d in dilations):
            raise ValueError(f"dilations must be positive integers, got {list(dilations)}")
        layers: list[nn.Module] = []
        c_in = in_channels
        for d in dilations:
            layers += [nn.Conv2d(c_in, channels, 3, padding=int(d), dilation=int(d), bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
            c_in = channels
        self.layers = nn.Sequential(*layers)

    def init_weights(self) -> None:
        """Kaiming init for the convolutions (MMSeg calls this after building)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> tuple[Tensor]:
        """Features (B, channels, H, W) at full resolution, as a one-stage tuple (MMSeg's backbone contract)."""
        return (self.layers(x),)


def register_backbones() -> None:
    """Add our backbones to MMSeg's registry (idempotent)."""
    from mmseg.registry import MODELS

    if MODELS.get("DilatedCNN") is None:
        MODELS.register_module(name="DilatedCNN", module=DilatedCNN)

"""MMSeg-side data pieces for training: a dataset over (image, mask) path pairs, the sampler of every training.

Importing this module imports mmseg (after :func:`ensure_mmseg`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from mmengine.dataset import InfiniteSampler

from todsynth.seg.compat import ensure_mmseg

ensure_mmseg()

from mmcv.transforms import LoadImageFromFile, RandomFlip  # noqa: E402
from mmseg.datasets import BaseSegDataset  # noqa: E402
from mmseg.datasets.transforms import LoadAnnotations, PackSegInputs, RandomCrop  # noqa: E402


class PairSegDataset(BaseSegDataset):  # type: ignore[misc]  # mmseg ships no types: BaseSegDataset is Any
    """MMSeg dataset over an explicit list of (image path, raw mask path) pairs.

    Masks are raw LoveDA labels (0 = no-data); with ``reduce_zero_label=True`` they become
    0..C-1 with 255 ignored, exactly as MMSeg's ``LoveDADataset``. Classes come from ``metainfo``.
    """

    METAINFO: dict[str, Any] = {}

    def __init__(self, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> None:
        self._pairs = [(str(i), str(m)) for i, m in pairs]
        kwargs.setdefault("reduce_zero_label", True)
        super().__init__(**kwargs)

    def load_data_list(self) -> list[dict[str, Any]]:
        """One record per pair, in the given order."""
        return [
            dict(img_path=i, seg_map_path=m, label_map=self.label_map,
                 reduce_zero_label=self.reduce_zero_label, seg_fields=[])
            for i, m in self._pairs
        ]


def train_pipeline(crop_size: tuple[int, int] | None) -> list[Any]:
    """Load (BGR image, reduced mask), optional random crop, horizontal flip, pack.

    ``LoadAnnotations`` takes ``reduce_zero_label`` from each record (set by the dataset), MMSeg's
    non-deprecated way; raw 0 becomes 255 and k becomes k-1.
    """
    steps: list[Any] = [LoadImageFromFile(), LoadAnnotations()]
    if crop_size is not None:
        steps.append(RandomCrop(crop_size=tuple(crop_size), cat_max_ratio=0.75))
    steps += [RandomFlip(prob=0.5, direction="horizontal"), PackSegInputs()]
    return steps


class RepeatFactorSampler(InfiniteSampler):  # type: ignore[misc]  # mmengine ships no types: InfiniteSampler is Any
    """Infinite sampler of epochs in which item ``i`` appears about ``f_i = weights[i] / min positive weight`` times.

    Each epoch holds ``floor(f_i)`` copies of item ``i`` plus one more with probability ``f_i - floor(f_i)``
    (detectron2's ``RepeatFactorTrainingSampler`` rounding), shuffled. Items are drawn in proportion to their
    weights, and every positive-weight item comes at least once an epoch; weight 0 never comes.

    The shuffle is mmengine's ``InfiniteSampler`` stream (``torch.randperm`` of the epoch's length from a
    ``torch.Generator`` seeded with ``seed``); the rounding draws from a separate stream, only for fractional
    factors. So equal weights give mmengine's ``InfiniteSampler(shuffle=True, seed=seed)`` index for index, and a
    training of real images alone samples the same whether or not it is given weights.
    """

    max_epoch: int = 10_000_000  # items per epoch, at most: wider weight ranges would not fit in memory

    def __init__(self, dataset: Any, weights: Sequence[float], seed: int) -> None:
        w = torch.as_tensor(list(weights), dtype=torch.float64)
        if w.numel() != len(dataset):
            raise ValueError(f"got {w.numel()} weights for a dataset of {len(dataset)} samples")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError("sampling weights must be finite and >= 0 with a positive sum")
        factors = w / w[w > 0].min()
        if float(factors.sum()) > self.max_epoch:
            raise ValueError(f"sampling weights span too wide a range: an epoch would hold {float(factors.sum()):.3g} "
                             f"items (at most {self.max_epoch:.0e})")
        self.factors = factors
        super().__init__(dataset, shuffle=True, seed=seed)

    def epochs(self) -> Iterator[list[int]]:
        """The endless epochs, each a shuffled list of indices (``_infinite_indices`` chains them)."""
        whole = torch.floor(self.factors)
        frac = self.factors - whole
        fractional = bool((frac > 0).any())
        g = torch.Generator()
        g.manual_seed(self.seed)
        rounding = torch.Generator()
        rounding.manual_seed(self.seed + 0x5EED)
        index = torch.arange(len(self.factors))
        while True:
            counts = whole
            if fractional:
                counts = whole + (torch.rand(len(frac), generator=rounding, dtype=torch.float64) < frac)
            epoch = torch.repeat_interleave(index, counts.long())
            yield epoch[torch.randperm(len(epoch), generator=g)].tolist()

    def _infinite_indices(self) -> Iterator[int]:
        for epoch in self.epochs():
            yield from epoch

"""MMSeg-side data pieces for training: a dataset over (image, mask) path pairs, a weighted infinite sampler.

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


class WeightedInfiniteSampler(InfiniteSampler):  # type: ignore[misc]  # mmengine ships no types: InfiniteSampler is Any
    """Infinite sampler drawing index ``i`` with probability ``weights[i] / sum(weights)`` (with replacement).

    Seeded by its own ``torch.Generator``; all-equal weights give i.i.d. uniform draws.
    """

    def __init__(self, dataset: Any, weights: Sequence[float], seed: int, chunk: int = 1024) -> None:
        w = torch.as_tensor(list(weights), dtype=torch.float64)
        if w.numel() != len(dataset):
            raise ValueError(f"got {w.numel()} weights for a dataset of {len(dataset)} samples")
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError("sampling weights must be >= 0 with a positive sum")
        self.weights = w
        self.chunk = int(chunk)
        super().__init__(dataset, shuffle=True, seed=seed)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            yield from torch.multinomial(self.weights, self.chunk, replacement=True, generator=g).tolist()

"""Data layer: LoveDA facts and reader, procedural LoveDA-format scenes, labelled subsets, validation, index files.

Re-exports resolve lazily (PEP 562), so ``import todsynth.data.classes`` does not pull in torch.
"""

from __future__ import annotations

from todsynth.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "CLASSES": "classes",
    "IGNORE_INDEX": "classes",
    "NUM_CLASSES": "classes",
    "PALETTE": "classes",
    "colorize": "classes",
    "prompt_for_labels": "classes",
    "raw_labels": "classes",
    "reduce_labels": "classes",
    "IMAGENET_MEAN_255": "imagenet",
    "IMAGENET_STD_255": "imagenet",
    "normalize_01": "imagenet",
    "DOMAINS": "loveda",
    "SPLITS": "loveda",
    "LoveDA": "loveda",
    "Sample": "loveda",
    "list_samples": "loveda",
    "load_image": "loveda",
    "load_mask": "loveda",
    "colour_lookup_accuracy": "procedural",
    "generate_dataset": "procedural",
    "generate_scene": "procedural",
    "draw_order": "subset",
    "labelled_subset": "subset",
    "validate_dataset": "validate",
    "build_index": "index",
    "read_index": "index",
    "write_index": "index",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)

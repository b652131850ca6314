"""``index.jsonl``: one ``{"source": mask, "target": image, "prompt": ...}`` object a line.

Paths are POSIX strings relative to the data root; the prompt names the classes present in the
mask ("a satellite image of building, road, water"), background and no-data left out
(:func:`todsynth.data.classes.prompt_for_labels`). Compatible with the reference's index files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from todsynth.data.classes import prompt_for_labels, reduce_labels
from todsynth.data.loveda import DOMAINS, list_samples, read_raw_mask
from todsynth.errors import DatasetNotFoundError, DataValidationError
from todsynth.files import atomic_write_bytes

INDEX_KEYS: tuple[str, ...] = ("source", "target", "prompt")


def build_index(root: str | Path, split: str = "Train", domains: Sequence[str] = DOMAINS) -> list[dict[str, str]]:
    """Index entries for every sample of ``split`` (sorted as :func:`list_samples`); needs masks."""
    root = Path(root)
    entries: list[dict[str, str]] = []
    for s in list_samples(root, split, domains):
        if s.mask_path is None:
            raise DatasetNotFoundError(
                f"{s.image_path} has no mask: an index needs masks (LoveDA's Test split has none)"
            )
        prompt = prompt_for_labels(reduce_labels(read_raw_mask(s.mask_path)))
        entries.append(
            {
                "source": s.mask_path.relative_to(root).as_posix(),
                "target": s.image_path.relative_to(root).as_posix(),
                "prompt": prompt,
            }
        )
    return entries


def write_index(
    root: str | Path, split: str, out: str | Path, domains: Sequence[str] = DOMAINS
) -> Path:
    """Build the index of ``split`` and write it to ``out`` atomically (temp file, then rename)."""
    entries = build_index(root, split, domains)
    out = Path(out)
    atomic_write_bytes(out, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8"))
    return out


def read_index(path: str | Path) -> list[dict[str, Any]]:
    """Entries of an ``index.jsonl``; a malformed line is a :class:`DataValidationError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"index file not found: {path} (write one with `todsynth data index ROOT`)")
    entries: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataValidationError(f"{path}: not UTF-8 text at byte {exc.start} (an index is JSON lines)") from None
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataValidationError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(entry, dict):
            raise DataValidationError(f"{path}:{lineno}: expected a JSON object, got {type(entry).__name__}")
        missing = [k for k in INDEX_KEYS if not isinstance(entry.get(k), str)]
        if missing:
            raise DataValidationError(f"{path}:{lineno}: missing or non-string key(s) {', '.join(missing)}")
        entries.append(entry)
    return entries

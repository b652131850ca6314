"""The terminal results table: no number is cut short on a narrow console; what does not fit is named."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from bench.results import results_table


def _results(seeds: list[int]) -> dict[str, Any]:
    several = len(seeds) > 1
    synthetic = {"downstream_miou": 0.41432, "downstream_oa": 0.6543, "downstream_macc": 0.5551, "mask_miou": 0.6207,
                 "evaluator_real_miou": 0.7511, "fid": 1.3215, "kid": 0.0521, "precision": 0.96, "recall": 0.385,
                 "seconds_per_image": 0.0812, "fid_comparable": False}
    return {
        "suite": "smoke", "config_hash": "a8184ea7" + "0" * 56, "seeds": seeds,
        "variants": [
            {"name": "real-only", "metrics": {"downstream_miou": 0.42461, "downstream_oa": 0.6731,
                                              "downstream_macc": 0.5642},
             "metrics_std": {"downstream_miou": 0.0071} if several else {}},
            {"name": "crfm-paper@n160", "metrics": synthetic,
             "metrics_std": {"downstream_miou": 0.0123, "mask_miou": 0.0021, "fid": 0.061} if several else {}},
        ],
    }


def _render(results: dict[str, Any], width: int | None) -> str:
    console = Console(width=width or 200, record=True, file=io.StringIO())
    console.print(results_table(results, width=width))
    return console.export_text()


def test_a_wide_console_shows_every_column_and_the_fallback_note():
    text = _render(_results([0]), None)
    for value in ("0.425", "0.673", "0.564", "0.414", "0.621", "0.751", "1.32*", "0.052*", "0.960*", "0.385*", "0.08",
                  "crfm-paper@n160"):
        assert value in text
    assert "from a fallback feature extractor: not comparable" in text and "left out" not in text


def test_an_80_column_console_cuts_no_number_and_names_what_it_leaves_out():
    text = _render(_results([0]), 80)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for value in ("0.425", "0.414", "0.621", "0.751", "1.32*", "0.385*", "crfm-paper@n160"):
        assert value in text
    assert "left out at this width: s/image, KID, precision" in " ".join(text.split())
    assert "0.08" not in text and "0.052" not in text


def test_several_seeds_put_the_std_below_the_mean():
    text = _render(_results([0, 1, 2]), 80)
    lines = text.splitlines()
    row = next(i for i, line in enumerate(lines) if line.strip().startswith("crfm-paper@n160"))
    assert "0.414" in lines[row] and "± 0.012" in lines[row + 1] and "± 0.002" in lines[row + 1]
    assert "± 0.06*" in lines[row + 1]  # the fallback-extractor mark stays on the FID cell
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80


def test_a_very_narrow_console_keeps_downstream_miou_mask_miou_and_its_ceiling():
    text = _render(_results([0]), 50)
    for value in ("0.425", "0.414", "0.621", "0.751"):
        assert value in text
    assert "left out at this width: s/image, KID, precision, mAcc, OA, FID, recall (" in " ".join(text.split())
    assert "…" not in text


def test_a_ceiling_row_is_named_as_a_ceiling():
    results = _results([0])
    assert "a ceiling, not a method" not in " ".join(_render(results, None).split())
    results["variants"].append({"name": "perfect", "kind": "rerender", "metrics": {"downstream_miou": 0.434}})
    text = " ".join(_render(results, None).split())
    assert "0.434" in text and "perfect: a ceiling, not a method" in text

"""mIoU/OA/mAcc from a confusion matrix: exact values, absent classes, cross-checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from todsynth.metrics.segmentation import confusion_matrix, scores_from_confusion

# 10 pixels, one ignored. cm[t, p] = [[2,1,1],[1,2,0],[0,0,2]].
TARGET = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 255])
PRED = torch.tensor([0, 0, 1, 2, 1, 1, 0, 2, 2, 0])
NAMES3 = ("a", "b", "c")


def test_confusion_matrix_counts_and_ignores() -> None:
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[2, 1, 1], [1, 2, 0], [0, 0, 2]]
    # numpy input and 2-D shapes give the same matrix
    cm_np = confusion_matrix(PRED.numpy().reshape(2, 5), TARGET.numpy().reshape(2, 5), 3)
    assert torch.equal(cm, cm_np)


def test_scores_exact() -> None:
    s = scores_from_confusion(confusion_matrix(PRED, TARGET, 3), NAMES3)
    assert s["per_class_iou"] == pytest.approx({"a": 2 / 5, "b": 2 / 4, "c": 2 / 3})
    assert s["miou"] == pytest.approx((2 / 5 + 1 / 2 + 2 / 3) / 3)
    assert s["oa"] == pytest.approx(6 / 9)
    assert s["macc"] == pytest.approx((2 / 4 + 2 / 3 + 1.0) / 3)
    assert s["n_pixels"] == 9


def test_absent_class_excluded_but_false_positive_counts() -> None:
    names = ("a", "b", "c", "d")
    s = scores_from_confusion(confusion_matrix(PRED, TARGET, 4), names)
    assert math.isnan(s["per_class_iou"]["d"])  # absent from pred and target
    assert s["miou"] == pytest.approx((2 / 5 + 1 / 2 + 2 / 3) / 3)
    # class 3 predicted but never present: IoU 0 and it pulls the mean down
    pred = PRED.clone()
    pred[0] = 3
    s2 = scores_from_confusion(confusion_matrix(pred, TARGET, 4), names)
    assert s2["per_class_iou"]["d"] == 0.0
    assert s2["miou"] < s["miou"]
    assert math.isnan(s2["per_class_acc"]["d"])


def test_empty_and_bad_inputs() -> None:
    s = scores_from_confusion(np.zeros((3, 3), dtype=np.int64), NAMES3)
    assert math.isnan(s["miou"]) and math.isnan(s["oa"]) and s["n_pixels"] == 0
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        confusion_matrix(torch.tensor([0, 5]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.tensor([0, 1, 2]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match=r"differ in shape: \(2, 3\) vs \(3, 2\)"):  # same size: was accepted
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="pred labels must be integers, got torch.float32"):  # 2.7 was class 2
        confusion_matrix(torch.tensor([2.7, 0.0]), torch.tensor([2, 0]), 3)
    assert confusion_matrix(np.array([[2, 0]], np.uint8), np.array([[2, 255]], np.uint8), 3)[2, 2] == 1
    with pytest.raises(ValueError, match="3 classes but 2"):
        scores_from_confusion(np.eye(3), ("a", "b"))


def test_matches_torchmetrics() -> None:
    from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (4, 16, 16), generator=g)
    target[:, :2] = 255
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target.clamp(max=4), torch.randint(0, 5, target.shape, generator=g))
    cm = confusion_matrix(pred, target, 5)
    tm_cm = MulticlassConfusionMatrix(num_classes=5, ignore_index=255)(pred, target)
    assert torch.equal(cm, tm_cm.long())
    ours = scores_from_confusion(cm, tuple("abcde"))
    tm = MulticlassJaccardIndex(num_classes=5, ignore_index=255, average="none")(pred, target)
    assert [ours["per_class_iou"][n] for n in "abcde"] == pytest.approx(tm.tolist(), abs=1e-6)
    tm_macro = MulticlassJaccardIndex(num_classes=5, ignore_index=255, average="macro")(pred, target)
    assert ours["miou"] == pytest.approx(float(tm_macro), abs=1e-6)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_matches_mmseg_iou_metric() -> None:
    from todsynth.seg.compat import ensure_mmseg

    ensure_mmseg()
    from mmseg.evaluation.metrics import IoUMetric

    pred = PRED.clone()
    pred[0] = 3  # class 3: predicted once, never in target; 4 classes with one absent everywhere
    results = [IoUMetric.intersect_and_union(pred, TARGET, 5, 255)]
    totals = [sum(r[i] for r in results) for i in range(4)]  # torch tensors, as IoUMetric keeps them
    mm = IoUMetric.total_area_to_metrics(*totals, metrics=["mIoU"])
    ours = scores_from_confusion(confusion_matrix(pred, TARGET, 5), tuple("abcde"))
    assert ours["miou"] == pytest.approx(float(np.nanmean(mm["IoU"])))
    assert ours["oa"] == pytest.approx(float(mm["aAcc"]))
    assert ours["macc"] == pytest.approx(float(np.nanmean(mm["Acc"])))
    np.testing.assert_allclose([ours["per_class_iou"][n] for n in "abcde"], mm["IoU"], equal_nan=True)

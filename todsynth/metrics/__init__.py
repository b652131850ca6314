"""Metrics: confusion-matrix scores (mIoU, OA, mAcc, per-class IoU) and FID/KID with offline extractors."""

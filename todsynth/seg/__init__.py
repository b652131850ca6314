"""MMSegmentation adapter: build, train and evaluate segmentors; differentiable logits for CRFM; mmcv compat."""

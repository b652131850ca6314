"""Sampling: the Euler flow sampler (+CFG), CRFM, dataset synthesis, timing and speed helpers."""

"""The one rule between CRFM and the sampler, torch-free so suite validation and the CLI check it before any work.

CRFM rectifies the first ``rectified_step`` of the sampler's ``num_inference_steps`` Euler steps (METHOD.md): it
must be an int in ``[0, num_inference_steps]``. Every place that checks it (``CRFMConfig``'s step sizes, the
sampler, suite and tune validation, ``todsynth gen sample``, ``bench perf``) calls :func:`rectified_step_problem`.
"""

from __future__ import annotations


def is_int(x: object) -> bool:
    """An int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def rectified_step_problem(rectified_step: object, num_inference_steps: object,
                           steps_name: str = "num_inference_steps") -> str | None:
    """None when ``rectified_step`` is an int in ``[0, num_inference_steps]``; else why not, in one phrase.

    The phrase names the steps as the caller's user knows them (``steps_name``), e.g.
    ``"30 > sampling.num_inference_steps 23"``.
    """
    if not is_int(num_inference_steps) or num_inference_steps < 1:  # type: ignore[operator]
        return f"{steps_name} must be an int >= 1, got {num_inference_steps!r}"
    if not is_int(rectified_step) or rectified_step < 0:  # type: ignore[operator]
        return f"must be an int >= 0, got {rectified_step!r}"
    if rectified_step > num_inference_steps:  # type: ignore[operator]
        return f"{rectified_step} > {steps_name} {num_inference_steps}"
    return None

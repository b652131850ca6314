"""Where the sampler may be observed from outside: named sections of its loop and CRFM's two differentiable calls.

The library never times itself; a harness passes an observer to ``sample(..., observer=...)``
(``bench.perf.timing.Stopwatch`` times each part). Observing must not change what is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

from torch import Tensor

TensorFn = Callable[[Tensor], Tensor]

# The sampler's sections, in loop order; vae_decode and judge are CRFM's traced calls (forward and backward).
SECTIONS: tuple[str, ...] = ("encode_mask", "transformer", "vae_decode", "judge", "euler", "final_decode")


class SamplingObserver(Protocol):
    """Hooks the sampler calls around the parts of its loop.

    ``section(name)`` wraps a part of the loop; ``traced(name, fn)`` is called once per batch for the VAE decoder
    (``vae_decode``) and the judge (``judge``) it hands to CRFM.
    """

    def section(self, name: str) -> AbstractContextManager[object]:
        """A context around the part ``name`` of the loop."""
        ...

    def traced(self, name: str, fn: TensorFn) -> TensorFn:
        """``fn`` (the decoder or the judge), possibly wrapped to observe its calls."""
        ...


class Unobserved:
    """The default observer: no-op sections, functions returned as they are."""

    def section(self, name: str) -> AbstractContextManager[object]:
        """No-op."""
        return nullcontext()

    def traced(self, name: str, fn: TensorFn) -> TensorFn:
        """``fn`` itself."""
        return fn

"""Labelled subsets for data-efficiency studies: deterministic, nested, balanced over domains.

Every sample gets the rank key ``sha256(f"{seed}/{domain}/{id}")``. Within a domain, samples are ordered
by that key; the domains are then interleaved round-robin in order of first appearance (Urban, Rural,
Urban, ...; once a domain runs out the other one continues). The subset of size ``n`` is the first ``n``
samples of this draw order, returned in the input order. So, for one seed:

- nested: the subset of 16 lies inside the subset of 48, which lies inside the subset of 160;
- balanced: the domains' counts differ by at most one while both have samples left;
- stable: a sample's rank within its domain depends only on (seed, domain, id), so other files appearing
  or disappearing do not reshuffle the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing only: drawing a subset needs no torch
    from todsynth.data.loveda import Sample

DRAW_RULE = "nested-domain-balanced-sha256"  # named in cache keys: a new rule must get a new name


def _rank(seed: int, s: Sample) -> bytes:
    return hashlib.sha256(f"{int(seed)}/{s.domain}/{s.id}".encode()).digest()


def draw_order(samples: Sequence[Sample], seed: int = 0) -> list[Sample]:
    """All ``samples`` in draw order: per domain by rank key, domains interleaved round-robin."""
    by_domain: dict[str, list[Sample]] = {}
    for s in samples:
        by_domain.setdefault(s.domain, []).append(s)
    queues = [sorted(group, key=lambda s: _rank(seed, s)) for group in by_domain.values()]
    order: list[Sample] = []
    for i in range(max((len(q) for q in queues), default=0)):
        order += [q[i] for q in queues if i < len(q)]
    return order


def labelled_subset(samples: Sequence[Sample], n: int, seed: int = 0) -> list[Sample]:
    """The first ``n`` samples of :func:`draw_order`, in the order of ``samples``.

    Raises:
        ValueError: ``n`` is below 1 or above ``len(samples)``.
    """
    if not 1 <= n <= len(samples):
        raise ValueError(f"labelled subset of n={n} from {len(samples)} training samples (needs 1 <= n <= "
                         f"{len(samples)})")
    chosen = {(s.domain, s.id) for s in draw_order(samples, seed)[:n]}
    return [s for s in samples if (s.domain, s.id) in chosen]


def held_out(samples: Sequence[Sample], n: int, k: int, seed: int = 0) -> list[Sample]:
    """The ``k`` samples that follow the labelled subset of size ``n`` in :func:`draw_order`, in input order.

    Fewer when the split runs out. Real scenes the subset's models never saw: the oracle's extra data. Disjoint from ``labelled_subset(samples, n, seed)``; with it, the labelled subset of size ``n + k``.

    Raises:
        ValueError: ``n`` is below 1 or above ``len(samples)``, or ``k`` is below 1.
    """
    if not 1 <= n <= len(samples):
        raise ValueError(f"labelled subset of n={n} from {len(samples)} training samples (needs 1 <= n <= "
                         f"{len(samples)})")
    if k < 1:
        raise ValueError(f"held-out count k={k} must be >= 1")
    chosen = {(s.domain, s.id) for s in draw_order(samples, seed)[n:n + k]}
    return [s for s in samples if (s.domain, s.id) in chosen]

"""Labelled subsets (todsynth.data.subset): deterministic, nested, domain-balanced, stable."""

from __future__ import annotations

from pathlib import Path

import pytest

from todsynth.data.loveda import Sample
from todsynth.data.subset import draw_order, held_out, labelled_subset


def _samples(n_urban: int, n_rural: int) -> list[Sample]:
    out = [Sample(str(i), "Urban", Path(f"U/{i}.png"), Path(f"U/m{i}.png")) for i in range(n_urban)]
    return out + [Sample(str(1000 + i), "Rural", Path(f"R/{i}.png"), Path(f"R/m{i}.png")) for i in range(n_rural)]


def _keys(samples: list[Sample]) -> set[tuple[str, str]]:
    return {(s.domain, s.id) for s in samples}


def test_nested_balanced_and_in_input_order():
    pool = _samples(30, 30)
    subsets = {n: labelled_subset(pool, n, seed=0) for n in (4, 10, 16, 48)}
    for small, big in ((4, 10), (10, 16), (16, 48)):
        assert _keys(subsets[small]) < _keys(subsets[big])
    for n, sub in subsets.items():
        assert len(sub) == n
        urban = sum(s.domain == "Urban" for s in sub)
        assert abs(urban - (n - urban)) <= 1
        assert sub == [s for s in pool if s in sub]  # input order kept
    assert labelled_subset(pool, 16, seed=0) == subsets[16]  # deterministic
    assert _keys(labelled_subset(pool, 16, seed=1)) != _keys(subsets[16])  # the seed picks other scenes


def test_uneven_domains_fill_from_the_larger_one():
    pool = _samples(10, 2)
    sub = labelled_subset(pool, 8)
    assert sum(s.domain == "Rural" for s in sub) == 2 and len(sub) == 8
    assert len(draw_order(pool)) == 12 and _keys(draw_order(pool)) == _keys(pool)


def test_stable_when_other_files_change():
    pool = _samples(20, 20)
    gone = {pool[i].id for i in range(0, 40, 7)}
    smaller = [s for s in pool if s.id not in gone]
    for domain in ("Urban", "Rural"):  # removing files does not reshuffle a domain's other scenes
        kept = [s for s in draw_order(pool, 0) if s.domain == domain and s.id not in gone]
        assert [s for s in draw_order(smaller, 0) if s.domain == domain] == kept


@pytest.mark.parametrize("n", [0, 41])
def test_size_out_of_range(n):
    with pytest.raises(ValueError, match=f"n={n} from 40"):
        labelled_subset(_samples(20, 20), n)


def test_held_out_follows_the_subset_in_the_draw():
    pool = _samples(30, 30)
    extra = held_out(pool, 16, 32, seed=0)
    assert len(extra) == 32
    assert not _keys(extra) & _keys(labelled_subset(pool, 16, 0))  # never a labelled scene
    assert _keys(extra) | _keys(labelled_subset(pool, 16, 0)) == _keys(labelled_subset(pool, 48, 0))
    assert abs(sum(s.domain == "Urban" for s in extra) - 16) <= 1  # balanced like the subset
    assert extra == [s for s in pool if s in extra]  # input order kept
    assert _keys(held_out(pool, 16, 32, seed=1)) != _keys(extra)
    assert len(held_out(pool, 48, 100)) == 12  # the split runs out: what is left


@pytest.mark.parametrize(("n", "k", "match"), [(0, 4, "n=0"), (61, 4, "n=61"), (4, 0, "k=0")])
def test_held_out_out_of_range(n, k, match):
    with pytest.raises(ValueError, match=match):
        held_out(_samples(30, 30), n, k)

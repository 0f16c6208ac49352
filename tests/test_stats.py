"""Comparisons over seeds (search/stats.py) against scipy.stats computed here independently: the paired t
interval (ttest_rel), Welch's interval (ttest_ind, equal_var=False), and the verdict at its edges."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats as sp

from dal_search.search import stats


def _paired_case(rng: random.Random, n: int, shift: float) -> tuple[dict, dict]:
    a = {s: 0.9 + rng.gauss(0, 0.02) for s in range(n)}
    return a, {s: v - shift + rng.gauss(0, 0.01) for s, v in a.items()}


@pytest.mark.parametrize("n, shift, seed", [(3, 0.0, 1), (5, 0.01, 2), (5, 0.05, 3), (8, -0.03, 4), (20, 0.002, 5)])
def test_paired_interval_is_scipys_ttest_rel(n, shift, seed):
    a, b = _paired_case(random.Random(seed), n, shift)
    c = stats.compare(a, b)
    seeds = sorted(a)
    ci = sp.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).confidence_interval(0.95)
    assert c.paired and c.n == n
    assert c.diff == pytest.approx(sum(a[s] - b[s] for s in seeds) / n)
    assert (c.low, c.high) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
    expected = "better" if ci.low > 0 else "worse" if ci.high < 0 else "no detectable difference"
    assert c.verdict == expected


def test_pairing_follows_the_seed_not_the_order():
    a = {2: 0.91, 0: 0.95, 1: 0.80}
    b = {0: 0.94, 1: 0.79, 2: 0.90}
    c = stats.compare(a, b)
    ci = sp.ttest_rel([0.95, 0.80, 0.91], [0.94, 0.79, 0.90]).confidence_interval()
    assert c.diff == pytest.approx(0.01) and c.low == pytest.approx(ci.low) and c.high == pytest.approx(ci.high)
    # every seed gains 0.01, so the interval is (nearly) that point; paired by dict order it would be wide
    assert c.high - c.low < 1e-9 and c.verdict == "better"
    wrong = stats.compare(dict(zip(range(3), a.values())), dict(zip(range(3), b.values())))
    assert wrong.high - wrong.low > 0.1 and wrong.verdict == "no detectable difference"


@pytest.mark.parametrize("a, b", [
    ([0.90, 0.92, 0.95], [0.85, 0.80, 0.88, 0.84]),
    ([0.7, 0.71, 0.69, 0.72, 0.70], [0.70, 0.75, 0.65]),
    ([0.5, 0.9, 0.7], [0.6, 0.61, 0.62, 0.63, 0.64, 0.65]),
])
def test_sides_without_shared_seeds_get_welchs_interval(a, b):
    c = stats.compare(dict(enumerate(a)), {100 + i: v for i, v in enumerate(b)})
    ci = sp.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert not c.paired and (c.n_a, c.n_b, c.n) == (len(a), len(b), min(len(a), len(b)))
    assert c.diff == pytest.approx(sum(a) / len(a) - sum(b) / len(b))
    assert (c.low, c.high) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
    assert "unpaired (Welch" in stats.describe(c)


def test_partly_shared_seeds_pair_when_three_are_shared():
    a = {0: 0.9, 1: 0.8, 2: 0.85, 3: 0.7}
    b = {0: 0.88, 1: 0.79, 2: 0.80, 9: 0.1}
    c = stats.compare(a, b)
    ci = sp.ttest_rel([0.9, 0.8, 0.85], [0.88, 0.79, 0.80]).confidence_interval()
    assert c.paired and c.n == 3 and c.low == pytest.approx(ci.low)
    # two shared seeds are too few to pair: Welch over everything each side has
    c2 = stats.compare({0: 0.9, 1: 0.8, 5: 0.85}, {0: 0.88, 1: 0.79, 7: 0.80})
    assert not c2.paired and c2.n == 3


def test_verdict_edges():
    # n = 2: an interval exists (t with 1 df), but the verdict refuses to call it
    c = stats.compare({0: 0.95, 1: 0.96}, {0: 0.50, 1: 0.52})
    ci = sp.ttest_rel([0.95, 0.96], [0.50, 0.52]).confidence_interval()
    assert c.n == 2 and c.low == pytest.approx(ci.low) and c.verdict == "too few seeds to tell"
    assert stats.sentence("A", "B", c).endswith("n=2 seeds paired: too few seeds to tell")
    # one seed: no interval at all
    one = stats.compare({0: 0.9}, {0: 0.8})
    assert one.n == 1 and math.isnan(one.low) and one.verdict == "too few seeds to tell"
    assert "no interval (one seed)" in stats.describe(one)
    # an interval that touches 0 contains it (closed interval), on either side
    assert stats.verdict(3, 0.0, 0.02) == "no detectable difference"
    assert stats.verdict(3, -0.02, 0.0) == "no detectable difference"
    assert stats.verdict(3, 1e-12, 0.02) == "better" and stats.verdict(3, -0.02, -1e-12) == "worse"
    assert stats.verdict(2, 0.1, 0.2) == "too few seeds to tell"
    # identical values: zero difference, zero-width interval at 0
    same = stats.compare({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.9, 1: 0.8, 2: 0.7})
    assert (same.diff, same.low, same.high, same.verdict) == (0.0, 0.0, 0.0, "no detectable difference")
    # the same difference on every seed: no spread, and every seed agrees
    shifted = stats.compare({0: 0.5, 1: 0.75, 2: 0.25}, {0: 0.25, 1: 0.5, 2: 0.0})
    assert (shifted.low, shifted.high, shifted.verdict) == (0.25, 0.25, "better")
    # failed seeds (None, NaN) are left out before pairing
    gaps = stats.compare({0: 0.9, 1: None, 2: 0.8, 3: 0.7, 4: 0.8}, {0: 0.8, 1: 0.8, 2: 0.7, 3: float("nan"), 4: 0.7})
    ci = sp.ttest_rel([0.9, 0.8, 0.8], [0.8, 0.7, 0.7]).confidence_interval()
    assert gaps.paired and gaps.n == 3 and gaps.low == pytest.approx(ci.low)
    # nothing on a side
    empty = stats.compare({}, {0: 0.5})
    assert empty.n == 0 and empty.verdict == "too few seeds to tell"


def test_sentence_states_n_difference_interval_and_verdict():
    a = {0: 0.953, 1: 0.941, 2: 0.960, 3: 0.955, 4: 0.948}
    b = {0: 0.944, 1: 0.935, 2: 0.951, 3: 0.930, 4: 0.932}
    c = stats.compare(a, b)
    ci = sp.ttest_rel(list(a.values()), list(b.values())).confidence_interval()
    text = stats.sentence("DAL", "GCE", c, "best baseline on noisy validation")
    assert text == (f"DAL vs GCE (best baseline on noisy validation): {100 * c.diff:+.1f} points of test accuracy, "
                    f"95 % CI [{100 * ci.low:+.1f}, {100 * ci.high:+.1f}], n=5 seeds paired: better")
    assert stats.cell(c) == f"{100 * c.diff:+.1f} [{100 * ci.low:+.1f}, {100 * ci.high:+.1f}]"

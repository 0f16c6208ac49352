"""Schedules against PAPER.md's rule and worked values, and the shapes' own definitions."""

import math

import pytest

from objectives.schedules import SHAPES, dal_schedule, make_schedule


def test_paper_worked_values():
    s = dal_schedule(0.6, 1.5, 150)
    t0 = (1 - 0.6) * 150 / (1.5 - 0.6)
    assert t0 == pytest.approx(66.6667, abs=1e-4)
    q, lam = s[67]
    assert q == pytest.approx(1.002, abs=1e-12) and lam == pytest.approx(0.004, abs=5e-4)
    q, lam = s[149]
    assert q == pytest.approx(1.494, abs=1e-12) and lam == pytest.approx(0.988, abs=5e-4)
    assert lam / (q * math.log(10)) == pytest.approx(0.287, abs=5e-4)


@pytest.mark.parametrize("qs, qe, e", [(0.6, 1.5, 150), (0.4, 1.5, 250), (0.3, 2.0, 37), (1.2, 1.8, 10)])
def test_linear_is_the_paper_rule_to_float_precision(qs, qe, e):
    t0 = (1 - qs) * e / (qe - qs)
    for i, (q, lam) in enumerate(dal_schedule(qs, qe, e)):
        assert q == pytest.approx(qs + (qe - qs) * i / e, abs=1e-12)
        assert lam == pytest.approx(max(0.0, (i - t0) / (e - t0)), abs=1e-12)


@pytest.mark.parametrize("shape", ["linear", "cosine", "exponential", "step", "adaptive"])
def test_no_bootstrap_when_q_end_at_most_one(shape):
    assert all(lam == 0 for _, lam in dal_schedule(0.3, 1.0, 50, shape))
    assert all(lam == 0 for _, lam in dal_schedule(0.7, 0.7, 50, shape))


@pytest.mark.parametrize("shape", ["linear", "cosine", "exponential", "step"])
def test_lambda_zero_while_q_at_most_one_then_rising(shape):
    s = dal_schedule(0.5, 1.8, 100, shape)
    lams = [lam for _, lam in s]
    assert all(b >= a for a, b in zip(lams, lams[1:]))
    for q, lam in s:
        if q <= 1:
            assert lam == 0
    assert 0.9 < lams[-1] < 1.0
    assert s[0][0] == 0.5 and s[-1][0] < 1.8


def test_shape_definitions():
    e, qs, qe = 20, 0.4, 2.0
    for i, (q, _) in enumerate(dal_schedule(qs, qe, e, "cosine")):
        assert q == pytest.approx(qs + (qe - qs) * (1 - math.cos(math.pi * i / e)) / 2)
    for i, (q, _) in enumerate(dal_schedule(qs, qe, e, "exponential")):
        assert q == pytest.approx(qs + (qe - qs) * (math.exp(3 * i / e) - 1) / (math.exp(3) - 1))
    steps = [q for q, _ in dal_schedule(qs, qe, e, "step")]
    assert sorted(set(steps)) == pytest.approx([0.4, 0.8, 1.2, 1.6])
    # cosine crosses q = 1 where (1 - cos(pi x)) / 2 = 0.375
    t0 = e * math.acos(1 - 2 * 0.375) / math.pi
    _, lam = dal_schedule(qs, qe, e, "cosine")[15]
    assert lam == pytest.approx((15 - t0) / (e - t0))


def test_adaptive_follows_the_learning_status():
    fast, slow = make_schedule(0.5, 1.5, 50, "adaptive"), make_schedule(0.5, 1.5, 50, "adaptive")
    assert fast.needs_status and not make_schedule(0.5, 1.5, 50).needs_status
    assert fast(0, None) == (0.5, 0.0)
    fast(1, 0.10)
    slow(1, 0.10)
    q_fast, _ = fast(2, 0.90)  # progress (0.9 - 0.1) / (0.95 - 0.1)
    assert q_fast == pytest.approx(0.5 + 1.0 * 0.8 / 0.85)
    q_slow, _ = slow(2, 0.11)
    assert q_slow == pytest.approx(0.5 + 1.0 * max(0.01 / 0.85, 0.5 * 2 / 50))
    q_back, _ = fast(3, 0.2)  # un-learning does not lower q
    assert q_back >= q_fast
    # the pace floor alone: q reaches q_s + (q_e - q_s) * 0.5 * i / E
    floor = make_schedule(0.5, 1.5, 10, "adaptive")
    for i in range(10):
        q, _ = floor(i, 0.3)
        assert q >= 0.5 + 0.5 * i / 10 - 1e-12
    q, lam = make_schedule(0.5, 1.5, 10, "adaptive").at(1.0)
    assert (q, lam) == (1.5, 1.0)


@pytest.mark.parametrize("args, match", [
    ((0.5, 1.5, 0), "epochs"), ((0.0, 1.5, 10), "q_start"), ((1.5, 1.0, 10), "q_end"),
])
def test_errors(args, match):
    with pytest.raises(ValueError, match=match):
        dal_schedule(*args)
    with pytest.raises(ValueError, match="unknown schedule shape"):
        dal_schedule(0.5, 1.5, 10, "zigzag")
    assert set(SHAPES) == {"linear", "cosine", "exponential", "step", "adaptive"}

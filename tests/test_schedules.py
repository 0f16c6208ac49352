"""Schedules against PAPER.md's rule and worked values, the shapes' own definitions (crossings solved by
hand), and the adaptive rule's behaviour on simulated learning curves."""

import doctest
import math

import pytest

import dal_search.objectives.schedules as schedules_module
from dal_search.objectives.schedules import SCHEDULES, AdaptiveSchedule, dal_schedule, make_schedule

SHAPES = SCHEDULES.names()

STATIC = ("linear", "cosine", "exponential", "step")


def paper(qs, qe, e, i):
    """PAPER.md's linear rule, written out directly."""
    q = qs + (qe - qs) * i / e
    if qe <= 1:
        return q, 0.0
    t0 = (1 - qs) * e / (qe - qs)
    return q, max(0.0, (i - t0) / (e - t0))


def test_paper_worked_values():
    s = dal_schedule(0.6, 1.5, 150)
    assert len(s) == 150
    assert s[0] == (0.6, 0.0)
    q, lam = s[67]
    assert q == pytest.approx(1.002, abs=1e-12) and lam == pytest.approx(0.004, abs=5e-4)
    q, lam = s[149]
    assert q == pytest.approx(1.494, abs=1e-12) and lam == pytest.approx(0.988, abs=5e-4)
    assert lam / (q * math.log(10)) == pytest.approx(0.287, abs=5e-4)
    assert s[66][1] == 0.0 and s[66][0] < 1  # t0 = 66.67: epoch 66 is still before the crossing
    assert make_schedule(0.6, 1.5, 150).t0 == pytest.approx(66.6667, abs=1e-4)


@pytest.mark.parametrize("qs, qe, e", [(0.6, 1.5, 150), (0.4, 1.5, 250), (0.3, 2.0, 37), (0.5, 1.5, 100),
                                       (1.2, 1.8, 10), (1.0, 1.5, 20), (0.2, 1.01, 40)])
def test_linear_is_the_paper_rule_to_float_precision(qs, qe, e):
    for i, (q, lam) in enumerate(dal_schedule(qs, qe, e)):
        q_ref, lam_ref = paper(qs, qe, e, i)
        assert q == q_ref
        assert lam == pytest.approx(lam_ref, abs=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_no_bootstrap_when_q_end_at_most_one(shape):
    assert all(lam == 0 for _, lam in dal_schedule(0.3, 1.0, 50, shape))
    assert all(lam == 0 for _, lam in dal_schedule(0.3, 0.9, 50, shape))


@pytest.mark.parametrize("shape", SHAPES)
def test_constant_q_needs_no_division(shape):
    assert dal_schedule(0.7, 0.7, 5, shape) == [(0.7, 0.0)] * 5
    assert dal_schedule(1.0, 1.0, 5, shape) == [(1.0, 0.0)] * 5  # q never passes 1
    assert dal_schedule(1.3, 1.3, 5, shape) == [(1.3, 1.0)] * 5  # the rule's limit: t0 -> -inf


@pytest.mark.parametrize("shape", STATIC)
@pytest.mark.parametrize("qs, qe, e", [(0.5, 1.8, 100), (0.6, 1.5, 150), (0.1, 1.2, 17), (0.5, 1.5, 40),
                                       (0.9, 3.0, 8)])
def test_lambda_is_zero_while_q_at_most_one_then_rises_to_about_one(shape, qs, qe, e):
    s = dal_schedule(qs, qe, e, shape)
    qs_, lams = [q for q, _ in s], [lam for _, lam in s]
    assert len(s) == e and qs_[0] == qs and max(qs_) < qe
    assert all(b >= a for a, b in zip(qs_, qs_[1:]))
    assert all(b >= a for a, b in zip(lams, lams[1:]))
    assert all(lam == 0 for q, lam in s if q <= 1)
    assert all(0 <= lam < 1 for lam in lams)
    if lams[-1] > 0:  # the crossing falls inside the run: lambda ends near 1, at (E - 1 - t0) / (E - t0)
        t0 = make_schedule(qs, qe, e, shape).t0
        assert lams[-1] == pytest.approx((e - 1 - t0) / (e - t0))


@pytest.mark.parametrize("shape", STATIC)
def test_q_start_above_one_bootstraps_from_the_start(shape):
    s = dal_schedule(1.2, 1.8, 10, shape)
    t0 = (1 - 1.2) * 10 / 0.6  # the paper's t0, negative
    assert [lam for _, lam in s] == pytest.approx([(i - t0) / (10 - t0) for i in range(10)])


def test_cosine_values_and_crossing():
    e, qs, qe = 20, 0.4, 2.0
    s = dal_schedule(qs, qe, e, "cosine")
    for i, (q, _) in enumerate(s):
        assert q == pytest.approx(qs + (qe - qs) * (1 - math.cos(math.pi * i / e)) / 2, abs=1e-12)
    # q = 1 where (1 - cos(pi x)) / 2 = 0.375: x = acos(0.25) / pi = 0.41956938, t0 = 8.3913875
    t0 = 8.3913875
    assert make_schedule(qs, qe, e, "cosine").t0 == pytest.approx(t0, abs=1e-6)
    assert s[8][1] == 0.0 and s[8][0] < 1 < s[9][0]
    assert s[15][1] == pytest.approx((15 - t0) / (e - t0), abs=1e-6)


def test_exponential_values_and_crossing():
    e, qs, qe = 20, 0.4, 2.0
    for k in (3.0, 1.0, -2.0):
        s = dal_schedule(qs, qe, e, "exponential", k=k)
        for i, (q, _) in enumerate(s):
            assert q == pytest.approx(qs + (qe - qs) * (math.exp(k * i / e) - 1) / (math.exp(k) - 1), abs=1e-12)
    # default k = 3: q = 1 where (e^(3x) - 1) / (e^3 - 1) = 0.375: x = ln(8.157071) / 3 = 0.69963, t0 = 13.992572
    sched = make_schedule(qs, qe, e, "exponential")
    assert sched.t0 == pytest.approx(13.992572, abs=1e-5)
    s = dal_schedule(qs, qe, e, "exponential")
    assert s[13][1] == 0.0 and s[13][0] < 1 < s[14][0]
    assert s[14][1] == pytest.approx((14 - 13.992572) / (20 - 13.992572), abs=1e-6)
    assert dal_schedule(qs, qe, e, "exponential") == dal_schedule(qs, qe, e, "exponential", k=3)


def test_step_values_and_crossing():
    e, qs, qe = 20, 0.4, 2.0
    s = dal_schedule(qs, qe, e, "step")
    expected_q = [0.4] * 5 + [0.8] * 5 + [1.2] * 5 + [1.6] * 5  # 4 plateaus of floor(4 x) / 4
    assert [q for q, _ in s] == pytest.approx(expected_q)
    # the first plateau past 1 starts at epoch 10 = t0; lambda then rises per epoch, not per plateau
    assert make_schedule(qs, qe, e, "step").t0 == 10
    assert [lam for _, lam in s] == pytest.approx([0.0] * 10 + [(i - 10) / 10 for i in range(10, 20)])
    three = [q for q, _ in dal_schedule(0.0 + 0.3, 0.9 + 0.3, 9, "step", steps=3)]
    assert three == pytest.approx([0.3] * 3 + [0.6] * 3 + [0.9] * 3)


def test_step_plateau_at_exactly_one_is_not_past_one():
    # levels 0.5, 0.75, 1.0, 1.25: the plateau at q = 1 gets no bootstrap, the one at 1.25 does
    s = dal_schedule(0.5, 1.5, 40, "step")
    assert make_schedule(0.5, 1.5, 40, "step").t0 == 30
    assert all(lam == 0 for _, lam in s[:31])
    assert s[35][1] == pytest.approx(0.5)


def test_step_that_never_passes_one_has_no_bootstrap():
    # steps=2 on (0.5, 1.5): levels 0.5 and 1.0, never past 1
    assert all(lam == 0 for _, lam in dal_schedule(0.5, 1.5, 10, "step", steps=2))


def test_single_epoch():
    for shape in SHAPES:
        assert dal_schedule(0.6, 1.5, 1, shape) == [(0.6, 0.0)]


# --- adaptive
def test_adaptive_needs_status_and_static_shapes_do_not():
    assert make_schedule(0.5, 1.5, 50, "adaptive").needs_status
    assert isinstance(make_schedule(0.5, 1.5, 50, "adaptive"), AdaptiveSchedule)
    for shape in STATIC:
        sched = make_schedule(0.5, 1.5, 50, shape)
        assert not sched.needs_status
        assert sched(10, 0.99) == sched(10) == sched(10, None)


def test_adaptive_rule_step_by_step():
    s = make_schedule(0.5, 1.5, 50, "adaptive")  # target 0.9, min_pace 0.5
    assert s(0) == (0.5, 0.0)  # no status yet: progress 0
    assert s(1, 0.1) == pytest.approx((0.5 + 0.5 * 1 / 50, 0.0))  # s_0 = 0.1; only the pace floor
    q, lam = s(2, 0.7)  # progress (0.7 - 0.1) / (0.9 - 0.1) = 0.75; c = 0.5, lambda = (0.75 - 0.5) / 0.5
    assert (q, lam) == pytest.approx((1.25, 0.5))
    assert s(3, 0.2) == pytest.approx((1.25, 0.5))  # un-learning does not lower q
    assert s(4, float("nan")) == pytest.approx((1.25, 0.5))  # a NaN status carries no information
    assert s(5, 0.95) == pytest.approx((1.5, 1.0))  # at or past the target: q_e
    assert s.s0 == 0.1 and s.progress == 1.0


def test_adaptive_status_at_epoch_zero_sets_the_start():
    s = make_schedule(0.5, 1.5, 10, "adaptive", target=0.6)
    assert s(0, 0.1) == (0.5, 0.0)
    assert s(1, 0.35) == pytest.approx((1.0, 0.0))  # halfway to the target: q = 1 exactly, not past it
    s = make_schedule(0.5, 1.5, 10, "adaptive")
    s(0)
    assert s(1, 0.95) == (1.5, 1.0)  # s_0 already past the target: nothing left to learn, p = 1


def learning_curve(i, rate):
    """Simulated agreement with the given labels: from chance (0.1) towards 0.95 at speed `rate`."""
    return 0.95 - 0.85 * math.exp(-rate * i)


def run_adaptive(e, status, **kw):
    s = make_schedule(0.6, 1.5, e, "adaptive", **kw)
    out, prev = [], None
    for i in range(e):
        out.append(s(i, prev))
        prev = status(i)
    return out


def test_adaptive_fast_learning_raises_q_faster_than_linear():
    e = 100
    fast = run_adaptive(e, lambda i: learning_curve(i, 0.2))
    linear = dal_schedule(0.6, 1.5, e)
    assert fast[1][0] < linear[1][0]  # epoch 1 only sets s_0: the pace floor, half of linear
    assert all(a[0] >= b[0] for a, b in zip(fast[3:], linear[3:]))
    assert fast[20][0] > linear[20][0] + 0.5
    assert fast[30] == pytest.approx((1.5, 1.0))  # target 0.9 reached around epoch 15
    assert all(lam == 0 for q, lam in fast if q <= 1)


def test_adaptive_flat_status_follows_the_pace_floor():
    e = 40
    flat = run_adaptive(e, lambda i: 0.3)
    floor = [(0.6 + 0.9 * 0.5 * i / e) for i in range(e)]
    assert [q for q, _ in flat] == pytest.approx(floor)
    assert [v for pair in flat for v in pair] == pytest.approx(
        [v for pair in dal_schedule(0.6, 1.5, e, "adaptive") for v in pair])
    # the floor's q crosses 1 at progress c = 4/9, i.e. at i / E = 8/9: lambda stays 0 before
    c = 0.4 / 0.9
    for i, (q, lam) in enumerate(flat):
        p = 0.5 * i / e
        assert lam == pytest.approx(max(0.0, (p - c) / (1 - c)))


def test_adaptive_with_full_pace_floor_and_no_learning_is_the_paper_rule():
    e = 150
    s = run_adaptive(e, lambda i: 0.5, min_pace=1.0)
    for i, (q, lam) in enumerate(s):
        q_ref, lam_ref = paper(0.6, 1.5, e, i)
        assert q == pytest.approx(q_ref, abs=1e-12) and lam == pytest.approx(lam_ref, abs=1e-12)


def test_adaptive_slow_learning_is_between_floor_and_target():
    e = 100
    slow = run_adaptive(e, lambda i: learning_curve(i, 0.02))
    floor = dal_schedule(0.6, 1.5, e, "adaptive")
    assert all(a[0] >= b[0] for a, b in zip(slow, floor))
    assert any(a[0] > b[0] + 0.1 for a, b in zip(slow, floor))
    qs_ = [q for q, _ in slow]
    assert all(b >= a for a, b in zip(qs_, qs_[1:]))


def test_adaptive_errors():
    s = make_schedule(0.5, 1.5, 10, "adaptive")
    s(0)
    with pytest.raises(ValueError, match="needs the learning status at epoch 1"):
        s(1)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        s(1, 1.5)
    with pytest.raises(ValueError, match="target"):
        make_schedule(0.5, 1.5, 10, "adaptive", target=0.0)
    with pytest.raises(ValueError, match="min_pace"):
        make_schedule(0.5, 1.5, 10, "adaptive", min_pace=2.0)


# --- errors
@pytest.mark.parametrize("args, kw, match", [
    ((0.5, 1.5, 0), {}, "epochs"), ((0.5, 1.5, 2.5), {}, "epochs"),
    ((0.0, 1.5, 10), {}, "q_start"), ((-1.0, 1.5, 10), {}, "q_start"), ((float("nan"), 1.5, 10), {}, "q_start"),
    ((1.5, 1.0, 10), {}, "q_end"),
    ((0.5, 1.5, 10, "zigzag"), {}, "unknown schedule 'zigzag'"),
    ((0.5, 1.5, 10, "linear"), {"k": 3}, "does not take 'k'"),
    ((0.5, 1.5, 10, "adaptive"), {"steps": 3}, "does not take 'steps'"),
    ((0.5, 1.5, 10, "exponential"), {"k": 0.0}, "k != 0"),
    ((0.5, 1.5, 10, "step"), {"steps": 0}, "steps >= 1"),
])
def test_errors(args, kw, match):
    with pytest.raises(ValueError, match=match):
        dal_schedule(*args, **kw)
    with pytest.raises(ValueError, match=match):
        make_schedule(*args, **kw)


@pytest.mark.parametrize("shape", SHAPES)
def test_epoch_out_of_range(shape):
    s = make_schedule(0.5, 1.5, 10, shape)
    with pytest.raises(ValueError, match="epoch must be in 0..9"):
        s(10, 0.5)
    with pytest.raises(ValueError, match="epoch must be in 0..9"):
        s(-1, 0.5)


def test_docstring_examples_run():
    assert doctest.testmod(schedules_module).failed == 0

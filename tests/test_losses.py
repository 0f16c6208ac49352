"""Losses against formulas computed independently in NumPy (float64): values, closed-form gradients, finite
differences and torch.autograd.gradcheck in float64; plus the edges a trainer relies on (bf16, NaN, K = 1)."""

import doctest
import math

import numpy as np
import pytest
import torch

import dal_search.objectives.losses as losses_module
from dal_search.objectives.config import TrainConfig
from dal_search.objectives.losses import (LOSSES, SampleWeights, bootstrap_term, candidate_set_losses, cc, ce, dal,
                                          gce, mae, make_loss, nce_rce, proden, sce)

N, K = 16, 10
rng = np.random.default_rng(0)
Z = rng.normal(size=(N, K)) * 2
Y = rng.integers(0, K, size=N)
YT = torch.tensor(Y)
ROWS = np.arange(N)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


P = softmax(Z)
PY = P[ROWS, Y]


def t32(z=Z):
    return torch.tensor(z, dtype=torch.float32)


def t64(z=Z, grad=False):
    return torch.tensor(z, dtype=torch.float64, requires_grad=grad)


# --- independent references (NumPy, float64), written from PAPER.md's formulas
def np_ce(p=P, y=Y):
    return np.mean(-np.log(p[np.arange(len(y)), y]))


def np_gce(q, p=P, y=Y):
    py = np.clip(p[np.arange(len(y)), y], 1e-6, 1)
    return np.mean((1 - py ** q) / q)


def np_entropy(p=P):
    return np.mean(-(p * np.log(p + 1e-6)).sum(axis=1))


def np_hard(p=P):
    return np.mean(-np.log(p[np.arange(len(p)), p.argmax(axis=1)]))


def np_rce(p=P, y=Y):
    return np.mean(-math.log(1e-4) * (1 - p[np.arange(len(y)), y]))


def np_nce(p=P, y=Y):
    return np.mean(-np.log(p[np.arange(len(y)), y]) / -np.log(p).sum(axis=1))


REFERENCE = {
    "ce": (lambda: np_ce(), ()),
    "mae": (lambda: np.mean(1 - PY), ()),
    "gce": (lambda: np_gce(0.7), (0.7,)),
    "sce": (lambda: 0.1 * np_ce() + 1.0 * np_rce(), (0.1, 1.0)),
    "nce_rce": (lambda: 10 * np_nce() + 0.1 * np_rce(), (10.0, 0.1)),
    "dal": (lambda: np_gce(1.3) + 0.5 * np_entropy() / (1.3 * math.log(K)), (1.3, 0.5)),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_each_loss_matches_numpy(name):
    ref, args = REFERENCE[name]
    assert LOSSES[name].obj(t32(), YT, *args).item() == pytest.approx(ref(), rel=1e-5)
    assert LOSSES[name].obj(t64(), YT, *args).item() == pytest.approx(ref(), rel=1e-12)


def test_default_weights_of_sce_and_nce_rce_are_one():
    assert sce(t64(), YT).item() == pytest.approx(np_ce() + np_rce(), rel=1e-12)
    assert nce_rce(t64(), YT).item() == pytest.approx(np_nce() + np_rce(), rel=1e-12)


@pytest.mark.parametrize("q", [0.1, 0.6, 0.7, 1.0, 1.5, 2.3, 4.0])
def test_gce_matches_formula_including_q_above_one(q):
    assert gce(t32(), YT, q).item() == pytest.approx(np_gce(q), rel=1e-5)


def test_gce_tends_to_ce_as_q_goes_to_zero():
    target = np_ce()
    gaps = [abs(gce(t64(), YT, q).item() - target) for q in (1e-1, 1e-2, 1e-3, 1e-5)]
    assert all(b < a for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 1e-4 * target


def test_gce_at_q_one_is_mae():
    assert gce(t64(), YT, 1.0).item() == pytest.approx(np.mean(1 - PY), rel=1e-12)
    assert gce(t32(), YT, 1.0).item() == pytest.approx(mae(t32(), YT).item(), rel=1e-6)


@pytest.mark.parametrize("q", [0.5, 1.5])
def test_gce_clamps_probability_at_1e_minus_6_before_the_power(q):
    z = np.zeros((2, K))
    z[0, 0] = 40.0  # p of label 3 in row 0 is about e^-40, far below 1e-6
    y = torch.tensor([3, 3])
    zt = t64(z, grad=True)
    loss = gce(zt, y, q)
    p1 = 1 / K  # row 1 is uniform
    expected = ((1 - 1e-6 ** q) / q + (1 - p1 ** q) / q) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert torch.all(zt.grad[0] == 0)  # below the clamp the sample stops pulling
    assert torch.any(zt.grad[1] != 0)


def test_gce_gradient_closed_form():
    # d/dz (1 - p_y^q) / q = -p_y^q (e_y - p), averaged over the batch
    q = 1.4
    zt = t64(grad=True)
    gce(zt, YT, q).backward()
    onehot = np.eye(K)[Y]
    expected = -(PY ** q)[:, None] * (onehot - P) / N
    np.testing.assert_allclose(zt.grad.numpy(), expected, rtol=1e-10, atol=1e-14)


def test_dal_equals_gce_while_lambda_is_zero_values_and_gradients():
    za, zb = t64(grad=True), t64(grad=True)
    a, b = dal(za, YT, 0.8, 0.0), gce(zb, YT, 0.8)
    assert torch.equal(a, b)
    a.backward()
    b.backward()
    assert torch.equal(za.grad, zb.grad)


def test_dal_skips_the_bootstrap_term_when_lambda_is_zero(monkeypatch):
    def boom(*args):
        raise AssertionError("L_BS computed at lambda = 0")

    monkeypatch.setattr(losses_module, "_bootstrap_sum", boom)
    dal(t32(), YT, 0.8, 0.0)
    with pytest.raises(AssertionError):
        dal(t32(), YT, 1.2, 0.1)


@pytest.mark.parametrize("q, lam", [(0.6, 0.0), (1.002, 0.004), (1.494, 0.988), (2.5, 1.0)])
def test_dal_soft_value_at_paper_schedule_points(q, lam):
    expected = np_gce(q) + lam * np_entropy() / (q * math.log(K))
    assert dal(t32(), YT, q, lam).item() == pytest.approx(expected, rel=1e-5)


def test_dal_hard_bootstrap_is_ce_to_the_argmax_label():
    expected = np_gce(1.3) + 0.5 * np_hard() / (1.3 * math.log(K))
    assert dal(t32(), YT, 1.3, 0.5, bootstrap="hard").item() == pytest.approx(expected, rel=1e-5)
    assert bootstrap_term(t64(), "hard").item() == pytest.approx(np_hard(), rel=1e-12)
    assert bootstrap_term(t64(), "soft").item() == pytest.approx(np_entropy(), rel=1e-12)


def test_paper_bootstrap_coefficient_for_ten_classes():
    # PAPER.md: at epoch 149 of (0.6, 1.5, 150), lam / (q ln K) = 0.287 for K = 10
    z = t64(grad=False)
    q, lam = 1.494, 0.988
    extra = dal(z, YT, q, lam).item() - gce(z, YT, q).item()
    assert extra / np_entropy() == pytest.approx(0.287, abs=5e-4)


def np_dal_grad(z, y, q, lam, bootstrap):
    """Closed-form gradient of DAL w.r.t. the logits, in NumPy (the hard label held fixed)."""
    n, k = z.shape
    p = softmax(z)
    rows = np.arange(n)
    py = p[rows, y]
    onehot = np.eye(k)[y]
    g = -(py ** q)[:, None] * (onehot - p)
    if bootstrap == "soft":
        dh_dp = -(np.log(p + 1e-6) + p / (p + 1e-6))
        gb = p * (dh_dp - (p * dh_dp).sum(axis=1, keepdims=True))
    else:
        gb = p - np.eye(k)[p.argmax(axis=1)]
    return (g + lam / (q * math.log(k)) * gb) / n


@pytest.mark.parametrize("bootstrap", ["soft", "hard"])
@pytest.mark.parametrize("q, lam", [(0.7, 0.3), (1.3, 0.7), (2.0, 1.0)])
def test_dal_gradient_closed_form(bootstrap, q, lam):
    zt = t64(grad=True)
    dal(zt, YT, q, lam, bootstrap).backward()
    np.testing.assert_allclose(zt.grad.numpy(), np_dal_grad(Z, Y, q, lam, bootstrap), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("bootstrap", ["soft", "hard"])
def test_dal_gradient_finite_differences(bootstrap):
    z, y = Z[:4], Y[:4]
    zt = t64(z, grad=True)
    dal(zt, torch.tensor(y), 1.3, 0.7, bootstrap).backward()

    def f(zz):  # NumPy DAL; the hard label is held at the unperturbed argmax (no gradient through argmax)
        p = softmax(zz)
        py = np.clip(p[np.arange(4), y], 1e-6, 1)
        if bootstrap == "soft":
            bs = np.mean(-(p * np.log(p + 1e-6)).sum(axis=1))
        else:
            bs = np.mean(-np.log(p[np.arange(4), z.argmax(axis=1)]))
        return np.mean((1 - py ** 1.3) / 1.3) + 0.7 * bs / (1.3 * math.log(K))

    eps = 1e-6
    num = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += eps
        zm[idx] -= eps
        num[idx] = (f(zp) - f(zm)) / (2 * eps)
    np.testing.assert_allclose(zt.grad.numpy(), num, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name, args", [
    ("ce", ()), ("mae", ()), ("gce", (0.7,)), ("gce", (1.8,)), ("sce", (0.1, 1.0)), ("nce_rce", (1.0, 1.0)),
    ("dal", (0.8, 0.0)), ("dal", (1.3, 0.5, "soft")), ("dal", (1.3, 0.5, "hard")),
])
def test_gradcheck_float64(name, args):
    z = t64(Z[:3, :5], grad=True)
    y = torch.tensor([0, 3, 4])
    assert torch.autograd.gradcheck(lambda zz: LOSSES[name].obj(zz, y, *args), (z,))


def test_losses_compute_in_float32_under_bf16_and_are_differentiable():
    z = t32().to(torch.bfloat16).requires_grad_()
    z_ref = z.detach().double()  # the same bf16-rounded numbers
    p_ref = softmax(z_ref.numpy())
    for name, fn in ((e.name, e.obj) for e in LOSSES):
        args = {"gce": (0.7,), "dal": (1.2, 0.5), "sce": (1.0, 1.0), "nce_rce": (1.0, 1.0)}.get(name, ())
        out = fn(z, YT, *args)
        assert out.dtype == torch.float32, name
        out.backward()
        assert z.grad is not None and torch.isfinite(z.grad).all(), name
        z.grad = None
    expected = np_gce(1.2, p_ref) + 0.5 * np_entropy(p_ref) / (1.2 * math.log(K))
    assert dal(z, YT, 1.2, 0.5).item() == pytest.approx(expected, rel=1e-5)  # float32 accuracy, not bf16's


def test_losses_work_under_autocast():
    lin = torch.nn.Linear(8, K)
    x = torch.randn(N, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(x)
    assert logits.dtype == torch.bfloat16
    loss = dal(logits, YT, 1.3, 0.5)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(lin.weight.grad).all()


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_nan_logits_give_nan_not_an_exception(name):
    z = t32().clone()
    z[0, 0] = float("nan")
    args = REFERENCE[name][1]
    assert math.isnan(LOSSES[name].obj(z, YT, *args).item())
    assert math.isnan(dal(z, YT, 1.2, 0.5, "hard").item())


def test_one_class_is_rejected_where_ln_k_or_nce_would_divide_by_zero():
    z, y = torch.zeros(3, 1), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="at least 2 classes"):
        dal(z, y, 1.0, 0.5)
    with pytest.raises(ValueError, match="at least 2 classes"):
        dal(z, y, 1.0, 0.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        nce_rce(z, y)
    assert ce(z, y).item() == 0.0  # p_y = 1: nothing to learn, and no error


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="logits \\(N, K\\) and labels \\(N,\\)"):
        gce(t32(), YT[:5], 0.7)
    with pytest.raises(ValueError, match="logits \\(N, K\\)"):
        ce(t32()[0], YT[:1])
    with pytest.raises(ValueError, match="N >= 1"):
        dal(t32()[:0], YT[:0], 1.2, 0.5)
    for bad_q in (0.0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="q > 0"):
            gce(t32(), YT, bad_q)
        with pytest.raises(ValueError, match="q > 0"):
            dal(t32(), YT, bad_q, 0.5)
    for bad_lam in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="lambda must be >= 0"):
            dal(t32(), YT, 1.2, bad_lam)
    with pytest.raises(ValueError, match="unknown bootstrap"):
        dal(t32(), YT, 1.2, 0.5, bootstrap="medium")


def test_registry_holds_the_paper_losses():
    assert LOSSES.names() == ("ce", "mae", "gce", "sce", "nce_rce", "dal", "cc", "proden")
    assert LOSSES["dal"].obj is dal and LOSSES["gce"].obj is gce
    assert LOSSES["dal"].get("scheduled") and not LOSSES["gce"].get("scheduled")
    assert candidate_set_losses() == ["gce", "dal", "cc", "proden"]
    assert LOSSES["proden"].get("state") is SampleWeights and LOSSES["dal"].get("state") is None


def test_make_loss_dal_applies_bootstrap_scale_and_kind():
    z = t64()
    fn = make_loss(TrainConfig(loss="dal", bootstrap_scale=2.0, bootstrap="soft"))
    expected = np_gce(1.2) + 2.0 * 0.25 * np_entropy() / (1.2 * math.log(K))
    assert fn(z, YT, 1.2, 0.25).item() == pytest.approx(expected, rel=1e-12)
    fn = make_loss(TrainConfig(loss="dal", bootstrap_scale=0.5, bootstrap="hard"))
    expected = np_gce(1.2) + 0.5 * 0.8 * np_hard() / (1.2 * math.log(K))
    assert fn(z, YT, 1.2, 0.8).item() == pytest.approx(expected, rel=1e-12)
    fn = make_loss(TrainConfig(loss="dal", bootstrap_scale=0.0))
    assert fn(z, YT, 1.2, 0.8).item() == pytest.approx(np_gce(1.2), rel=1e-12)  # scale 0: bootstrap off


def test_make_loss_static_losses_use_config_and_ignore_schedule_values():
    z = t64()
    cases = [
        (TrainConfig(loss="gce", q=0.7), np_gce(0.7)),
        (TrainConfig(loss="sce", alpha=0.1, beta=1.0), 0.1 * np_ce() + np_rce()),
        (TrainConfig(loss="nce_rce", alpha=10.0, beta=0.1), 10 * np_nce() + 0.1 * np_rce()),
        (TrainConfig(loss="ce"), np_ce()),
        (TrainConfig(loss="mae"), np.mean(1 - PY)),
    ]
    for cfg, expected in cases:
        fn = make_loss(cfg)
        for q, lam in ((0.6, 0.0), (1.4, 0.9)):
            assert fn(z, YT, q, lam).item() == pytest.approx(expected, rel=1e-12), cfg.loss


def test_docstring_examples_run():
    assert doctest.testmod(losses_module).failed == 0


# ---------------------------------------------------------------- partial labels: candidate sets S (N, K)
# S holds the true label Y and each other class with probability 0.4 (rows 0 and 1: one entry; row 2: all K)
S = (rng.random((N, K)) < 0.4)
S[ROWS, Y] = True
S[0] = np.eye(K, dtype=bool)[Y[0]]
S[1] = np.eye(K, dtype=bool)[Y[1]]
S[2] = True
ST = torch.tensor(S)
ONE = torch.tensor(np.eye(K, dtype=bool)[Y])  # the class labels as one-entry masks


def np_mass(p=P, s=S):
    return (p * s).sum(axis=1)


def np_cc(p=P, s=S):
    return np.mean(-np.log(np_mass(p, s)))


def np_gce_s(q, p=P, s=S):
    return np.mean((1 - np.clip(np_mass(p, s), 1e-6, 1) ** q) / q)


def np_proden(w, p=P):
    return np.mean(-(w * np.log(p)).sum(axis=1))


def np_uniform(s=S):
    return s / s.sum(axis=1, keepdims=True)


def np_within(z, s=S):  # the net's probabilities renormalised within S
    ps = softmax(z) * s
    return ps / ps.sum(axis=1, keepdims=True)


W = np_within(rng.normal(size=(N, K)))  # some other weights over S, rows summing to 1


@pytest.mark.parametrize("name, args, ref", [
    ("cc", (), lambda: np_cc()),
    ("proden", (), lambda: np_proden(np_uniform())),
    ("gce", (0.7,), lambda: np_gce_s(0.7)),
    ("gce", (1.6,), lambda: np_gce_s(1.6)),
    ("dal", (0.8, 0.0), lambda: np_gce_s(0.8)),
    ("dal", (1.3, 0.5), lambda: np_gce_s(1.3) + 0.5 * np_entropy() / (1.3 * math.log(K))),
    ("dal", (1.3, 0.5, "hard"), lambda: np_gce_s(1.3) + 0.5 * np_hard() / (1.3 * math.log(K))),
])
def test_candidate_set_losses_match_numpy(name, args, ref):
    assert LOSSES[name].obj(t64(), ST, *args).item() == pytest.approx(ref(), rel=1e-12)
    assert LOSSES[name].obj(t32(), ST, *args).item() == pytest.approx(ref(), rel=1e-5)


def test_proden_with_given_weights_matches_numpy():
    assert proden(t64(), ST, torch.tensor(W)).item() == pytest.approx(np_proden(W), rel=1e-12)
    assert proden(t32(), ST, torch.tensor(W, dtype=torch.float32)).item() == pytest.approx(np_proden(W), rel=1e-5)
    with pytest.raises(ValueError, match="weights must be shaped like the logits"):
        proden(t64(), ST, torch.tensor(W[:, :3]))


@pytest.mark.parametrize("z", [Z, Z * 20], ids=["moderate", "confident"])
def test_one_entry_masks_give_todays_losses(z):
    """A class label is the mask with one entry: GCE and DAL bit for bit (values and gradients), CC and
    PRODEN equal CE up to rounding."""
    for zz in (t64(z), t32(z), t32(z).to(torch.bfloat16)):
        cases = [(gce, (0.7,)), (gce, (1.6,)), (dal, (0.8, 0.0)), (dal, (1.3, 0.5)), (dal, (1.3, 0.5, "hard"))]
        for fn, args in cases:
            za, zb = zz.clone().requires_grad_(), zz.clone().requires_grad_()
            a, b = fn(za, ONE, *args), fn(zb, YT, *args)
            assert torch.equal(a, b), (fn.__name__, args, zz.dtype)
            a.backward()
            b.backward()
            assert torch.equal(za.grad, zb.grad), (fn.__name__, args, zz.dtype)
        rel = 1e-12 if zz.dtype == torch.float64 else 1e-6
        assert cc(zz, ONE).item() == pytest.approx(ce(zz, YT).item(), rel=rel)
        assert proden(zz, ONE).item() == pytest.approx(ce(zz, YT).item(), rel=rel)
    assert cc(t64(z), YT).item() == pytest.approx(np_ce(softmax(z)), rel=1e-12)  # class labels: CE itself
    assert proden(t64(z), YT).item() == pytest.approx(np_ce(softmax(z)), rel=1e-12)


def test_candidate_mass_edges():
    full = torch.ones(N, K, dtype=torch.bool)  # every class a candidate: p_S = 1, nothing to learn
    assert cc(t64(), full).item() == pytest.approx(0.0, abs=1e-12)
    assert gce(t64(), full, 0.7).item() == pytest.approx(0.0, abs=1e-12)
    empty = ST.clone()
    empty[3] = False  # an empty set is a caller's bug: CC says so with an infinite loss, GCE clamps
    assert math.isinf(cc(t64(), empty).item())
    assert math.isfinite(gce(t64(), empty, 0.7).item())
    z = np.zeros((1, K))
    z[0, 0] = 200.0  # p of every other class underflows even in float64; CC stays finite in log space
    s = np.zeros((1, K), dtype=bool)
    s[0, [1, 2]] = True
    assert cc(t64(z), torch.tensor(s)).item() == pytest.approx(200 - math.log(2), rel=1e-12)


def test_candidate_mass_gradients_closed_form():
    # d(-log p_S)/dz_k = p_k - p_k [k in S] / p_S;  d((1 - p_S^q)/q)/dz_k = -p_S^(q-1) p_k ([k in S] - p_S)
    ps = np_mass()[:, None]
    zt = t64(grad=True)
    cc(zt, ST).backward()
    np.testing.assert_allclose(zt.grad.numpy(), (P - P * S / ps) / N, rtol=1e-10, atol=1e-14)
    q = 1.4
    zt = t64(grad=True)
    gce(zt, ST, q).backward()
    expected = -(np.clip(ps, 1e-6, 1) ** (q - 1)) * P * (S - ps) / N
    expected[2] = 0  # row 2 holds every class: p_S = 1 at the clamp's top, no gradient either way
    np.testing.assert_allclose(zt.grad.numpy(), expected, rtol=1e-9, atol=1e-12)
    zt = t64(grad=True)
    proden(zt, ST, torch.tensor(W)).backward()  # the weights are constants: p - w
    np.testing.assert_allclose(zt.grad.numpy(), (P - W) / N, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name, args", [
    ("cc", ()), ("proden", ()), ("gce", (0.7,)), ("gce", (1.8,)), ("dal", (0.8, 0.0)), ("dal", (1.3, 0.5, "soft")),
    ("dal", (1.3, 0.5, "hard")),
])
def test_candidate_set_gradcheck_float64(name, args):
    z = t64(Z[3:6, :5], grad=True)
    s = torch.tensor([[True, False, True, False, False], [False, True, True, True, False],
                      [False, False, False, False, True]])
    assert torch.autograd.gradcheck(lambda zz: LOSSES[name].obj(zz, s, *args), (z,))


@pytest.mark.parametrize("name", ["ce", "mae", "sce", "nce_rce"])
def test_losses_without_a_candidate_form_refuse_a_mask(name):
    with pytest.raises(ValueError, match=f"loss '{name}' takes class labels.*use one of: gce, dal, cc, proden"):
        LOSSES[name].obj(t32(), ST)


def test_a_mask_of_the_wrong_shape_is_refused():
    for bad in (ST[:, :5], ST[:5]):
        with pytest.raises(ValueError, match="bool mask shaped like the logits"):
            gce(t32(), bad, 0.7)
    with pytest.raises(ValueError, match="labels \\(N,\\)"):
        cc(t32(), ST.long())  # an int mask is not a candidate set


def test_make_loss_binds_proden_to_the_training_set_and_moves_its_weights_each_epoch():
    labels = ST  # the "training set": N samples
    fn = make_loss(TrainConfig(loss="proden", noise="partial", noise_rate=0.3), labels=labels)
    assert fn.state is not None
    first, second = torch.arange(0, 8), torch.arange(8, N)
    # epoch 0: uniform weights over S, whatever the logits
    z0 = rng.normal(size=(N, K))
    for idx in (first, second):
        got = fn(t64(z0)[idx], labels[idx], 1.0, 0.0, idx).item()
        assert got == pytest.approx(np_proden(np_uniform(S[idx]), softmax(z0[idx])), rel=1e-6)
    fn.end_epoch()
    # epoch 1: each sample's weights are the net's probabilities within S from its step of epoch 0
    z1 = rng.normal(size=(N, K))
    np.testing.assert_allclose(fn.state.weights.numpy(), np_within(z0), rtol=1e-6)
    got = fn(t64(z1)[second], labels[second], 1.0, 0.0, second).item()
    assert got == pytest.approx(np_proden(np_within(z0[8:], S[8:]), softmax(z1[8:])), rel=1e-6)
    np.testing.assert_allclose(fn.state.weights.numpy(), np_within(z0), rtol=1e-6)  # not until end_epoch
    fn.end_epoch()
    expected = np_within(z0)
    expected[8:] = np_within(z1[8:], S[8:])  # rows not seen in epoch 1 keep their weights
    np.testing.assert_allclose(fn.state.weights.numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="pass idx"):
        fn(t64(z1), labels, 1.0, 0.0)
    with pytest.raises(ValueError, match="needs the training labels"):
        make_loss(TrainConfig(loss="proden"))
    # class labels: CE, and no weights kept at all
    fn = make_loss(TrainConfig(loss="proden"), labels=YT)
    assert fn.state.weights is None
    assert fn(t64(), YT, 1.0, 0.0, ROWS).item() == pytest.approx(np_ce(), rel=1e-12)


def test_make_loss_stateless_losses_take_and_ignore_idx():
    fn = make_loss(TrainConfig(loss="dal", noise="partial"))
    assert fn.state is None and fn.end_epoch() is None
    expected = np_gce_s(1.3) + 0.5 * np_entropy() / (1.3 * math.log(K))
    assert fn(t64(), ST, 1.3, 0.5, torch.arange(N)).item() == pytest.approx(expected, rel=1e-12)

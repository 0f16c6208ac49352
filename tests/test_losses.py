"""Losses against formulas computed independently in NumPy (float64): values, closed-form gradients, finite
differences and torch.autograd.gradcheck in float64; plus the edges a trainer relies on (bf16, NaN, K = 1)."""

import doctest
import math

import numpy as np
import pytest
import torch

import dal_search.objectives.losses as losses_module
from dal_search.objectives.config import TrainConfig
from dal_search.objectives.losses import LOSSES, bootstrap_term, ce, dal, gce, mae, make_loss, nce_rce, sce

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
    assert LOSSES.names() == ("ce", "mae", "gce", "sce", "nce_rce", "dal")
    assert LOSSES["dal"].obj is dal and LOSSES["gce"].obj is gce
    assert LOSSES["dal"].get("scheduled") and not LOSSES["gce"].get("scheduled")


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

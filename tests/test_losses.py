"""Losses against formulas computed independently in NumPy (float64), gradients by finite differences."""

import math

import numpy as np
import pytest
import torch

from objectives.config import TrainConfig
from objectives.losses import LOSSES, ce, dal, gce, mae, make_loss, nce_rce, sce

rng = np.random.default_rng(0)
Z = rng.normal(size=(16, 10)) * 2
Y = rng.integers(0, 10, size=16)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


P = softmax(Z)
PY = P[np.arange(16), Y]


def t(z=Z, grad=False):
    return torch.tensor(z, dtype=torch.float64 if grad else torch.float32, requires_grad=grad)


YT = torch.tensor(Y)


def np_gce(q):
    p = np.clip(PY, 1e-6, 1)
    return np.mean((1 - p ** q) / q)


def np_entropy():
    return np.mean(-(P * np.log(P + 1e-6)).sum(axis=1))


def test_ce_mae():
    assert ce(t(), YT).item() == pytest.approx(np.mean(-np.log(PY)), rel=1e-5)
    assert mae(t(), YT).item() == pytest.approx(np.mean(1 - PY), rel=1e-5)


@pytest.mark.parametrize("q", [0.1, 0.6, 0.7, 1.0, 1.5, 2.3])
def test_gce_matches_formula_including_q_above_one(q):
    assert gce(t(), YT, q).item() == pytest.approx(np_gce(q), rel=1e-5)


def test_gce_limits():
    assert gce(t(), YT, 1e-4).item() == pytest.approx(np.mean(-np.log(PY)), rel=1e-3)  # q -> 0: CE
    assert gce(t(), YT, 1.0).item() == pytest.approx(mae(t(), YT).item(), rel=1e-6)  # q = 1: MAE


def test_gce_clamps_probability_before_the_power():
    z = np.zeros((1, 10))
    z[0, 0] = 40.0  # p_y for label 3 underflows far below 1e-6
    got = gce(torch.tensor(z, dtype=torch.float32), torch.tensor([3]), 0.5).item()
    assert got == pytest.approx((1 - (1e-6) ** 0.5) / 0.5, rel=1e-6)


def test_sce_and_nce_rce():
    rce = -math.log(1e-4) * (1 - PY)
    assert sce(t(), YT, 0.1, 1.0).item() == pytest.approx(0.1 * np.mean(-np.log(PY)) + np.mean(rce), rel=1e-5)
    nce = np.log(PY) / np.log(P).sum(axis=1)
    assert nce_rce(t(), YT, 10.0, 0.1).item() == pytest.approx(10 * nce.mean() + 0.1 * rce.mean(), rel=1e-5)


@pytest.mark.parametrize("q, lam", [(0.6, 0.0), (1.002, 0.004), (1.494, 0.988)])
def test_dal_soft(q, lam):
    expected = np_gce(q) + lam * np_entropy() / (q * math.log(10))
    assert dal(t(), YT, q, lam).item() == pytest.approx(expected, rel=1e-5)


def test_dal_hard_bootstrap_uses_the_argmax_label():
    yhat = P.argmax(axis=1)
    hard = np.mean(-np.log(P[np.arange(16), yhat]))
    expected = np_gce(1.3) + 0.5 * hard / (1.3 * math.log(10))
    assert dal(t(), YT, 1.3, 0.5, bootstrap="hard").item() == pytest.approx(expected, rel=1e-5)


def test_dal_equals_gce_while_lambda_is_zero():
    assert dal(t(), YT, 0.8, 0.0).item() == gce(t(), YT, 0.8).item()


def _numeric_grad(f, z, eps=1e-6):
    g = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += eps
        zm[idx] -= eps
        g[idx] = (f(zp) - f(zm)) / (2 * eps)
    return g


@pytest.mark.parametrize("bootstrap", ["soft", "hard"])
def test_dal_gradient_matches_finite_differences(bootstrap):
    z = Z[:4]
    y = Y[:4]
    zt = torch.tensor(z, requires_grad=True)
    dal(zt, torch.tensor(y), 1.3, 0.7, bootstrap).backward()

    def f(zz):  # independent NumPy DAL; the hard label is fixed at the unperturbed argmax (no gradient)
        p = softmax(zz)
        py = np.clip(p[np.arange(4), y], 1e-6, 1)
        if bootstrap == "soft":
            bs = np.mean(-(p * np.log(p + 1e-6)).sum(axis=1))
        else:
            bs = np.mean(-np.log(p[np.arange(4), z.argmax(axis=1)]))
        return np.mean((1 - py ** 1.3) / 1.3) + 0.7 * bs / (1.3 * math.log(10))

    np.testing.assert_allclose(zt.grad.numpy(), _numeric_grad(f, z), rtol=1e-4, atol=1e-8)


def test_losses_compute_in_float32_under_bf16_and_are_differentiable():
    z = t().to(torch.bfloat16).requires_grad_()
    for name, fn in LOSSES.items():
        args = {"gce": (0.7,), "dal": (1.2, 0.5)}.get(name, ())
        out = fn(z, YT, *args)
        assert out.dtype == torch.float32
        out.backward()
        assert torch.isfinite(z.grad).all()
        z.grad = None


def test_nan_logits_give_nan_not_an_exception():
    z = t().clone()
    z[0, 0] = float("nan")
    assert math.isnan(dal(z, YT, 1.2, 0.5).item())


def test_make_loss_applies_bootstrap_scale_and_params():
    z = t()
    fn = make_loss(TrainConfig(loss="dal", bootstrap_scale=2.0, bootstrap="soft"))
    assert fn(z, YT, 1.2, 0.25).item() == pytest.approx(dal(z, YT, 1.2, 0.5).item(), rel=1e-6)
    fn = make_loss(TrainConfig(loss="gce", q=0.7))
    assert fn(z, YT, 99.0, 99.0).item() == pytest.approx(np_gce(0.7), rel=1e-5)
    fn = make_loss(TrainConfig(loss="sce", alpha=0.1, beta=1.0))
    assert fn(z, YT, 0, 0).item() == pytest.approx(sce(z, YT, 0.1, 1.0).item())


def test_dal_rejects_one_class():
    with pytest.raises(ValueError, match="at least 2 classes"):
        dal(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), 1.0, 0.5)

"""The training step as a CUDA graph (objectives/graphs.py).

On CPU: the tensor forms the capture needs (SGD's update, the LR and DAL's q and lambda in tensors) equal the
eager ones; the capture machinery, emulated (DAL_SEARCH_TEST_GRAPHS=emulate: static buffers, the step counter,
the eager partial batch, but no capture), trains exactly as the eager loop does, augmentation and checkpoint
resumes included; the switch and its one fallback line. On a GPU (skipped without one; run by
bench/gpu_check.sh): a captured run against an eager one, and a network the capture refuses.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from dal_search.objectives.checkpoint import Checkpointer, train_until
from dal_search.objectives.config import ConfigError, TrainConfig
from dal_search.objectives.graphs import dal_tensor, sgd_step_
from dal_search.objectives.losses import dal
from dal_search.objectives.train import train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
FAST = dict(dataset="digits", threads=1, batch_size=100)  # 1,293 training samples: 12 full batches and 93 left


@pytest.fixture
def emulate(monkeypatch):
    monkeypatch.setenv("DAL_SEARCH_TEST_GRAPHS", "emulate")


def _digit_images(tmp_path, n=600):
    """digits as (N, 1, 8, 8) images in an npz dataset, so that crop + flip apply."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.reshape(-1, 1, 8, 8).astype(np.float32)
    path = tmp_path / "digits-images.npz"
    np.savez(path, x_train=x[:n], y_train=d.target[:n], x_test=x[1500:], y_test=d.target[1500:])
    return f"npz:{path}"


# ---------------------------------------------------------------- the tensor forms, against the eager ones

@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 1e-4), (0.0, 0.0), (0.9, 0.0), (0.0, 5e-4)])
def test_sgd_tensor_form_equals_torch_sgd_with_its_cosine_schedule_bit_for_bit(momentum, weight_decay):
    torch.manual_seed(0)
    init = [torch.randn(37, 11), torch.randn(11), torch.randn(5)]
    ref = [p.clone().requires_grad_() for p in init]
    opt = torch.optim.SGD(ref, lr=0.05, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
    mine = [p.clone() for p in init]
    bufs = [torch.zeros_like(p) for p in init] if momentum else [None] * 3
    lr = torch.zeros(())
    for epoch in range(3):
        lr.fill_(opt.param_groups[0]["lr"])  # the epoch's rate, into the step's tensor
        for _ in range(4):
            grads = [torch.randn_like(p) for p in init]
            grads[2] = None  # an unused parameter: torch skips it, so must the tensor form
            for p, g in zip(ref, grads):
                p.grad = None if g is None else g.clone()
            opt.step()
            sgd_step_(mine, grads, bufs, lr, momentum, weight_decay)
            assert all(torch.equal(a.detach(), b) for a, b in zip(ref, mine))
            if momentum:
                assert all(torch.equal(opt.state[a]["momentum_buffer"], b) for a, b in zip(ref[:2], bufs[:2]))
        sched.step()
    assert float(lr) == pytest.approx(0.05 * (1 + math.cos(math.pi * 2 / 3)) / 2, rel=1e-6)


def test_sgd_tensor_form_per_fused_member_equals_one_torch_sgd_each():
    """Stacked members with their own lr, momentum and weight decay as (K,) tensors, against K torch SGDs."""
    torch.manual_seed(1)
    settings = [(0.05, 0.9, 1e-4), (0.01, 0.0, 5e-4), (0.2, 0.5, 0.0)]
    init = [torch.randn(9, 4), torch.randn(4)]
    refs = [[p.clone().requires_grad_() for p in init] for _ in settings]
    opts = [torch.optim.SGD(r, lr=lr, momentum=m, weight_decay=wd) for r, (lr, m, wd) in zip(refs, settings)]
    stacked = [torch.stack([p] * 3) for p in init]
    bufs = [torch.zeros_like(p) for p in stacked]
    lr, mom, wd = (torch.tensor(col, dtype=torch.float32) for col in zip(*settings))
    for _ in range(5):
        grads = [torch.randn_like(p) for p in stacked]
        for k, (r, opt) in enumerate(zip(refs, opts)):
            for p, g in zip(r, grads):
                p.grad = g[k].clone()
            opt.step()
        sgd_step_(stacked, grads, bufs, lr, mom, wd)
        for k, r in enumerate(refs):
            assert all(torch.equal(a.detach(), s[k]) for a, s in zip(r, stacked))


@pytest.mark.parametrize("bootstrap", ["soft", "hard"])
def test_dal_with_tensor_q_and_lambda_equals_dal(bootstrap):
    torch.manual_seed(2)
    z = torch.randn(64, 10, requires_grad=True)
    y = torch.randint(0, 10, (64,))
    mask = torch.rand(64, 10) < 0.3
    mask[torch.arange(64), y] = True  # candidate sets holding their label
    for labels in (y, mask):
        for q, lam in ((0.6, 0.0), (1.0, 0.0), (1.2, 0.3), (1.5, 1.0), (2.3, 0.05)):
            eager = dal(z, labels, q, lam, bootstrap)
            tensor = dal_tensor(z, labels, torch.tensor(q), torch.tensor(lam), bootstrap)
            if lam == 0:  # the early stage: the bootstrap term times zero adds exactly nothing
                assert torch.equal(eager, tensor)
            assert tensor.item() == pytest.approx(eager.item(), rel=1e-6)
            g_eager, = torch.autograd.grad(eager, z)
            g_tensor, = torch.autograd.grad(tensor, z)
            torch.testing.assert_close(g_tensor, g_eager, rtol=1e-5, atol=1e-7)


def test_dal_tensor_under_vmap_gives_each_member_its_own_q_and_lambda():
    torch.manual_seed(3)
    z = torch.randn(3, 32, 10)
    y = torch.randint(0, 10, (32,))
    q, lam = torch.tensor([0.6, 1.2, 1.8]), torch.tensor([0.0, 0.4, 0.9])
    batched = torch.func.vmap(lambda zi, qi, li: dal_tensor(zi, y, qi, li), in_dims=(0, 0, 0))(z, q, lam)
    for k in range(3):
        assert batched[k].item() == pytest.approx(dal(z[k], y, float(q[k]), float(lam[k])).item(), rel=1e-6)


# ---------------------------------------------------------------- the capture machinery, emulated on CPU

def test_emulated_capture_trains_exactly_as_the_eager_loop(emulate, monkeypatch):
    """CE: every tensor form is exact, so the histories are equal bit for bit, the 93-sample partial batch
    included. DAL: equal to float rounding (q and lambda as float32 tensors)."""
    for loss, exact in (("ce", True), ("dal", False)):
        cfg = TrainConfig(loss=loss, epochs=4, q_start=0.6, q_end=1.5, **FAST)
        captured = train(cfg)
        monkeypatch.delenv("DAL_SEARCH_TEST_GRAPHS")
        eager = train(cfg)
        monkeypatch.setenv("DAL_SEARCH_TEST_GRAPHS", "emulate")
        assert captured["graphs"].startswith("cuda graphs emulated") and eager["graphs"] == "cuda graphs off: device is cpu"
        if exact:
            assert captured["history"] == eager["history"]
        else:
            for key, values in eager["history"].items():
                assert captured["history"][key] == pytest.approx(values, rel=1e-5, abs=2 / 1293), key


def test_emulated_capture_draws_the_eager_augmentation_and_resumes_an_eager_checkpoint(tmp_path, monkeypatch):
    """Crop + flip of the gathered batch draw exactly the eager loop's random numbers; a run checkpointed
    eagerly after 2 epochs and resumed through the captured step's machinery (bound to the resumed momentum
    buffers) ends exactly as the eager run does."""
    cfg = TrainConfig(dataset=_digit_images(tmp_path, n=400), model="cnn", augment=True, loss="ce", epochs=3,
                      threads=1, batch_size=128, noise="symmetric", noise_rate=0.2)
    eager = train(cfg)
    train_until(cfg, 2, tmp_path / "run.pt")  # eager, saved after epoch 2
    monkeypatch.setenv("DAL_SEARCH_TEST_GRAPHS", "emulate")
    assert train(cfg)["history"] == eager["history"]  # crop + flip from the index buffer, from scratch
    resumed_from = Checkpointer(tmp_path / "run.pt")
    resumed = train(cfg, checkpoint=resumed_from)
    assert resumed_from.resumed_at == 2 and resumed["graphs"].startswith("cuda graphs emulated")
    assert resumed["history"] == eager["history"]


# ---------------------------------------------------------------- the switch and the fallback line

def test_the_graphs_switch_is_validated():
    with pytest.raises(ConfigError, match="unknown graphs 'sometimes'; choose one of: auto, on, off"):
        TrainConfig(graphs="sometimes")
    with pytest.raises(ConfigError, match="graphs 'on' needs a CUDA device"):
        TrainConfig(graphs="on", device="cpu")
    assert TrainConfig().graphs == "auto" and TrainConfig.from_dict({"graphs": "off"}).graphs == "off"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only machine")
def test_graphs_on_without_a_gpu_is_one_line_and_exit_2(capsys):
    from dal_search.search.cli import main

    with pytest.raises(ConfigError, match="graphs 'on' but the step cannot be captured: device is cpu; use graphs "
                                          "auto"):
        train(TrainConfig(graphs="on", epochs=1, **FAST))
    assert main(["train", "--graphs", "on", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dal-search: error: graphs 'on' but the step cannot be captured")


def test_the_trainer_says_in_one_line_why_its_step_runs_eager(caplog, emulate, monkeypatch):
    caplog.set_level(logging.INFO, logger="dal-search.graphs")
    off = train(TrainConfig(graphs="off", epochs=1, **FAST))
    assert off["graphs"] == "cuda graphs off: config graphs: off"
    # PRODEN's per-sample weights move outside the step: eager (a warning: a GPU could have used a graph)
    partial = dict(noise="partial", noise_rate=0.3, epochs=2, **FAST)
    proden = train(TrainConfig(loss="proden", **partial))
    assert proden["graphs"] == ("cuda graphs off: loss 'proden' keeps per-sample state, updated outside the step "
                                "(it runs eager)")
    monkeypatch.delenv("DAL_SEARCH_TEST_GRAPHS")
    cpu = train(TrainConfig(loss="proden", **partial))
    assert cpu["graphs"] == "cuda graphs off: device is cpu" and cpu["history"] == proden["history"]
    monkeypatch.setenv("DAL_SEARCH_TEST_GRAPHS", "emulate")
    big = train(TrainConfig(epochs=1, **{**FAST, "batch_size": 5000}))
    assert big["graphs"] == "cuda graphs off: no full batch (1293 training samples, batch_size 5000)"
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "dal-search.graphs"]
    assert lines == [("INFO", off["graphs"]), ("WARNING", proden["graphs"]), ("INFO", cpu["graphs"]),
                     ("WARNING", big["graphs"])]


# ---------------------------------------------------------------- on a GPU (bench/gpu_check.sh runs these)

@needs_cuda
def test_captured_run_matches_the_eager_run_on_a_gpu(tmp_path):
    """Crop + flip, DAL with its bootstrap switching on, a partial last batch (600 * 0.9 = 540 = 4 * 128 + 28):
    the captured run and the eager run agree within bf16 tolerance, epoch by epoch."""
    cfg = TrainConfig(dataset=_digit_images(tmp_path), model="cnn", augment=True, loss="dal", q_start=0.6,
                      q_end=1.5, epochs=6, batch_size=128, device="cuda", noise="symmetric", noise_rate=0.2)
    captured = train(cfg)
    eager = train(cfg.replace(graphs="off"))
    assert captured["graphs"] == "cuda graphs on: one step captured, 4 replays an epoch and its last 28 samples eager"
    h, e = captured["history"], eager["history"]
    assert h["q"] == e["q"] and h["lam"] == e["lam"] and h["lr"] == e["lr"]
    assert h["train_loss"] == pytest.approx(e["train_loss"], rel=2e-2)
    for key in ("train_acc", "val_acc", "test_acc"):
        assert h[key] == pytest.approx(e[key], abs=0.05), key
    assert captured["test_acc"] > 0.5  # it learned (chance is 0.1)


@needs_cuda
def test_one_captured_step_matches_one_eager_step_on_a_gpu():
    """The step itself, from the same weights and batch: weights after one captured replay and after one eager
    step (torch's SGD, DAL with numbers) agree within bf16 tolerance."""
    from dal_search.objectives.graphs import EpochRunner, SingleStep, capturable_loss
    from dal_search.objectives.losses import make_loss
    from dal_search.objectives.models import build_model
    from dal_search.objectives.train import _crop_flip

    cfg = TrainConfig(loss="dal", q_start=1.2, q_end=1.5, epochs=2)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    x = torch.randn(256, 3, 16, 16, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (256,), device=dev)
    model = build_model("cnn", (3, 16, 16), 10).to(dev).to(memory_format=torch.channels_last)
    twin = build_model("cnn", (3, 16, 16), 10).to(dev).to(memory_format=torch.channels_last)
    twin.load_state_dict(model.state_dict())
    loss_fn = make_loss(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    step = SingleStep(model, opt, capturable_loss(cfg, loss_fn), x, y, _crop_flip, use_amp=True)
    runner = EpochRunner(step, 256, 128, dev, capture=True)
    assert runner.graph is not None
    order = torch.randperm(256, device=dev)
    rng = torch.cuda.get_rng_state()
    runner.epoch(order, 1.2, 0.3, 0.05)  # two replays
    torch.cuda.set_rng_state(rng)
    for start in (0, 128):
        idx = order[start:start + 128]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = twin(_crop_flip(x[idx]))
        twin_opt.zero_grad(set_to_none=True)
        loss_fn(logits, y[idx], 1.2, 0.3).backward()
        twin_opt.step()
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-3, msg=name)


@needs_cuda
def test_a_network_the_capture_refuses_trains_eager_with_the_reason_on_a_gpu(tmp_path, monkeypatch):
    (tmp_path / "branchy.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, d, k):\n"
        "        super().__init__(); self.a = torch.nn.Linear(d, k); self.b = torch.nn.Linear(d, k)\n"
        "    def forward(self, x):\n"
        "        x = x.flatten(1)\n"
        "        return self.a(x) if x.mean() > 0 else self.b(x)  # reads the device: data-dependent\n"
        "def make(shape, k):\n"
        "    import math; return Net(math.prod(shape), k)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = train(TrainConfig(model="py:branchy:make", epochs=2, device="cuda", **FAST))
    assert r["status"] == "ok" and r["graphs"].startswith("cuda graphs off: capture raised ")
    with pytest.raises(ConfigError, match="graphs 'on' but the step cannot be captured: capture raised"):
        train(TrainConfig(model="py:branchy:make", epochs=1, device="cuda", graphs="on", **FAST))


# ---------------------------------------------------------------- bench/bench_gpu.py, its CPU smoke version

@pytest.mark.slow
def test_bench_gpu_smoke_measures_every_row_on_cpu(tmp_path, capsys):
    """The GPU benchmark's code path on tiny CIFAR-shaped data: one trial eager and 'captured' (here: the
    fallback line), fused K = 1 and 2, one child process; every row has a steady epoch and a rate."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--processes", "1", "--data-dir", str(tmp_path), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["what"] for r in rows] == ["one trial, graphs off", "one trial, graphs auto", "fused, K = 1",
                                         "fused, K = 2", "processes, P = 1"]
    assert [r["line"] for r in rows[:2]] == ["cuda graphs off: config graphs: off", "cuda graphs off: device is cpu"]
    assert all(r["steady_epoch_s"] > 0 and r["images_per_s"] > 0 and r["train_images"] == 90 for r in rows)
    table = capsys.readouterr().out
    assert table.startswith("| what | steady epoch | training images/s |") and "| fused, K = 2 |" in table

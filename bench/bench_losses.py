"""Per-step cost of DAL against GCE and CE. Prints figures, asserts nothing.

    python bench/bench_losses.py [--threads 1] [--device cpu|cuda] [--budget 20] [--trial]

A step is forward + loss + backward + SGD update (momentum 0.9, weight decay 1e-4) at batch 128, on
(a) the digits MLP (64-256-256-10) and (b) the CIFAR ResNet-18 on 3x32x32, when
`objectives.models.build_model` provides it. Each loss trains its own copy of the same network; the losses
are timed interleaved (the order rotating every repetition) in one run and compared by medians, so the
ratios hold on a shared, noisy machine. DAL is timed in its late stage (lambda > 0, the bootstrap term on,
soft and hard) and in its early stage (lambda = 0, where it must cost what GCE costs: target within 3 %).
The loss alone (forward + backward on 128 x 10 logits) is timed too, to show the absolute overhead.
`--trial` adds the wall time of three 100-epoch digits DAL trials on one thread (target < 5 s each).
Runtime about 60 s on one idle CPU core, most of it the ResNet part (its repetitions shrink to fit --budget
seconds, 2 at least; on CPU it skips DAL(hard)). On a busy machine read the spread column before a ratio.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from dal_search.objectives.losses import ce, dal, gce

T0 = time.perf_counter()

VARIANTS = {
    "ce": lambda z, y: ce(z, y),
    "gce": lambda z, y: gce(z, y, 0.7),
    "dal(soft)": lambda z, y: dal(z, y, 1.3, 0.5, "soft"),
    "dal(hard)": lambda z, y: dal(z, y, 1.3, 0.5, "hard"),
    "dal(lam=0)": lambda z, y: dal(z, y, 0.8, 0.0),
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(step_fns: dict, reps: int, inner: int, device: str, warmup: int = 10) -> dict[str, list[float]]:
    """Seconds per call of each fn, one figure per block of `inner` calls, blocks interleaved over the fns."""
    names = list(step_fns)
    for fn in step_fns.values():  # warm-up: allocator, kernels, momentum buffers
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
            fn = step_fns[name]
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - t) / inner)
    return times


def train_steps(model: nn.Module, shape: tuple[int, ...], device: str) -> dict:
    torch.manual_seed(0)
    x = torch.randn(128, *shape, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    fns = {}
    for name, loss_fn in VARIANTS.items():
        net = copy.deepcopy(model).to(device).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

        def step(net=net, opt=opt, loss_fn=loss_fn):
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        fns[name] = step
    return fns


def loss_only(device: str) -> dict:
    torch.manual_seed(0)
    z = torch.randn(128, 10, device=device, requires_grad=True)
    y = torch.randint(0, 10, (128,), device=device)

    def make(loss_fn):
        def run():
            loss_fn(z, y).backward()
            z.grad = None
        return run
    return {name: make(fn) for name, fn in VARIANTS.items()}


def report(title: str, times: dict[str, list[float]], unit: str = "ms", scale: float = 1e3) -> dict[str, float]:
    """Print medians, their ratios to GCE and CE, and the spread (max - min) / median of the repetitions."""
    t = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{title}   [{time.perf_counter() - T0:.1f} s into the run]")
    for k, v in t.items():
        spread = (max(times[k]) - min(times[k])) / v
        print(f"  {k:<11} {v * scale:9.3f} {unit}/step   {v / t['gce']:6.3f} x GCE   {v / t['ce']:6.3f} x CE"
              f"   spread {spread:5.1%} over {len(times[k])}")
    print(f"  DAL(soft)/GCE = {t['dal(soft)'] / t['gce']:.3f}   DAL(soft)/CE = {t['dal(soft)'] / t['ce']:.3f}   "
          f"DAL(lam=0)/GCE = {t['dal(lam=0)'] / t['gce']:.3f}   DAL(lam=0)/CE = {t['dal(lam=0)'] / t['ce']:.3f}")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: steady timings on a shared machine; 2 halves the ResNet part)")
    ap.add_argument("--mlp-reps", type=int, default=15)
    ap.add_argument("--resnet-reps", type=int, default=5)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds the ResNet part may take (CPU)")
    ap.add_argument("--trial", action="store_true", help="also time three 100-epoch digits DAL trials")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    print(f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); medians of "
          "interleaved repetitions")

    t_start = time.perf_counter()
    alone = report("loss alone, forward + backward on 128 x 10 logits",
                   interleaved(loss_only(dev), 21, 100, dev), unit="us", scale=1e6)

    mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    report("(a) digits MLP 64-256-256-10, batch 128, SGD step",
           interleaved(train_steps(mlp, (64,), dev), args.mlp_reps, 50, dev))

    try:
        from dal_search.objectives.models import build_model
        resnet = build_model("resnet18", (3, 32, 32), 10)
    except (ImportError, AttributeError, ValueError) as e:
        print(f"\n(b) skipped: objectives.models.build_model('resnet18', ...) is not available yet ({e})")
    else:
        fns = train_steps(resnet, (3, 32, 32), dev)
        if dev == "cpu":  # seconds per step here: the hard bootstrap is left to the MLP figures
            del fns["dal(hard)"]
        inner = 1 if dev == "cpu" else 20
        t = time.perf_counter()
        fns["gce"]()  # warm-up on one copy: kernels and allocator are shared by all
        _sync(dev)
        one = time.perf_counter() - t
        reps = args.resnet_reps
        if dev == "cpu":
            reps = max(2, min(reps, int(args.budget / (one * inner * len(fns)))))
        t = report(f"(b) CIFAR ResNet-18, batch 128, 3x32x32, SGD step ({reps} repetitions)",
                   interleaved(fns, reps, inner, dev, warmup=0))
        # the loss is the only difference between the arms, so its own cost bounds the true ratio; on a
        # shared CPU the step-to-step noise above is far larger than that
        extra = alone["dal(soft)"] - alone["gce"]
        print(f"  the loss alone: DAL(soft) - GCE = {extra * 1e6:.0f} us = {extra / t['gce']:.4%} of a ResNet step,"
              f" so DAL(soft)/GCE = {1 + extra / t['gce']:.4f} up to measurement noise")
    if args.trial:
        from dal_search.objectives.config import TrainConfig
        from dal_search.objectives.train import train

        walls = [train(TrainConfig(loss="dal", epochs=100, seed=seed, threads=1, device=dev))["wall_time"]
                 for seed in range(3)]
        print(f"\ndigits DAL trial, 100 epochs, 1 thread: {statistics.median(walls):.2f} s median of 3 "
              f"({', '.join(f'{w:.2f}' for w in walls)}); target < 5 s")
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()

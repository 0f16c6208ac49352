"""Step cost of DAL against GCE and CE, and the wall time of one digits trial. Prints figures, asserts nothing.

    python bench/bench_losses.py [--resnet-reps 3] [--device cpu|cuda]

A step is forward + loss + backward + SGD update at batch 128. Losses are timed interleaved (CE, GCE, DAL,
DAL, ...) in one run and compared by medians, so the ratios hold on a shared, noisy machine. DAL is timed in
its late stage (lambda > 0, bootstrap term on), its most expensive form. Target: DAL within 3 % of GCE.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from objectives.config import TrainConfig
from objectives.losses import ce, dal, gce
from objectives.models import build_model
from objectives.train import train

LOSSES = {"ce": lambda z, y: ce(z, y), "gce": lambda z, y: gce(z, y, 0.7),
          "dal": lambda z, y: dal(z, y, 1.3, 0.5, "soft"), "dal(lam=0)": lambda z, y: dal(z, y, 0.8, 0.0)}


def step_times(model_name: str, shape: tuple[int, ...], reps: int, inner: int, device: str) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(model_name, shape, 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(128, *shape, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    times: dict[str, list[float]] = {k: [] for k in LOSSES}

    def run(fn):
        for _ in range(inner):
            loss = fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    for fn in LOSSES.values():
        run(fn)  # warm-up
    for _ in range(reps):
        for name, fn in LOSSES.items():
            t = time.perf_counter()
            run(fn)
            times[name].append((time.perf_counter() - t) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def report(title: str, t: dict[str, float]) -> None:
    print(f"\n{title}")
    for k, v in t.items():
        print(f"  {k:<11} {v * 1e3:8.3f} ms/step")
    print(f"  DAL / GCE = {t['dal'] / t['gce']:.3f}   DAL / CE = {t['dal'] / t['ce']:.3f}   "
          f"DAL(lam=0) / GCE = {t['dal(lam=0)'] / t['gce']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--resnet-reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    report("digits MLP (64-256-256-10), batch 128", step_times("mlp", (64,), reps=15, inner=50, device=args.device))
    report("CIFAR ResNet-18, batch 128, 3x32x32",
           step_times("resnet18", (3, 32, 32), reps=args.resnet_reps, inner=1 if args.device == "cpu" else 20,
                      device=args.device))

    walls = []
    for seed in range(3):
        r = train(TrainConfig(loss="dal", epochs=100, seed=seed, threads=1, device=args.device))
        walls.append(r["wall_time"])
    print(f"\ndigits DAL trial, 100 epochs, 1 thread: {statistics.median(walls):.2f} s median of 3 "
          f"({', '.join(f'{w:.2f}' for w in walls)}); target < 5 s")


if __name__ == "__main__":
    main()

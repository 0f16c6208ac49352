"""GPU throughput of one trial and of a study's trials sharing one device (issue 12). Prints figures, asserts nothing.

    PYTHONPATH=. python3 bench/bench_gpu.py [--data-dir /tmp/cifar-random] [--epochs 4] [--concurrency 1,2,4,8]
                                            [--json OUT]
    python bench/bench_gpu.py --smoke [--json OUT]     # CPU: tiny data, a few steps: the code path only
                                                       # (tests/test_graphs.py runs it with --processes 1)

In one run, on CIFAR-shaped random data (torchvision's cifar-10-batches-py layout with random pixels and
labels, written into --data-dir unless it is there: throughput only, nothing is learned), ResNet-18, batch
128, DAL with the soft bootstrap, 45,000 training images:

1. one trial, steady epoch, eager (`graphs: off`) against captured (`graphs: on`, the CUDA-graph step of
   objectives/graphs.py), and the fallback line where capture is impossible;
2. fused trials: K configs of one study (different q_start) trained as one batched network
   (objectives/fused.py) for each K of --concurrency;
3. concurrent trials: P processes, one trial each, sharing the device, for each P of --concurrency.

A steady epoch is the median epoch time after the first (which holds cudnn's benchmarking and the capture),
measured between the trainer's per-epoch reports, so it includes the evaluation of the validation and test
sets. images/s counts training images: K (or P) x training images per steady epoch; for processes, the images
of the epochs that end inside the window in which every process is past its first epoch, over that window.

Needs no optuna or Ray: on a GPU box put the checkout on PYTHONPATH (../shared/GPU.md). bench/gpu_check.sh runs
this and the GPU tests as one prepared device check.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_cifar_shaped(root: Path, per_batch: int, n_test: int, seed: int = 0) -> Path:
    """CIFAR-10's python layout with random uint8 pixels and random labels (5 training batches of
    `per_batch` images, a test batch of `n_test`); kept when already there."""
    import numpy as np

    folder = root / "cifar-10-batches-py"
    if (folder / "batches.meta").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        entry = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, n)], "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=4)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch, "num_vis": 3072},
                    fh, protocol=4)
    return folder


def steady(ends: list[float], start: float) -> float:
    """The median epoch time after the first, from the epochs' end times (and the run's start)."""
    times = [b - a for a, b in zip([start, *ends], ends)][1:]
    return statistics.median(times) if times else float("nan")


def one_trial(base: dict, graphs: str) -> dict:
    from dal_search.objectives.config import TrainConfig
    from dal_search.objectives.train import train

    ends: list[float] = []
    start = time.perf_counter()
    result = train(TrainConfig.from_dict({**base, "graphs": graphs}), report=lambda e, m: ends.append(time.perf_counter()))
    epoch = steady(ends, start)
    n = round(result["train_size"] * (1 - base.get("val_fraction", 0.1)))
    return {"what": f"one trial, graphs {graphs}", "steady_epoch_s": epoch, "images_per_s": n / epoch,
            "line": result["graphs"], "device": result["device"], "train_images": n}


def fused(base: dict, k: int) -> dict:
    from dal_search.objectives.config import TrainConfig
    from dal_search.objectives.fused import train_fused

    configs = [TrainConfig.from_dict({**base, "q_start": round(0.3 + 0.6 * i / max(1, k - 1), 3)}) for i in range(k)]
    ends: list[float] = []
    start = time.perf_counter()
    reports = [lambda e, m: ends.append(time.perf_counter())] + [None] * (k - 1)
    results = train_fused(configs, reports=reports)
    epoch = steady(ends, start)
    n = round(results[0]["train_size"] * (1 - base.get("val_fraction", 0.1)))
    return {"what": f"fused, K = {k}", "steady_epoch_s": epoch, "images_per_s": k * n / epoch,
            "line": results[0]["graphs"], "train_images": n}


def processes(base: dict, p: int) -> dict:
    """P child processes (this script with --child), each one trial, started together once every child has its
    data loaded; images/s over the window in which all of them are past their first epoch."""
    with tempfile.TemporaryDirectory() as tmp:
        path, go = Path(tmp) / "config.json", Path(tmp) / "go"
        path.write_text(json.dumps(base))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        procs = [subprocess.Popen([sys.executable, __file__, "--child", str(path), "--go", str(go)],
                                  stdout=subprocess.PIPE, text=True, env=env) for _ in range(p)]
        for proc in procs:  # each says "ready" once its imports, CUDA and data are loaded
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a child trial failed to start (exit status {proc.wait()})")
        go.touch()
        outs = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
        if any(proc.returncode for proc in procs):
            raise RuntimeError(f"a child trial failed: exit statuses {[proc.returncode for proc in procs]}")
    n = outs[0]["train_images"]
    t0 = max(o["ends"][0] for o in outs)  # every child is past its first epoch
    t1 = min(o["ends"][-1] for o in outs)  # and none has finished
    done = sum(1 for o in outs for t in o["ends"] if t0 < t <= t1)
    rate = done * n / (t1 - t0) if t1 > t0 and done else float("nan")
    return {"what": f"processes, P = {p}", "steady_epoch_s": statistics.median(steady(o["ends"], o["start"]) for o in outs),
            "images_per_s": rate, "line": outs[0]["line"], "train_images": n,
            "note": f"{done} epochs in a {t1 - t0:.2f} s common window" if t1 > t0 else "no common steady window"}


def child(config_path: str, go: str) -> None:
    import torch

    from dal_search.objectives.config import TrainConfig
    from dal_search.objectives.data import load_dataset
    from dal_search.objectives.train import train

    config = TrainConfig.from_dict(json.loads(Path(config_path).read_text()))
    load_dataset(config.dataset, root=config.data_dir)  # kept by the process: train() reads it from memory
    if config.device == "cuda":
        torch.cuda.init()
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.01)
    ends: list[float] = []
    start = time.time()
    result = train(config, report=lambda e, m: ends.append(time.time()))
    n = round(result["train_size"] * (1 - config.val_fraction))
    print(json.dumps({"start": start, "ends": ends, "train_images": n, "line": result["graphs"]}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny data on the CPU: the code path only")
    ap.add_argument("--data-dir", default=None, help="where the CIFAR-shaped data is written (default: a temp folder)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default 4; smoke 5)")
    ap.add_argument("--concurrency", default=None, help="K fused members and P processes (default 1,2,4,8; smoke 1,2)")
    ap.add_argument("--processes", default=None, help="P processes, when they should differ from --concurrency")
    ap.add_argument("--model", default=None, help="network (default resnet18; smoke mlp)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--go", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.go)
        return 0
    import torch

    smoke = args.smoke
    epochs = args.epochs or (5 if smoke else 4)
    counts = [int(c) for c in (args.concurrency or ("1,2" if smoke else "1,2,4,8")).split(",")]
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory()
        data_dir = Path(tmp.name)
    else:
        data_dir = Path(args.data_dir)
    write_cifar_shaped(data_dir, per_batch=20 if smoke else 10_000, n_test=20 if smoke else 10_000)
    device = "cpu" if smoke else ("cuda" if torch.cuda.is_available() else "cpu")
    base = {"dataset": "cifar10", "data_dir": str(data_dir), "model": args.model or ("mlp" if smoke else "resnet18"),
            "loss": "dal", "q_start": 0.6, "q_end": 1.5, "noise": "symmetric", "noise_rate": 0.4, "epochs": epochs,
            "batch_size": 32 if smoke else 128, "device": device, "threads": 1 if smoke else None}
    print(f"bench_gpu: {base['model']}, batch {base['batch_size']}, {epochs} epochs a run, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "") + f", torch {torch.__version__}",
          file=sys.stderr)
    runs = [(one_trial, "off"), (one_trial, "on" if device == "cuda" else "auto"), *((fused, k) for k in counts),
            *((processes, p) for p in ([int(c) for c in args.processes.split(",")] if args.processes else counts))]
    rows = []
    for measure, arg in runs:
        try:
            rows.append(measure(base, arg))
        except Exception as e:  # noqa: BLE001 - one failed row (graphs: on refused, out of memory) is a figure too
            rows.append({"what": f"{measure.__name__} {arg}", "line": f"failed: {type(e).__name__}: "
                                                                      f"{' '.join(str(e).split())[:300]}"})
        print(f"bench_gpu: {rows[-1]['what']}: done", file=sys.stderr, flush=True)
    print("| what | steady epoch | training images/s | how the step ran |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        epoch = f"{r['steady_epoch_s']:.3f} s" if "steady_epoch_s" in r else "-"
        rate = f"{r['images_per_s']:,.0f}" if "images_per_s" in r else "-"
        print(f"| {r['what']} | {epoch} | {rate} | {r['line']}{'; ' + r['note'] if r.get('note') else ''} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"base": base, "torch": torch.__version__, "rows": rows,
                                               "device_name": torch.cuda.get_device_name() if device == "cuda"
                                               else "cpu"}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Storage + sampler overhead per trial: what a trial costs besides its training. Prints figures.

    python bench/bench_storage.py [--trials 1000] [--epochs 100] [--backends sqlite,postgres,journal]
                                  [--pruner none|median]

The real worker loop (`search.worker.run_worker`: stale check, slot pop, TPE multivariate sampling of DAL's
space, a heartbeat thread, ~10 checkpoint values per trial (each reported and judged as it comes with
--pruner median, else written with the results), the user attrs, tell) runs against each storage with
a stand-in for training that reports `--epochs` epochs and returns at once. The time per trial is therefore
pure overhead; it grows with the study (TPE reads every trial), so it is shown around trial 100 and around
the last trial, as milliseconds and as a share of one real digits trial (100 epochs, 1 thread) timed in the
same run. Target: under 5 % at 1,000 trials on PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid

import optuna

from dal_search.objectives.config import TrainConfig
from dal_search.objectives.train import train
from dal_search.search.campaign import create_studies, parse_campaign
from dal_search.search.worker import run_worker
from dal_search.storage import open_storage


def fake_train(epochs: int):
    def run(config: TrainConfig, report=None):
        hist = {k: [0.5] * epochs for k in ("epoch", "q", "lam", "lr", "train_loss", "train_acc", "val_acc",
                                                "test_acc", "noisy_fit", "clean_fit")}
        for e in range(epochs):
            if report is not None:
                report(e, {k: 0.5 for k in hist})
        acc = 0.5 + 0.4 * (1 - abs(config.q_start - 0.6)) * (1 - abs(config.q_end - 1.5) / 2)
        return {"status": "ok", "reason": "", "test_acc": acc, "best_test_acc": acc, "val_acc": acc,
                "best_val_acc": acc, "test_acc_at_best_val": acc, "noisy_fit": 0.1, "clean_fit": 0.99,
                "realized_rate": 0.36, "label_hash": "0" * 16, "wall_time": 0.0, "device": "none",
                "history": hist}
    return run


def bench(url: str, trials: int, epochs: int, pruner: str = "none") -> list[float]:
    storage = open_storage(url)
    camp = parse_campaign({"name": f"b{uuid.uuid4().hex[:6]}", "datasets": ["digits"],
                           "noise": {"symmetric": [0.4]}, "arms": {"dal": "default"},
                           "budget": {"trials": trials, "seeds": [0]}, "train": {"epochs": epochs},
                           "pruner": pruner})
    create_studies(storage, camp)
    stamps = [time.perf_counter()]
    run_worker(storage, camp.name, worker_seed=0, train_fn=fake_train(epochs),
               on_trial=lambda name, frozen: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--backends", default="sqlite,postgres,journal")
    ap.add_argument("--pruner", default="none", choices=["none", "median"],
                    help="none (the campaign default: checkpoints written with the results) or median "
                         "(each checkpoint written and judged as it comes)")
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                    help="server to create a scratch database on")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    walls = [train(TrainConfig(epochs=100, seed=s, threads=1))["wall_time"] for s in range(3)]
    trial_s = statistics.median(walls)
    print(f"one digits trial (100 epochs, 1 thread): {trial_s:.2f} s (median of 3); TPE multivariate, "
          f"pruner {args.pruner}")
    tmp = tempfile.mkdtemp()
    for backend in args.backends.split(","):
        scratch = None
        if backend == "sqlite":
            url = f"sqlite:///{tmp}/bench.db"
        elif backend == "journal":
            url = f"journal:{tmp}/bench.log"
        else:
            import psycopg

            scratch = f"dal_bench_{uuid.uuid4().hex[:8]}"
            admin = args.pg.replace("postgresql+psycopg", "postgresql")
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{scratch}"')
            url = args.pg.rsplit("/", 1)[0] + "/" + scratch
        try:
            t = bench(url, args.trials, args.epochs, args.pruner)
        finally:
            if scratch:
                with psycopg.connect(admin, autocommit=True) as c:
                    c.execute(f'DROP DATABASE "{scratch}" WITH (FORCE)')
        for at in sorted({min(100, args.trials), args.trials}):
            window = t[max(0, at - 20):at]
            ms = statistics.mean(window) * 1e3
            print(f"{backend:>9} at trial {at:>5}: {ms:7.1f} ms/trial overhead = {ms / 1e3 / trial_s * 100:5.2f} % "
                  f"of a digits trial")
        print(f"{backend:>9} total: {sum(t):.1f} s for {len(t)} trials")


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main()

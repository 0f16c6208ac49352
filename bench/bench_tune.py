"""TPE alone vs TPE + ASHA vs PBT on digits at the same budget of training epochs. Prints figures, asserts nothing.

    python bench/bench_tune.py run [--storage sqlite:///runs/tune-bench.db]      # the three campaigns (~30 min)
    python bench/bench_tune.py analyse [--storage ...] [--png-dir docs/figures]  # tables for docs/RESULTS.md

The campaigns are docs/campaigns/digits-tune-{tpe,asha,pbt}.yaml: DAL's default search space (q_s, q_e, the
schedule's shape, the bootstrap kind and scale) on digits at 40 % symmetric noise, 50 epochs, every trial
trained on seeds 0, 1 and 2 (the same noisy labels for every method, so methods pair by seed):

    tpe   dal-search run, 1 worker: 12 trials, 1,800 training epochs
    asha  dal-search tune --scheduler asha, 1 trial at a time, rungs at 5, 15, 45 epochs: 48 trials, stopped
          ones counting the epochs they trained
    pbt   dal-search tune --scheduler pbt: a population of 12 trained at once, q and lambda perturbed every 5
          epochs: 1,800 epochs

`analyse` orders each method's trials by completion and counts the epochs spent (every seed's; a stopped ASHA
trial its epochs so far); at every 300 epochs it prints the best trial so far on the selection metric (the
mean over seeds of the last epoch's noisy validation accuracy) and that trial's test accuracy. At the budget
all three reached it compares the methods' best trials, and the best learned (PBT) schedule with the best
fixed-shape trial, per seed on test accuracy with search/stats.py (n = 3 seeds, paired). A PBT member is a
finished model only at the end, so PBT has one point, at its whole budget.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("tpe", "asha", "pbt")
COMMANDS = {
    "tpe": ["run", "docs/campaigns/digits-tune-tpe.yaml", "--workers", "1", "--seed", "0"],
    "asha": ["tune", "docs/campaigns/digits-tune-asha.yaml", "--scheduler", "asha", "--workers", "1",
             "--grace-period", "5", "--reduction-factor", "3", "--seed", "0", "--quiet"],
    "pbt": ["tune", "docs/campaigns/digits-tune-pbt.yaml", "--scheduler", "pbt", "--workers", "12",
            "--perturbation-interval", "5", "--seed", "0", "--quiet"],
}
STEP = 300


def run(storage: str, methods: list[str]) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    for m in methods:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dal_search", *COMMANDS[m], "--storage", storage], cwd=ROOT,
                       env=env, check=True)
        print(f"{m}: {time.perf_counter() - t0:.0f} s wall", file=sys.stderr, flush=True)


def _spent(t) -> int:
    """Training epochs a trial cost (every seed's): its record, else epochs x seeds for a finished one."""
    if "epochs_trained" in t.user_attrs:
        return int(t.user_attrs["epochs_trained"])
    cfg = t.user_attrs.get("train_config") or {}
    return int(cfg.get("epochs", 0)) * len(t.user_attrs.get("seeds") or [])


def curves(storage) -> dict[str, list[tuple[int, object]]]:
    """method -> [(epochs spent so far, best COMPLETE trial so far or None)] in completion order."""
    import optuna
    from optuna.trial import TrialState

    out = {}
    for m in METHODS:
        try:
            study = optuna.load_study(study_name=f"tune-{m}/dal/digits/symmetric-0.4", storage=storage)
        except KeyError:  # not run yet
            out[m] = []
            continue
        done = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        spent, best, points = 0, None, []
        for t in sorted(done, key=lambda t: t.datetime_complete):
            spent += _spent(t)
            if t.state == TrialState.COMPLETE and (best is None or t.value > best.value):
                best = t
            points.append((spent, best))
        # PBT's members train at once: no member is a finished model before the population has spent it all
        out[m] = points[-1:] if m == "pbt" else points
    return out


def _finished(storage, m: str) -> list:
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=f"tune-{m}/dal/digits/symmetric-0.4", storage=storage)
    except KeyError:
        return []
    done = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return sorted(done, key=lambda t: t.datetime_complete)


def best_at(points, budget: int):
    """The best trial found within `budget` epochs, or None."""
    best = None
    for spent, b in points:
        if spent > budget:
            break
        best = b
    return best


def _test(t) -> str:
    from dal_search.search.analysis import mean_sd, seed_values

    return mean_sd(seed_values(t, "test_acc")) if t is not None else "-"


def analyse(storage_url: str, png_dir: str | None) -> None:
    import optuna

    from dal_search.search import stats
    from dal_search.search.analysis import learned_findings, learned_schedules, seed_map
    from dal_search.storage import open_storage

    storage = open_storage(storage_url, heartbeat_interval=None, for_workers=False)
    pts = curves(storage)
    totals = {m: p[-1][0] if p else 0 for m, p in pts.items()}
    print("| epochs spent | " + " | ".join(f"{m}: best val / its test acc" for m in METHODS) + " |")
    print("|---:|" + "---|" * len(METHODS))
    for budget in range(STEP, max(totals.values()) + STEP, STEP):
        cells = []
        for m in METHODS:
            b = best_at(pts[m], budget)
            done = budget - STEP >= totals[m]  # the method had spent its whole budget already
            cells.append("" if done else f"{b.value:.3f} / {_test(b)}" if b is not None else "-")
        print(f"| {budget:,} | " + " | ".join(cells) + " |")
    common = min(t for t in totals.values() if t)
    print(f"\nepochs spent in all: {', '.join(f'{m} {totals[m]:,}' for m in METHODS)}; compared at {common:,}")
    for m in METHODS:
        within = [t for spent, t in zip((s for s, _ in pts[m]), _finished(storage, m)) if spent <= common]
        print(f"{m}: {len(within)} trials finished within {common:,} epochs ({sum(t.state.name == 'COMPLETE' for t in within)}"
              f" complete), best: " + (f"trial {best_at(pts[m], common).number}" if best_at(pts[m], common) else "none"))
    bests = {m: best_at(pts[m], common) for m in METHODS}
    for a, b in (("asha", "tpe"), ("pbt", "tpe"), ("pbt", "asha")):
        if bests[a] is None or bests[b] is None:
            continue
        c = stats.compare(seed_map(bests[a], "test_acc"), seed_map(bests[b], "test_acc"))
        print(stats.sentence(a.upper(), b.upper(), c, f"best trial on noisy validation within {common:,} epochs"))
    for m, t in bests.items():
        if t is not None:
            cfg = t.user_attrs.get("train_config") or {}
            what = ("learned (explicit)" if cfg.get("schedule") == "explicit" else
                    f"{cfg.get('schedule')}, q_s {cfg.get('q_start'):.3g}, q_e {cfg.get('q_end'):.3g}, "
                    f"{cfg.get('bootstrap')} x {cfg.get('bootstrap_scale'):.2f}")
            print(f"{m} best: trial {t.number}, val {t.value:.4f}, test {_test(t)}, noisy fit "
                  f"{t.user_attrs.get('noisy_fit', math.nan):.3f}: {what}")
    studies = [optuna.load_study(study_name=f"tune-{m}/dal/digits/symmetric-0.4", storage=storage)
               for m in METHODS if pts[m]]
    for line in learned_findings(studies):
        print(line)
    pbt = bests["pbt"]
    if pbt is not None:
        h = pbt.user_attrs["history"]
        print("learned q(t): " + " ".join(f"{q:.2f}" for q in h["q"][::5]))
        print("learned lambda(t) x scale: " + " ".join(f"{v:.2f}" for v in h["lam"][::5]))
        print(f"exploits along its lineage: {len(pbt.user_attrs['pbt']['exploits'])}")
        from dal_search.objectives.config import TrainConfig
        from dal_search.objectives.train import train

        again = train(TrainConfig.from_dict(pbt.user_attrs["train_config"]))
        print(f"the learned schedule re-run from its train_config (seed {again['config']['seed']}): history "
              f"{'identical' if again['history'] == h else 'DIFFERENT'}")
    if png_dir and pbt is not None:
        from dal_search.search.report import write_pngs

        fig = learned_schedules(studies)
        print("wrote", write_pngs([("learned schedules", fig), ("tune budget", _budget_figure(pts))], Path(png_dir)))


def _budget_figure(pts):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["best noisy-validation accuracy found so far",
                                                        "test accuracy of that trial (mean over 3 seeds)"])
    colours = {"tpe": "#1f77b4", "asha": "#2ca02c", "pbt": "#d62728"}
    for m in METHODS:
        xs = [s for s, b in pts[m] if b is not None]
        bs = [b for _, b in pts[m] if b is not None]
        mode = "markers" if m == "pbt" else "lines+markers"
        fig.add_trace(go.Scatter(x=xs, y=[b.value for b in bs], name=m, mode=mode, legendgroup=m,
                                 line={"shape": "hv", "color": colours[m]}, marker={"size": 9 if m == "pbt" else 5}),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=xs, y=[statistics.fmean(b.user_attrs["per_seed"][i]["test_acc"]
                                                           for i in range(len(b.user_attrs["per_seed"])))
                                          for b in bs], name=m, mode=mode, legendgroup=m, showlegend=False,
                                 line={"shape": "hv", "color": colours[m]}, marker={"size": 9 if m == "pbt" else 5}),
                      row=1, col=2)
    for c in (1, 2):
        fig.update_xaxes(title_text="training epochs spent (every seed's)", row=1, col=c)
    fig.update_layout(title="TPE alone vs TPE + ASHA vs PBT on digits, symmetric 40 % (DAL's default space, 50 epochs)",
                      height=420, width=1100)
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("run", "analyse"))
    p.add_argument("--storage", default="sqlite:///runs/tune-bench.db")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--png-dir", default=None)
    args = p.parse_args(argv)
    if args.what == "run":
        run(args.storage, args.methods.split(","))
    else:
        analyse(args.storage, args.png_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

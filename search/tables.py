"""Campaign results as Markdown tables: the numbers behind docs/RESULTS.md, computed from the storage.

    python -m dal_search.search.tables --storage sqlite:///runs/results.db baselines shapes surface daltpe

For each campaign it prints what applies: with several arms, each arm's best trial (mean ± std over seeds)
and DAL against the best baseline and against each baseline; with several schedule shapes, each shape (per
seed, averaged over its trials) and each shape against linear; with a q_s x q_e surface, the grid per noise
rate and each setting's best point against its runner-up and the worst point; the best params of searched
DAL studies.

Selection never uses clean test labels unless the campaign did (`metric: test_acc`): a study's best trial,
the best baseline and the best q_s x q_e point are chosen on the study's own metric (the noisy validation
accuracy by default). Every comparison is search/stats.py: the mean difference over seeds in points, its
95 % Student t interval (paired by seed: the same seed is the same noise draw and split), n and the verdict.
Cells are in % of accuracy; "± std" is the sample standard deviation over seeds; a cell with one seed has
no spread and says n=1.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from typing import Any

from dal_search.search import analysis, stats
from dal_search.search.analysis import ARM_NAMES, best_trial, seed_map, seed_means
from dal_search.search.analysis import campaign_studies as _studies

LABELS = {"test_acc": "last epoch", "best_test_acc": "best epoch", "test_acc_at_best_val": "at best val",
          "noisy_fit": "noisy fit (last epoch)", "clean_fit": "clean fit (last epoch)"}
_ORDER = {"symmetric": 0, "symmetric-exclusive": 1, "asymmetric": 2, "instance": 3, "file": 4}


def _cell(values: list[float], n: int | None = None) -> str:
    """'95.9 ± 0.7' (% over seeds); '(n=k)' appended when k differs from the table's n; one value: 'n=1'."""
    if not values:
        return "-"
    mean, sd = stats.spread(values)
    if sd is None:
        return f"{100 * mean:.1f} (n=1)"
    return f"{100 * mean:.1f} ± {100 * sd:.1f}" + (f" (n={len(values)})" if n is not None and len(values) != n else "")


def _noise_title(kind: str) -> str:
    """A noise kind as its registry titles it ('partial labels' for partial)."""
    from dal_search.objectives.noise import NOISE_KINDS

    return NOISE_KINDS.titles().get(kind, kind)


def _condition(attrs: dict[str, Any]) -> str:
    return f"{_noise_title(attrs['noise'])} {int(round(100 * attrs['noise_rate']))} %"


def _cond_label(c: analysis.Cond) -> str:
    return f"{_noise_title(c[1])} {int(round(100 * c[2]))} %"


def _cond_key(c: tuple) -> tuple:
    return _ORDER.get(c[1], 9), c[2], c[0]


def _seeds_caption(counts: list[int]) -> str:
    if not counts:
        return "no seeds"
    top = max(set(counts), key=counts.count)
    return f"n={top} seed{'s' if top != 1 else ''}"


def arm_table(storage, campaign: str, key: str = "test_acc", label: str = "") -> str:
    """Rows: arms; columns: noise conditions; cells: the best trial's `key`, mean ± std over its seeds."""
    values: dict[str, dict[tuple, list[float]]] = defaultdict(dict)
    conds: set[tuple] = set()
    for study in _studies(storage, campaign):
        c = analysis.condition(study)
        conds.add(c)
        t = best_trial(study)
        values[study.user_attrs["arm"]][c] = list(seed_map(t, key).values()) if t else []
    order = sorted(conds, key=_cond_key)
    counts = [len(v) for row in values.values() for v in row.values() if v]
    n = max(set(counts), key=counts.count) if counts else None
    head = [_cond_label(c) for c in order]
    lines = [f"| {label or key} ({_seeds_caption(counts)}) | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for arm in sorted(values, key=analysis.arm_order):
        lines.append(f"| {ARM_NAMES.get(arm, arm)} | " + " | ".join(_cell(values[arm].get(c, []), n) for c in order)
                     + " |")
    return "\n".join(lines)


def comparison_table(storage, campaign: str, key: str = "test_acc", label: str = "") -> str:
    """Per condition: DAL's best trial vs the best baseline (chosen on the selection metric), on `key`."""
    studies = _studies(storage, campaign)
    results = sorted(analysis.arm_results(studies, key), key=lambda r: _cond_key(r.cond))
    sel = analysis.selected_on(studies)
    lines = [f"| {label or key}: DAL − best baseline | best baseline (on {sel}) | DAL | baseline | "
             f"difference [95 % CI] | n | verdict |", "|---|---|---|---|---|---|---|"]
    for r in results:
        c = r.comparison
        lines.append(f"| {_cond_label(r.cond)} | {ARM_NAMES.get(r.baseline, r.baseline)} | "
                     f"{_cell(list(seed_map(r.dal, key).values()))} | "
                     f"{_cell(list(seed_map(r.baseline_trial, key).values()))} | {stats.cell(c)} | "
                     f"{c.n}{'' if c.paired else ' (Welch)'} | {c.verdict} |")
    return "\n".join(lines)


def each_baseline_table(storage, campaign: str, key: str = "test_acc", label: str = "") -> str:
    """Rows: conditions; columns: baselines; cells: DAL − that baseline [95 % CI], verdict."""
    results = sorted(analysis.arm_results(_studies(storage, campaign), key), key=lambda r: _cond_key(r.cond))
    arms = sorted({a for r in results for a in r.each}, key=analysis.arm_order)
    lines = [f"| {label or key}: DAL − baseline [95 % CI], verdict | " + " | ".join(ARM_NAMES.get(a, a) for a in arms)
             + " |", "|---|" + "---|" * len(arms)]
    for r in results:
        cells = [f"{stats.cell(r.each[a])}, n={r.each[a].n}: {r.each[a].verdict}" if a in r.each else "-"
                 for a in arms]
        lines.append(f"| {_cond_label(r.cond)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def param_table(storage, campaign: str, param: str, key: str = "test_acc", label: str = "") -> str:
    """Rows: values of `param` (e.g. schedule) of the DAL studies' complete trials; columns: noise
    conditions; cells: mean ± std over seeds of the per-seed means over the trials with that value."""
    trials: dict[str, dict[tuple, list]] = defaultdict(lambda: defaultdict(list))
    conds: set[tuple] = set()
    for study in analysis.dal_studies(_studies(storage, campaign)):
        c = analysis.condition(study)
        conds.add(c)
        for t in analysis.complete_trials(study):
            trials[str(analysis.param(t, param))][c].append(t)
    order = sorted(conds, key=_cond_key)
    rows = analysis.shape_sort(trials)
    cells = {v: {c: list(seed_means(trials[v][c], key).values()) for c in order} for v in rows}
    counts = [len(x) for row in cells.values() for x in row.values() if x]
    n = max(set(counts), key=counts.count) if counts else None
    lines = [f"| {label or key}: {param} ({_seeds_caption(counts)}) | " + " | ".join(_cond_label(c) for c in order)
             + " |", "|---|" + "---|" * len(order)]
    for v in rows:
        lines.append(f"| {v} | " + " | ".join(_cell(cells[v][c], n) for c in order) + " |")
    return "\n".join(lines)


def shape_comparison_table(storage, campaign: str, key: str = "test_acc", label: str = "") -> str:
    """Per condition and shape: the shape − linear (per seed, averaged over each shape's trials)."""
    results = sorted(analysis.shape_results(_studies(storage, campaign), key), key=lambda r: _cond_key(r.cond))
    lines = [f"| {label or key}: shape − reference | shape | trials | difference [95 % CI] | n | verdict | "
             f"what else varied |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for sh, c in r.comparisons.items():
            lines.append(f"| {_cond_label(r.cond)} | {sh} − {r.reference} | {r.trials[sh]} vs {r.trials[r.reference]} | "
                         f"{stats.cell(c)} | {c.n}{'' if c.paired else ' (Welch)'} | {c.verdict} | {r.pooling} |")
    return "\n".join(lines)


def grid_table(storage, campaign: str, noise_rate: float, key: str = "test_acc", noise: str | None = None,
               shape: str | None = None) -> str:
    """q_start rows x q_end columns at one noise rate (DAL studies; one schedule `shape`, or all when None):
    mean ± std over seeds, each seed's value averaged over the trials at the point."""
    grid: dict[float, dict[float, list]] = defaultdict(lambda: defaultdict(list))
    for study in analysis.dal_studies(_studies(storage, campaign)):
        a = study.user_attrs
        if abs(a["noise_rate"] - noise_rate) > 1e-9 or (noise is not None and a["noise"] != noise):
            continue
        for t in analysis.complete_trials(study):
            if shape is not None and analysis.shape_of(t) != shape:
                continue
            qs, qe = analysis.param(t, "q_start"), analysis.param(t, "q_end")
            grid[round(float(qs), 4)][round(float(qe), 4)].append(t)
    q_ends = sorted({qe for row in grid.values() for qe in row})
    cells = {qs: {qe: list(seed_means(grid[qs].get(qe, []), key).values()) for qe in q_ends} for qs in grid}
    counts = [len(x) for row in cells.values() for x in row.values() if x]
    n = max(set(counts), key=counts.count) if counts else None
    lines = [f"| q_s \\ q_e ({_seeds_caption(counts)}) | " + " | ".join(f"{q:g}" for q in q_ends) + " |",
             "|---|" + "---|" * len(q_ends)]
    for qs in sorted(grid):
        lines.append(f"| {qs:g} | " + " | ".join(_cell(cells[qs][qe], n) for qe in q_ends) + " |")
    return "\n".join(lines)


def surface_table(storage, campaign: str, key: str = "test_acc", label: str = "") -> str:
    """Per noise setting and shape: the best q_s x q_e point on the selection metric, its `key`, and how it
    compares on `key` with the runner-up and with the worst point on the selection metric."""
    results = sorted(analysis.surface_results(_studies(storage, campaign), key),
                     key=lambda r: _cond_key(r.panel.cond))
    lines = [f"| {label or key}: best q_s x q_e point | shape | points | best (selection value) | its {key} | "
             f"vs runner-up [95 % CI], verdict | vs worst [95 % CI], verdict | paper default − best [95 % CI], "
             f"verdict |", "|---|---|---|---|---|---|---|---|"]

    def q(p) -> str:
        return f"({p.q_start:.3g}, {p.q_end:.3g})"

    for r in results:
        shape = r.panel.shape or "pooled: " + ", ".join(r.panel.shapes)
        lines.append(
            f"| {_cond_label(r.panel.cond)} | {shape} | {len(r.panel.points)} | {q(r.best)} "
            f"({r.panel.metric} {r.best.selection:.3f}) | {_cell(list(r.best.seeds(key).values()))} | "
            f"{q(r.runner_up)}: {stats.cell(r.vs_runner_up)}, n={r.vs_runner_up.n}: {r.vs_runner_up.verdict} | "
            f"{q(r.worst)}: {stats.cell(r.vs_worst)}, n={r.vs_worst.n}: {r.vs_worst.verdict} | "
            f"{_default_cell(r, q)} |")
    return "\n".join(lines)


def _default_cell(r: analysis.SurfaceResult, q) -> str:
    """The paper's default point against the best one, or why there is no comparison."""
    if r.default is None:
        return "not on the grid"
    if r.default_vs_best is None:
        return f"{q(r.default)} is the best point"
    c = r.default_vs_best
    return f"{q(r.default)}: {stats.cell(c)}, n={c.n}: {c.verdict}"


def best_params_table(storage, campaign: str) -> str:
    rows = ["| condition | value (selection metric) | test acc | params |", "|---|---|---|---|"]
    for study in _studies(storage, campaign):
        t = best_trial(study)
        if t is None or not t.params:
            continue
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(t.params.items()))
        rows.append(f"| {_condition(study.user_attrs)} | {study.user_attrs.get('metric', 'val_acc')} {t.value:.3f} | "
                    f"{_cell(list(seed_map(t, 'test_acc').values()))} | {params} |")
    return "\n".join(rows)


def _seed_hashes(t) -> dict[int, str]:
    """{seed: hash of its noisy training labels} of a trial (empty for trials that did not record them)."""
    return {int(p["seed"]): p["label_hash"] for p in t.user_attrs.get("per_seed") or []
            if isinstance(p, dict) and p.get("label_hash")}


def against_table(storage, campaign: str, other: str, key: str = "test_acc", label: str = "") -> str:
    """Each DAL study's best trial in `campaign` (e.g. a TPE search) against every arm's best trial of `other`
    (e.g. the paper-default campaign) at the same dataset and noise, paired by seed over the seeds both ran.
    A pair counts only where both runs saw the same noisy labels (the recorded label hashes agree); when none
    agree the cell says so instead of comparing."""
    mine = [s for s in _studies(storage, campaign) if s.user_attrs.get("arm") == "dal"]
    theirs: dict[tuple, dict[str, Any]] = defaultdict(dict)
    for s in _studies(storage, other):
        if (t := best_trial(s)) is not None:
            theirs[analysis.condition(s)][s.user_attrs["arm"]] = t
    arms = sorted({a for d in theirs.values() for a in d}, key=analysis.arm_order)
    if not mine or not arms:
        return f"(nothing to compare: {campaign!r} has no DAL study or {other!r} no completed trial)"
    name = lambda a: f"{ARM_NAMES.get(a, a)} ({other})"  # noqa: E731
    lines = [f"| {label or key}: best DAL trial of {campaign} − arm [95 % CI], verdict | "
             + " | ".join(name(a) for a in arms) + " |", "|---|" + "---|" * len(arms)]
    for study in sorted(mine, key=lambda s: _cond_key(analysis.condition(s))):
        c, t = analysis.condition(study), best_trial(study)
        if t is None:
            continue
        cells = []
        for a in arms:
            u = theirs[c].get(a)
            if u is None:
                cells.append("-")
                continue
            h1, h2 = _seed_hashes(t), _seed_hashes(u)
            same = {s for s in set(h1) & set(h2) if h1[s] == h2[s]}
            if (h1 and h2) and not same:
                cells.append("not comparable: different noisy labels for every shared seed")
                continue
            mine_v = {s: v for s, v in seed_map(t, key).items() if not same or s in same}
            their_v = {s: v for s, v in seed_map(u, key).items() if not same or s in same}
            r = stats.compare(mine_v, their_v)
            cells.append(f"{stats.cell(r)}, n={r.n}: {r.verdict}")
        lines.append(f"| {_cond_label(c)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def campaign_tables(storage, campaign: str) -> str:
    """Every table that applies to `campaign`, as Markdown with short headings."""
    studies = _studies(storage, campaign)
    if not studies:
        return f"(no studies of campaign {campaign!r} in this storage)"
    out: list[str] = []
    accuracies = ("test_acc", "best_test_acc", "test_acc_at_best_val")
    if len({s.user_attrs.get("arm") for s in studies}) > 1:
        out.append(f"### Each arm's best trial (chosen on {analysis.selected_on(studies)})")
        out += [arm_table(storage, campaign, k, LABELS[k]) for k in (*accuracies, "noisy_fit", "clean_fit")]
        out.append("### DAL vs the best baseline")
        out += [comparison_table(storage, campaign, k, LABELS[k]) for k in accuracies]
        out.append("### DAL vs each baseline")
        out += [each_baseline_table(storage, campaign, k, LABELS[k]) for k in accuracies]
    if analysis.shape_results(studies):
        out.append("### Schedule shapes")
        out += [param_table(storage, campaign, "schedule", k, LABELS[k]) for k in (*accuracies, "noisy_fit")]
        out += [shape_comparison_table(storage, campaign, k, LABELS[k]) for k in accuracies]
    panels = analysis.surface_panels(studies)
    if panels:
        out.append("### q_s x q_e")
        for p in sorted(panels, key=lambda p: _cond_key(p.cond)):
            q_s, q_e = {q[0] for q in p.points}, {q[1] for q in p.points}
            if len(p.points) < len(q_s) * len(q_e):
                continue  # scattered (sampled) points: no grid to print; the best-point table covers them
            shape = f"{p.shape} schedule" if p.shape else "schedule shapes pooled: " + ", ".join(p.shapes)
            out.append(f"{_cond_label(p.cond)}, {shape}, {LABELS['test_acc']}:")
            out.append(grid_table(storage, campaign, p.cond[2], "test_acc", noise=p.cond[1], shape=p.shape))
        out += [surface_table(storage, campaign, k, LABELS[k]) for k in accuracies]
    if any(best_trial(s) is not None and best_trial(s).params for s in studies):
        out.append("### Best params per study")
        out.append(best_params_table(storage, campaign))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> None:
    from dal_search.storage import StorageError, open_storage

    ap = argparse.ArgumentParser(description="Markdown tables of campaign results, with 95 % intervals over seeds")
    ap.add_argument("--storage", required=True)
    ap.add_argument("campaigns", nargs="+")
    ap.add_argument("--against", metavar="CAMPAIGN",
                    help="also compare each campaign's best DAL trials with every arm of CAMPAIGN at the same "
                         "noise, paired by seed (e.g. a TPE search against the paper-default campaign)")
    args = ap.parse_args(argv)
    try:
        storage = open_storage(args.storage, heartbeat_interval=None, for_workers=False)
    except StorageError as e:  # a user's mistake: one line, status 2
        print(f"tables: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for c in args.campaigns:
        print(f"\n## {c}\n")
        print(campaign_tables(storage, c))
        if args.against:
            print(f"\n### Against {args.against} (best trials, paired by seed where the noisy labels agree)\n")
            print("\n\n".join(against_table(storage, c, args.against, k, LABELS[k])
                              for k in ("test_acc", "best_test_acc", "test_acc_at_best_val")))


if __name__ == "__main__":
    main()

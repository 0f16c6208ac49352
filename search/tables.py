"""Campaign results as Markdown tables: the numbers behind docs/RESULTS.md, computed from the storage.

    python -m dal_search.search.tables --storage sqlite:///runs/results.db baselines shapes surface daltpe

Every cell is mean ± std over the seeds a trial trained (the per_seed user attr), for the best COMPLETE
trial of each study by the study's own metric (the noisy validation accuracy unless the campaign said
otherwise), so a table never selects on clean test labels.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from typing import Any

from optuna.trial import TrialState

from dal_search.search.analysis import ARM_NAMES, best_trial
from dal_search.search.analysis import campaign_studies as _studies


def _cell(rows: list[dict[str, Any]], key: str) -> str:
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return "-"
    sd = statistics.pstdev(vals) if len(vals) > 1 else 0.0
    return f"{100 * statistics.fmean(vals):.1f} ± {100 * sd:.1f}"


def _condition(attrs: dict[str, Any]) -> str:
    return f"{attrs['noise']} {int(round(100 * attrs['noise_rate']))} %"


def arm_table(storage, campaign: str, key: str = "test_acc", label: str = "") -> str:
    """Rows: arms; columns: noise conditions; cells: the best trial's `key`, mean ± std over its seeds."""
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    conds: list[tuple[str, float, str]] = []
    for study in _studies(storage, campaign):
        a = study.user_attrs
        t = best_trial(study)
        cond = _condition(a)
        if (a["noise"], a["noise_rate"], cond) not in conds:
            conds.append((a["noise"], a["noise_rate"], cond))
        cells[a["arm"]][cond] = _cell(t.user_attrs.get("per_seed", []), key) if t else "-"
    order = {"symmetric": 0, "symmetric-exclusive": 1, "asymmetric": 2, "instance": 3, "file": 4}
    conds.sort(key=lambda c: (order.get(c[0], 9), c[1]))
    head = [c[2] for c in conds]
    lines = [f"| {label or key} | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for arm in sorted(cells, key=lambda a: list(ARM_NAMES).index(a) if a in ARM_NAMES else 99):
        lines.append(f"| {ARM_NAMES.get(arm, arm)} | " + " | ".join(cells[arm].get(h, "-") for h in head) + " |")
    return "\n".join(lines)


def param_table(storage, campaign: str, param: str, key: str = "test_acc") -> str:
    """Rows: values of `param` (e.g. schedule); columns: noise conditions; cells: mean ± std over seeds of
    the trials with that value (all complete trials, e.g. a grid)."""
    cells: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    conds = []
    for study in _studies(storage, campaign):
        cond = _condition(study.user_attrs)
        if cond not in conds:
            conds.append(cond)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            value = t.params.get(param, t.user_attrs.get("train_config", {}).get(param))
            cells[str(value)][cond].extend(t.user_attrs.get("per_seed", []))
    conds.sort(key=lambda c: float(c.split()[-2]))
    lines = [f"| {param} | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
    for value in cells:
        lines.append(f"| {value} | " + " | ".join(_cell(cells[value][c], key) for c in conds) + " |")
    return "\n".join(lines)


def grid_table(storage, campaign: str, noise_rate: float, key: str = "test_acc") -> str:
    """q_start rows x q_end columns at one noise rate: mean ± std over seeds."""
    grid: dict[float, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for study in _studies(storage, campaign):
        if study.user_attrs["arm"] != "dal" or abs(study.user_attrs["noise_rate"] - noise_rate) > 1e-9:
            continue
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            grid[t.params["q_start"]][t.params["q_end"]].extend(t.user_attrs.get("per_seed", []))
    q_ends = sorted({qe for row in grid.values() for qe in row})
    lines = ["| q_s \\ q_e | " + " | ".join(f"{q:g}" for q in q_ends) + " |", "|---|" + "---|" * len(q_ends)]
    for qs in sorted(grid):
        lines.append(f"| {qs:g} | " + " | ".join(_cell(grid[qs].get(qe, []), key) for qe in q_ends) + " |")
    return "\n".join(lines)


def best_params_table(storage, campaign: str) -> str:
    rows = ["| condition | value (noisy val) | test acc | params |", "|---|---|---|---|"]
    for study in _studies(storage, campaign):
        t = best_trial(study)
        if t is None:
            continue
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(t.params.items()))
        rows.append(f"| {_condition(study.user_attrs)} | {t.value:.3f} | {_cell(t.user_attrs['per_seed'], 'test_acc')} "
                    f"| {params} |")
    return "\n".join(rows)


def main() -> None:
    from dal_search.storage import open_storage

    ap = argparse.ArgumentParser(description="Markdown tables of campaign results")
    ap.add_argument("--storage", required=True)
    ap.add_argument("campaigns", nargs="+")
    args = ap.parse_args()
    storage = open_storage(args.storage)
    for c in args.campaigns:
        print(f"\n## {c}\n")
        print(arm_table(storage, c, "test_acc", "last epoch"))
        print()
        print(arm_table(storage, c, "best_test_acc", "best epoch"))


if __name__ == "__main__":
    main()

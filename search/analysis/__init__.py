"""Analysis: from a campaign's studies to data, figures and findings in words.

    _data.py      studies -> data: best trials, per-seed values, the results behind every comparison
    _figures.py   studies -> plotly figure; the report and the dashboard draw FIGURES (`@figure` adds one)
    _findings.py  studies -> sentences; `findings` says FINDINGS (`@finding` adds one)
    _words.py     what a number is called, shared by figures and findings

Conventions, for every function here:
- A trial's value is the mean over its seeds of the campaign's selection metric (`metric`, noisy validation
  accuracy by default). Best trials, the best baseline and the best q_s x q_e point are chosen on it, so test
  labels are never used for selection unless the campaign selects on a test accuracy.
- What is compared is `key` (test accuracy at the last epoch by default), per seed; a seed fixes the noise draw
  and the split, so comparisons pair by seed (search/stats.py: n, mean difference, 95 % interval, verdict).
- A noise setting (`Cond`) is (dataset, noise kind, noise rate).
- Studies that cannot support a figure raise `NotEnoughTrials` with a sentence saying why; the report and the
  dashboard show that sentence in the figure's place.
"""

from dal_search.search.analysis._data import (ARM_NAMES, LEARNED, MIN_TRIALS, SHAPE_ORDER, ArmResult, Cond,
                                              LearnedResult, NotEnoughTrials, Panel, Point, ShapeResult,
                                              SurfaceResult, arm_data, arm_order, arm_results, best_of, best_trial,
                                              campaign_studies, complete_trials, condition, dal_studies,
                                              has_learned, learned_results, paper_default, param, schedule_data,
                                              schedule_point, seed_map, seed_means, seed_values, selection_metric,
                                              shape_of, shape_results, shape_sort, surface_panels, surface_results,
                                              trial_history)
from dal_search.search.analysis._figures import (FIGURES, arm_comparison, figure, figure_items, figures_of,
                                                 importances, learned_schedules, schedule_comparison,
                                                 sensitivity_surface, trial_curves)
from dal_search.search.analysis._findings import (FINDINGS, arm_findings, finding, findings, learned_findings,
                                                  shape_findings, surface_findings)
from dal_search.search.analysis._words import (KEY_WORDS, SELECTED_ON, SELECTED_ON_PARTIAL, labeller, mean_sd, pct,
                                               rate_label, selected_on)

__all__ = [
    # data
    "ARM_NAMES", "LEARNED", "MIN_TRIALS", "SHAPE_ORDER", "ArmResult", "Cond", "LearnedResult", "NotEnoughTrials",
    "Panel", "Point", "ShapeResult", "SurfaceResult", "arm_data", "arm_order", "arm_results", "best_of",
    "best_trial", "campaign_studies", "complete_trials", "condition", "dal_studies", "has_learned",
    "learned_results", "paper_default", "param", "schedule_data", "schedule_point", "seed_map", "seed_means",
    "seed_values", "selection_metric", "shape_of", "shape_results", "shape_sort", "surface_panels",
    "surface_results", "trial_history",
    # figures
    "FIGURES", "arm_comparison", "figure", "figure_items", "figures_of", "importances", "learned_schedules",
    "schedule_comparison", "sensitivity_surface", "trial_curves",
    # findings
    "FINDINGS", "arm_findings", "finding", "findings", "learned_findings", "shape_findings", "surface_findings",
    # words
    "KEY_WORDS", "SELECTED_ON", "SELECTED_ON_PARTIAL", "labeller", "mean_sd", "pct", "rate_label", "selected_on",
]

"""Exports of best configs, with provenance, that `dal-search train --config FILE` re-runs exactly.

One document per study:

    train_config:  the full TrainConfig of the best trial (first seed), every field spelled out
    provenance:    study, trial number, value, metric, campaign, arm, dataset, noise kind, nominal and
                   realised rate, label hash, seeds and per-seed results, device, wall time, params,
                   completion time, dal-search version, git SHA, library versions

A single study is written as one mapping; a campaign as a YAML multi-document stream (JSON: a list). In a
file of several documents `PATH#STUDY` (or `PATH#INDEX`) picks one.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from objectives.config import ConfigError, TrainConfig
from storage._url import StorageError


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_sha() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def best_document(study: optuna.Study) -> dict[str, Any]:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        raise StorageError(f"study {study.study_name} has no completed trial yet; run its campaign first")
    best = max(complete, key=lambda t: t.value)
    attrs, ua = study.user_attrs, best.user_attrs
    if "train_config" not in ua:
        raise StorageError(f"study {study.study_name} was not made by dal-search (its trials carry no train_config)")
    return {
        "train_config": ua["train_config"],
        "provenance": {
            "study": study.study_name, "trial_number": best.number, "value": best.value,
            "metric": attrs.get("metric"), "direction": "maximize", "campaign": attrs.get("campaign"),
            "arm": attrs.get("arm"), "dataset": attrs.get("dataset"), "noise": attrs.get("noise"),
            "noise_rate": attrs.get("noise_rate"), "realized_rate": ua.get("realized_rate"),
            "label_hash": ua.get("label_hash"), "seeds": ua.get("seeds"), "per_seed": ua.get("per_seed"),
            "test_acc": ua.get("test_acc"), "best_test_acc": ua.get("best_test_acc"),
            "device": ua.get("device"), "wall_time": ua.get("wall_time"), "params": best.params,
            "completed": best.datetime_complete.isoformat() if best.datetime_complete else None,
            "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "dal_search_version": _version("dal-search"), "git_sha": _git_sha(),
            "versions": {"python": platform.python_version(), **{d: _version(d) for d in
                         ("torch", "torchvision", "numpy", "optuna", "scikit-learn")}},
        },
    }


def export_best(storage: optuna.storages.BaseStorage, study_names: list[str] | None, campaign: str | None,
                out_path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Write the best trial of each named study (or of each study of `campaign`) to `out_path`."""
    out = Path(out_path)
    fmt = fmt or {".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(out.suffix.lower())
    if fmt not in ("json", "yaml"):
        raise StorageError(f"export file {out} must end in .yaml, .yml or .json")
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    if study_names is None:
        study_names = [s.study_name for s in summaries if s.user_attrs.get("campaign") == campaign]
        if not study_names:
            raise StorageError(f"no studies of campaign {campaign!r} in this storage ('dal-search studies' lists them)")
    known = {s.study_name for s in summaries}
    for name in study_names:
        if name not in known:
            raise StorageError(f"no study {name!r} in this storage ('dal-search studies' lists them)")
    docs = []
    for name in study_names:
        try:
            docs.append(best_document(optuna.load_study(study_name=name, storage=storage)))
        except StorageError:
            if len(study_names) == 1:
                raise
    if not docs:
        raise StorageError(f"no study of campaign {campaign!r} has a completed trial yet")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w") as fh:
        if fmt == "json":
            json.dump(docs[0] if len(docs) == 1 else docs, fh, indent=2, default=str)
        elif len(docs) == 1:
            yaml.safe_dump(docs[0], fh, sort_keys=False)
        else:
            yaml.safe_dump_all(docs, fh, sort_keys=False)
    tmp.replace(out)  # a crash mid-write never leaves half a file where a good one was
    return docs


def load_train_config(path: str | Path) -> TrainConfig:
    """A TrainConfig from a flat YAML/JSON config or an exported file (`PATH#STUDY` / `PATH#INDEX` picks one
    document of several)."""
    text_path, _, selector = str(path).partition("#")
    p = Path(text_path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        raw = p.read_text()
        docs = json.loads(raw) if p.suffix.lower() == ".json" else list(yaml.safe_load_all(raw))
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} is not valid YAML/JSON: {str(e).splitlines()[0]}") from None
    if isinstance(docs, dict):
        docs = [docs]
    docs = [d for d in docs if d is not None]
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise ConfigError(f"config file {p} must hold a mapping of TrainConfig fields or exported configs")
    if len(docs) > 1 or selector:
        names = [d.get("provenance", {}).get("study", str(i)) for i, d in enumerate(docs)]
        if not selector:
            raise ConfigError(f"{p} holds {len(docs)} configs; pick one as {p}#STUDY, STUDY one of: {', '.join(names)}")
        if selector in names:
            doc = docs[names.index(selector)]
        elif selector.isdigit() and int(selector) < len(docs):
            doc = docs[int(selector)]
        else:
            raise ConfigError(f"{p} has no config {selector!r}; choose one of: {', '.join(names)}")
    else:
        doc = docs[0]
    values = doc.get("train_config", doc)
    if not isinstance(values, dict):
        raise ConfigError(f"config file {p}: train_config must be a mapping")
    return TrainConfig.from_dict(values)


def study_summaries(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """One row per dal-search study: its condition, trial counts by state, best value and trial."""
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = s.user_attrs
        if "campaign" not in attrs:
            continue
        sid = storage.get_study_id_from_name(s.study_name)
        trials = storage.get_all_trials(sid, deepcopy=False)
        counts = {st: 0 for st in ("complete", "running", "pruned", "failed", "waiting")}
        best = None
        for t in trials:
            key = {TrialState.COMPLETE: "complete", TrialState.RUNNING: "running", TrialState.PRUNED: "pruned",
                   TrialState.FAIL: "failed", TrialState.WAITING: "waiting"}[t.state]
            counts[key] += 1
            if t.state == TrialState.COMPLETE and (best is None or t.value > best.value):
                best = t
        rows.append({"name": s.study_name, "campaign": attrs.get("campaign"), "arm": attrs.get("arm"),
                     "dataset": attrs.get("dataset"), "noise": attrs.get("noise"),
                     "noise_rate": attrs.get("noise_rate"), **counts, "budget": attrs.get("budget"),
                     "best_value": best.value if best else None, "best_trial": best.number if best else None,
                     "best_test_acc": best.user_attrs.get("test_acc") if best else None})
    return rows

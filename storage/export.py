"""Best configs out of a storage, with provenance, as files that `dal-search train --config FILE` re-runs.

One document per study:

    train_config:  the best trial's full TrainConfig (its first seed), every field spelled out
    provenance:    study, trial_number, value, metric, direction, campaign, arm, dataset, noise, noise_rate
                   (nominal), realized_rate, label_hash, seeds, per_seed, test_acc / best_test_acc, device,
                   wall_time, params, retry_of, [pbt], completed, exported, dal_search_version, git_sha,
                   git_dirty, versions (python, torch, torchvision, numpy, optuna, scikit-learn)

A schedule learned by Population Based Training (`dal-search tune --scheduler pbt`) is exported as it is
stored: `schedule: explicit` with its per-epoch `q_schedule` and `lam_schedule` in train_config, and `pbt`
(the q and lambda its lineage started from, and where it copied another member and was perturbed) in the
provenance.

git_sha is the commit of the code's own checkout, or "unknown" when the code is not in one (an installed
wheel, an sdist or a tarball, or no git on the PATH); git_dirty is then null.

One study is written as one mapping. Several (a campaign) are a YAML multi-document stream (`---` between
studies) or a JSON list, in the storage's study order; `load_train_config("best.yaml#STUDY")` (or `#INDEX`)
picks one. A campaign's studies without a completed trial are left out with a warning; a study named
explicitly without one is an error. Ties on the best value go to whichever trial the storage returns first.

`study_summaries` gives the rows of `dal-search studies`: on SQL storages the trial counts come from one
GROUP BY query and the best trial from an indexed ORDER BY, so a study's user attrs (training histories) are
never loaded for the table; other storages count from their in-memory trial lists.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from dal_search.objectives.config import ConfigError, TrainConfig
from dal_search.storage._errors import StorageError, first_line

log = logging.getLogger("dal-search.storage")
LIBRARIES = ("torch", "torchvision", "numpy", "optuna", "scikit-learn")
_STATES = {TrialState.COMPLETE: "complete", TrialState.RUNNING: "running", TrialState.PRUNED: "pruned",
           TrialState.FAIL: "failed", TrialState.WAITING: "waiting"}


# ---------------------------------------------------------------- provenance helpers

def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


UNKNOWN_SHA = "unknown"


def _git(root: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None


def _git_state(root: Path | None = None) -> tuple[str, bool | None]:
    """(HEAD's SHA, whether tracked files differ from it) of the checkout holding `root` (default: this code's,
    not the caller's cwd), or ("unknown", None) outside a git checkout or without git."""
    root = (Path(__file__).resolve().parents[1] if root is None else root).resolve()
    head = _git(root, "rev-parse", "--show-toplevel", "HEAD")
    lines = head.stdout.splitlines() if head is not None and head.returncode == 0 else []
    # The code must BE the checkout: an sdist unpacked inside some other repository is not that repository.
    if len(lines) != 2 or Path(lines[0]).resolve() != root:
        return UNKNOWN_SHA, None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    dirty = bool(status.stdout.strip()) if status is not None and status.returncode == 0 else None
    return lines[1], dirty


def _backend(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage under Optuna's trial cache (study._storage wraps RDBStorage in one)."""
    return getattr(storage, "_backend", storage) if type(storage).__name__ == "_CachedStorage" else storage


def _studies(storage: optuna.storages.BaseStorage) -> list[Any]:
    """FrozenStudy objects: names, directions and attrs only (optuna.get_all_study_summaries would also load
    every trial of every study)."""
    return storage.get_all_studies()


def _best(storage: optuna.storages.BaseStorage, study_id: int) -> FrozenTrial | None:
    try:
        return storage.get_best_trial(study_id)
    except ValueError:  # "no trials are completed yet"
        return None


# ---------------------------------------------------------------- export

def best_document(storage: optuna.storages.BaseStorage, frozen_study: Any,
                  code: tuple[str, bool | None] | None = None) -> dict[str, Any]:
    """The export document of one study (a FrozenStudy from storage.get_all_studies())."""
    name = frozen_study.study_name
    if len(frozen_study.directions) != 1:
        raise StorageError(f"study {name} has several objectives; dal-search exports single-objective studies")
    best = _best(storage, frozen_study._study_id)
    if best is None:
        raise StorageError(f"study {name} has no completed trial yet; run or join its campaign first")
    attrs, ua = frozen_study.user_attrs, best.user_attrs
    if "train_config" not in ua:
        raise StorageError(f"study {name} trial {best.number} carries no train_config; "
                           f"it was not made by dal-search")
    try:
        train_config = TrainConfig.from_dict(ua["train_config"]).to_dict()
    except ConfigError as e:
        raise StorageError(f"study {name} trial {best.number} has an invalid train_config: {e}") from None
    sha, dirty = code if code is not None else _git_state()
    direction = "maximize" if frozen_study.directions[0] == StudyDirection.MAXIMIZE else "minimize"
    return {
        "train_config": train_config,
        "provenance": {
            "study": name, "trial_number": best.number, "value": best.value,
            "metric": attrs.get("metric", "val_acc"), "direction": direction,
            "campaign": attrs.get("campaign"), "arm": attrs.get("arm"), "dataset": attrs.get("dataset"),
            "noise": attrs.get("noise"), "noise_rate": attrs.get("noise_rate"),
            "realized_rate": ua.get("realized_rate"), "label_hash": ua.get("label_hash"),
            "seeds": ua.get("seeds", attrs.get("seeds")), "per_seed": ua.get("per_seed"),
            "test_acc": ua.get("test_acc"), "best_test_acc": ua.get("best_test_acc"),
            "device": ua.get("device"), "wall_time": ua.get("wall_time"), "params": dict(best.params),
            "retry_of": best.system_attrs.get("failed_trial"),
            **({"pbt": ua["pbt"]} if "pbt" in ua else {}),  # a learned schedule: how its lineage was perturbed
            "completed": best.datetime_complete.isoformat() if best.datetime_complete else None,
            "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "dal_search_version": _version("dal-search"), "git_sha": sha, "git_dirty": dirty,
            "versions": {"python": platform.python_version(), **{d: _version(d) for d in LIBRARIES}},
        },
    }


def export_best(storage: optuna.storages.BaseStorage, study_names: list[str] | None, campaign: str | None,
                out_path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Write the best COMPLETE trial of each named study, or of each study of `campaign`, to `out_path`.

    `fmt` is "yaml" or "json"; None takes it from the suffix (.yaml, .yml, .json). Returns the documents.
    Nothing is written when any check fails; the file is replaced atomically when all pass.
    """
    out = Path(out_path)
    fmt = (fmt or {".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(out.suffix.lower(), "")).lower()
    if fmt not in ("json", "yaml"):
        raise StorageError(f"export file {out} must end in .yaml, .yml or .json (or pass the format)")
    if not study_names and not campaign:
        raise StorageError("export needs study names or a campaign ('dal-search studies' lists them)")
    storage = _backend(storage)
    studies = _studies(storage)
    code = _git_state()
    docs = []
    if study_names:
        by_name = {s.study_name: s for s in studies}
        for name in study_names:
            if name not in by_name:
                raise StorageError(f"no study {name!r} in this storage ('dal-search studies' lists them)")
            docs.append(best_document(storage, by_name[name], code))
    else:
        chosen = [s for s in studies if s.user_attrs.get("campaign") == campaign]
        if not chosen:
            raise StorageError(f"no studies of campaign {campaign!r} in this storage ('dal-search studies' lists them)")
        for s in chosen:
            if _best(storage, s._study_id) is None:
                log.warning("study %s has no completed trial yet; left out of the export", s.study_name)
                continue
            docs.append(best_document(storage, s, code))
        if not docs:
            raise StorageError(f"no study of campaign {campaign!r} has a completed trial yet; run it first")
    _write(out, fmt, docs)
    return docs


def _write(out: Path, fmt: str, docs: list[dict[str, Any]]) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "w") as fh:
            if fmt == "json":
                json.dump(docs[0] if len(docs) == 1 else docs, fh, indent=2, default=str)
                fh.write("\n")
            elif len(docs) == 1:
                yaml.safe_dump(docs[0], fh, sort_keys=False)
            else:
                yaml.safe_dump_all(docs, fh, sort_keys=False)
        tmp.replace(out)  # a crash mid-write never leaves half a file where a good one was
    except OSError as e:
        raise StorageError(f"cannot write the export {out}: {e.strerror or first_line(e)}") from None


# ---------------------------------------------------------------- load back

def load_train_config(path: str | Path) -> TrainConfig:
    """A TrainConfig from a flat YAML/JSON config file or from an export.

    An export of several studies needs a selector: `PATH#STUDY` or `PATH#INDEX` (0-based); without one the
    error lists the studies. Errors are ConfigError, one line.
    """
    text = str(path)
    p, selector = Path(text), ""
    if not p.is_file() and "#" in text:
        head, _, selector = text.rpartition("#")
        p = Path(head)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        raw = p.read_text()
        docs: Any = json.loads(raw) if p.suffix.lower() == ".json" else list(yaml.safe_load_all(raw))
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} is not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}: "
                          f"{first_line(e)}") from None
    if isinstance(docs, dict):
        docs = [docs]
    docs = [d for d in (docs if isinstance(docs, list) else [docs]) if d is not None]
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise ConfigError(f"config file {p} must hold a mapping of TrainConfig fields, or exported configs")
    names = [str((d.get("provenance") or {}).get("study", i)) for i, d in enumerate(docs)]
    if selector:
        if selector in names:
            doc = docs[names.index(selector)]
        elif selector.isdigit() and int(selector) < len(docs):
            doc = docs[int(selector)]
        else:
            raise ConfigError(f"{p} has no config {selector!r}; choose one of: {', '.join(names)} "
                              f"(or an index 0..{len(docs) - 1})")
    elif len(docs) > 1:
        raise ConfigError(f"{p} holds {len(docs)} configs; pick one as {p}#STUDY, STUDY one of: {', '.join(names)}")
    else:
        doc = docs[0]
    if "train_config" in doc:
        values = doc["train_config"]
    elif "provenance" in doc:
        raise ConfigError(f"{p} is an export without its train_config; export it again")
    else:
        values = doc
    if not isinstance(values, dict):
        raise ConfigError(f"config file {p}: train_config must be a mapping of TrainConfig fields")
    try:
        return TrainConfig.from_dict(values)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


# ---------------------------------------------------------------- the studies table

def study_summaries(storage: optuna.storages.BaseStorage, campaign: str | None = None) -> list[dict[str, Any]]:
    """One row per dal-search study (those with a campaign user attr), in the storage's order: its condition,
    trial counts by state, budget, best value, best trial number and that trial's test accuracy."""
    storage = _backend(storage)
    studies = [s for s in _studies(storage) if "campaign" in s.user_attrs
               and (campaign is None or s.user_attrs["campaign"] == campaign)]
    counts = _sql_counts(storage)
    rows = []
    for s in studies:
        n = {key: 0 for key in _STATES.values()}
        if counts is not None:
            for state, k in counts.get(s._study_id, {}).items():
                n[_STATES[state]] += k
        else:
            for t in storage.get_all_trials(s._study_id, deepcopy=False):
                n[_STATES[t.state]] += 1
        best = _best(storage, s._study_id) if n["complete"] and len(s.directions) == 1 else None
        attrs = s.user_attrs
        rows.append({"name": s.study_name, "campaign": attrs.get("campaign"), "arm": attrs.get("arm"),
                     "dataset": attrs.get("dataset"), "noise": attrs.get("noise"),
                     "noise_rate": attrs.get("noise_rate"), **n, "budget": attrs.get("budget"),
                     "best_value": best.value if best else None, "best_trial": best.number if best else None,
                     "best_test_acc": best.user_attrs.get("test_acc") if best else None})
    return rows


def _sql_counts(storage: optuna.storages.BaseStorage) -> dict[int, dict[TrialState, int]] | None:
    """{study_id: {state: n}} from one GROUP BY on an RDBStorage; None for other storages."""
    if not isinstance(storage, optuna.storages.RDBStorage):
        return None
    from sqlalchemy import func, select

    from optuna.storages._rdb import models

    trials = models.TrialModel
    query = select(trials.study_id, trials.state, func.count()).group_by(trials.study_id, trials.state)
    with storage.engine.connect() as conn:
        rows = conn.execute(query).all()
    out: dict[int, dict[TrialState, int]] = {}
    for study_id, state, k in rows:
        out.setdefault(study_id, {})[TrialState[state] if isinstance(state, str) else TrialState(state)] = k
    return out

"""The search room's Python face: run a campaign and export its best configs without the CLI.

    >>> from dal_search import run_campaign, export_best
    >>> rows = run_campaign("quick", storage="sqlite:///runs/quick.db")            # doctest: +SKIP
    >>> export_best("runs/best.yaml", campaign="quick", storage="sqlite:///runs/quick.db")  # doctest: +SKIP

Errors a user can cause (a bad campaign, storage URL, data folder) raise the same one-line exceptions the
CLI prints: CampaignError, StorageError, ConfigError, DataError (all ValueErrors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import optuna

from dal_search.search.campaign import Campaign, create_studies, load_campaign, parse_campaign


def _campaign(campaign: str | Path | Mapping[str, Any] | Campaign) -> Campaign:
    if isinstance(campaign, Campaign):
        return campaign
    if isinstance(campaign, Mapping):
        return parse_campaign(dict(campaign), source="campaign")
    return load_campaign(campaign)


def _storage(storage: str | optuna.storages.BaseStorage | None, *, for_workers: bool = True):
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    from dal_search.storage import open_storage

    # workers take the heartbeat settings from the environment, as every dal-search worker does
    return open_storage(storage, for_workers=for_workers)


def run_campaign(campaign: str | Path | Mapping[str, Any] | Campaign,
                 storage: str | optuna.storages.BaseStorage | None = None, *, workers: int = 1,
                 threads: int | None = None, seed: int | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Create the campaign's studies in `storage` (idempotent) and run their remaining trials; return one row
    per study (as `dal-search studies --json`: condition, trial counts, best value and its test accuracy).

    `campaign` is a YAML path, a built-in name ("quick", "paper"), a mapping with the YAML's keys, or a
    Campaign. `storage` is a URL (default: $DAL_SEARCH_STORAGE or sqlite:///runs/dal-search.db) or an
    Optuna storage. `workers=1` trains in this process, so losses, shapes or datasets you registered in
    this session are usable; `workers > 1` starts `python -m dal_search worker` processes, which need a
    storage URL and see only what is importable by name. Running it again resumes: completed trials stay.
    """
    from dal_search.search.runner import run_here, run_processes
    from dal_search.search.worker import default_threads
    from dal_search.storage.export import study_summaries

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    camp = _campaign(campaign)
    store = _storage(storage)
    names = create_studies(store, camp)
    threads = threads or default_threads(workers)
    if workers == 1:
        run_here(store, camp.name, names, threads=threads, seed=seed, progress=progress)
    else:
        if not isinstance(storage, (str, type(None))):
            raise ValueError("workers > 1 needs the storage as a URL (worker processes open it themselves)")
        from dal_search.storage import normalise_url

        run_processes(normalise_url(storage), store, camp.name, names, workers, threads=threads, seed=seed,
                      progress=progress)
    return [r for r in study_summaries(store) if r["campaign"] == camp.name]


def export_best(out: str | Path, *, campaign: str | None = None, study: str | None = None,
                storage: str | optuna.storages.BaseStorage | None = None) -> list[dict[str, Any]]:
    """Write the best trial of `study`, or of every study of `campaign`, to `out` (.yaml, .yml or .json) with
    its provenance; `dal-search train --config OUT[#STUDY]` (or `load_train_config`) re-runs it. Returns the
    documents written. Reads the storage only: a mistyped path is an error, never a new empty database."""
    from dal_search.storage.export import export_best as _export

    if (campaign is None) == (study is None):
        raise ValueError("export_best needs exactly one of campaign= or study=")
    return _export(_storage(storage, for_workers=False), [study] if study else None, campaign, out)


__all__ = ["run_campaign", "export_best"]

"""optuna-dashboard over a dal-search storage, bound to 127.0.0.1 unless told otherwise.

The figures of `dal-search report` (pushed with `search.report.push_to_dashboard`) appear on each study's
page in the dashboard, beside its own history, importance and intermediate-value plots.
"""

from __future__ import annotations


def run_dashboard(storage_url: str | None, host: str = "127.0.0.1", port: int = 8080) -> None:
    from optuna_dashboard import run_server

    from dal_search.storage import open_storage

    # A reader: no heartbeats, and a missing SQLite or journal file is an error, not a new empty store.
    run_server(open_storage(storage_url, heartbeat_interval=None, for_workers=False), host=host, port=port)

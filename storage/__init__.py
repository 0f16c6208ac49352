"""Where results live: storage URLs -> Optuna storages (with heartbeats), the gRPC proxy, exports of best configs.

    open_storage(url, *, heartbeat_interval=<env>, grace_period=<env>, for_workers=True) -> BaseStorage
    heartbeat_settings() -> (interval, grace)         DAL_SEARCH_HEARTBEAT / DAL_SEARCH_GRACE (60 s / 2 x interval)
    describe_storage(url) -> str                      the URL with its password masked, for logs
    run_storage_proxy(url, host="127.0.0.1", port=13000)
    storage.export: export_best, load_train_config, study_summaries
    storage.attrs: write_trial_results (a trial's results in one transaction; "dal:" keys as system attrs)
    StorageError                                       one line naming the fix (a ValueError)
"""

from dal_search.storage._errors import StorageError
from dal_search.storage._proxy import run_storage_proxy
from dal_search.storage._url import (ACCEPTED, DEFAULT_URL, MAX_RETRY, describe_storage, heartbeat_settings,
                                     normalise_url, open_storage)

__all__ = ["open_storage", "heartbeat_settings", "describe_storage", "normalise_url", "run_storage_proxy",
           "StorageError", "DEFAULT_URL", "ACCEPTED", "MAX_RETRY"]

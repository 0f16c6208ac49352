"""Where results live: storage URLs -> Optuna storages, the gRPC proxy, exports of best configs."""

from storage._proxy import run_storage_proxy
from storage._url import DEFAULT_URL, StorageError, describe_storage, normalise_url, open_storage

__all__ = ["open_storage", "describe_storage", "normalise_url", "run_storage_proxy", "StorageError", "DEFAULT_URL"]

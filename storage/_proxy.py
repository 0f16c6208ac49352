"""Optuna's gRPC storage proxy in front of any storage, for pools too large for direct database connections:
thousands of workers talk gRPC to a few proxies, each holding one small connection pool and a cache."""

from __future__ import annotations

from storage._url import open_storage


def run_storage_proxy(url: str | None, host: str = "127.0.0.1", port: int = 13000) -> None:
    """Serve the storage of `url` on host:port until interrupted (clients use grpc://host:port)."""
    from optuna.storages import run_grpc_proxy_server

    # The proxy's own storage runs no heartbeats: workers behind it record theirs through the proxy.
    run_grpc_proxy_server(open_storage(url, heartbeat_interval=None), host=host, port=port)

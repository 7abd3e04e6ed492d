"""Moorage app proxy: serves every endpoint at a stable URL, checks tokens, balances, streams
(docs/architecture.md, "App proxy" and "App proxy data path").

Public API::

    from appproxy.config import ProxyConfig, load_proxy_config   # load_config(ProxyConfig, path, "MOORAGE_APPPROXY")
    from appproxy.server import AppProxy

    proxy = AppProxy(config, store)   # store: common.store.KVStore (MemoryStore embedded, EtcdStore standalone)
    await proxy.start()               # returns once the current route tables are served (or after a timeout)
    ...
    await proxy.stop()                # idempotent; does not close the store

Standalone: ``python -m appproxy --config appproxy.toml [--workers N]`` (etcd from ``[etcd]``; SIGTERM stops
cleanly; N worker processes share the ports with SO_REUSEPORT, worker k's admin listener is on admin_port + k).

Modules:

* :mod:`appproxy.config` — ``ProxyConfig``: ``[proxy]`` limits and timeouts, ``[outlier]``, ``[etcd]``, ``[secrets]``.
* :mod:`appproxy.routing` — ``RouteCache``: watches ``ROUTES_PREFIX``, keeps ``endpoint_id → RouteTable``.
* :mod:`appproxy.frontend` — ``PortFrontend`` (one port per endpoint) or ``WildcardFrontend`` (one port, endpoint
  from the Host header ``<subdomain><wildcard_domain>``).
* :mod:`appproxy.auth` — endpoint token check (Bearer / BackendAI JWT, revocation), 401 problem documents.
* :mod:`appproxy.balancer` — pure route choice: traffic_ratio weights, power of two choices, panic threshold.
* :mod:`appproxy.outlier` — passive ejection after consecutive failures, with doubling back-off.
* :mod:`appproxy.forward` — ``Forwarder``: header hygiene, retries before the first byte, streaming relay.
* :mod:`appproxy.metrics` — ``ProxyMetrics``: plain counters on the hot path, Prometheus families at scrape time.
* :mod:`appproxy.scrape` — ``ReplicaScraper``: each healthy replica's ``/metrics``, aggregated per endpoint.
* :mod:`appproxy.admin` — admin listener: ``/metrics`` (open) and ``GET /endpoints/{id}/metrics`` (signed).
* :mod:`appproxy.hold` — scale from zero: signal demand and hold requests while an endpoint has no route.
* :mod:`appproxy.registration` — the leased ``PROXIES_PREFIX`` key through which the manager finds the admin API.
* :mod:`appproxy.errors` — the proxy's own RFC 7807 errors (404, 405, 431, 413, 502, 503 + Retry-After, 504).
* :mod:`appproxy.server` — ``AppProxy``: wiring and the per-request pipeline.
"""

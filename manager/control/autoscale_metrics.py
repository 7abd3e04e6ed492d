"""Metric values of autoscaling rules from what was gathered: pure functions (the I/O is in :mod:`.autoscale`).

Sources and names (aggregation is stated explicitly; docs/operations.md, Autoscaling):

* ``kernel`` — the last utilisation sample the agents reported per kernel (``sessions.stats``): ``cpu_util``
  (percent of one core, 200 = two busy cores) and ``mem_util`` (percent of the replica's memory limit; ``mem``
  is accepted as Backend.AI's name for it), or any other numeric key an agent reports. **Average over the
  endpoint's running kernels** whose sample is fresh; no such kernel → unknown.
* ``proxy`` — what the app proxies saw, **summed over all proxies** (each sees its share of the traffic), then
  **divided by the serving replicas** (healthy routes, at least 1): ``rps`` (alias ``requests_per_second``:
  responses per second, per replica) and ``in_flight`` (alias ``in_flight_requests``: requests being handled,
  held ones included, per replica). ``rps_total`` and ``in_flight_total`` are the undivided sums. No proxy
  answered → unknown (never "zero load", which would scale in on a monitoring outage).
* ``inference_framework`` — engine metrics each proxy scrapes from the replicas' ``/metrics`` (e.g.
  ``vllm:num_requests_running``; ``:`` and ``_`` spellings are both tried). Every proxy scrapes every replica,
  so values are merged **per replica** across proxies (the freshest report wins), then **averaged over the
  replicas** that reported the metric (Backend.AI divides the endpoint's sum by the route count).

  The gateway's priority queue (docs/gateway.md) is part of ``proxy``: ``queue_length`` (alias ``queued``:
  gateway requests waiting for a slot of a pool the endpoint serves, **summed over proxies**, not divided),
  ``queue_length_per_replica`` (the same divided by the serving replicas) and ``queue_wait`` (seconds the oldest
  waiting request has waited, **the maximum over proxies**). "Scale out when queue_length > 5" is a rule on
  ``proxy`` / ``queue_length``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

KERNEL_ALIASES = {"mem": "mem_util", "cpu": "cpu_util"}
# name → (field of the proxy's report, aggregation over proxies: per_replica = sum / serving replicas, sum, max)
PROXY_METRICS: dict[str, tuple[str, str]] = {
    "rps": ("rps", "per_replica"),
    "requests_per_second": ("rps", "per_replica"),
    "rps_total": ("rps", "sum"),
    "in_flight": ("in_flight", "per_replica"),
    "in_flight_requests": ("in_flight", "per_replica"),
    "in_flight_total": ("in_flight", "sum"),
    "queue_length": ("queued", "sum"),
    "queued": ("queued", "sum"),
    "queue_length_per_replica": ("queued", "per_replica"),
    "queue_wait": ("queue_wait", "max"),
}
SOURCES = frozenset({"kernel", "proxy", "inference_framework"})


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def kernel_metric(name: str, samples: Iterable[Mapping[str, Any] | None], now: float,
                  max_age: float) -> float | None:
    """Average of ``name`` over the fresh samples: ``reported_at`` (the manager's clock, set when the heartbeat
    was applied; else the agent's ``collected_at``) within ``max_age`` of ``now``."""
    key = KERNEL_ALIASES.get(name, name)
    values = []
    for sample in samples:
        if not sample:
            continue
        at = _number(sample.get("reported_at", sample.get("collected_at")))
        if at is None or now - at > max_age:
            continue
        value = _number(sample.get(key))
        if value is not None:
            values.append(value)
    return sum(values) / len(values) if values else None


def proxy_metric(name: str, reports: Sequence[Mapping[str, Any]], serving_replicas: int) -> float | None:
    """A proxy-observed load figure (see the module docstring); None for an unknown name or no report."""
    spec = PROXY_METRICS.get(name)
    if spec is None or not reports:
        return None
    field, aggregation = spec
    values = [_number((report.get("proxy") or {}).get(field)) or 0.0 for report in reports]
    if aggregation == "max":
        return max(values)
    total = sum(values)
    return total / max(1, serving_replicas) if aggregation == "per_replica" else total


def _metric_entry(metrics: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    for candidate in (name, name.replace(":", "_"), name.replace("_", ":", 1)):
        entry = metrics.get(candidate)
        if isinstance(entry, Mapping):
            return entry
    return None


def inference_metric(name: str, reports: Sequence[Mapping[str, Any]]) -> float | None:
    """Average per replica of an engine metric, replicas merged across proxies (freshest report wins)."""
    per_route: dict[str, tuple[float, float]] = {}  # route → (collected_at, value)
    for report in reports:
        entry = _metric_entry(report.get("metrics") or {}, name)
        if entry is None:
            continue
        at = _number(report.get("collected_at")) or 0.0
        for route, raw in (entry.get("per_route") or {}).items():
            value = _number(raw)
            if value is not None and (route not in per_route or at > per_route[route][0]):
                per_route[str(route)] = (at, value)
    if not per_route:
        return None
    return sum(v for _, v in per_route.values()) / len(per_route)


def observe(source: str, name: str, *, kernel_samples: Iterable[Mapping[str, Any] | None],
            reports: Sequence[Mapping[str, Any]], serving_replicas: int, now: float,
            kernel_max_age: float) -> float | None:
    """The value a rule of ``source``/``name`` sees; None when it cannot be known."""
    if source == "kernel":
        return kernel_metric(name, kernel_samples, now, kernel_max_age)
    if source == "proxy":
        return proxy_metric(name, reports, serving_replicas)
    if source == "inference_framework":
        return inference_metric(name, reports)
    return None


__all__ = ["KERNEL_ALIASES", "PROXY_METRICS", "SOURCES", "inference_metric", "kernel_metric", "observe",
           "proxy_metric"]

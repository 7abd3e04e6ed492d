"""The proxy's own metrics: plain counters on the hot path, Prometheus families built only when scraped.

The request path only touches dicts (``Counter[...] += 1`` and a ``bisect`` into the histogram buckets): no
locks, no label-lookup objects, no allocation beyond the key tuples. :class:`ProxyCollector` turns the counters
into Prometheus families at scrape time, on a :class:`prometheus_client.CollectorRegistry` owned by one proxy
(never the global registry: an embedded proxy lives next to other components, and tests run several).

Labels are strings: ``endpoint`` (id), ``route`` (id, ``"-"`` when the request never reached a route) and
``status_class`` (``"2xx"`` … ``"5xx"``; 499 = the client left first). Durations are float seconds
(Backend.AI truncates them to whole seconds). Series of endpoints that are gone are dropped by :meth:`forget`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

NO_ROUTE = "-"
PREFIX = "moorage_appproxy_"
# Request duration buckets (seconds): proxy errors answer in ~1 ms, chat completions take seconds to minutes.
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Seconds a gateway request waited in the priority queue (0 = served at once).
QUEUE_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_STATUS_CLASS = {c: f"{c}xx" for c in range(1, 6)}


def status_class(status: int) -> str:
    return _STATUS_CLASS.get(status // 100) or f"{status // 100}xx"


class ProxyMetrics:
    def __init__(self) -> None:
        # (endpoint, route, status class) → responses sent to clients (including the proxy's own errors)
        self.requests: Counter[tuple[str, str, str]] = Counter()
        # (endpoint, route, kind) → upstream failures; kind: connect | timeout | reset | 5xx | stream | protocol
        self.upstream_failures: Counter[tuple[str, str, str]] = Counter()
        # (endpoint, problem slug) → requests the proxy answered itself with an error (401, 413, 503, 502, ...)
        self.rejections: Counter[tuple[str, str]] = Counter()
        self.retries: Counter[str] = Counter()  # endpoint → attempts after the first
        self.ejections: Counter[tuple[str, str]] = Counter()  # (endpoint, route)
        self.client_disconnects: Counter[str] = Counter()  # endpoint → clients gone before the end
        self.in_flight: Counter[str] = Counter()  # endpoint → requests being handled now
        self.route_in_flight: Counter[tuple[str, str]] = Counter()  # (endpoint, route) → being forwarded now
        self.held: Counter[str] = Counter()  # endpoint → requests held for a route now (scale from zero)
        # (endpoint, route) → [per-bucket counts (not cumulative), +Inf last] and the sum of seconds
        self.durations: dict[tuple[str, str], list[int]] = {}
        self.duration_sum: defaultdict[tuple[str, str], float] = defaultdict(float)  # a Counter holds ints
        # the gateway (docs/gateway.md): (model, status class) → answers; limit → 429s; Redis failures
        self.gateway_requests: Counter[tuple[str, str]] = Counter()
        self.gateway_rate_limited: Counter[str] = Counter()
        self.gateway_ratelimit_errors: Counter[str] = Counter()  # "" → count (a labelless counter)
        self.gateway_usage_dropped: Counter[str] = Counter()  # "" → usage records dropped (manager unreachable)
        # the gateway's priority queue: model → requests waiting now; (model, full|timeout) → refused;
        # model → [per-bucket counts of the seconds waited, +Inf last] and their sum
        self.gateway_queued: Counter[str] = Counter()
        self.gateway_queue_refused: Counter[tuple[str, str]] = Counter()
        self.gateway_queue_wait: dict[str, list[int]] = {}
        self.gateway_queue_wait_sum: defaultdict[str, float] = defaultdict(float)
        # (endpoint, kind) → tokens of the answers metered by the gateway; kind: prompt | completion
        self.tokens: Counter[tuple[str, str]] = Counter()

    # -- hot path --------------------------------------------------------------------------------------------
    def request_started(self, endpoint: str) -> None:
        self.in_flight[endpoint] += 1

    def request_finished(self, endpoint: str, route: str, status: int, duration: float) -> None:
        in_flight = self.in_flight
        if in_flight[endpoint] <= 1:
            del in_flight[endpoint]
        else:
            in_flight[endpoint] -= 1
        key = (endpoint, route)
        self.requests[(endpoint, route, status_class(status))] += 1
        buckets = self.durations.get(key)
        if buckets is None:
            buckets = self.durations[key] = [0] * (len(BUCKETS) + 1)
        buckets[bisect_left(BUCKETS, duration)] += 1
        self.duration_sum[key] += duration

    def queue_waited(self, model: str, seconds: float) -> None:
        buckets = self.gateway_queue_wait.get(model)
        if buckets is None:
            buckets = self.gateway_queue_wait[model] = [0] * (len(QUEUE_BUCKETS) + 1)
        buckets[bisect_left(QUEUE_BUCKETS, seconds)] += 1
        self.gateway_queue_wait_sum[model] += seconds

    def route_started(self, endpoint: str, route: str) -> None:
        self.route_in_flight[(endpoint, route)] += 1

    def route_finished(self, endpoint: str, route: str) -> None:
        key = (endpoint, route)
        if self.route_in_flight[key] <= 1:
            del self.route_in_flight[key]
        else:
            self.route_in_flight[key] -= 1

    def tokens_counted(self, endpoint: str, prompt: int, completion: int) -> None:
        """Tokens of one metered answer (the gateway's usage record: the replica's numbers or its estimate)."""
        if prompt:
            self.tokens[(endpoint, "prompt")] += prompt
        if completion:
            self.tokens[(endpoint, "completion")] += completion

    # -- housekeeping ----------------------------------------------------------------------------------------
    def requests_by_endpoint(self) -> Counter[str]:
        """Responses sent so far per endpoint (the rate of this is the JSON API's ``rps``)."""
        total: Counter[str] = Counter()
        for (endpoint, _, _), n in self.requests.items():
            total[endpoint] += n
        return total

    def endpoint_latency(self, endpoint: str) -> dict[str, Any]:
        """The endpoint's request durations over all its routes: ``bounds`` (seconds, the ``BUCKETS``), ``counts``
        per bucket (not cumulative; the last is above the highest bound) and ``sum`` (seconds)."""
        counts = [0] * (len(BUCKETS) + 1)
        total = 0.0
        for key, buckets in list(self.durations.items()):
            if key[0] == endpoint:
                counts = [a + b for a, b in zip(counts, buckets, strict=True)]
                total += self.duration_sum.get(key, 0.0)
        return {"bounds": list(BUCKETS), "counts": counts, "sum": round(total, 6)}

    def endpoint_tokens(self, endpoint: str) -> dict[str, int]:
        return {kind: self.tokens.get((endpoint, kind), 0) for kind in ("prompt", "completion")}

    def forget(self, endpoints: Collection[str]) -> None:
        """Drop the series of endpoints not in ``endpoints`` (gone endpoints; nothing of theirs in flight)."""
        keep = set(endpoints) | set(self.in_flight)
        for name in ("requests", "upstream_failures", "rejections", "retries", "ejections", "client_disconnects",
                     "route_in_flight", "durations", "duration_sum", "tokens"):
            series: dict[Any, Any] = getattr(self, name)
            for key in [k for k in series if (k[0] if isinstance(k, tuple) else k) not in keep]:
                del series[key]

    def snapshot(self) -> dict[str, Any]:
        """A JSON-friendly copy (for a status page or tests)."""
        def flat(counter: dict[Any, Any]) -> dict[str, Any]:
            return {"/".join(k) if isinstance(k, tuple) else str(k): v for k, v in counter.items()}

        return {name: flat(getattr(self, name)) for name in (
            "requests", "upstream_failures", "rejections", "retries", "ejections", "client_disconnects",
            "in_flight", "route_in_flight", "held", "duration_sum")}


class ProxyCollector:
    """Prometheus view of one :class:`ProxyMetrics`, built at scrape time."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m

        def family(cls: Any, name: str, doc: str, labels: list[str], series: Mapping[Any, float]) -> Metric:
            fam: Any = cls(PREFIX + name, doc, labels=labels)  # a *MetricFamily: add_metric differs by kind
            for key, value in list(series.items()):
                fam.add_metric(list(key) if isinstance(key, tuple) else [key], value)
            metric: Metric = fam
            return metric

        yield family(CounterMetricFamily, "requests", "Responses sent to clients, by status class.",
                     ["endpoint", "route", "status_class"], m.requests)
        yield _histogram("request_duration_seconds", "Time from request received to response finished "
                         "(float seconds).", ["endpoint", "route"], BUCKETS, m.durations, m.duration_sum)
        yield family(CounterMetricFamily, "tokens", "Tokens of the answers the gateway metered, by kind (prompt, "
                     "completion).", ["endpoint", "kind"], m.tokens)
        yield family(GaugeMetricFamily, "in_flight_requests", "Requests being handled now.", ["endpoint"],
                     m.in_flight)
        yield family(GaugeMetricFamily, "held_requests", "Requests waiting for the endpoint to get a route "
                     "(scale from zero).", ["endpoint"], m.held)
        yield family(GaugeMetricFamily, "route_in_flight_requests", "Requests being forwarded to a route now.",
                     ["endpoint", "route"], m.route_in_flight)
        yield family(CounterMetricFamily, "upstream_failures", "Connection failures, timeouts, 5xx and broken "
                     "streams of routes.", ["endpoint", "route", "kind"], m.upstream_failures)
        yield family(CounterMetricFamily, "ejections", "Passive outlier ejections of routes.",
                     ["endpoint", "route"], m.ejections)
        yield family(CounterMetricFamily, "retries", "Attempts on another route before the first byte.",
                     ["endpoint"], m.retries)
        yield family(CounterMetricFamily, "rejections", "Requests the proxy answered itself with an error.",
                     ["endpoint", "reason"], m.rejections)
        yield family(CounterMetricFamily, "client_disconnects", "Clients gone before the response ended.",
                     ["endpoint"], m.client_disconnects)
        yield family(CounterMetricFamily, "gateway_requests", "Gateway answers by model and status class "
                     "(model \"\" : no valid model named).", ["model", "status_class"], m.gateway_requests)
        yield family(CounterMetricFamily, "gateway_rate_limited", "Gateway requests refused 429 by a key's limit.",
                     ["limit"], m.gateway_rate_limited)
        ratelimit_errors = CounterMetricFamily(PREFIX + "gateway_ratelimit_errors",
                                               "Rate-limit counter store (Redis) calls that failed or timed out.")
        ratelimit_errors.add_metric([], m.gateway_ratelimit_errors[""])
        yield ratelimit_errors
        usage_dropped = CounterMetricFamily(PREFIX + "gateway_usage_dropped",
                                            "Usage records dropped while the manager could not be reached.")
        usage_dropped.add_metric([], m.gateway_usage_dropped[""])
        yield usage_dropped
        yield family(GaugeMetricFamily, "gateway_queue_length", "Gateway requests waiting in the priority queue "
                     "for a free slot of the model's routes.", ["model"], m.gateway_queued)
        yield family(CounterMetricFamily, "gateway_queue_refused", "Gateway requests answered 503 by the queue "
                     "(full, or timeout).", ["model", "reason"], m.gateway_queue_refused)
        yield _histogram("gateway_queue_wait_seconds", "Seconds gateway requests waited in the priority queue.",
                         ["model"], QUEUE_BUCKETS, m.gateway_queue_wait, m.gateway_queue_wait_sum)


def _histogram(name: str, doc: str, labels: list[str], bounds: tuple[float, ...], series: Mapping[Any, list[int]],
               sums: Mapping[Any, float]) -> Metric:
    hist = HistogramMetricFamily(PREFIX + name, doc, labels=labels)
    names = [*(repr(b) for b in bounds), "+Inf"]
    for key, counts in list(series.items()):
        cumulative, acc = [], 0
        for bound, n in zip(names, counts, strict=True):
            acc += n
            cumulative.append((bound, acc))
        hist.add_metric(list(key) if isinstance(key, tuple) else [key], cumulative, sums.get(key, 0.0))
    metric: Metric = hist
    return metric


def make_registry(metrics: ProxyMetrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(metrics))
    return registry

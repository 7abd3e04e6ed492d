"""The control loop's own Prometheus metrics, exposed on the manager's ``/metrics`` (docs/operations.md).

Module-level collectors in the default registry: one manager process serves one set (tests that run several
managers in one process share them, which only sums their counts)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PHASE_SECONDS = Histogram(
    "moorage_control_phase_seconds", "Duration of one control-loop phase (one step of a tick), in seconds",
    ["phase"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
PHASE_ERRORS = Counter("moorage_control_phase_errors_total", "Control-loop phases that raised", ["phase"])
TICKS = Counter("moorage_control_ticks_total", "Control-loop ticks run")
ENDPOINTS_RECONCILED = Counter("moorage_control_endpoints_reconciled_total",
                               "Endpoints whose desired and live replicas were compared")
REPLICAS_STARTED = Counter("moorage_control_replicas_started_total", "Replicas an agent accepted to start")
REPLICAS_STOPPED = Counter("moorage_control_replicas_stopped_total", "Replicas an agent stopped on request")
LEADER = Gauge("moorage_manager_leader", "1 while this manager runs the control loops (the leader), else 0")

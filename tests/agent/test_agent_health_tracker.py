"""HealthTracker timing contract (docs/architecture.md, Active health checks) with a fake clock: no I/O, no sleeping."""

from __future__ import annotations

import pytest

from agent.health import HealthPolicy, HealthTracker
from common.definitions import ModelHealthCheck
from common.status import RouteHealth

POLICY = HealthPolicy(interval=10.0, max_retries=3, initial_delay=60.0, max_wait_time=5.0)


def run_schedule(tracker: HealthTracker, results: dict[float, bool], until: float) -> list[tuple[float, RouteHealth]]:
    """Drive the tracker along its own probe schedule; ``results`` maps probe time → outcome (default fail)."""
    transitions = []
    now = tracker.started_at
    while now <= until:
        ok = results.get(now, False)
        change = tracker.record(ok, now)
        if change:
            transitions.append((now, change))
        now = tracker.next_probe_at(now)
    return transitions


def test_never_passing_route_becomes_unhealthy_exactly_at_the_deadline() -> None:
    tracker = HealthTracker(POLICY, started_at=100.0)
    deadline = 100.0 + 60.0 + 10.0 * (3 + 1)
    assert tracker.deadline == deadline
    for t in (100.0, 110.0, 150.0, 199.0):
        assert tracker.record(False, t) is None
        assert tracker.state == RouteHealth.NOT_CHECKED
    assert tracker.tick(deadline - 0.001) is None
    assert tracker.tick(deadline) == RouteHealth.UNHEALTHY
    assert tracker.gave_up and not tracker.ever_passed
    # once given up, nothing changes any more (the kernel is being stopped)
    assert tracker.record(True, deadline + 1) is None
    assert tracker.state == RouteHealth.UNHEALTHY


def test_deadline_applies_even_without_probe_results() -> None:
    """Probes may hang for max_wait_time; tick() alone enforces the deadline."""
    tracker = HealthTracker(POLICY, started_at=0.0)
    assert tracker.tick(99.9) is None
    assert tracker.tick(100.0) == RouteHealth.UNHEALTHY


def test_first_pass_makes_it_healthy_and_cancels_the_deadline() -> None:
    tracker = HealthTracker(POLICY, started_at=0.0)
    assert tracker.record(False, 0.0) is None
    assert tracker.record(True, 90.0) == RouteHealth.HEALTHY
    assert tracker.ever_passed
    assert tracker.tick(10_000.0) is None
    assert tracker.state == RouteHealth.HEALTHY


def test_healthy_route_goes_unhealthy_after_max_retries_plus_one_failures() -> None:
    tracker = HealthTracker(POLICY, started_at=0.0)
    transitions = run_schedule(tracker, {0.0: True, 10.0: True}, until=100.0)
    # passes at 0 and 10; failures at 20, 30, 40, 50 → the 4th (= max_retries + 1) flips it
    assert transitions == [(0.0, RouteHealth.HEALTHY), (50.0, RouteHealth.UNHEALTHY)]
    # within interval × (max_retries + 1) of the last pass
    assert 50.0 - 10.0 <= POLICY.interval * (POLICY.max_retries + 1)


def test_fewer_failures_than_the_threshold_keep_it_healthy() -> None:
    tracker = HealthTracker(POLICY, started_at=0.0)
    results = {0.0: True, 40.0: True, 80.0: True}  # 3 failures between passes: below the threshold of 4
    transitions = run_schedule(tracker, results, until=80.0)
    assert transitions == [(0.0, RouteHealth.HEALTHY)]
    assert tracker.consecutive_failures == 0


def test_unhealthy_route_recovers_on_a_pass() -> None:
    tracker = HealthTracker(POLICY, started_at=0.0)
    tracker.record(True, 0.0)
    for t in (10.0, 20.0, 30.0, 40.0):
        tracker.record(False, t)
    assert tracker.state == RouteHealth.UNHEALTHY
    assert tracker.record(False, 50.0) is None  # stays unhealthy, no repeated transition
    assert tracker.record(True, 60.0) == RouteHealth.HEALTHY
    assert not tracker.gave_up


def test_max_retries_zero_means_one_failure_is_enough() -> None:
    policy = HealthPolicy(interval=1.0, max_retries=0, initial_delay=0.0, max_wait_time=1.0)
    tracker = HealthTracker(policy, started_at=0.0)
    tracker.record(True, 0.0)
    assert tracker.record(False, 1.0) == RouteHealth.UNHEALTHY
    assert HealthTracker(policy, 0.0).deadline == 1.0


@pytest.mark.parametrize(("now", "expected"), [(0.0, 10.0), (9.99, 10.0), (10.0, 20.0), (35.0, 40.0)])
def test_fixed_rate_schedule_skips_missed_slots(now: float, expected: float) -> None:
    assert HealthTracker(POLICY, started_at=0.0).next_probe_at(now) == pytest.approx(expected)


def test_policies_from_definition_and_tcp_default() -> None:
    check = ModelHealthCheck(path="/ready", interval=2, max_retries=4, max_wait_time=3, initial_delay=7,
                             expected_status_code=204)
    policy = HealthPolicy.from_check(check)
    assert (policy.kind, policy.path, policy.expected_status_code) == ("http", "/ready", 204)
    assert policy.start_deadline == 7 + 2 * 5
    tcp = HealthPolicy.tcp(interval=10.0, max_retries=2, startup_timeout=1800.0)
    assert tcp.kind == "tcp"
    assert tcp.start_deadline == pytest.approx(1800.0)
    short = HealthPolicy.tcp(interval=10.0, max_retries=2, startup_timeout=5.0)
    assert short.initial_delay == 0.0 and short.start_deadline == 30.0

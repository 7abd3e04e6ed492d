"""The pure autoscaling decisions (manager.control.autoscaler) and metric aggregation (autoscale_metrics)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from manager.control.autoscale_metrics import inference_metric, kernel_metric, observe, proxy_metric
from manager.control.autoscaler import (
    Outcome,
    Rule,
    bounds,
    clamp_step,
    cooldown_anchor,
    decide_endpoint,
    evaluate_rule,
    wake_from_zero,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CAP = 64


def rule(rule_id: str = "r1", comparator: str = "greater_than", threshold: float = 10.0, step: int = 1,
         lo: int | None = None, hi: int | None = None, cooldown: int = 60, enabled: bool = True,
         last: datetime | None = None, source: str = "proxy", name: str = "rps") -> Rule:
    return Rule(id=rule_id, metric_source=source, metric_name=name, comparator=comparator, threshold=threshold,
                step_size=step, cooldown_seconds=cooldown, min_replicas=lo, max_replicas=hi, enabled=enabled,
                last_triggered_at=last)


def test_comparators_follow_backend_ai() -> None:
    cases = [("greater_than", 11, True), ("greater_than", 10, False), ("greater_than_or_equal", 10, True),
             ("greater_than_or_equal", 9.99, False), ("less_than", 9, True), ("less_than", 10, False),
             ("less_than_or_equal", 10, True), ("less_than_or_equal", 10.01, False)]
    for comparator, value, fires in cases:
        d = evaluate_rule(rule(comparator=comparator), 2, value, T0, None, cap=CAP)
        assert (d.outcome == Outcome.SCALE) is fires, (comparator, value, d)
        if not fires:
            assert d.outcome == Outcome.NOT_TRIGGERED and d.new_replicas == 2


def test_step_sign_decides_direction() -> None:
    up = evaluate_rule(rule(step=2), 3, 50, T0, None, cap=CAP)
    assert up.outcome == Outcome.SCALE and up.new_replicas == 5
    # a "less_than" comparator with a positive step still scales OUT (Backend.AI: the step's sign is the direction)
    odd = evaluate_rule(rule(comparator="less_than", threshold=1, step=1), 3, 0, T0, None, cap=CAP)
    assert odd.new_replicas == 4
    down = evaluate_rule(rule(comparator="less_than", threshold=1, step=-1), 3, 0, T0, None, cap=CAP)
    assert down.outcome == Outcome.SCALE and down.new_replicas == 2


def test_clamps_instead_of_skipping() -> None:
    d = evaluate_rule(rule(step=3, hi=4), 2, 50, T0, None, cap=CAP)
    assert d.outcome == Outcome.SCALE and d.new_replicas == 4 and "clamped" in d.reason
    d = evaluate_rule(rule(comparator="less_than", step=-5, lo=1), 3, 0, T0, None, cap=CAP)
    assert d.new_replicas == 1
    # already at the bound: a recorded no-op, not a change
    d = evaluate_rule(rule(step=1, hi=4), 4, 50, T0, None, cap=CAP)
    assert d.outcome == Outcome.AT_BOUND and d.new_replicas == 4 and "max_replicas 4" in d.reason
    d = evaluate_rule(rule(comparator="less_than", step=-1, lo=1), 1, 0, T0, None, cap=CAP)
    assert d.outcome == Outcome.AT_BOUND and "min_replicas 1" in d.reason
    # no max: the manager's replica limit is the bound
    assert evaluate_rule(rule(step=10), 60, 50, T0, None, cap=CAP).new_replicas == CAP


def test_never_moves_against_its_direction() -> None:
    # scaled by hand to 6 above the rule's max 4: a scale-out rule leaves it (does not scale IN to 4)
    d = evaluate_rule(rule(step=1, hi=4), 6, 50, T0, None, cap=CAP)
    assert d.outcome == Outcome.AT_BOUND and d.new_replicas == 6
    # below the min a scale-out rule goes to at least the min
    assert evaluate_rule(rule(step=1, lo=3), 0, 50, T0, None, cap=CAP).new_replicas == 3
    # a scale-in rule above its max comes down to the max
    assert evaluate_rule(rule(comparator="less_than", step=-1, hi=4), 6, 0, T0, None, cap=CAP).new_replicas == 4
    assert clamp_step(5, -1, 6, 9) == 5 and clamp_step(5, 1, 0, 3) == 5


def test_cooldown() -> None:
    r = rule(cooldown=60)
    d = evaluate_rule(r, 1, 50, T0, T0 - timedelta(seconds=59), cap=CAP)
    assert d.outcome == Outcome.COOLDOWN and d.new_replicas == 1 and "1.0s more" in d.reason
    assert evaluate_rule(r, 1, 50, T0, T0 - timedelta(seconds=60), cap=CAP).outcome == Outcome.SCALE
    assert evaluate_rule(rule(cooldown=0), 1, 50, T0, T0, cap=CAP).outcome == Outcome.SCALE


def test_disabled_unknown_and_invalid() -> None:
    assert evaluate_rule(rule(enabled=False), 1, 50, T0, None, cap=CAP).outcome == Outcome.DISABLED
    assert evaluate_rule(rule(), 1, None, T0, None, cap=CAP).outcome == Outcome.NO_METRIC
    assert evaluate_rule(rule(), 1, float("nan"), T0, None, cap=CAP).outcome == Outcome.NO_METRIC
    assert evaluate_rule(rule(comparator="between"), 1, 50, T0, None, cap=CAP).outcome == Outcome.INVALID
    assert evaluate_rule(rule(step=0), 1, 50, T0, None, cap=CAP).outcome == Outcome.INVALID


def test_scale_out_beats_scale_in_and_largest_target_wins() -> None:
    rules = [rule("in", comparator="less_than", threshold=100, step=-1),
             rule("up1", step=1), rule("up3", step=3), rule("up3b", step=3)]
    result = decide_endpoint(rules, 2, {"in": 50, "up1": 50, "up3": 50, "up3b": 50}, T0, cap=CAP)
    assert result.changes and result.new_replicas == 5 and result.winner is not None
    assert result.winner.rule_id == "up3"  # tie with up3b: the earlier rule
    outcomes = {d.rule_id: d.outcome for d in result.decisions}
    assert outcomes == {"in": Outcome.SUPERSEDED, "up1": Outcome.SUPERSEDED, "up3": Outcome.SCALE,
                        "up3b": Outcome.SUPERSEDED}


def test_gentlest_scale_in_wins() -> None:
    rules = [rule("big", comparator="less_than", step=-3), rule("small", comparator="less_than", step=-1)]
    result = decide_endpoint(rules, 5, {"big": 0, "small": 0}, T0, cap=CAP)
    assert result.new_replicas == 4 and result.winner is not None and result.winner.rule_id == "small"


def test_endpoint_cooldown_anchor_blocks_the_other_direction() -> None:
    up = rule("up", step=1, cooldown=5, last=T0 - timedelta(seconds=10))
    down = rule("down", comparator="less_than", threshold=100, step=-1, cooldown=30)
    assert cooldown_anchor([up, down]) == up.last_triggered_at
    # the scale-out happened 10 s ago: the scale-in rule (cooldown 30 s) must wait, although it never fired
    result = decide_endpoint([up, down], 3, {"up": 0, "down": 0}, T0, cap=CAP)
    assert not result.changes and {d.rule_id: d.outcome for d in result.decisions}["down"] == Outcome.COOLDOWN
    later = decide_endpoint([up, down], 3, {"up": 0, "down": 0}, T0 + timedelta(seconds=21), cap=CAP)
    assert later.changes and later.new_replicas == 2
    # disabled rules do not anchor
    assert cooldown_anchor([rule(enabled=False, last=T0)]) is None


def test_demand_blocks_scale_to_zero_only() -> None:
    down = rule("down", comparator="less_than", threshold=1, step=-1, lo=0)
    held = decide_endpoint([down], 1, {"down": 0}, T0, cap=CAP, demand_waiting=True)
    assert not held.changes and held.decisions[0].outcome == Outcome.DEMAND
    assert decide_endpoint([down], 1, {"down": 0}, T0, cap=CAP).new_replicas == 0
    assert decide_endpoint([down], 3, {"down": 0}, T0, cap=CAP, demand_waiting=True).new_replicas == 2


def test_no_rules_no_change() -> None:
    result = decide_endpoint([], 3, {}, T0, cap=CAP)
    assert not result.changes and result.new_replicas == 3 and result.winner is None


def test_wake_from_zero() -> None:
    assert wake_from_zero([rule(lo=0)], 0, cap=CAP) == (1, rule(lo=0))
    target, chosen = wake_from_zero([rule("a", lo=0), rule("b", lo=2), rule("c", lo=2)], 0, cap=CAP) or (0, None)
    assert target == 2 and chosen is not None and chosen.id == "b"
    assert wake_from_zero([rule(lo=0)], 1, cap=CAP) is None  # not at zero
    assert wake_from_zero([rule(enabled=False)], 0, cap=CAP) is None
    assert wake_from_zero([], 0, cap=CAP) is None
    assert wake_from_zero([rule(lo=0, hi=0)], 0, cap=CAP) is None  # every rule caps it at zero
    assert wake_from_zero([rule(lo=5, hi=3)], 0, cap=CAP) == (3, rule(lo=5, hi=3))
    assert bounds(rule(lo=5, hi=3), CAP) == (3, 3) and bounds(rule(), 8) == (0, 8)


# -- properties -------------------------------------------------------------------------------------------------

COMPARATOR = st.sampled_from(["greater_than", "greater_than_or_equal", "less_than", "less_than_or_equal"])
RULES = st.builds(
    rule, rule_id=st.text("abcdef", min_size=1, max_size=4), comparator=COMPARATOR,
    threshold=st.floats(-100, 100, allow_nan=False), step=st.integers(-10, 10).filter(bool),
    lo=st.none() | st.integers(0, 20), hi=st.none() | st.integers(0, 20), cooldown=st.integers(0, 600),
    enabled=st.booleans(), last=st.none() | st.integers(-900, 0).map(lambda s: T0 + timedelta(seconds=s)))
VALUES = st.none() | st.floats(-200, 200, allow_nan=False)


@given(RULES, st.integers(0, 30), VALUES)
def test_property_result_within_bounds(r: Rule, replicas: int, value: float | None) -> None:
    d = evaluate_rule(r, replicas, value, T0, r.last_triggered_at, cap=CAP)
    low, high = bounds(r, CAP)
    if d.outcome == Outcome.SCALE:
        assert low <= d.new_replicas <= high
        assert d.new_replicas != replicas
        assert (d.new_replicas > replicas) == (r.step_size > 0)  # never against the step's direction
    else:
        assert d.new_replicas == replicas
    if low <= replicas <= high:
        assert low <= d.new_replicas <= high


@given(RULES, st.integers(0, 30), st.floats(-200, 200, allow_nan=False), st.integers(0, 10_000))
def test_property_no_change_inside_cooldown(r: Rule, replicas: int, value: float, age_ms: int) -> None:
    last = T0 - timedelta(milliseconds=age_ms)
    d = evaluate_rule(r, replicas, value, T0, last, cap=CAP)
    if age_ms < r.cooldown_seconds * 1000:
        assert d.new_replicas == replicas and d.outcome != Outcome.SCALE


@given(st.lists(RULES, max_size=5, unique_by=lambda r: r.id), st.integers(0, 30),
       st.dictionaries(st.text("abcdef", min_size=1, max_size=4), VALUES), st.booleans())
def test_property_endpoint_decision(rules: list[Rule], replicas: int, observed: dict, demand: bool) -> None:
    result = decide_endpoint(rules, replicas, observed, T0, cap=CAP, demand_waiting=demand)
    assert sum(d.outcome == Outcome.SCALE for d in result.decisions) == (1 if result.winner else 0)
    if result.winner is None:
        assert result.new_replicas == replicas
    else:
        assert result.winner.rule is not None
        low, high = bounds(result.winner.rule, CAP)
        assert low <= result.new_replicas <= high
        anchor = cooldown_anchor(rules)
        assert anchor is None or T0 >= anchor + timedelta(seconds=result.winner.rule.cooldown_seconds)
        if any(d.outcome == Outcome.SUPERSEDED and d.new_replicas > replicas for d in result.decisions):
            assert result.new_replicas > replicas  # a scale-out was available: scale-in cannot have won
        if demand:
            assert result.new_replicas > 0 or replicas == 0
    # deterministic
    assert decide_endpoint(rules, replicas, observed, T0, cap=CAP, demand_waiting=demand) == result


# -- metric aggregation ----------------------------------------------------------------------------------------

def test_kernel_metric_averages_fresh_samples() -> None:
    now = 1000.0
    samples = [{"cpu_util": 50.0, "mem_util": 10.0, "reported_at": 995.0},
               {"cpu_util": 150.0, "mem_util": 30.0, "collected_at": 999.0},
               {"cpu_util": 900.0, "reported_at": 900.0},  # stale
               None, {}]
    assert kernel_metric("cpu_util", samples, now, 30) == 100.0
    assert kernel_metric("mem", samples, now, 30) == 20.0  # Backend.AI's name
    assert kernel_metric("cuda_util", samples, now, 30) is None
    assert kernel_metric("cpu_util", [], now, 30) is None


def _report(rps: float, in_flight: int, metrics: dict | None = None, at: float = 1.0) -> dict:
    return {"endpoint_id": "e", "collected_at": at, "replicas": 0, "metrics": metrics or {},
            "proxy": {"rps": rps, "in_flight": in_flight}}


def test_proxy_metric_sums_proxies_and_divides_by_replicas() -> None:
    reports = [_report(10, 3), _report(20, 1)]
    assert proxy_metric("rps", reports, 2) == 15.0
    assert proxy_metric("requests_per_second", reports, 3) == 10.0
    assert proxy_metric("in_flight", reports, 0) == 4.0  # at zero replicas: divided by 1 (held requests count)
    assert proxy_metric("rps_total", reports, 5) == 30.0 and proxy_metric("in_flight_total", reports, 5) == 4.0
    assert proxy_metric("rps", [], 2) is None  # no proxy answered: unknown, not zero
    assert proxy_metric("latency", reports, 2) is None


def test_inference_metric_merges_replicas_across_proxies() -> None:
    vllm = "vllm:num_requests_running"
    a = _report(0, 0, {vllm: {"sum": 6, "per_route": {"r1": 2, "r2": 4}}}, at=10.0)
    b = _report(0, 0, {vllm: {"sum": 8, "per_route": {"r1": 4, "r3": 6}}}, at=12.0)  # fresher view of r1
    assert inference_metric(vllm, [a, b]) == (4 + 4 + 6) / 3
    assert inference_metric("vllm_num_requests_running", [a]) == 3.0  # the other spelling
    assert inference_metric("tgi_queue_size", [a, b]) is None
    assert observe("inference_framework", vllm, kernel_samples=[], reports=[a], serving_replicas=2, now=0,
                   kernel_max_age=30) == 3.0
    assert observe("prometheus", "x", kernel_samples=[], reports=[a], serving_replicas=2, now=0,
                   kernel_max_age=30) is None

"""Autoscaling decisions: pure functions, no I/O (docs/architecture.md, Autoscaler; I/O in :mod:`.autoscale`).

One rule (Backend.AI 25.x classic rules; docs/operations.md, Autoscaling):

* It fires when ``observed <comparator> threshold``; comparators ``less_than``, ``less_than_or_equal``,
  ``greater_than``, ``greater_than_or_equal``. An unknown metric value (None) never fires.
* The sign of ``step_size`` alone decides the direction, as in Backend.AI: positive scales out, negative scales
  in (a rule moves one way only; scaling both ways takes two rules). The comparator only states the condition.
* Bounds: ``min_replicas`` (None → 0) and ``max_replicas`` (None → the manager's ``limits.max_replicas``).
  **Deviation from Backend.AI**, which skips the whole step when ``replicas + step`` leaves the bounds: we
  clamp: at 2 replicas, step +3, max 4 → 4, not "unchanged". A clamped target
  never moves against the rule's direction: a scale-out rule on an endpoint scaled by hand above its max leaves
  it alone (and reports ``at_bound``) rather than scaling it *in*.
* Cooldown: a rule that would fire within ``cooldown_seconds`` of the cooldown anchor is held back
  (``cooldown``). **Deviation:** the anchor is the endpoint's last autoscaling change (the latest
  ``last_triggered_at`` of any of its rules, a scale-from-zero wake included), not only the rule's own trigger,
  so a scale-in rule cannot undo a scale-out the next tick (the thrashing of issue #3496 / ray#18925); each rule
  still waits its own ``cooldown_seconds``.
* Disabled rules are ignored (reported ``disabled``).

Several rules on one endpoint (:func:`decide_endpoint`), deterministic:

1. every enabled rule is evaluated as above against the same current replica count;
2. among the rules that would change the count, **scale-out beats scale-in** (capacity first, like the
   Kubernetes HPA taking the largest recommendation); among scale-outs the largest target wins, among scale-ins
   also the largest target (the gentlest step down);
3. ties go to the earlier rule in the given order (the caller sorts by creation time, then id);
4. only the winner is applied (its ``last_triggered_at`` becomes now); the other candidates are ``superseded``;
5. a scale-in to zero is held back (``demand``) while requests are waiting at an app proxy.

Scale from zero (:func:`wake_from_zero`): an endpoint at 0 desired replicas with at least one enabled rule that
gets a request goes to ``max(1, largest min_replicas of its enabled rules)``, capped by the largest
``max_replicas``; no cooldown applies (a client is waiting).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    "less_than": lambda value, threshold: value < threshold,
    "less_than_or_equal": lambda value, threshold: value <= threshold,
    "greater_than": lambda value, threshold: value > threshold,
    "greater_than_or_equal": lambda value, threshold: value >= threshold,
}
_SYMBOLS = {"less_than": "<", "less_than_or_equal": "<=", "greater_than": ">", "greater_than_or_equal": ">="}


class Outcome(enum.StrEnum):
    SCALE = "scale"  # the rule changes the replica count (only the winner of an endpoint)
    SUPERSEDED = "superseded"  # it would have changed it, but another rule of the endpoint won
    COOLDOWN = "cooldown"  # it would fire, but the endpoint changed too recently
    AT_BOUND = "at_bound"  # it fires, but the count already sits at the bound the rule scales towards
    DEMAND = "demand"  # a scale-in to zero while requests wait at an app proxy
    NOT_TRIGGERED = "not_triggered"  # the condition does not hold
    NO_METRIC = "no_metric"  # the metric is unknown (no sample, no replica)
    DISABLED = "disabled"
    INVALID = "invalid"  # unknown comparator, no threshold, step 0 (the API refuses these; old rows may not)


# Outcomes worth an audit event: a change, or a rule that fires but is blocked (rate-limited by the caller).
BLOCKED = frozenset({Outcome.COOLDOWN, Outcome.AT_BOUND, Outcome.DEMAND})


@dataclass(frozen=True, slots=True)
class Rule:
    """What the decision needs of an ``auto_scaling_rules`` row."""

    id: str
    metric_source: str
    metric_name: str
    comparator: str | None
    threshold: float | None
    step_size: int
    cooldown_seconds: int = 300
    min_replicas: int | None = None
    max_replicas: int | None = None
    enabled: bool = True
    last_triggered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RuleDecision:
    rule_id: str
    outcome: Outcome
    old_replicas: int
    new_replicas: int  # equal to old_replicas unless outcome is SCALE (or SUPERSEDED: what it would have been)
    observed: float | None
    reason: str
    rule: Rule | None = None

    @property
    def changes(self) -> bool:
        return self.outcome == Outcome.SCALE and self.new_replicas != self.old_replicas


@dataclass(frozen=True, slots=True)
class EndpointDecision:
    replicas: int  # the count before
    new_replicas: int  # the count to apply (== replicas: unchanged)
    winner: RuleDecision | None
    decisions: tuple[RuleDecision, ...] = field(default_factory=tuple)

    @property
    def changes(self) -> bool:
        return self.winner is not None and self.new_replicas != self.replicas


def bounds(rule: Rule, cap: int) -> tuple[int, int]:
    """``[low, high]`` of a rule: min (None → 0) and max (None → ``cap``), both within ``[0, cap]``."""
    high = cap if rule.max_replicas is None else max(0, min(rule.max_replicas, cap))
    low = 0 if rule.min_replicas is None else max(0, min(rule.min_replicas, high))
    return low, high


def clamp_step(replicas: int, step: int, low: int, high: int) -> int:
    """``replicas + step`` clamped to ``[low, high]``, never moving against the step's direction."""
    target = min(max(replicas + step, low), high)
    if step > 0:
        return max(target, replicas)
    if step < 0:
        return min(target, replicas)
    return replicas


def _describe(rule: Rule, observed: float) -> str:
    return f"{rule.metric_source}:{rule.metric_name} = {observed:g} {_SYMBOLS.get(rule.comparator or '', '?')} " \
           f"{rule.threshold:g}"


def evaluate_rule(rule: Rule, replicas: int, observed: float | None, now: datetime,
                  last_triggered_at: datetime | None, *, cap: int) -> RuleDecision:
    """Decide one rule. ``last_triggered_at`` is the cooldown anchor (see the module docstring); ``cap`` is the
    manager's replica limit (``max_replicas`` when the rule has none)."""
    def result(outcome: Outcome, reason: str, new: int = replicas) -> RuleDecision:
        return RuleDecision(rule.id, outcome, replicas, new, observed, reason, rule)

    if not rule.enabled:
        return result(Outcome.DISABLED, "the rule is disabled")
    compare = COMPARATORS.get(rule.comparator or "")
    if compare is None or rule.threshold is None or rule.step_size == 0:
        return result(Outcome.INVALID, f"invalid rule (comparator {rule.comparator!r}, threshold "
                                       f"{rule.threshold!r}, step {rule.step_size})")
    if observed is None or not math.isfinite(observed):
        return result(Outcome.NO_METRIC, f"no value for {rule.metric_source}:{rule.metric_name}")
    if not compare(observed, rule.threshold):
        return result(Outcome.NOT_TRIGGERED, f"{rule.metric_source}:{rule.metric_name} = {observed:g}; "
                                             f"condition {_SYMBOLS[rule.comparator or '']} {rule.threshold:g} "
                                             f"does not hold")
    low, high = bounds(rule, cap)
    target = clamp_step(replicas, rule.step_size, low, high)
    condition = _describe(rule, observed)
    if target == replicas:
        edge = f"max_replicas {high}" if rule.step_size > 0 else f"min_replicas {low}"
        return result(Outcome.AT_BOUND, f"{condition}, but {replicas} replicas is already at {edge}")
    if last_triggered_at is not None:
        until = last_triggered_at + timedelta(seconds=max(0, rule.cooldown_seconds))
        if now < until:
            left = (until - now).total_seconds()
            return result(Outcome.COOLDOWN, f"{condition}, but in cooldown for {left:.1f}s more "
                                            f"({rule.cooldown_seconds}s since the last autoscaling change)")
    clamped = target != replicas + rule.step_size
    note = f" (clamped to [{low}, {high}])" if clamped else ""
    return result(Outcome.SCALE, f"{condition}: {replicas} → {target} replicas (step {rule.step_size:+d}){note}",
                  target)


def cooldown_anchor(rules: Sequence[Rule]) -> datetime | None:
    """The endpoint's last autoscaling change: the latest ``last_triggered_at`` of its enabled rules."""
    stamps = [r.last_triggered_at for r in rules if r.enabled and r.last_triggered_at is not None]
    return max(stamps) if stamps else None


def decide_endpoint(rules: Sequence[Rule], replicas: int, observed: dict[str, float | None], now: datetime, *,
                    cap: int, demand_waiting: bool = False) -> EndpointDecision:
    """Combine all rules of one endpoint (see the module docstring). ``observed`` maps rule id → metric value;
    ``rules`` must be in a stable order (creation time, then id): it breaks ties."""
    anchor = cooldown_anchor(rules)
    decisions = [evaluate_rule(r, replicas, observed.get(r.id), now, anchor, cap=cap) for r in rules]
    if demand_waiting:
        decisions = [replace(d, outcome=Outcome.DEMAND, new_replicas=replicas,
                             reason=f"would scale {replicas} → 0, but requests are waiting at an app proxy")
                     if d.outcome == Outcome.SCALE and d.new_replicas == 0 else d for d in decisions]
    candidates = [(i, d) for i, d in enumerate(decisions) if d.outcome == Outcome.SCALE]
    ups = [(i, d) for i, d in candidates if d.new_replicas > replicas]
    pool = ups or candidates
    if not pool:
        return EndpointDecision(replicas, replicas, None, tuple(decisions))
    win_index, winner = max(pool, key=lambda item: (item[1].new_replicas, -item[0]))
    final = tuple(d if i == win_index or d.outcome != Outcome.SCALE else
                  replace(d, outcome=Outcome.SUPERSEDED, reason=f"{d.reason}; superseded by rule {winner.rule_id}")
                  for i, d in enumerate(decisions))
    return EndpointDecision(replicas, winner.new_replicas, final[win_index], final)


def wake_from_zero(rules: Sequence[Rule], replicas: int, *, cap: int) -> tuple[int, Rule] | None:
    """Scale from zero: the replica count to start and the rule it is credited to, or None (not at zero, no
    enabled rule, or every enabled rule caps the endpoint at 0)."""
    if replicas != 0:
        return None
    enabled = [r for r in rules if r.enabled]
    if not enabled:
        return None
    ceiling = max(bounds(r, cap)[1] for r in enabled)
    if ceiling < 1:
        return None
    best = max(range(len(enabled)), key=lambda i: (bounds(enabled[i], cap)[0], -i))
    return min(max(1, bounds(enabled[best], cap)[0]), ceiling), enabled[best]


__all__ = [
    "BLOCKED", "COMPARATORS", "EndpointDecision", "Outcome", "Rule", "RuleDecision", "bounds", "clamp_step",
    "cooldown_anchor", "decide_endpoint", "evaluate_rule", "wake_from_zero",
]

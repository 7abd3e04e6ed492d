"""Balancer (pure functions) and passive outlier state, with seeded randomness and explicit clocks."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from appproxy.balancer import Candidate, available, pick, power_of_two, weighted_choice
from appproxy.outlier import OutlierDetector, OutlierPolicy


def draw(candidates, n=4000, seed=1, **kwargs):
    rng = random.Random(seed)
    return Counter(pick(candidates, rng, **kwargs).key for _ in range(n))


# --- weights ---------------------------------------------------------------------------------------------------

def test_weighted_choice_follows_ratios():
    rng = random.Random(42)
    cands = [Candidate("a", 3.0), Candidate("b", 1.0)]
    counts = Counter(weighted_choice(cands, rng).key for _ in range(8000))
    assert 0.72 < counts["a"] / 8000 < 0.78


def test_idle_pool_is_split_by_ratio():
    counts = draw([Candidate("a", 1.0), Candidate("b", 1.0), Candidate("c", 2.0)])
    assert 0.22 < counts["a"] / 4000 < 0.28
    assert 0.22 < counts["b"] / 4000 < 0.28
    assert 0.47 < counts["c"] / 4000 < 0.53


def test_zero_ratio_gets_nothing():
    counts = draw([Candidate("a", 1.0), Candidate("b", 0.0), Candidate("c", 1.0)])
    assert counts["b"] == 0 and counts["a"] > 0 and counts["c"] > 0


def test_nothing_to_pick():
    rng = random.Random(0)
    assert pick([], rng) is None
    assert pick([Candidate("a", 0.0)], rng) is None


def test_same_seed_same_choices():
    cands = [Candidate(k, 1.0, in_flight=i % 2) for i, k in enumerate("abcde")]
    rng1, rng2 = random.Random(9), random.Random(9)
    assert [pick(cands, rng1).key for _ in range(50)] == [pick(cands, rng2).key for _ in range(50)]


# --- power of two choices ----------------------------------------------------------------------------------------

def test_p2c_picks_the_less_loaded_of_two():
    rng = random.Random(3)
    cands = [Candidate("busy", 1.0, in_flight=5), Candidate("idle", 1.0, in_flight=0)]
    assert {power_of_two(cands, rng).key for _ in range(200)} == {"idle"}


def test_p2c_never_picks_the_most_loaded_of_many():
    cands = [Candidate("a", 1.0, 0), Candidate("b", 1.0, 1), Candidate("c", 1.0, 2), Candidate("d", 1.0, 9)]
    counts = draw(cands)
    assert counts["d"] == 0  # it loses every pair it is drawn into
    assert counts["a"] > counts["b"] > counts["c"] > 0


def test_p2c_load_is_relative_to_the_ratio():
    # a 90/10 canary with in-flight 9:1 is balanced: neither side is "less loaded", so the split stays by ratio
    counts = draw([Candidate("main", 9.0, in_flight=9), Candidate("canary", 1.0, in_flight=1)])
    assert 0.87 < counts["main"] / 4000 < 0.93


# --- ejection and panic --------------------------------------------------------------------------------------------

def test_ejected_routes_are_skipped():
    cands = [Candidate("a", 1.0), Candidate("b", 1.0, ejected=True), Candidate("c", 1.0), Candidate("d", 1.0)]
    assert draw(cands)["b"] == 0
    pool, panic = available(cands)
    assert not panic and {c.key for c in pool} == {"a", "c", "d"}


def test_half_available_is_not_panic():
    cands = [Candidate("a", 1.0), Candidate("b", 1.0, ejected=True)]
    assert draw(cands) == Counter({"a": 4000})


def test_panic_below_half_balances_over_all():
    cands = [Candidate("a", 1.0), Candidate("b", 1.0, ejected=True), Candidate("c", 1.0, ejected=True)]
    pool, panic = available(cands)
    assert panic and len(pool) == 3
    counts = draw(cands)
    assert all(counts[k] > 1000 for k in "abc")


def test_single_ejected_route_still_gets_traffic():
    assert pick([Candidate("only", 1.0, ejected=True)], random.Random(0)).key == "only"


def test_panic_threshold_is_configurable():
    cands = [Candidate("a", 1.0), Candidate("b", 1.0, ejected=True), Candidate("c", 1.0, ejected=True)]
    assert available(cands, panic_threshold=0.3)[1] is False  # 1/3 available ≥ 30 %
    assert available(cands, panic_threshold=0.0)[1] is False  # never panic
    assert draw(cands, panic_threshold=0.0) == Counter({"a": 4000})


def test_zero_ratio_routes_do_not_count_for_panic():
    cands = [Candidate("a", 1.0), Candidate("b", 0.0), Candidate("c", 0.0), Candidate("d", 1.0, ejected=True)]
    pool, panic = available(cands)
    assert not panic and [c.key for c in pool] == ["a"]


# --- retries (exclusions) ------------------------------------------------------------------------------------------

def test_excluded_routes_are_not_retried():
    cands = [Candidate("a", 1.0), Candidate("b", 1.0), Candidate("c", 1.0)]
    assert set(draw(cands, n=500, exclude={"a", "b"})) == {"c"}
    assert pick(cands, random.Random(0), exclude={"a", "b", "c"}) is None


def test_ejected_route_is_the_last_resort_for_a_retry():
    cands = [Candidate("a", 1.0), Candidate("b", 1.0, ejected=True)]
    assert pick(cands, random.Random(0), exclude={"a"}).key == "b"


# --- outlier detection ---------------------------------------------------------------------------------------------

def test_ejected_after_consecutive_failures_only():
    det = OutlierDetector(OutlierPolicy(consecutive_failures=3, base_ejection=5, max_ejection=60))
    assert det.failure("r", 0.0) is None
    assert det.failure("r", 0.1) is None
    det.success("r", 0.2)  # breaks the run
    assert det.failure("r", 0.3) is None
    assert det.failure("r", 0.4) is None
    assert not det.is_ejected("r", 0.4)
    assert det.failure("r", 0.5) == 5
    assert det.is_ejected("r", 0.6) and det.ejected(0.6) == {"r"}


def test_readmitted_after_backoff_which_doubles_and_is_capped():
    det = OutlierDetector(OutlierPolicy(consecutive_failures=1, base_ejection=5, max_ejection=30))
    now = 0.0
    lengths = []
    for _ in range(5):
        length = det.failure("r", now)
        lengths.append(length)
        assert det.is_ejected("r", now + length - 0.01)
        now += length
        assert not det.is_ejected("r", now)  # re-admitted when the ejection ends
    assert lengths == [5, 10, 20, 30, 30]


def test_backoff_starts_over_after_a_good_while():
    det = OutlierDetector(OutlierPolicy(consecutive_failures=1, base_ejection=5, max_ejection=30))
    assert det.failure("r", 0) == 5
    assert det.failure("r", 5) == 10  # failed again right after re-admission
    assert det.failure("r", 15 + 30) == 5  # 30 s in service since then: back to the base


def test_failures_while_ejected_do_not_extend_the_ejection():
    det = OutlierDetector(OutlierPolicy(consecutive_failures=1, base_ejection=5))
    assert det.failure("r", 0) == 5
    assert det.failure("r", 1) is None  # a panic-mode request failing
    assert not det.is_ejected("r", 5)


def test_routes_are_independent_and_can_be_forgotten():
    det = OutlierDetector(OutlierPolicy(consecutive_failures=2))
    det.failure("a", 0)
    det.failure("b", 0)
    det.failure("b", 0)
    assert det.ejected(0) == {"b"} and det.consecutive_failures("a") == 1
    det.retain(["a"])
    assert det.ejected(0) == set() and det.consecutive_failures("a") == 1


@pytest.mark.parametrize("threshold", [1, 3, 5])
def test_threshold_is_respected(threshold):
    det = OutlierDetector(OutlierPolicy(consecutive_failures=threshold))
    results = [det.failure("r", 0) for _ in range(threshold)]
    assert results[:-1] == [None] * (threshold - 1) and results[-1] is not None

"""Route choice: pure functions, no I/O, randomness injected (docs/architecture.md, App proxy data path).

Policy, in order:

1. Routes with ``traffic_ratio <= 0`` get no traffic at all (a drained or canary-off route).
2. Routes currently ejected by passive outlier detection are left out — unless fewer than
   ``panic_threshold`` (default half) of the weighted routes are available. Then we are in *panic* and balance
   over all of them, ejected or not: a false ejection of most replicas must not become a full outage
   (Envoy's panic threshold). With a single route that is ejected, that route still gets the traffic.
3. Routes already tried by this request (a retry) are left out. If that leaves only ejected routes, an
   untried ejected route is better than failing the request, so those are used as a last resort.
4. Power of two choices: draw two distinct candidates at random weighted by ``traffic_ratio``, keep the one
   with the lower load. Load is ``in_flight / traffic_ratio``: with equal ratios this is simply "fewer requests
   in flight"; with unequal ratios (a 90/10 canary) it keeps in-flight counts proportional to the ratios instead
   of pulling the split towards 50/50 under load. Ties go to the first draw, so an idle pool is split exactly by
   the ratios.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Candidate(Generic[K]):
    key: K
    weight: float  # traffic_ratio
    in_flight: int = 0
    ejected: bool = False

    @property
    def load(self) -> float:
        return self.in_flight / self.weight


def available(candidates: Sequence[Candidate[K]], panic_threshold: float = 0.5
              ) -> tuple[list[Candidate[K]], bool]:
    """The candidates that may get traffic, and whether we are in panic mode (ejections ignored)."""
    weighted = [c for c in candidates if c.weight > 0]
    healthy = [c for c in weighted if not c.ejected]
    if weighted and len(healthy) < panic_threshold * len(weighted):
        return weighted, True
    return healthy, False


def weighted_choice(candidates: Sequence[Candidate[K]], rng: random.Random) -> Candidate[K]:
    """One candidate drawn with probability proportional to its weight (all weights must be > 0)."""
    total = sum(c.weight for c in candidates)
    point = rng.random() * total
    acc = 0.0
    for c in candidates:
        acc += c.weight
        if point < acc:
            return c
    return candidates[-1]  # float rounding at the upper edge


def power_of_two(candidates: Sequence[Candidate[K]], rng: random.Random) -> Candidate[K]:
    """Two distinct weighted draws; the less loaded one wins, the first draw on a tie."""
    first = weighted_choice(candidates, rng)
    if len(candidates) == 1:
        return first
    rest = [c for c in candidates if c is not first]
    second = weighted_choice(rest, rng)
    return second if second.load < first.load else first


def pick(candidates: Sequence[Candidate[K]], rng: random.Random, *, exclude: Collection[K] = (),
         panic_threshold: float = 0.5) -> Candidate[K] | None:
    """Choose the route for one attempt, or None when no route may take traffic."""
    pool, panic = available(candidates, panic_threshold)
    pool = [c for c in pool if c.key not in exclude]
    if not pool and not panic:
        pool = [c for c in candidates if c.weight > 0 and c.key not in exclude]  # last resort: ejected
    if not pool:
        return None
    return power_of_two(pool, rng)

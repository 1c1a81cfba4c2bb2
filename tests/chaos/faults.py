"""Which requests the chaos downstream answers badly: a plan per route kind (or one for all), drawn from a seeded
random so that a failing chaos run can be replayed, and counted so that a test can tell what it survived."""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

ROUTE_KINDS = ("reserve", "release", "set_stock", "stock", "charge", "refund", "ship")
LostAnswerMode = Literal["late", "drop"]


class Injection(StrEnum):
    UNAVAILABLE = "unavailable"  # answer 503 and apply nothing
    LOST_ANSWER = "lost_answers"  # apply, then answer too late ("late") or close the connection ("drop")
    SLOW = "slow"  # wait slow_seconds, then apply and answer


@dataclass(frozen=True)
class FaultPlan:
    unavailable_rate: float = 0.0
    lost_answer_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 0.5
    lost_answer_mode: LostAnswerMode = "late"

    def __post_init__(self) -> None:
        rates = (self.unavailable_rate, self.lost_answer_rate, self.slow_rate)
        if any(not 0 <= rate <= 1 for rate in rates) or sum(rates) > 1:
            raise ValueError(f"each rate must be in [0, 1] and together at most 1: {self}")
        if self.slow_seconds < 0 or self.lost_answer_mode not in ("late", "drop"):
            raise ValueError(f"slow_seconds must be >= 0 and lost_answer_mode 'late' or 'drop': {self}")

    def draw(self, rng: random.Random) -> Injection | None:
        roll = rng.random()
        for injection, rate in ((Injection.UNAVAILABLE, self.unavailable_rate),
                                (Injection.LOST_ANSWER, self.lost_answer_rate), (Injection.SLOW, self.slow_rate)):
            if roll < rate:
                return injection
            roll -= rate
        return None


NO_FAULTS = FaultPlan()


class Faults:
    """Thread-safe: set from the test thread, drawn from the server's."""

    def __init__(self, seed: int = 0):
        self._lock = threading.Lock()
        self._seed = seed
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._rng = random.Random(self._seed)
            self._default = NO_FAULTS
            self._per_kind: dict[str, FaultPlan] = {}
            self._counts = Counter[str]()

    def set(self, plan: FaultPlan, *kinds: str) -> None:
        """`plan` for the given route kinds, or for every kind without its own plan when none is given."""
        unknown = set(kinds) - set(ROUTE_KINDS)
        if unknown:
            raise ValueError(f"unknown route kinds {sorted(unknown)}; known: {ROUTE_KINDS}")
        with self._lock:
            if kinds:
                self._per_kind.update(dict.fromkeys(kinds, plan))
            else:
                self._default = plan

    def clear(self) -> None:
        """No more faults; the counts stay."""
        with self._lock:
            self._default, self._per_kind = NO_FAULTS, {}

    def draw(self, kind: str) -> tuple[Injection | None, FaultPlan]:
        with self._lock:
            plan = self._per_kind.get(kind, self._default)
            injection = plan.draw(self._rng) if plan != NO_FAULTS else None
            self._counts["requests"] += 1
            if injection:
                self._counts[injection.value] += 1
                self._counts[f"{injection.value}.{kind}"] += 1
            return injection, plan

    def figures(self) -> dict[str, int]:
        """requests, unavailable, lost_answers, slow, and the same per route kind (`unavailable.charge`)."""
        with self._lock:
            return {"requests": 0, **{injection.value: 0 for injection in Injection}, **self._counts}

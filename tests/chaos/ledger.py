"""What the chaos downstream did, as an append-only ledger of applied effects, and the audit of that ledger.

The audit trusts nothing but the ledger, as a Jepsen checker trusts only what the other side recorded: it does
not ask the saga or the downstream's own idempotency maps, so a hand-made ledger can exercise every violation.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import count

EFFECT_KINDS = ("reserve", "release", "charge", "refund", "ship")
UNDONE_BY = {"reserve": "release", "charge": "refund"}
NOUNS = {"reserve": "reservation", "release": "release", "charge": "charge", "refund": "refund", "ship": "shipment"}
FINAL_FAILURES = frozenset({"failed", "cancelled"})
_ATTEMPT = re.compile(r"(?P<order>.+)\.attempt-(?P<n>[2-9]|[1-9]\d+)")


def order_of(effect_id: str) -> tuple[str, int]:
    """The order and attempt an effect id belongs to: `<orderId>` is attempt 1, `<orderId>.attempt-<n>` (n ≥ 2)
    attempt n. Anything else (`x.attempt-1`, `x.attempt-02`) is taken as a plain order id."""
    match = _ATTEMPT.fullmatch(effect_id)
    return (match["order"], int(match["n"])) if match else (effect_id, 1)


def effect_id_of(order_id: str, attempt: int = 1) -> str:
    """The inverse of `order_of`."""
    return order_id if attempt == 1 else f"{order_id}.attempt-{attempt}"


@dataclass(frozen=True)
class Effect:
    seq: int
    kind: str
    effect_id: str
    at: float
    amount: Decimal | None = None  # for charge and refund


class Ledger:
    """Thread-safe, append-only. The downstream records an effect at the moment it applies it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._effects: list[Effect] = []
        self._seq = count(1)

    def record(self, kind: str, effect_id: str, amount: Decimal | None = None) -> Effect:
        if kind not in EFFECT_KINDS:
            raise ValueError(f"unknown effect kind {kind!r}")
        with self._lock:
            effect = Effect(next(self._seq), kind, effect_id, time.time(), amount)
            self._effects.append(effect)
            return effect

    def effects(self) -> list[Effect]:
        with self._lock:
            return list(self._effects)

    def times_applied(self) -> Counter[tuple[str, str]]:
        """(kind, effect id) -> how many times it was applied; the contract allows at most 1."""
        return Counter((effect.kind, effect.effect_id) for effect in self.effects())

    def clear(self) -> None:
        with self._lock:
            self._effects.clear()


@dataclass
class Attempt:
    """One effect id's effects, folded."""

    effect_id: str
    applied: Counter[str] = field(default_factory=Counter)
    charged: Decimal | None = None

    @property
    def label(self) -> str:
        order_id, attempt = order_of(self.effect_id)
        return f"order {order_id} attempt {attempt} ({self.effect_id})"

    @property
    def holds_reservation(self) -> bool:
        return self.applied["reserve"] > self.applied["release"]

    @property
    def standing_charge(self) -> Decimal | None:
        return self.charged if self.applied["charge"] > self.applied["refund"] else None

    @property
    def shipped(self) -> bool:
        return self.applied["ship"] > 0

    @property
    def completed(self) -> bool:
        return self.holds_reservation and self.standing_charge is not None and self.shipped

    def leftovers(self) -> list[str]:
        """What this attempt still holds, though it should hold nothing."""
        found = ["still holds its reservation"] if self.holds_reservation else []
        found += [f"has a standing charge of {self.standing_charge}"] if self.standing_charge is not None else []
        return found + (["was shipped"] if self.shipped else [])


def fold(effects: Iterable[Effect]) -> dict[str, dict[str, Attempt]]:
    """order id -> effect id -> Attempt."""
    orders: dict[str, dict[str, Attempt]] = {}
    for effect in sorted(effects, key=lambda e: e.seq):
        order_id, _ = order_of(effect.effect_id)
        attempt = orders.setdefault(order_id, {}).setdefault(effect.effect_id, Attempt(effect.effect_id))
        attempt.applied[effect.kind] += 1
        if effect.kind == "charge" and attempt.charged is None:
            attempt.charged = effect.amount
    return orders


def audit(effects: Iterable[Effect], expected: Mapping[str, tuple[str, Decimal]]) -> list[str]:
    """Violations of the saga's guarantees, human-readable; [] when the ledger is clean.

    `expected` maps every order the test placed to (final status, total). Statuses other than `completed`,
    `failed` and `cancelled` are only checked for the invariants that hold at every moment.
    """
    orders = fold(effects)
    violations = [f"effects were applied for order {order_id}, which the audit was not told about"
                  for order_id in sorted(orders.keys() - expected.keys())]
    for attempts in orders.values():
        for attempt in attempts.values():
            violations += _always(attempt)
    for order_id, (status, total) in expected.items():
        attempts = sorted(orders.get(order_id, {}).values(), key=lambda a: order_of(a.effect_id)[1])
        if str(status) == "completed":
            violations += _completed(order_id, attempts, total)
        elif str(status) in FINAL_FAILURES:
            violations += [f"{attempt.label} {leftover}, though the order is {status}"
                           for attempt in attempts for leftover in attempt.leftovers()]
    return violations


def _always(attempt: Attempt) -> list[str]:
    found = [f"{attempt.label}: {kind} applied {times} times" for kind, times in attempt.applied.items() if times > 1]
    found += [f"{attempt.label}: a {NOUNS[undo]} without a {NOUNS[kind]}" for kind, undo in UNDONE_BY.items()
              if attempt.applied[undo] > attempt.applied[kind]]
    if attempt.shipped:
        found += [f"{attempt.label} was shipped, though its {NOUNS[kind]} was undone by a {NOUNS[undo]}"
                  for kind, undo in UNDONE_BY.items() if attempt.applied[undo]]
        found += [f"{attempt.label} was shipped without a {NOUNS[kind]}" for kind in UNDONE_BY
                  if not attempt.applied[kind]]
    return found


def _completed(order_id: str, attempts: list[Attempt], total: Decimal) -> list[str]:
    winners = [attempt for attempt in attempts if attempt.completed]
    if len(winners) != 1:
        return [f"order {order_id} is completed, but {len(winners)} of its {len(attempts)} attempts hold a "
                "reservation, a standing charge and a shipment (expected exactly 1)"]
    winner = winners[0]
    found = [] if winner.standing_charge == total else [
        f"{winner.label} has a standing charge of {winner.standing_charge}, but the order's total is {total}"]
    return found + [f"{attempt.label} {leftover}, though another attempt completed the order"
                    for attempt in attempts if attempt is not winner for leftover in attempt.leftovers()]

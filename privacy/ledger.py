"""A dataset's privacy budget ledger: reservations, charges, releases, and ε over time.

A study's life on one dataset: approving it *reserves* its whole plan, refused when the
composed ε of everything charged, everything still reserved and the plan would exceed ε_max;
each round *claims* its budget before it touches data (:meth:`Ledger.claim`): it is checked
against its study's reservation and the whole ledger (:meth:`Ledger.round_refusal`) and, in the
same step, charged, once; a claimed round is spent whatever happens next (what was claimed is
spent), a refused one leaves no entry; cancelling or revoking the study *releases* what it
reserved and did not use.

ε is composed with :func:`privacy.accounting.epsilon` from the whole history, never added:
*spent* composes the charges, *committed* the charges and what is still reserved (a
reservation counts for its steps not yet charged, until it is released). The ledger is pure:
it decides, and whoever keeps its entries (a datasite's database) persists what it decided,
under a lock held from the decision to the write.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from privacy.accounting import Mechanism, epsilon

RESERVE, CHARGE, RELEASE = "reserve", "charge", "release"
KINDS: tuple[str, ...] = (RESERVE, CHARGE, RELEASE)


@dataclass(frozen=True)
class Entry:
    """One line of a ledger: a study's whole plan reserved, one round's mechanism charged, or
    a study's reservation released (a release has no mechanism). ``at`` only labels the timeline."""

    kind: str
    study: str
    mechanism: Mechanism | None = None
    round: int | None = None
    at: datetime | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == RELEASE and self.mechanism is not None:
            raise ValueError("a release has no mechanism")
        if self.kind != RELEASE and not isinstance(self.mechanism, Mechanism):
            raise ValueError(f"a {self.kind} needs a Mechanism, got {type(self.mechanism).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": self.kind,
            "study": self.study,
            "mechanism": self.mechanism.to_dict() if self.mechanism else None,
            "round": self.round,
            "at": self.at.isoformat() if self.at else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Entry:
        """Inverse of :meth:`to_dict`; unknown or missing keys are an error."""
        if missing := {"kind", "study"} - data.keys():
            raise ValueError(f"entry is missing {sorted(missing)}")
        if unknown := data.keys() - {"kind", "study", "mechanism", "round", "at"}:
            raise ValueError(f"entry has unknown keys {sorted(unknown)}")
        mechanism, at = data.get("mechanism"), data.get("at")
        return cls(
            kind=data["kind"],
            study=data["study"],
            mechanism=Mechanism.from_dict(mechanism) if mechanism is not None else None,
            round=data.get("round"),
            at=datetime.fromisoformat(at) if at else None,
        )


@dataclass(frozen=True)
class EpsilonPoint:
    """ε right after one ledger entry: ``spent`` composes the charges so far, ``committed``
    the charges and what is still reserved."""

    at: datetime | None
    spent: float
    committed: float


class RoundRefused(ValueError):
    """A round may not start (the message says why); nothing was charged."""


class BudgetExceeded(ValueError):
    """A reservation would bring the committed ε over the budget; nothing was reserved."""

    def __init__(self, epsilon: float, committed: float, epsilon_max: float) -> None:
        self.epsilon, self.committed, self.epsilon_max = epsilon, committed, epsilon_max
        shown = "∞ (no DP noise)" if math.isinf(epsilon) else f"{epsilon:.4g}"
        super().__init__(
            f"the plan would bring ε to {shown}, over the budget {epsilon_max:g} "
            f"(already committed {committed:.4g})"
        )


@dataclass
class Ledger:
    """One dataset's budget (ε_max, δ) and its entries, oldest first."""

    epsilon_max: float
    delta: float
    entries: list[Entry] = field(default_factory=list)
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        if isinstance(self.epsilon_max, bool) or not isinstance(self.epsilon_max, int | float):
            raise ValueError(f"epsilon_max must be a number, got {self.epsilon_max!r}")
        if not (math.isfinite(self.epsilon_max) and self.epsilon_max > 0):
            raise ValueError(f"epsilon_max must be a finite number > 0, got {self.epsilon_max}")
        epsilon([], self.delta, self.accountant)  # ε of nothing: checks delta and accountant
        self.epsilon_max = float(self.epsilon_max)
        self.entries = list(self.entries)
        for e in self.entries:
            if not isinstance(e, Entry):
                raise ValueError(f"ledger entries must be Entry, got {type(e).__name__}")

    # -- what the entries add up to

    def charged(self) -> list[Mechanism]:
        """The mechanism of every charged round."""
        return _charged(self.entries)

    def outstanding(self) -> list[Mechanism]:
        """Per reservation not released: its steps not yet charged (none once all are used)."""
        return _outstanding(self.entries)

    def spent(self) -> float:
        """ε of everything charged."""
        return self._epsilon(self.charged())

    def committed(self) -> float:
        """ε of everything charged and everything still reserved, composed."""
        return self._epsilon(self.charged() + self.outstanding())

    def project(self, plan: Mechanism) -> float:
        """The committed ε if ``plan`` were reserved too."""
        return self._epsilon([*self.charged(), *self.outstanding(), plan])

    def remaining_fits(self, plan: Mechanism) -> bool:
        """Whether ``plan`` can be reserved without the committed ε exceeding ``epsilon_max``."""
        return self.project(plan) <= self.epsilon_max

    def privacy_unit(self) -> str:
        """The unit the composed ε protects: 'frame' if any mechanism in the ledger is frame-level."""
        frame = any(e.mechanism is not None and e.mechanism.unit == "frame" for e in self.entries)
        return "frame" if frame else "episode"

    # -- decisions: each appends the entry to persist, or refuses

    def reserve(self, study: str, plan: Mechanism, at: datetime | None = None) -> Entry:
        """Reserve a study's whole ``plan`` (every round); BudgetExceeded when it does not fit."""
        eps = self.project(plan)
        if not eps <= self.epsilon_max:  # NaN never fits
            raise BudgetExceeded(eps, self.committed(), self.epsilon_max)
        return self._append(Entry(RESERVE, study, plan, at=at))

    def round_refusal(self, study: str, mechanism: Mechanism, round: int | None = None) -> str | None:
        """Why one more round of ``study`` running ``mechanism`` may not start, or None when it may.

        The rules, in order: the study holds a reservation not released; a round already charged
        (a retry: ``round`` given) runs again only with the mechanism it was charged for, and
        costs nothing more; the round's steps fit the steps its reservation has left and its
        privacy unit is the reserved one; and the committed ε once it is charged (every charge,
        this round, every study's reserved steps not yet charged, its own less this round's)
        stays within ε_max. A round at the reserved σ and q (or a larger σ, a smaller q) never
        raises the committed ε; one whose q grew (consent withdrawn since approval) or whose σ
        shrank runs only while the committed ε still fits, and is refused naming what changed.
        """
        mine = [e for e in self.entries if e.study == study]
        reserved = next((e.mechanism for e in mine if e.kind == RESERVE), None)
        if reserved is None or any(e.kind == RELEASE for e in mine):
            return "no active budget reservation for this study"
        charges = [e for e in mine if e.kind == CHARGE]
        if round is not None and (done := next((e.mechanism for e in charges if e.round == round), None)):
            if done == mechanism:
                return None
            return f"round {round} was charged for {_shown(done)}: it may not run with {_shown(mechanism)}"
        left = reserved.steps - sum(e.mechanism.steps for e in charges)
        if left <= 0:
            return "the study's reserved budget is used up"
        if mechanism.steps > left:
            return f"steps: this round needs {mechanism.steps}, the reservation has {left} left"
        if mechanism.unit != reserved.unit:
            return f"privacy unit: approved {reserved.unit}, now {mechanism.unit}"
        after = [*self.entries, Entry(CHARGE, study, mechanism, round=round)]
        eps = self._epsilon(_charged(after) + _outstanding(after))
        if eps <= self.epsilon_max:
            return None
        changed = _costlier(reserved, mechanism)
        if not changed:
            return f"this round would exceed the budget {self.epsilon_max:g}"
        return (
            f"{'; '.join(changed)} since approval, and this round would bring the committed ε "
            f"to {eps:.4g}, over the budget {self.epsilon_max:g}"
        )

    def claim(self, study: str, round: int, mechanism: Mechanism, at: datetime | None = None) -> Entry | None:
        """Check one round (:meth:`round_refusal`) and charge it before it runs: RoundRefused with
        the reason when it may not run (nothing appended); None when a retry finds it charged."""
        if why := self.round_refusal(study, mechanism, round):
            raise RoundRefused(why)
        return self.charge(study, round, mechanism, at)

    def charge(
        self, study: str, round: int, mechanism: Mechanism, at: datetime | None = None
    ) -> Entry | None:
        """Charge a round, unchecked (what ran is spent; :meth:`claim` checks first); None if it
        was charged already."""
        if any(e.kind == CHARGE and (e.study, e.round) == (study, round) for e in self.entries):
            return None
        return self._append(Entry(CHARGE, study, mechanism, round=round, at=at))

    def release(self, study: str, at: datetime | None = None) -> Entry | None:
        """Free what ``study`` reserved and did not use; None when it holds no reservation to release."""
        kinds = {e.kind for e in self.entries if e.study == study}
        if RESERVE not in kinds or RELEASE in kinds:
            return None
        return self._append(Entry(RELEASE, study, at=at))

    # -- over time

    def timeline(self, max_points: int | None = None) -> list[EpsilonPoint]:
        """ε spent and committed after each entry, composed from scratch over the entries up to it.

        With ``max_points`` (at least 2), only that many evenly spaced entries are evaluated, the
        first and the last always: each point costs accountant runs. A history composed once
        (the same mechanisms, in any order) is not composed again.
        """
        n = len(self.entries)
        if max_points is not None and max_points < 2:
            raise ValueError(f"max_points must be at least 2, got {max_points}")
        if max_points is None or n <= max_points:
            keep: Sequence[int] = range(n)
        else:
            keep = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
        memo: dict[tuple, float] = {}

        def eps(history: list[Mechanism]) -> float:
            key = _composition(history)
            if key not in memo:
                memo[key] = self._epsilon(history)
            return memo[key]

        points = []
        for i in keep:
            upto = self.entries[: i + 1]
            charged = _charged(upto)
            points.append(EpsilonPoint(upto[-1].at, eps(charged), eps(charged + _outstanding(upto))))
        return points

    # -- JSON

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "epsilon_max": self.epsilon_max,
            "delta": self.delta,
            "accountant": self.accountant,
            "entries": [e.to_dict() for e in self.entries],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ledger:
        """Inverse of :meth:`to_dict`; unknown or missing keys are an error."""
        if missing := {"epsilon_max", "delta"} - data.keys():
            raise ValueError(f"ledger is missing {sorted(missing)}")
        if unknown := data.keys() - {"epsilon_max", "delta", "entries", "accountant"}:
            raise ValueError(f"ledger has unknown keys {sorted(unknown)}")
        return cls(
            epsilon_max=data["epsilon_max"],
            delta=data["delta"],
            entries=[Entry.from_dict(e) for e in data.get("entries", [])],
            accountant=data.get("accountant", "rdp"),
        )

    def _epsilon(self, history: list[Mechanism]) -> float:
        return epsilon(history, self.delta, self.accountant)

    def _append(self, entry: Entry) -> Entry:
        self.entries.append(entry)
        return entry


def _charged(entries: Sequence[Entry]) -> list[Mechanism]:
    return [e.mechanism for e in entries if e.kind == CHARGE]


def _outstanding(entries: Sequence[Entry]) -> list[Mechanism]:
    released = {e.study for e in entries if e.kind == RELEASE}
    used: Counter[str] = Counter()
    for e in entries:
        if e.kind == CHARGE:
            used[e.study] += e.mechanism.steps
    return [
        replace(r.mechanism, steps=r.mechanism.steps - used[r.study])
        for r in entries
        if r.kind == RESERVE and r.study not in released and r.mechanism.steps > used[r.study]
    ]


def _shown(m: Mechanism) -> str:
    return f"σ = {m.noise_multiplier:g}, q = {m.sample_rate:.4g}, {m.steps} steps"


def _costlier(approved: Mechanism, now: Mechanism) -> list[str]:
    """What in ``now`` costs more ε than in ``approved``: a sample rate grown, a noise multiplier shrunk."""
    changed = []
    if now.sample_rate > approved.sample_rate:
        q0, q1 = approved.sample_rate, now.sample_rate
        changed.append(f"the sample rate grew (approved q = {q0:.4g}, now {q1:.4g})")
    if now.noise_multiplier < approved.noise_multiplier:
        s0, s1 = approved.noise_multiplier, now.noise_multiplier
        changed.append(f"the noise multiplier shrank (approved σ = {s0:g}, now {s1:g})")
    return changed


def _composition(history: list[Mechanism]) -> tuple:
    """What the accountant composes of ``history``: steps per distinct (σ, q), in a fixed order."""
    steps: Counter[tuple[float, float]] = Counter()
    for m in history:
        steps[(m.noise_multiplier, m.sample_rate)] += m.steps
    return tuple(sorted((k, n) for k, n in steps.items() if n))

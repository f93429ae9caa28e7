"""The privacy budget ledger of each dataset: reserve at approval, charge per round, release.

ε is always recomputed by composing the mechanisms in the ledger with the accountant from
:mod:`privacy.accounting`, never by adding ε values. What is *committed* to a dataset is
everything charged plus what approved studies have reserved and not yet charged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.protocol import Plan
from datasite.models import Dataset, LedgerEntry
from privacy.accounting import Mechanism, epsilon


class BudgetError(Exception):
    """A plan does not fit a dataset's remaining budget."""


def round_mechanism(plan: Plan, training_units: int) -> Mechanism:
    """The mechanism one local round of ``plan`` applies to a dataset with ``training_units``
    privacy units (episodes, or frames for frame-level DP). Without DP it has σ = 0 (ε = ∞)."""
    if training_units < 1:
        raise BudgetError("no training data left (every contributor withdrew or is held out)")
    q = min(1.0, plan.batch_size / training_units)
    sigma = plan.dp.noise_multiplier if plan.dp.enabled else 0.0
    return Mechanism(noise_multiplier=sigma, sample_rate=q, steps=plan.local_steps, unit=plan.dp.unit)


def _entry_mechanism(entry: LedgerEntry, steps: int | None = None) -> Mechanism:
    return Mechanism(
        noise_multiplier=entry.noise_multiplier,
        sample_rate=entry.sample_rate,
        steps=entry.steps if steps is None else steps,
        unit=entry.unit,
    )


def charged(dataset: Dataset) -> list[Mechanism]:
    return [_entry_mechanism(e) for e in dataset.ledger.filter(kind=LedgerEntry.Kind.CHARGE)]


def outstanding(dataset: Dataset) -> list[Mechanism]:
    """Reserved and not yet charged or released, per study."""
    entries = list(dataset.ledger.all())
    released = {e.study for e in entries if e.kind == LedgerEntry.Kind.RELEASE}
    out = []
    for r in entries:
        if r.kind != LedgerEntry.Kind.RESERVE or r.study in released:
            continue
        used = sum(e.steps for e in entries if e.kind == LedgerEntry.Kind.CHARGE and e.study == r.study)
        if r.steps > used:
            out.append(_entry_mechanism(r, r.steps - used))
    return out


@dataclass(frozen=True)
class BudgetView:
    """A dataset's budget as a person reads it."""

    epsilon_max: float
    delta: float
    spent: float
    committed: float  # spent + reserved, composed

    @property
    def reserved(self) -> float:
        return max(0.0, self.committed - self.spent)


def view(dataset: Dataset) -> BudgetView:
    spent = epsilon(charged(dataset), dataset.delta)
    committed = epsilon(charged(dataset) + outstanding(dataset), dataset.delta)
    return BudgetView(dataset.epsilon_max, dataset.delta, spent, committed)


def projected(dataset: Dataset, mechanism: Mechanism, rounds: int) -> float:
    """ε of the dataset if a study running ``mechanism`` for ``rounds`` rounds were approved."""
    study = Mechanism(
        mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps * rounds, mechanism.unit
    )
    return epsilon([*charged(dataset), *outstanding(dataset), study], dataset.delta)


def reserve(dataset: Dataset, study: str, mechanism: Mechanism, rounds: int) -> float:
    """Reserve a study's whole cost; call inside a transaction holding the dataset's row lock."""
    eps = projected(dataset, mechanism, rounds)
    if not eps <= dataset.epsilon_max:
        shown = "∞ (no DP noise)" if math.isinf(eps) else f"{eps:.3g}"
        raise BudgetError(
            f"dataset {dataset.name}: this study would bring ε to {shown}, over its budget "
            f"{dataset.epsilon_max:g} (already committed {view(dataset).committed:.3g})"
        )
    LedgerEntry.objects.create(
        dataset=dataset,
        study=study,
        kind=LedgerEntry.Kind.RESERVE,
        noise_multiplier=mechanism.noise_multiplier,
        sample_rate=mechanism.sample_rate,
        steps=mechanism.steps * rounds,
        unit=mechanism.unit,
    )
    return eps


def round_refusal(dataset: Dataset, study: str, mechanism: Mechanism) -> str | None:
    """Why one more round of ``study`` may not run on ``dataset``, or None when it may."""
    entries = list(dataset.ledger.filter(study=study))
    reservation = next((e for e in entries if e.kind == LedgerEntry.Kind.RESERVE), None)
    if reservation is None or any(e.kind == LedgerEntry.Kind.RELEASE for e in entries):
        return f"dataset {dataset.name}: no active budget reservation for this study"
    used = sum(e.steps for e in entries if e.kind == LedgerEntry.Kind.CHARGE)
    if reservation.steps - used < mechanism.steps:
        return f"dataset {dataset.name}: the study's reserved budget is used up"
    if epsilon([*charged(dataset), mechanism], dataset.delta) > dataset.epsilon_max:
        return f"dataset {dataset.name}: this round would exceed the budget {dataset.epsilon_max:g}"
    return None


def charge(dataset: Dataset, study: str, round_number: int, mechanism: Mechanism) -> bool:
    """Record a finished round's mechanism; False if this round was already charged."""
    _, created = LedgerEntry.objects.get_or_create(
        dataset=dataset,
        study=study,
        round=round_number,
        kind=LedgerEntry.Kind.CHARGE,
        defaults={
            "noise_multiplier": mechanism.noise_multiplier,
            "sample_rate": mechanism.sample_rate,
            "steps": mechanism.steps,
            "unit": mechanism.unit,
        },
    )
    return created


def release(dataset: Dataset, study: str) -> None:
    """Free what a cancelled or revoked study reserved and did not use."""
    if dataset.ledger.filter(study=study, kind=LedgerEntry.Kind.RESERVE).exists():
        LedgerEntry.objects.get_or_create(
            dataset=dataset,
            study=study,
            kind=LedgerEntry.Kind.RELEASE,
            round=None,
            defaults={"noise_multiplier": 0.0, "sample_rate": 1.0, "steps": 0, "unit": "episode"},
        )

"""The privacy budget of each dataset: its :class:`privacy.ledger.Ledger`, kept as ``LedgerEntry`` rows.

The ledger decides (reserve at approval, claim each round before it runs, release) and
composes ε, never adding it; this module loads a dataset's rows into it and persists what it
decided. Every decision is taken and written under the dataset's row lock (``SELECT … FOR
UPDATE`` on PostgreSQL, the write lock ``BEGIN IMMEDIATE`` takes on SQLite), so two studies'
approvals or rounds on one dataset serialise and the second sees what the first wrote:
:func:`claim` takes it itself, :func:`reserve`'s caller holds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from django.db import transaction

from common.protocol import Plan
from datasite.models import Dataset, LedgerEntry
from privacy.accounting import Mechanism
from privacy.ledger import BudgetExceeded, Entry, Ledger, RoundRefused


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


def load_ledger(dataset: Dataset) -> Ledger:
    """The dataset's budget and its ledger rows, oldest first."""
    return Ledger(dataset.epsilon_max, dataset.delta, [_entry(row) for row in dataset.ledger.all()])


def _entry(row: LedgerEntry) -> Entry:
    mechanism = None
    if row.kind != LedgerEntry.Kind.RELEASE:
        mechanism = Mechanism(row.noise_multiplier, row.sample_rate, row.steps, row.unit)
    return Entry(row.kind, row.study, mechanism, row.round, row.at)


def _fields(entry: Entry) -> dict[str, float | int | str]:
    m = entry.mechanism or Mechanism(0.0, 1.0, 0)  # a release row holds no mechanism
    return {
        "noise_multiplier": m.noise_multiplier,
        "sample_rate": m.sample_rate,
        "steps": m.steps,
        "unit": m.unit,
    }


def _save(dataset: Dataset, entry: Entry) -> bool:
    """Persist a charge or a release the ledger decided; False when its row exists already."""
    _, created = LedgerEntry.objects.get_or_create(
        dataset=dataset, study=entry.study, round=entry.round, kind=entry.kind, defaults=_fields(entry)
    )
    return created


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
    ledger = load_ledger(dataset)
    return BudgetView(dataset.epsilon_max, dataset.delta, ledger.spent(), ledger.committed())


def study_mechanism(mechanism: Mechanism, rounds: int) -> Mechanism:
    """What a study running ``mechanism`` for ``rounds`` rounds costs in all (what it reserves)."""
    return replace(mechanism, steps=mechanism.steps * rounds)


def projected(dataset: Dataset, mechanism: Mechanism, rounds: int) -> float:
    """ε of the dataset if a study running ``mechanism`` for ``rounds`` rounds were approved."""
    return load_ledger(dataset).project(study_mechanism(mechanism, rounds))


def reserve(dataset: Dataset, study: str, mechanism: Mechanism, rounds: int) -> float:
    """Reserve a study's whole cost and return the committed ε; call inside a transaction
    holding the dataset's row lock."""
    ledger = load_ledger(dataset)
    try:
        entry = ledger.reserve(study, study_mechanism(mechanism, rounds))
    except BudgetExceeded as exc:
        shown = "∞ (no DP noise)" if math.isinf(exc.epsilon) else f"{exc.epsilon:.3g}"
        raise BudgetError(
            f"dataset {dataset.name}: this study would bring ε to {shown}, over its budget "
            f"{dataset.epsilon_max:g} (already committed {exc.committed:.3g})"
        ) from exc
    LedgerEntry.objects.create(dataset=dataset, study=entry.study, kind=entry.kind, **_fields(entry))
    return ledger.committed()


def claim(dataset: Dataset, study: str, round_number: int, mechanism: Mechanism) -> bool:
    """Claim one round's budget before it touches data: check and charge it in one transaction
    holding the dataset's row lock (the rules: :meth:`privacy.ledger.Ledger.round_refusal`).

    True when charged now, False when a retry finds the round charged already; BudgetError with
    the reason when refused, and nothing is written.
    """
    with transaction.atomic():
        locked = Dataset.objects.select_for_update().get(pk=dataset.pk)
        try:
            entry = load_ledger(locked).claim(study, round_number, mechanism)
        except RoundRefused as exc:
            raise BudgetError(f"dataset {locked.name}: {exc}") from exc
        return entry is not None and _save(locked, entry)


def charge(dataset: Dataset, study: str, round_number: int, mechanism: Mechanism) -> bool:
    """Record a round's mechanism unchecked (what ran is spent; :func:`claim` checks first);
    False if this round was already charged."""
    entry = load_ledger(dataset).charge(study, round_number, mechanism)
    return entry is not None and _save(dataset, entry)


def release(dataset: Dataset, study: str) -> None:
    """Free what a cancelled or revoked study reserved and did not use."""
    entry = load_ledger(dataset).release(study)
    if entry is not None:
        _save(dataset, entry)

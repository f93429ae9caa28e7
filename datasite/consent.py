"""Contributors' consent: recording it, who consents to a purpose, and which episodes a study may use."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from django.db import transaction

from audit import trail
from common.errors import ServiceError
from common.protocol import PURPOSE_PATTERN, Plan
from datasite.models import ConsentEvent, Dataset


def record_consent(
    contributor: str, purpose: str, given: bool, evidence: str = "", user=None
) -> ConsentEvent:
    if not contributor or len(contributor) > 100:
        raise ServiceError("contributor must be a pseudonymous id of 1-100 characters")
    if not re.fullmatch(PURPOSE_PATTERN, purpose):
        raise ServiceError(
            f"purpose {purpose!r} must be lower-case words joined by '-', e.g. policy-training"
        )
    with transaction.atomic():
        event = ConsentEvent.objects.create(
            contributor=contributor, purpose=purpose, given=given, evidence=evidence, recorded_by=user
        )
        trail.record(
            "consent.given" if given else "consent.withdrawn",
            user,
            f"contributor:{contributor}",
            {"purpose": purpose, "evidence": evidence},
        )
    return event


def consenting(purpose: str) -> set[str]:
    """Contributors whose latest consent event for ``purpose`` is a consent."""
    latest: dict[str, bool] = {}
    for contributor, given in (
        ConsentEvent.objects.filter(purpose=purpose).order_by("at", "id").values_list("contributor", "given")
    ):
        latest[contributor] = given
    return {c for c, given in latest.items() if given}


@dataclass(frozen=True)
class EpisodeSplit:
    """A dataset's episodes for one study: training and held-out, consent applied to both."""

    train: list[int]
    holdout: list[int]
    excluded: list[int]

    def train_frames(self, lengths: dict[int, int]) -> int:
        return sum(lengths.get(e, 0) for e in self.train)


def split_episodes(ds: Dataset, plan: Plan) -> EpisodeSplit:
    """Held-out episodes are a seeded choice over *all* episodes (stable when consent changes);
    episodes of contributors without consent for the plan's purpose are excluded from both."""
    who = ds.contributors()
    allowed = consenting(plan.purpose)
    order = np.random.default_rng([plan.seed, 17]).permutation(ds.num_episodes).tolist()
    n_hold = math.ceil(plan.holdout_fraction * ds.num_episodes) if ds.num_episodes > 1 else 0
    holdout = set(order[:n_hold])
    excluded = sorted(e for e in range(ds.num_episodes) if who.get(e) not in allowed)
    keep = set(range(ds.num_episodes)) - set(excluded)
    return EpisodeSplit(sorted(keep - holdout), sorted(keep & holdout), excluded)


def training_units(ds: Dataset, plan: Plan, split: EpisodeSplit) -> int:
    """The privacy units a study trains on: episodes, or frames for frame-level DP."""
    if plan.dp.unit == "episode":
        return len(split.train)
    lengths = ds.summary.get("episode_lengths") or {}
    return sum(int(lengths.get(str(e), 0)) for e in split.train) or len(split.train)

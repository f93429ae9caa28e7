"""The interface of a round mode: how a study's updates travel and are summed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from common.protocol import Plan
from orchestrator.models import Round, Study


class RoundMode[Sum](ABC):
    """One aggregation mode, called by the round engine one step at a time.

    Every method works from persisted state only (the engine may be restarted between any
    two calls) and changes a study through :mod:`orchestrator.studies`.
    """

    name: ClassVar[str]
    #: sums go through secure sessions (``/api/secure/...``): plaintext updates are refused
    secure: ClassVar[bool]

    @abstractmethod
    def check_proposal(self, plan: Plan, n_sites: int) -> None:
        """Refuse (``ServiceError``) a plan this mode cannot run with ``n_sites`` named sites."""

    @abstractmethod
    def prepare(self, study: Study) -> None:
        """One step of preparing a study whose sites approved: pooled normalization statistics,
        keys, initial weights; once done, the study runs round 1 (``studies.initialise``)."""

    @abstractmethod
    def drive(self, study: Study, rnd: Round) -> Sum | None:
        """One step of a running round; the survivors' sum once it is formed, else None."""

    @abstractmethod
    def close(self, study: Study, rnd: Round, total: Sum) -> None:
        """Apply the sum to the global model and finish the round (``studies.finish_round``), or
        fail the study when the sum cannot be used."""

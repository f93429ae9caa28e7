"""The ``plain`` mode: each site uploads its update in the clear; the orchestrator averages
them, optionally with a Byzantine-robust rule (:mod:`privacy.robust`).

Statistics are pooled from each site's own statistics. A round is collected from the
uploads (:func:`orchestrator.services.receive_upload`) until every participant reported or
the round deadline passed; the assignment is re-sent meanwhile to the silent sites. Every
mode's evaluation round (no update, metrics only) runs here too.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.utils import timezone

from common.errors import ServiceError
from common.protocol import Plan
from orchestrator import checkpoints, studies
from orchestrator.models import Round, SiteUpdate, Study
from orchestrator.modes.base import RoundMode
from orchestrator.sites import SiteClient, SiteUnreachable
from orchestrator.tensors import from_bytes
from privacy.normstats import aggregate_stats
from privacy.robust import aggregate_robust, check_strategy, min_updates
from privacy.strategies import ClientResult, ServerHParams, aggregate_plain, server_update

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reported:
    """A round ready to close: the updates received, and the participants still silent."""

    updates: dict[str, SiteUpdate]
    waiting: list[str]


class PlainMode(RoundMode[Reported]):
    name = "plain"
    secure = False

    def check_proposal(self, plan: Plan, n_sites: int) -> None:
        """Refuse robust aggregation that cannot run: with FedNova, or with fewer sites per round
        than the rule needs to tolerate ``f`` Byzantine ones."""
        robust = plan.robust
        if robust.method == "none":
            return
        try:
            check_strategy(plan.strategy, robust.method)
        except ValueError as exc:
            raise ServiceError(str(exc)) from exc
        per_round = min(n_sites, max(plan.min_sites, math.ceil(plan.fraction * n_sites)))
        need = min_updates(robust.method, robust.f, robust.multikrum_m)
        if per_round < need:
            raise ServiceError(
                f"robust aggregation {robust.method} with f={robust.f} needs at least {need} sites per "
                f"round, this plan has {per_round}"
            )

    def prepare(self, study: Study) -> None:
        """Pool normalization statistics across sites, then fetch the data-free initial weights."""
        sites = studies.approved_sites(study)
        per_site = []
        for site in sites:
            with SiteClient(site.datasite) as client:
                try:
                    per_site.append(client.stats(study.pk))
                except SiteUnreachable as exc:
                    log.info("statistics of %s not available yet: %s", site.datasite.name, exc)
                    return
        pooled = aggregate_stats(
            [{k: {n: np.asarray(v) for n, v in by.items()} for k, by in s.items()} for s in per_site]
        )
        norm_stats = {k: {n: np.asarray(v).tolist() for n, v in by.items()} for k, by in pooled.items()}
        studies.update(study, norm_stats=norm_stats, phase="initialisation")
        studies.initialise(study, sites[0])

    def drive(self, study: Study, rnd: Round) -> Reported | None:
        reported = {u.datasite.name: u for u in rnd.updates.select_related("datasite")}
        waiting = [p for p in rnd.participants if p not in reported and p not in rnd.dropped]
        if waiting and timezone.now() < rnd.deadline:
            if studies.resend_due(rnd):
                studies.send_round(study, rnd)
            return None
        return Reported(reported, waiting)

    def close(self, study: Study, rnd: Round, total: Reported) -> None:
        plan = studies.plan_of(study)
        robust = plan.robust
        reported, waiting = total.updates, total.waiting
        ok = {name: u for name, u in reported.items() if not u.error}
        dropped = sorted(set(waiting) | set(rnd.dropped) | {name for name, u in reported.items() if u.error})
        needed = plan.min_sites
        if not rnd.eval_only:  # a robust rule needs enough updates to outvote f Byzantine ones
            needed = max(needed, min_updates(robust.method, robust.f, robust.multikrum_m))
        if len(ok) < needed:
            errors = "; ".join(f"{n}: {u.error}" for n, u in reported.items() if u.error)
            studies.fail_round(
                study,
                rnd,
                f"round {rnd.number}: {len(ok)} site(s) answered, {needed} needed"
                + (f" by robust {robust.method} with f={robust.f}" if needed > plan.min_sites else "")
                + (f" ({errors})" if errors else "")
                + (f"; timed out: {', '.join(waiting)}" if waiting else ""),
                dropped,
            )
            return
        metrics = {**rnd.metrics, **studies.round_metrics(ok)}
        studies.update(study, phase="aggregate")
        if not rnd.eval_only:
            weights, state = checkpoints.load(study.pk, rnd.number - 1)
            names = sorted(ok)
            results = [
                ClientResult(
                    from_bytes(Path(u.path).read_bytes()), max(1, u.num_examples), max(1, u.local_steps)
                )
                for u in (ok[n] for n in names)
            ]
            if robust.method == "none":
                avg = aggregate_plain(results, plan.strategy)
            else:
                agg = aggregate_robust(results, plan.strategy, robust.method, robust.f, robust.multikrum_m)
                avg = agg.update
                metrics["robust"] = {"method": robust.method, "f": robust.f}
                if agg.selected is not None:  # Krum / Multi-Krum: which sites were kept (names only)
                    metrics["robust"]["selected"] = sorted(names[i] for i in agg.selected)
            new_weights, new_state = server_update(
                plan.strategy, weights, avg, state, ServerHParams.from_dict(plan.server)
            )
            checkpoints.save(study.pk, rnd.number, new_weights, new_state)
        studies.finish_round(study, rnd, sorted(ok), dropped, metrics)

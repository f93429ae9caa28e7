"""The state of studies and rounds: every change of a study's or a round's persisted state, and the public
surface of the round engine that the round modes (:mod:`orchestrator.modes`) build on.

A study moves proposed → awaiting_approval → preparing → running (round r, phase) →
finished, or failed / cancelled. Each status change is an audit event, written in the same
transaction as the change. Nothing lives only in memory, so an orchestrator killed at any
point resumes from its last checkpoint: a round in progress is re-sent (:func:`send_round`)
to the sites that have not answered, and they answer idempotently.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import numpy as np
from django.db import transaction
from django.utils import timezone

from audit import trail
from common.protocol import Plan
from orchestrator import checkpoints
from orchestrator.models import Round, SiteUpdate, Study, StudySite
from orchestrator.sites import SiteClient, SiteUnreachable
from orchestrator.tensors import from_bytes, manifest_of
from privacy.strategies import ServerState

log = logging.getLogger(__name__)
RESEND_EVERY = timedelta(seconds=20)


def plan_of(study: Study) -> Plan:
    return Plan.model_validate(study.plan)


def approved_sites(study: Study) -> list[StudySite]:
    return list(study.sites.select_related("datasite").filter(status=StudySite.Status.APPROVED))


# ----------------------------------------------------------------------------- the study


def fail(study: Study, reason: str) -> None:
    """End ``study`` as failed, with ``reason``."""
    log.warning("study %s failed: %s", study.pk, reason)
    with transaction.atomic():
        Study.objects.filter(pk=study.pk).update(
            status=Study.Status.FAILED, error=reason, finished_at=timezone.now()
        )
        trail.record("study.failed", trail.SYSTEM, f"study:{study.pk}", {"reason": reason})


def update(study: Study, **fields) -> None:
    """Persist state-machine fields (``phase``, ``status``, ...); a status change is an audit event."""
    old = Study.objects.values_list("status", flat=True).get(pk=study.pk)
    for key, value in fields.items():
        setattr(study, key, value)
    with transaction.atomic():
        study.save(update_fields=[*fields, "updated_at"])
        if study.status != old:
            trail.record(
                f"study.{study.status}", trail.SYSTEM, f"study:{study.pk}", {"round": study.current_round}
            )


def initialise(study: Study, site: StudySite) -> bool:
    """Fetch the data-free initial weights from ``site`` (with the pooled statistics), checkpoint
    them as round 0 and start round 1; False while the site does not answer."""
    with SiteClient(site.datasite) as client:
        try:
            weights = from_bytes(client.initial_weights(study.pk, study.norm_stats))
        except SiteUnreachable as exc:
            log.info("initial weights not available yet: %s", exc)
            return False
    checkpoints.save(study.pk, 0, weights, ServerState(strategy=plan_of(study).strategy))
    update(study, manifest=manifest_of(weights), status=Study.Status.RUNNING, current_round=1, phase="train")
    return True


# ----------------------------------------------------------------------------- rounds


def _participants(study: Study, number: int) -> list[str]:
    plan = plan_of(study)
    names = sorted(s.datasite.name for s in approved_sites(study))
    k = max(plan.min_sites, int(np.ceil(plan.fraction * len(names))))
    rng = np.random.default_rng([plan.seed, number])
    return sorted(rng.choice(names, size=min(k, len(names)), replace=False).tolist())


def open_round(study: Study, number: int) -> Round:
    """Create round ``number`` (its participants drawn from the plan's seed) and send it."""
    plan = plan_of(study)
    eval_only = number > plan.rounds
    with transaction.atomic():
        rnd = Round.objects.create(
            study=study,
            number=number,
            eval_only=eval_only,
            participants=_participants(study, number),
            deadline=timezone.now() + timedelta(seconds=plan.round_timeout_s),
        )
        trail.record(
            "round.started",
            trail.SYSTEM,
            f"study:{study.pk}",
            {"round": number, "participants": rnd.participants, "eval_only": eval_only},
        )
    update(study, phase="evaluate" if eval_only else "train")
    send_round(study, rnd)
    return rnd


def resend_due(rnd: Round) -> bool:
    """Whether the round's assignment is due to be sent again to the sites still silent."""
    return rnd.last_sent_at is None or timezone.now() - rnd.last_sent_at > RESEND_EVERY


def send_round(study: Study, rnd: Round) -> None:
    """(Re)send the assignment to every participant that has not reported yet."""
    weights = checkpoints.weights_bytes(study.pk, rnd.number - 1)
    assignment = {
        "study": study.pk,
        "round": rnd.number,
        "code_sha256": study.code_sha256,
        "plan_sha256": study.plan_sha256,
        "norm_stats": study.norm_stats,
        "eval_only": rnd.eval_only,
    }
    reported = set(rnd.updates.values_list("datasite__name", flat=True))
    for site in approved_sites(study):
        name = site.datasite.name
        if name not in rnd.participants or name in reported or name in rnd.dropped:
            continue
        with SiteClient(site.datasite) as client:
            try:
                client.assign(study.pk, rnd.number, assignment, weights)
            except SiteUnreachable as exc:
                log.info("round %s not delivered to %s: %s", rnd.number, name, exc)
                if 400 <= exc.status < 500:  # the site refuses: drop it from this round now
                    rnd.dropped = sorted({*rnd.dropped, name})
                    rnd.metrics = {
                        **rnd.metrics,
                        "refusals": {**rnd.metrics.get("refusals", {}), name: str(exc)},
                    }
    rnd.last_sent_at = timezone.now()
    rnd.save(update_fields=["last_sent_at", "dropped", "metrics"])


def fail_round(study: Study, rnd: Round, reason: str, dropped: list[str] | None = None) -> None:
    """Mark ``rnd`` failed (with the sites dropped, if given) and fail the study."""
    fields = {"dropped": dropped} if dropped is not None else {}
    Round.objects.filter(pk=rnd.pk).update(status=Round.Status.FAILED, finished_at=timezone.now(), **fields)
    fail(study, reason)


def finish_round(
    study: Study, rnd: Round, aggregated: list[str], dropped: list[str], metrics: dict, **audit_extra
) -> None:
    """Mark a closed round done, record it, and move the study on (or finish it after the
    evaluation round); the caller's own state changes may share the transaction."""
    with transaction.atomic():
        Round.objects.filter(pk=rnd.pk).update(
            status=Round.Status.DONE, dropped=dropped, metrics=metrics, finished_at=timezone.now()
        )
        trail.record(
            "round.finished",
            trail.SYSTEM,
            f"study:{study.pk}",
            {
                "round": rnd.number,
                "aggregated": aggregated,
                "dropped": dropped,
                **audit_extra,
                "heldout_loss": metrics.get("heldout_loss"),
            },
        )
        if rnd.eval_only:
            Study.objects.filter(pk=study.pk).update(
                status=Study.Status.FINISHED, phase="", finished_at=timezone.now()
            )
            trail.record("study.finished", trail.SYSTEM, f"study:{study.pk}", {"rounds": rnd.number - 1})
        else:
            Study.objects.filter(pk=study.pk).update(current_round=rnd.number + 1, phase="train")


def round_metrics(ok: dict[str, SiteUpdate]) -> dict:
    """Per-site losses and ε, and the global held-out loss of the model the round started from."""
    sites = {name: u.metrics for name, u in sorted(ok.items())}
    held = [
        (m["heldout_loss"], m.get("holdout_episodes", 1))
        for m in sites.values()
        if m.get("heldout_loss") is not None
    ]
    total = sum(w for _, w in held)
    return {
        "sites": sites,
        "heldout_loss": sum(loss * w for loss, w in held) / total if total else None,
        "epsilon": {f"{name}/{m.get('dataset')}": m.get("epsilon_spent") for name, m in sites.items()},
        "num_examples": {name: u.num_examples for name, u in sorted(ok.items())},
    }

"""The round engine: drives every active study one step at a time from database state.

Each call of :func:`advance` looks at a study's persisted state and does the next piece of
work (send code requests, collect decisions, pool statistics, start a round, close a round).
Nothing lives only in memory, so an orchestrator killed at any point resumes from its last
checkpoint when it starts again: a round in progress is re-sent to the sites that have not
answered, and the sites answer idempotently with what they already computed.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
from django.db import close_old_connections, transaction
from django.utils import timezone

from audit import trail
from common.protocol import Plan
from orchestrator import checkpoints
from orchestrator.models import Round, SiteUpdate, Study, StudySite
from orchestrator.sites import SiteClient, SiteUnreachable
from orchestrator.tensors import from_bytes, manifest_of
from privacy.normstats import aggregate_stats
from privacy.robust import aggregate_robust, min_updates
from privacy.strategies import ClientResult, ServerHParams, ServerState, aggregate_plain, server_update

log = logging.getLogger(__name__)
RESEND_EVERY = timedelta(seconds=20)


def plan_of(study: Study) -> Plan:
    return Plan.model_validate(study.plan)


def _fail(study: Study, reason: str) -> None:
    log.warning("study %s failed: %s", study.pk, reason)
    with transaction.atomic():
        Study.objects.filter(pk=study.pk).update(
            status=Study.Status.FAILED, error=reason, finished_at=timezone.now()
        )
        trail.record("study.failed", trail.SYSTEM, f"study:{study.pk}", {"reason": reason})


def _set(study: Study, **fields) -> None:
    """Persist state-machine fields; a status change is an audit event."""
    old = Study.objects.values_list("status", flat=True).get(pk=study.pk)
    for key, value in fields.items():
        setattr(study, key, value)
    with transaction.atomic():
        study.save(update_fields=[*fields, "updated_at"])
        if study.status != old:
            trail.record(
                f"study.{study.status}", trail.SYSTEM, f"study:{study.pk}", {"round": study.current_round}
            )


def advance(study: Study) -> None:
    """Do the next step of ``study``."""
    step = {
        Study.Status.PROPOSED: _send_requests,
        Study.Status.AWAITING_APPROVAL: _collect_decisions,
        Study.Status.PREPARING: _prepare,
        Study.Status.RUNNING: _drive_round,
    }.get(study.status)
    if step is not None:
        step(study)


# ----------------------------------------------------------------------------- approval


def _request_body(study: Study, site: StudySite) -> dict:
    return {
        "study": study.pk,
        "version": study.version,
        "title": study.title,
        "researcher": study.researcher.get_username(),
        "code": study.code,
        "code_sha256": study.code_sha256,
        "plan": study.plan,
        "datasets": [site.dataset],
        "sites": [s.datasite.name for s in study.sites.select_related("datasite")],
        # secure aggregation: members' signing keys, pinned by the site with the approved request
        "site_keys": {
            s.datasite.name: s.datasite.signing_key for s in study.sites.select_related("datasite")
        },
    }


def _send_requests(study: Study) -> None:
    for site in study.sites.select_related("datasite").filter(request_sent_at__isnull=True):
        with SiteClient(site.datasite) as client:
            try:
                client.send_code_request(_request_body(study, site))
            except SiteUnreachable as exc:
                site.status, site.reason = StudySite.Status.UNREACHABLE, str(exc)
                site.save()
                continue
        site.request_sent_at = timezone.now()
        site.status, site.reason = StudySite.Status.PENDING, ""
        site.save()
    if not study.sites.filter(request_sent_at__isnull=True).exists():
        _set(study, status=Study.Status.AWAITING_APPROVAL, phase="approval")


def _collect_decisions(study: Study) -> None:
    plan = plan_of(study)
    for site in study.sites.select_related("datasite").filter(status=StudySite.Status.PENDING):
        with SiteClient(site.datasite) as client:
            try:
                answer = client.code_request(study.pk)
            except SiteUnreachable as exc:
                log.info("decision of %s not available: %s", site.datasite.name, exc)
                continue
        if answer["code_sha256"] != study.code_sha256:
            continue
        eps = answer["projected_epsilon"].get(site.dataset)
        site.projected_epsilon = None if eps is None or eps < 0 else eps
        site.episodes = answer.get("episodes", {}).get(site.dataset)
        if answer["status"] in ("approved", "denied", "revoked"):
            site.status = answer["status"]
            site.reason = answer.get("reason", "")
        site.save()
    sites = list(study.sites.all())
    approved = [s for s in sites if s.status == StudySite.Status.APPROVED]
    if any(s.status == StudySite.Status.PENDING for s in sites):
        if len(approved) + sum(s.status == StudySite.Status.PENDING for s in sites) < plan.min_sites:
            _fail(study, f"only {len(approved)} site(s) can still approve; the plan needs {plan.min_sites}")
        return
    if len(approved) < plan.min_sites:
        _fail(study, f"{len(approved)} site(s) approved; the plan needs at least {plan.min_sites}")
        return
    _set(study, status=Study.Status.PREPARING, phase="statistics")


# ----------------------------------------------------------------------------- preparation


def _approved_sites(study: Study) -> list[StudySite]:
    return list(study.sites.select_related("datasite").filter(status=StudySite.Status.APPROVED))


def _prepare(study: Study) -> None:
    """Pool normalization statistics across sites, then fetch the data-free initial weights."""
    if study.plan.get("aggregation", "plain") != "plain":  # --- secure aggregation hook ---
        from orchestrator import secure_rounds

        return secure_rounds.prepare(study)
    sites = _approved_sites(study)
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
    _set(study, norm_stats=norm_stats, phase="initialisation")
    with SiteClient(sites[0].datasite) as client:
        try:
            weights = from_bytes(client.initial_weights(study.pk, norm_stats))
        except SiteUnreachable as exc:
            log.info("initial weights not available yet: %s", exc)
            return
    checkpoints.save(study.pk, 0, weights, ServerState(strategy=plan_of(study).strategy))
    _set(study, manifest=manifest_of(weights), status=Study.Status.RUNNING, current_round=1, phase="train")


# ----------------------------------------------------------------------------- rounds


def _participants(study: Study, number: int) -> list[str]:
    plan = plan_of(study)
    names = sorted(s.datasite.name for s in _approved_sites(study))
    k = max(plan.min_sites, int(np.ceil(plan.fraction * len(names))))
    rng = np.random.default_rng([plan.seed, number])
    return sorted(rng.choice(names, size=min(k, len(names)), replace=False).tolist())


def _send_round(study: Study, rnd: Round) -> None:
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
    for site in _approved_sites(study):
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


def _drive_round(study: Study) -> None:
    plan = plan_of(study)
    number = study.current_round
    eval_only = number > plan.rounds
    rnd = Round.objects.filter(study=study, number=number).first()
    if rnd is None:
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
        _set(study, phase="evaluate" if eval_only else "train")
        _send_round(study, rnd)
        return
    # --- secure aggregation hook: secure training rounds run their phases in orchestrator.secure_rounds ---
    if study.plan.get("aggregation", "plain") != "plain" and not rnd.eval_only:
        from orchestrator import secure_rounds

        return secure_rounds.drive(study, rnd)
    reported = {u.datasite.name: u for u in rnd.updates.select_related("datasite")}
    waiting = [p for p in rnd.participants if p not in reported and p not in rnd.dropped]
    if waiting and timezone.now() < rnd.deadline:
        if rnd.last_sent_at is None or timezone.now() - rnd.last_sent_at > RESEND_EVERY:
            _send_round(study, rnd)
        return
    _close_round(study, rnd, reported, waiting)


def _close_round(study: Study, rnd: Round, reported: dict[str, SiteUpdate], waiting: list[str]) -> None:
    plan = plan_of(study)
    robust = plan.robust
    ok = {name: u for name, u in reported.items() if not u.error}
    dropped = sorted(set(waiting) | set(rnd.dropped) | {name for name, u in reported.items() if u.error})
    needed = plan.min_sites
    if not rnd.eval_only:  # a robust rule needs enough updates to outvote f Byzantine ones
        needed = max(needed, min_updates(robust.method, robust.f, robust.multikrum_m))
    if len(ok) < needed:
        Round.objects.filter(pk=rnd.pk).update(
            status=Round.Status.FAILED, dropped=dropped, finished_at=timezone.now()
        )
        errors = "; ".join(f"{n}: {u.error}" for n, u in reported.items() if u.error)
        _fail(
            study,
            f"round {rnd.number}: {len(ok)} site(s) answered, {needed} needed"
            + (f" by robust {robust.method} with f={robust.f}" if needed > plan.min_sites else "")
            + (f" ({errors})" if errors else "")
            + (f"; timed out: {', '.join(waiting)}" if waiting else ""),
        )
        return
    metrics = {**rnd.metrics, **_round_metrics(ok)}
    _set(study, phase="aggregate")
    if not rnd.eval_only:
        weights, state = checkpoints.load(study.pk, rnd.number - 1)
        names = sorted(ok)
        results = [
            ClientResult(from_bytes(Path(u.path).read_bytes()), max(1, u.num_examples), max(1, u.local_steps))
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
    finish_round(study, rnd, sorted(ok), dropped, metrics)


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


def _round_metrics(ok: dict[str, SiteUpdate]) -> dict:
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


# ----------------------------------------------------------------------------- the loop


def run_forever(poll: float = 1.0, stop=None) -> None:
    """Advance every active study until ``stop`` (a threading.Event) is set."""
    while stop is None or not stop.is_set():
        close_old_connections()
        for study in Study.objects.filter(status__in=Study.ACTIVE).select_related("researcher"):
            try:
                advance(study)
            except Exception:
                log.exception("engine step failed for study %s; retrying", study.pk)
        if stop is not None:
            stop.wait(poll)
        else:
            time.sleep(poll)

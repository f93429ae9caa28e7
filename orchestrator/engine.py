"""The round engine: drives every active study one step at a time from database state.

Each call of :func:`advance` looks at a study's persisted state and does the next piece of
work: send code requests, collect decisions, then hand the study to its round mode
(:mod:`orchestrator.modes`) to prepare it (statistics, keys, initial weights), and open,
drive and close each round. The engine never asks which mode it runs. Nothing lives only in
memory, so an orchestrator killed at any point resumes from its last checkpoint when it
starts again: a round in progress is re-sent to the sites that have not answered, and the
sites answer idempotently with what they already computed. State changes go through
:mod:`orchestrator.studies`.
"""

from __future__ import annotations

import logging
import time

from django.db import close_old_connections
from django.utils import timezone

from orchestrator import modes, studies
from orchestrator.models import Round, Study, StudySite
from orchestrator.sites import SiteClient, SiteUnreachable

log = logging.getLogger(__name__)


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
        studies.update(study, status=Study.Status.AWAITING_APPROVAL, phase="approval")


def _collect_decisions(study: Study) -> None:
    plan = studies.plan_of(study)
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
            studies.fail(
                study, f"only {len(approved)} site(s) can still approve; the plan needs {plan.min_sites}"
            )
        return
    if len(approved) < plan.min_sites:
        studies.fail(study, f"{len(approved)} site(s) approved; the plan needs at least {plan.min_sites}")
        return
    studies.update(study, status=Study.Status.PREPARING, phase="statistics")


# ----------------------------------------------------------------------------- preparation, rounds


def _prepare(study: Study) -> None:
    modes.of(study).prepare(study)


def _drive_round(study: Study) -> None:
    rnd = Round.objects.filter(study=study, number=study.current_round).first()
    if rnd is None:
        studies.open_round(study, study.current_round)
        return
    mode = modes.for_round(study, rnd)
    total = mode.drive(study, rnd)
    if total is not None:
        mode.close(study, rnd, total)


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

"""Orchestrator services: proposing studies, receiving round uploads, reading results.

The round engine (:mod:`orchestrator.engine`) drives studies forward; these functions are
what the API calls. Every refusal is a :class:`common.errors.ServiceError` carrying its HTTP
status; the API answers it as ``{"detail": ...}`` with that status.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit import trail
from common.errors import Conflict, NotFound, ServiceError, TooLarge
from common.protocol import CodeBundle, Plan, RoundUpload, bundle_sha256, plan_sha256
from common.roles import NODE_ADMIN, has_role
from orchestrator import checkpoints, modes
from orchestrator.models import Datasite, Round, SiteUpdate, Study, StudySite
from orchestrator.tensors import TensorError, check, expected_bytes, from_bytes
from privacy.strategies import ServerHParams


def propose(researcher, title: str, code: CodeBundle, plan: Plan, datasets: dict[str, str]) -> Study:
    """Register a study; the engine sends each site its code request."""
    if not datasets:
        raise ServiceError("name at least one site and its dataset")
    sites = {s.name: s for s in Datasite.objects.filter(name__in=datasets, status=Datasite.Status.JOINED)}
    unknown = sorted(set(datasets) - set(sites))
    if unknown:
        raise ServiceError(f"not joined datasites: {', '.join(unknown)}")
    if plan.min_sites > len(datasets):
        raise ServiceError(f"min_sites={plan.min_sites} but only {len(datasets)} sites are named")
    modes.get(plan.aggregation).check_proposal(plan, len(datasets))
    try:
        ServerHParams.from_dict(plan.server)
    except (TypeError, ValueError) as exc:
        raise ServiceError(f"server hyperparameters: {exc}") from exc
    with transaction.atomic():
        study = Study.objects.create(
            title=title,
            researcher=researcher,
            code=code.model_dump(),
            code_sha256=bundle_sha256(code),
            plan=plan.model_dump(),
            plan_sha256=plan_sha256(plan),
        )
        for name, dataset in sorted(datasets.items()):
            StudySite.objects.create(study=study, datasite=sites[name], dataset=dataset)
        trail.record(
            "study.proposed",
            researcher,
            f"study:{study.pk}",
            {
                "title": title,
                "code_sha256": study.code_sha256,
                "plan_sha256": study.plan_sha256,
                "datasets": datasets,
            },
        )
    return study


def get_study(study_id: str, user=None) -> Study:
    study = Study.objects.filter(pk=study_id).first()
    if study is None or (user is not None and not _may_read(user, study)):
        raise NotFound(f"no study {study_id}")
    return study


def _may_read(user, study: Study) -> bool:
    return study.researcher_id == user.pk or has_role(user, NODE_ADMIN)


def cancel(study: Study) -> Study:
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study.pk)
        if study.status not in Study.ACTIVE:
            raise Conflict(f"the study is already {study.status}")
        study.status = Study.Status.CANCELLED
        study.finished_at = timezone.now()
        study.save()
        trail.record("study.cancelled", None, f"study:{study.pk}", {"round": study.current_round})
    return study


def upload_limit(study: Study) -> int:
    return (
        expected_bytes(study.manifest) + 64 * 1024 if study.manifest else settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    )


def receive_upload(
    site: Datasite, study_id: str, round_number: int, meta: RoundUpload, update: bytes | None
) -> SiteUpdate:
    """Accept one site's result for the current round; anything replayed, late, out of order
    or malformed is refused and changes nothing."""
    if meta.study != study_id or meta.round != round_number or meta.site != site.name:
        raise ServiceError("the upload's study, round or site do not match the URL and token")
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        raise NotFound(f"no study {study_id}")
    rnd = Round.objects.filter(study=study, number=round_number).first()
    if study.status != Study.Status.RUNNING or rnd is None or study.current_round != round_number:
        raise Conflict(f"round {round_number} is not the study's current round")
    if rnd.status != Round.Status.RUNNING:
        raise Conflict(f"round {round_number} is closed")
    if site.name not in rnd.participants or site.name in rnd.dropped:
        raise Conflict(f"{site.name} is not a participant of round {round_number} (late or dropped)")
    if SiteUpdate.objects.filter(round=rnd, datasite=site).exists():
        raise Conflict(f"{site.name} already reported round {round_number}")
    if update is not None and modes.of(study).secure:
        raise ServiceError("this study aggregates securely: plaintext updates are refused")
    path = ""
    if not meta.error and not rnd.eval_only:
        if update is None:
            raise ServiceError("the update file is missing")
        if len(update) > upload_limit(study):
            raise TooLarge("the update is larger than the study's model")
        try:
            check(from_bytes(update), study.manifest)
        except TensorError as exc:
            raise ServiceError(f"rejected update: {exc}") from exc
        folder = checkpoints.study_dir(study.pk) / "updates" / f"round-{round_number:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{site.name}.safetensors"
        target.write_bytes(update)
        path = str(target)
    try:
        with transaction.atomic():
            saved = SiteUpdate.objects.create(
                round=rnd,
                datasite=site,
                num_examples=meta.num_examples,
                local_steps=meta.local_steps,
                metrics=meta.metrics,
                error=meta.error,
                path=path,
            )
            trail.record(
                "round.update_received",
                f"node:{site.name}",
                f"study:{study_id}",
                {"round": round_number, "error": meta.error, "bytes": len(update or b"")},
            )
            return saved
    except IntegrityError as exc:
        raise Conflict(f"{site.name} already reported round {round_number}") from exc


def status(study: Study) -> dict:
    return {
        "id": study.pk,
        "title": study.title,
        "status": study.status,
        "round": study.current_round,
        "rounds": study.plan["rounds"],
        "phase": study.phase,
        "error": study.error,
        "sites": [
            {
                "name": s.datasite.name,
                "dataset": s.dataset,
                "status": s.status,
                "reason": s.reason,
                "projected_epsilon": s.projected_epsilon,
            }
            for s in study.sites.select_related("datasite")
        ],
        "code_sha256": study.code_sha256,
        "created_at": study.created_at.isoformat(),
        "finished_at": study.finished_at.isoformat() if study.finished_at else None,
    }


def metrics(study: Study) -> list[dict]:
    return [
        {
            "round": r.number,
            "eval_only": r.eval_only,
            "status": r.status,
            "participants": r.participants,
            "dropped": r.dropped,
            **r.metrics,
        }
        for r in study.rounds.all()
    ]


def model_path(study: Study) -> Path:
    """The latest checkpointed global weights."""
    done = study.rounds.filter(status=Round.Status.DONE, eval_only=False).order_by("-number").first()
    number = done.number if done else 0
    if not checkpoints.exists(study.pk, number):
        raise NotFound("no model yet: the study has not been initialised")
    return checkpoints.study_dir(study.pk) / "checkpoints" / f"round-{number:05d}.safetensors"

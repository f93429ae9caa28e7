"""Datasite services: datasets, consent, code requests and approval, round execution.

Views and tasks stay thin and call these functions; every multi-row change happens in one
transaction here. Nothing a site sends out contains private values except the round update
(and, in ``plain`` mode, the site's normalization statistics).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import Max
from django.utils import timezone
from pydantic import ValidationError

from audit import trail
from common.errors import Conflict, Forbidden, NotFound, ServiceError
from common.protocol import (
    PURPOSE_PATTERN,
    CodeRequestIn,
    CodeRequestOut,
    Plan,
    RoundAssignment,
    RoundUpload,
    bundle_sha256,
    plan_sha256,
)
from datasite import budget
from datasite.models import CodeRequest, ConsentEvent, Dataset, OrchestratorLink, RoundRun
from privacy.accounting import Mechanism

log = logging.getLogger(__name__)
LEASE = timedelta(seconds=float(getattr(settings, "FEDSILO_LEASE_SECONDS", 60)))
MAX_WEIGHTS_BYTES = 2 * 1024**3


class LeaseHeld(Exception):
    """Another worker is running this round; retry after ``seconds``."""

    def __init__(self, seconds: float):
        super().__init__(f"round is being run by another worker; retry in {seconds:.0f}s")
        self.seconds = seconds


# ----------------------------------------------------------------------------- datasets


def register_dataset(name: str, root: str | Path, epsilon_max: float, delta: float, user=None) -> Dataset:
    """Validate a LeRobot SO-100 dataset folder and register it with its privacy budget."""
    from datasite.training.dataset import DatasetError, mock_preview, validate_dataset

    if Dataset.objects.filter(name=name).exists():
        raise Conflict(f"a dataset named {name!r} is already registered")
    if not (math.isfinite(epsilon_max) and epsilon_max > 0):
        raise ServiceError("epsilon_max must be a positive number")
    if not 0 < delta < 1:
        raise ServiceError("delta must be between 0 and 1")
    try:
        summary = validate_dataset(Path(root))
    except DatasetError as exc:
        raise ServiceError(str(exc)) from exc
    with transaction.atomic():
        ds = Dataset.objects.create(
            name=name,
            root=summary.root,
            repo_id=summary.repo_id,
            summary=summary.to_dict(),
            mock=mock_preview(summary),
            num_episodes=summary.num_episodes,
            num_frames=summary.num_frames,
            epsilon_max=epsilon_max,
            delta=delta,
            registered_by=user,
        )
        trail.record(
            "dataset.registered",
            user,
            f"dataset:{name}",
            {
                "root": summary.root,
                "episodes": summary.num_episodes,
                "frames": summary.num_frames,
                "epsilon_max": epsilon_max,
                "delta": delta,
            },
        )
    return ds


def public_dataset(ds: Dataset) -> dict[str, Any]:
    """What other parties may see: schema, counts, statistics *shape*, the mock. No values."""
    s = ds.summary
    return {
        "name": ds.name,
        "robot_type": s["robot_type"],
        "fps": s["fps"],
        "num_episodes": ds.num_episodes,
        "num_frames": ds.num_frames,
        "num_contributors": len(set(s["contributors"].values())),
        "features": s["features"],
        "cameras": s["cameras"],
        "stats_shape": {k: {n: list(np.shape(v)) for n, v in by.items()} for k, by in s["stats"].items()},
        "mock": ds.mock,
    }


# ----------------------------------------------------------------------------- consent


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
    if plan.dp.unit == "episode":
        return len(split.train)
    lengths = ds.summary.get("episode_lengths") or {}
    return sum(int(lengths.get(str(e), 0)) for e in split.train) or len(split.train)


# ----------------------------------------------------------------------------- code requests


def receive_code_request(body: CodeRequestIn) -> CodeRequest:
    """Store a code request from the orchestrator (a new version supersedes a pending one)."""
    if bundle_sha256(body.code) != body.code_sha256:
        raise ServiceError("code_sha256 does not match the code bundle")
    if body.code.kind == "module":
        from datasite.training.modules import ModuleCodeError, validate_source

        try:  # a review aid, not a sandbox: the data owner's approval is the control
            validate_source(body.code.source, body.code.entry)
        except ModuleCodeError as exc:
            raise ServiceError(str(exc)) from exc
    if settings.NODE_NAME not in body.sites:
        raise ServiceError(f"this site ({settings.NODE_NAME}) is not among the study's sites")
    from datasite.secure_rounds import check_code_request  # --- secure aggregation hook ---

    check_code_request(body)
    if len(body.datasets) != 1:
        raise ServiceError("a study uses exactly one dataset per site in this version")
    datasets = list(Dataset.objects.filter(name__in=body.datasets))
    missing = sorted(set(body.datasets) - {d.name for d in datasets})
    if missing:
        raise ServiceError(f"unknown dataset(s) at this site: {', '.join(missing)}")
    with transaction.atomic():
        if CodeRequest.objects.filter(study=body.study, version=body.version).exists():
            raise Conflict(f"study {body.study} version {body.version} was already received")
        latest = CodeRequest.objects.filter(study=body.study).aggregate(v=Max("version"))["v"]
        if latest is not None and body.version < latest:
            raise Conflict(f"version {body.version} is older than version {latest} already received")
        CodeRequest.objects.filter(study=body.study, status=CodeRequest.Status.PENDING).update(
            status=CodeRequest.Status.SUPERSEDED
        )
        request = CodeRequest.objects.create(
            study=body.study,
            version=body.version,
            title=body.title,
            researcher=body.researcher,
            code=body.code.model_dump(),
            code_sha256=body.code_sha256,
            plan=body.plan.model_dump(),
            plan_sha256=plan_sha256(body.plan),
            sites=body.sites,
            site_keys=body.site_keys,  # secure aggregation: the peers' keys the data owner approves
        )
        request.datasets.set(datasets)
        trail.record(
            "code_request.received",
            _orchestrator_name(),
            f"study:{body.study}",
            {
                "version": body.version,
                "code_sha256": body.code_sha256,
                "plan_sha256": request.plan_sha256,
                "researcher": body.researcher,
                "datasets": body.datasets,
            },
        )
    return request


def _orchestrator_name() -> str:
    link = OrchestratorLink.objects.first()
    return f"node:{link.name}" if link else "node:orchestrator"


def latest_request(study: str) -> CodeRequest:
    request = CodeRequest.objects.filter(study=study).order_by("-version").first()
    if request is None:
        raise NotFound(f"no code request for study {study}")
    return request


def plan_of(request: CodeRequest) -> Plan:
    return Plan.model_validate(request.plan)


def projection(request: CodeRequest) -> dict[str, float]:
    """Projected ε of each dataset after this study (by composition with its ledger)."""
    plan = plan_of(request)
    out = {}
    for ds in request.datasets.all():
        split = split_episodes(ds, plan)
        try:
            mech = budget.round_mechanism(plan, training_units(ds, plan, split))
            out[ds.name] = budget.projected(ds, mech, plan.rounds)
        except budget.BudgetError:
            out[ds.name] = math.inf
    return out


def describe(request: CodeRequest) -> CodeRequestOut:
    plan = plan_of(request)
    return CodeRequestOut(
        study=request.study,
        version=request.version,
        status=request.status,
        code_sha256=request.code_sha256,
        reason=request.reason,
        decided_by=request.decided_by.get_username() if request.decided_by else None,
        decided_at=request.decided_at.isoformat() if request.decided_at else None,
        projected_epsilon={k: (v if math.isfinite(v) else -1.0) for k, v in projection(request).items()},
        episodes={ds.name: len(split_episodes(ds, plan).train) for ds in request.datasets.all()},
    )


def decide(
    request: CodeRequest,
    user,
    approve: bool,
    code_sha256: str,
    reason: str = "",
    plan_sha256_seen: str | None = None,
) -> CodeRequest:
    """Approve (pin code and plan, reserve the budget) or deny, in one transaction.

    ``code_sha256`` (and ``plan_sha256_seen`` when given) are what the data owner was shown:
    if either changed since, nothing is decided.
    """
    with transaction.atomic():
        request = CodeRequest.objects.select_for_update().get(pk=request.pk)
        if request.status != CodeRequest.Status.PENDING:
            raise Conflict(f"this request is {request.status}, not pending")
        if code_sha256 != request.code_sha256:
            raise Conflict("the code changed since it was shown to you: review the new version")
        if plan_sha256_seen is not None and plan_sha256_seen != request.plan_sha256:
            raise Conflict("the plan changed since it was shown to you: review the new version")
        if not approve and not reason.strip():
            raise ServiceError("a denial needs a reason")
        if approve:
            plan = plan_of(request)
            # lock the datasets' rows: concurrent approvals serialize here and never overspend
            for ds in Dataset.objects.select_for_update().filter(code_requests=request).order_by("pk"):
                split = split_episodes(ds, plan)
                try:
                    mech = budget.round_mechanism(plan, training_units(ds, plan, split))
                    eps = budget.reserve(ds, request.study, mech, plan.rounds)
                except budget.BudgetError as exc:
                    raise Conflict(str(exc)) from exc
                trail.record(
                    "budget.reserved",
                    user,
                    f"dataset:{ds.name}",
                    {
                        "study": request.study,
                        "mechanism": mech.to_dict(),
                        "rounds": plan.rounds,
                        "projected_epsilon": eps,
                    },
                )
        request.status = CodeRequest.Status.APPROVED if approve else CodeRequest.Status.DENIED
        request.decided_by = user
        request.decided_at = timezone.now()
        request.reason = reason
        request.save()
        trail.record(
            f"code_request.{request.status}",
            user,
            f"study:{request.study}",
            {
                "version": request.version,
                "code_sha256": request.code_sha256,
                "plan_sha256": request.plan_sha256,
                "reason": reason,
            },
        )
    return request


def revoke(request: CodeRequest, user, reason: str) -> CodeRequest:
    """Stop future rounds at this site and release the unused reservation."""
    with transaction.atomic():
        request = CodeRequest.objects.select_for_update().get(pk=request.pk)
        if request.status != CodeRequest.Status.APPROVED:
            raise Conflict(f"only an approved request can be revoked; this one is {request.status}")
        request.status = CodeRequest.Status.REVOKED
        request.reason = reason
        request.decided_by = user
        request.decided_at = timezone.now()
        request.save()
        trail.record(
            "code_request.revoked",
            user,
            f"study:{request.study}",
            {"version": request.version, "reason": reason},
        )
        for ds in request.datasets.all():
            budget.release(ds, request.study)
            trail.record("budget.released", user, f"dataset:{ds.name}", {"study": request.study})
    return request


def approved_request(study: str) -> CodeRequest:
    request = latest_request(study)
    if request.status != CodeRequest.Status.APPROVED:
        raise Forbidden(f"study {study} is not approved at this site (status: {request.status})")
    return request


# ----------------------------------------------------------------------------- preparation


def study_stats(study: str) -> dict[str, dict[str, list]]:
    """This site's normalization statistics over its training episodes (for pooling)."""
    from datasite.training.recipes import resolve_config
    from datasite.training.stats import site_stats

    request = approved_request(study)
    ds = request.datasets.get()
    split = split_episodes(ds, plan_of(request))
    code = _bundle(request)
    if code.kind == "module":  # validated, not executed: statistics need no researcher code
        resolve_config(code.base_recipe, code.base_config)
    else:
        resolve_config(code.recipe, code.config)
    keys = [
        k
        for k in ds.summary["features"]
        if k in ("observation.state", "action") or k.startswith("observation.images.")
    ]
    stats = site_stats(Path(ds.root), split.train, keys, seed=plan_of(request).seed)
    return {k: {n: np.asarray(v).tolist() for n, v in by.items()} for k, by in stats.items()}


def initial_weights(study: str, norm_stats: dict) -> bytes:
    """The code's seeded initial trainable weights (data-free) as safetensors."""
    from datasite.training.recipes import build_bundle
    from datasite.training.weights import save_safetensors, trainable_state

    request = approved_request(study)
    code = _verified_code(request)  # a module's source runs below: only the approved one
    ds = request.datasets.get()
    bundle = build_bundle(code, ds.summary["features"], norm_stats, device="cpu")
    return save_safetensors(trainable_state(bundle.policy))


# ----------------------------------------------------------------------------- rounds


def round_dir(study: str, round_number: int) -> Path:
    path = Path(settings.DATA_DIR) / "rounds" / study / f"{round_number:05d}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def accept_assignment(assignment: RoundAssignment, weights: bytes) -> tuple[RoundRun, bool]:
    """Record a round assignment (idempotent by study and round) and say whether to (re)run it."""
    request = approved_request(assignment.study)
    if assignment.code_sha256 != request.code_sha256 or assignment.plan_sha256 != request.plan_sha256:
        raise Forbidden("the code or plan of this round differs from what the data owner approved")
    if len(weights) > MAX_WEIGHTS_BYTES:
        raise ServiceError("global weights too large")
    plan = plan_of(request)
    if assignment.round > plan.rounds + 1:
        raise Conflict(f"round {assignment.round} is beyond the approved {plan.rounds} rounds")
    run = RoundRun.objects.filter(study=assignment.study, round=assignment.round).first()
    if run is not None:
        if run.assignment != assignment.model_dump():
            raise Conflict("this round was already assigned with other parameters")
        stale = run.status == RoundRun.Status.QUEUED or (
            run.status == RoundRun.Status.RUNNING and (run.lease_until or timezone.now()) <= timezone.now()
        )
        return run, stale or run.status == RoundRun.Status.DONE
    (round_dir(assignment.study, assignment.round) / "global.safetensors").write_bytes(weights)
    try:
        with transaction.atomic():
            run = RoundRun.objects.create(
                request=request,
                study=assignment.study,
                round=assignment.round,
                eval_only=assignment.eval_only,
                assignment=assignment.model_dump(),
            )
            trail.record(
                "round.assigned",
                _orchestrator_name(),
                f"study:{run.study}",
                {"round": run.round, "eval_only": run.eval_only},
            )
    except IntegrityError:  # a concurrent duplicate delivery won the race
        return RoundRun.objects.get(study=assignment.study, round=assignment.round), False
    return run, True


def _claim(run_id: int) -> RoundRun | None:
    """Mark a run as ours for one lease; None when it is already done."""
    with transaction.atomic():
        run = RoundRun.objects.select_for_update().get(pk=run_id)
        if run.status == RoundRun.Status.DONE:
            return None
        now = timezone.now()
        if run.status == RoundRun.Status.RUNNING and run.lease_until and run.lease_until > now:
            raise LeaseHeld((run.lease_until - now).total_seconds())
        run.status = RoundRun.Status.RUNNING
        run.attempts += 1
        run.started_at = now
        run.lease_until = now + LEASE
        run.error = ""
        run.save()
        trail.record(
            "round.started", trail.SYSTEM, f"study:{run.study}", {"round": run.round, "attempt": run.attempts}
        )
    return run


class _LeaseKeeper(threading.Thread):
    """Renews a run's lease while it trains, so a redelivered copy waits instead of training."""

    def __init__(self, run_id: int):
        super().__init__(daemon=True)
        self.run_id, self.stop = run_id, threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.wait(LEASE.total_seconds() / 3):
                RoundRun.objects.filter(pk=self.run_id, status=RoundRun.Status.RUNNING).update(
                    lease_until=timezone.now() + LEASE
                )
        finally:
            close_old_connections()


def _checks(run: RoundRun) -> tuple[CodeRequest, Plan, Dataset, EpisodeSplit, Mechanism]:
    """Before touching data: approval, pinned hashes, budget, consent."""
    request = CodeRequest.objects.get(pk=run.request_id)
    if request.status != CodeRequest.Status.APPROVED:
        raise Forbidden(f"approval is {request.status}: this site does not run the study any more")
    _verified_code(request)
    if (
        run.assignment["code_sha256"] != request.code_sha256
        or run.assignment["plan_sha256"] != request.plan_sha256
    ):
        raise Forbidden("the round's code or plan differs from the approved ones")
    plan = plan_of(request)
    if plan_sha256(plan) != request.plan_sha256:
        raise Forbidden("the stored plan no longer matches its approved SHA-256")
    ds = request.datasets.get()
    split = split_episodes(ds, plan)
    if not split.train:
        raise Forbidden(f"dataset {ds.name}: no episode has consent for {plan.purpose!r}")
    mech = budget.round_mechanism(plan, training_units(ds, plan, split))
    if not run.eval_only:
        refusal = budget.round_refusal(ds, run.study, mech)
        if refusal:
            raise Forbidden(refusal)
    return request, plan, ds, split, mech


def _bundle(request: CodeRequest):
    from common.protocol import CodeBundle

    return CodeBundle.model_validate(request.code)


def _verified_code(request: CodeRequest) -> dict[str, Any]:
    """The stored code bundle in canonical form, refused unless it hashes to the approved SHA-256.

    What the trainer builds (and, for a module, executes) is this dict and nothing else."""
    try:
        code = _bundle(request)
    except ValidationError as exc:
        raise Forbidden(f"the stored code bundle is invalid: {exc.errors()[0]['msg']}") from exc
    if bundle_sha256(code) != request.code_sha256:
        raise Forbidden("the stored code bundle no longer matches its approved SHA-256")
    return code.model_dump()


def execute_round(run_id: int) -> None:
    """The round task: re-check, train (or evaluate), store, charge once, upload."""
    run = _claim(run_id)
    if run is None:
        upload_result(RoundRun.objects.get(pk=run_id))
        return
    keeper = _LeaseKeeper(run.pk)
    keeper.start()
    try:
        outcome = _train(run)
    except Exception as exc:
        keeper.stop.set()
        message = str(exc) if isinstance(exc, ServiceError) else f"{exc.__class__.__name__}: {exc}"
        log.exception("round %s/%s failed", run.study, run.round)
        with transaction.atomic():
            RoundRun.objects.filter(pk=run.pk).update(
                status=RoundRun.Status.FAILED,
                error=message[:2000],
                finished_at=timezone.now(),
                lease_until=None,
            )
            trail.record(
                "round.failed",
                trail.SYSTEM,
                f"study:{run.study}",
                {"round": run.round, "error": message[:500]},
            )
        report_failure(RoundRun.objects.get(pk=run.pk))
        return
    finally:
        keeper.stop.set()
    metrics, episodes_read, num_examples, mechanism, ds = outcome
    with transaction.atomic():
        run = RoundRun.objects.select_for_update().get(pk=run.pk)
        if run.status == RoundRun.Status.DONE:  # a duplicate finished first: keep its result
            return
        trail.record(
            "data.accessed",
            trail.SYSTEM,
            f"dataset:{ds.name}",
            {"study": run.study, "round": run.round, "episodes": episodes_read},
        )
        if mechanism is not None and budget.charge(ds, run.study, run.round, mechanism):
            trail.record(
                "budget.charged",
                trail.SYSTEM,
                f"dataset:{ds.name}",
                {"study": run.study, "round": run.round, "mechanism": mechanism.to_dict()},
            )
        metrics["epsilon_spent"] = budget.view(ds).spent
        metrics["dataset"] = ds.name
        run.status = RoundRun.Status.DONE
        run.metrics = metrics
        run.episodes_read = {ds.name: episodes_read}
        run.num_examples = num_examples
        run.finished_at = timezone.now()
        run.lease_until = None
        run.save()
        trail.record(
            "round.finished",
            trail.SYSTEM,
            f"study:{run.study}",
            {"round": run.round, "epsilon_spent": metrics["epsilon_spent"]},
        )
    upload_result(run)


def _dp_seed(run: RoundRun) -> int:
    """The seed of the round's sampling and noise, secret to this site.

    Derived from the node's secret key, so a re-run of the same round adds the same noise (a
    retried task releases nothing new) while nobody outside the site can predict the noise.
    A site may set ``FEDSILO_PUBLIC_DP_SEED=1`` (tests and audits only) to derive it from the
    plan's seed instead, which makes whole studies reproducible and the noise predictable.
    """
    import hashlib
    import hmac

    if settings.FEDSILO_PUBLIC_DP_SEED:
        message = f"{plan_of(run.request).seed}:{run.round}".encode()
        return int.from_bytes(hashlib.sha256(message).digest()[:4], "little")
    digest = hmac.new(settings.SECRET_KEY.encode(), f"dp:{run.study}:{run.round}".encode(), "sha256")
    return int.from_bytes(digest.digest()[:4], "little")


def _train(run: RoundRun):
    import torch

    from datasite.training.trainer import LocalPlan, evaluate, train_local
    from datasite.training.weights import load_safetensors, save_safetensors

    if settings.FEDSILO_TORCH_THREADS:
        torch.set_num_threads(settings.FEDSILO_TORCH_THREADS)
    request, plan, ds, split, mech = _checks(run)
    folder = round_dir(run.study, run.round)
    global_weights = load_safetensors((folder / "global.safetensors").read_bytes())
    norm_stats = run.assignment["norm_stats"]
    code = _verified_code(request)  # the exact bundle _checks verified
    heldout = (
        evaluate(
            global_weights, None, None, Path(ds.root), split.holdout, norm_stats, seed=plan.seed, code=code
        )
        if split.holdout
        else None
    )
    metrics: dict[str, Any] = {
        "heldout_loss": heldout,
        "holdout_episodes": len(split.holdout),
        "excluded_episodes": len(split.excluded),
    }
    if run.eval_only:
        return metrics, split.holdout, 0, None, ds
    local = LocalPlan(
        local_steps=plan.local_steps,
        batch_size=plan.batch_size,
        lr=plan.lr,
        mu=plan.mu,
        seed=plan.seed * 100_003 + run.round,
        dp=plan.dp.enabled,
        noise_multiplier=plan.dp.noise_multiplier,
        clip_norm=plan.dp.clip_norm,
        sample_rate=mech.sample_rate if plan.dp.enabled else None,
        unit=plan.dp.unit,
        frames_per_episode=plan.dp.frames_per_episode,
        dp_seed=_dp_seed(run),
    )
    result = train_local(
        global_weights, None, None, Path(ds.root), split.train, local, norm_stats, progress=False, code=code
    )
    (folder / "update.safetensors").write_bytes(save_safetensors(result.update))
    metrics.update(result.metrics)
    if result.mechanism is not None and result.mechanism != mech:
        raise ServiceError("the trainer applied another mechanism than the approved plan")
    lengths = {int(k): v for k, v in (ds.summary.get("episode_lengths") or {}).items()}
    num_examples = split.train_frames(lengths) or metrics.get("frames_used", 0)
    return metrics, sorted(set(result.episodes_read) | set(split.holdout)), num_examples, result.mechanism, ds


# ----------------------------------------------------------------------------- talking back


def _orchestrator() -> OrchestratorLink:
    link = OrchestratorLink.objects.first()
    if link is None:
        raise ServiceError("this datasite has not joined an orchestrator")
    return link


def _post_upload(run: RoundRun, meta: RoundUpload, update: bytes | None) -> bool:
    link = _orchestrator()
    files = {"update": ("update.safetensors", update, "application/octet-stream")} if update else None
    try:
        response = httpx.post(
            f"{link.url}/api/studies/{run.study}/rounds/{run.round}/updates",
            data={"meta": meta.model_dump_json()},
            files=files,
            headers={"Authorization": f"Bearer {link.token}"},
            timeout=300,
        )
    except httpx.HTTPError as exc:
        log.warning("upload of %s/%s failed: %s", run.study, run.round, exc)
        return False
    if response.status_code in (200, 201, 409):  # 409: already received, nothing to do
        RoundRun.objects.filter(pk=run.pk).update(uploaded_at=timezone.now())
        return True
    log.warning(
        "upload of %s/%s refused (%s): %s", run.study, run.round, response.status_code, response.text[:300]
    )
    return False


def upload_result(run: RoundRun) -> bool:
    """Send a finished round's update and metrics to the orchestrator."""
    from datasite import secure_rounds  # --- secure aggregation hook: no plaintext update leaves ---

    if secure_rounds.handles(run):
        return secure_rounds.upload_secure(run)
    update = None
    if not run.eval_only:
        update = (round_dir(run.study, run.round) / "update.safetensors").read_bytes()
    meta = RoundUpload(
        study=run.study,
        round=run.round,
        site=settings.NODE_NAME,
        num_examples=run.num_examples,
        local_steps=0 if run.eval_only else plan_of(run.request).local_steps,
        metrics=_public_metrics(run.metrics),
    )
    return _post_upload(run, meta, update)


def report_failure(run: RoundRun) -> bool:
    meta = RoundUpload(
        study=run.study,
        round=run.round,
        site=settings.NODE_NAME,
        num_examples=0,
        local_steps=0,
        metrics={},
        error=run.error or "failed",
    )
    return _post_upload(run, meta, None)


def _public_metrics(metrics: dict) -> dict:
    """Metrics the site releases with its update: losses and counts, never episode ids."""
    keep = (
        "heldout_loss",
        "loss_before",
        "loss_after",
        "steps",
        "episodes_used",
        "frames_used",
        "holdout_episodes",
        "excluded_episodes",
        "seconds",
        "device",
        "dp",
        "privacy_unit",
        "epsilon_spent",
        "dataset",
    )
    return {k: metrics[k] for k in keep if k in metrics}


def validate_assignment(raw: str) -> RoundAssignment:
    try:
        return RoundAssignment.model_validate_json(raw)
    except ValidationError as exc:
        raise ServiceError(f"malformed round assignment: {exc.errors()[0]['msg']}") from exc

"""Rounds at a datasite: accepting an assignment, running it once under a lease, sending its result.

The round task (:mod:`datasite.tasks`) calls :func:`execute_round`; it is idempotent by
(study, round): a redelivered task that finds the round done re-sends the stored result and
trains nothing twice. Before touching data, in one transaction holding the approval's and the
dataset's row locks, it re-checks the approval, the pinned hashes and consent, and claims the
round's privacy budget (:func:`check_and_claim`): checked and charged together, once per round,
so no other study's round or approval can slip in between; a round that then fails stays
charged (what was claimed is spent; a retry reuses the charge and the same DP noise), a refused
round charges nothing. How the result leaves depends on the study's aggregation mode
(:mod:`datasite.modes`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.utils import timezone
from pydantic import ValidationError

from audit import trail
from common.errors import Conflict, Forbidden, ServiceError
from common.protocol import Plan, RoundAssignment, plan_sha256
from datasite import budget, modes
from datasite.consent import EpisodeSplit, split_episodes, training_units
from datasite.models import CodeRequest, Dataset, RoundRun
from datasite.orchestrator_client import orchestrator_actor
from datasite.results import report_failure, round_dir
from datasite.studies import approved_request, plan_of, verified_code
from privacy.accounting import Mechanism

log = logging.getLogger(__name__)
LEASE = timedelta(seconds=settings.FEDSILO_LEASE_SECONDS)
MAX_WEIGHTS_BYTES = 2 * 1024**3


class LeaseHeld(Exception):
    """Another worker is running this round; retry after ``seconds``."""

    def __init__(self, seconds: float):
        super().__init__(f"round is being run by another worker; retry in {seconds:.0f}s")
        self.seconds = seconds


def validate_assignment(raw: str) -> RoundAssignment:
    try:
        return RoundAssignment.model_validate_json(raw)
    except ValidationError as exc:
        raise ServiceError(f"malformed round assignment: {exc.errors()[0]['msg']}") from exc


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
                orchestrator_actor(),
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


def check_and_claim(run: RoundRun) -> tuple[CodeRequest, Plan, Dataset, EpisodeSplit, Mechanism]:
    """Before touching data, in one transaction: approval, pinned hashes, consent, and (unless the
    round only evaluates) its budget claimed with the mechanism it will run (:func:`budget.claim`).

    Forbidden with the reason when any fails; then nothing is charged.
    """
    with transaction.atomic():
        request = CodeRequest.objects.select_for_update().get(pk=run.request_id)  # revocation waits
        if request.status != CodeRequest.Status.APPROVED:
            raise Forbidden(f"approval is {request.status}: this site does not run the study any more")
        verified_code(request)
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
            try:
                charged = budget.claim(ds, run.study, run.round, mech)
            except budget.BudgetError as exc:
                raise Forbidden(str(exc)) from exc
            if charged:
                trail.record(
                    "budget.charged",
                    trail.SYSTEM,
                    f"dataset:{ds.name}",
                    {"study": run.study, "round": run.round, "mechanism": mech.to_dict()},
                )
    return request, plan, ds, split, mech


def execute_round(run_id: int) -> None:
    """The round task: re-check and claim the budget, train (or evaluate), store, upload."""
    run = _claim(run_id)
    if run is None:
        upload_result(RoundRun.objects.get(pk=run_id))
        return
    keeper = _LeaseKeeper(run.pk)
    keeper.start()
    try:
        outcome = train_round(run)
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
    metrics, episodes_read, num_examples, _, ds = outcome
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


def _dp_seed(run: RoundRun) -> bytes:
    """The 32-byte key of the round's sampling and noise (:mod:`privacy.csprng`), secret to this site.

    Derived from the node's secret key, so a re-run of the same round adds the same noise (a
    retried task releases nothing new) while nobody outside the site can predict the noise.
    A site may set ``FEDSILO_PUBLIC_DP_SEED=1`` (tests and audits only) to derive it from the
    plan's seed instead, which makes whole studies reproducible and the noise predictable.
    """
    if settings.FEDSILO_PUBLIC_DP_SEED:
        return hashlib.sha256(f"{plan_of(run.request).seed}:{run.round}".encode()).digest()
    return hmac.new(settings.SECRET_KEY.encode(), f"dp:{run.study}:{run.round}".encode(), "sha256").digest()


def train_round(run: RoundRun):
    """Check, then train (or only evaluate) one round on this site's data and store the update;
    returns (metrics, episodes read, examples, the mechanism applied or None, the dataset)."""
    import torch

    from datasite.training.trainer import LocalPlan, evaluate, train_local  # imports torch
    from datasite.training.weights import load_safetensors, save_safetensors

    if settings.FEDSILO_TORCH_THREADS:
        torch.set_num_threads(settings.FEDSILO_TORCH_THREADS)
    request, plan, ds, split, mech = check_and_claim(run)
    folder = round_dir(run.study, run.round)
    global_weights = load_safetensors((folder / "global.safetensors").read_bytes())
    norm_stats = run.assignment["norm_stats"]
    code = verified_code(request)  # the exact bundle check_and_claim verified
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


def upload_result(run: RoundRun) -> bool:
    """Send a finished round's result to the orchestrator, as the study's mode does it."""
    return modes.of_request(run.request).contribute(run)

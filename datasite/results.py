"""A round's results at this site: its folder, the metrics it may release, the plain upload.

Nothing a site sends out contains private values except the round update in ``plain`` mode
(the secure modes send it only masked or encrypted, see :mod:`datasite.modes`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from common.protocol import RoundUpload
from datasite.models import RoundRun
from datasite.orchestrator_client import OrchestratorClient, OrchestratorError
from datasite.studies import plan_of

log = logging.getLogger(__name__)
PUBLIC_METRICS = (
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


def round_dir(study: str, round_number: int) -> Path:
    path = Path(settings.DATA_DIR) / "rounds" / study / f"{round_number:05d}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def stored_update(run: RoundRun) -> bytes:
    """The round's update as training stored it (safetensors); private to this site."""
    return (round_dir(run.study, run.round) / "update.safetensors").read_bytes()


def public_metrics(metrics: dict) -> dict:
    """Metrics the site releases with its update: losses and counts, never episode ids."""
    return {k: metrics[k] for k in PUBLIC_METRICS if k in metrics}


def post_update(run: RoundRun, update: bytes | None) -> bool:
    """Send a finished round's public metrics (and ``update``, in plain mode) to the orchestrator."""
    meta = RoundUpload(
        study=run.study,
        round=run.round,
        site=settings.NODE_NAME,
        num_examples=run.num_examples,
        local_steps=0 if run.eval_only else plan_of(run.request).local_steps,
        metrics=public_metrics(run.metrics),
    )
    return _post(run, meta, update)


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
    return _post(run, meta, None)


def _post(run: RoundRun, meta: RoundUpload, update: bytes | None) -> bool:
    files = {"update": ("update.safetensors", update, "application/octet-stream")} if update else None
    try:
        with OrchestratorClient.joined() as client:
            client.post(
                f"/api/studies/{run.study}/rounds/{run.round}/updates",
                data={"meta": meta.model_dump_json()},
                files=files,
            )
    except OrchestratorError as exc:
        if exc.http_status != 409:  # 409: already received, nothing to do
            log.warning("upload of %s/%s failed: %s", run.study, run.round, exc)
            return False
    RoundRun.objects.filter(pk=run.pk).update(uploaded_at=timezone.now())
    return True

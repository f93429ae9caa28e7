"""Round execution as a Celery task on the site's training queue ``site.<name>.train``.

With ``CELERY_BROKER_URL`` set, a ``celery worker -Q site.<name>.train`` process consumes it
(``acks_late``, prefetch 1: a worker that dies mid-round gets its message redelivered).
Without a broker (the embedded default) the same task body runs in one background thread of
the web process. Either way the task is idempotent by (study, round): see
:func:`datasite.rounds.execute_round`.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from celery import shared_task
from django.conf import settings
from django.db import close_old_connections

from datasite.rounds import LeaseHeld, execute_round

log = logging.getLogger(__name__)
_embedded = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsilo-train")


def train_queue() -> str:
    return f"site.{settings.NODE_NAME}.train"


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_round(self, run_id: int) -> None:
    try:
        execute_round(run_id)
    except LeaseHeld as exc:
        raise self.retry(countdown=max(1.0, exc.seconds)) from exc


def _run_embedded(run_id: int) -> None:
    try:
        while True:
            try:
                execute_round(run_id)
                return
            except LeaseHeld as exc:
                time.sleep(max(1.0, exc.seconds))
    except Exception:
        log.exception("embedded round task %s crashed", run_id)
    finally:
        close_old_connections()


def enqueue_round(run_id: int) -> None:
    """Hand a round to the site's workers (or to the in-process thread without a broker)."""
    if settings.CELERY_BROKER_URL:
        run_round.apply_async(args=[run_id], queue=train_queue())
    else:
        _embedded.submit(_run_embedded, run_id)

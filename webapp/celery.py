"""The node's Celery app, configured from the Django settings (``CELERY_*``).

With no ``CELERY_BROKER_URL`` tasks run in-process (embedded default).

Workers: ``celery -A webapp.celery worker -Q site.<name>.train --prefetch-multiplier 1``.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("fedsilo")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)
app.autodiscover_tasks()

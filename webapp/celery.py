"""The node's Celery app. With no ``CELERY_BROKER_URL`` tasks run in-process (embedded default).

Workers: ``celery -A webapp.celery worker -Q site.<name>.train --prefetch-multiplier 1``.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("fedsilo")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_always_eager=not os.environ.get("CELERY_BROKER_URL"),
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    # Redis redelivers an unacknowledged task after this long; the round lease stops a second
    # copy from training while the first still runs. RabbitMQ redelivers when a worker dies.
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("FEDSILO_VISIBILITY_TIMEOUT", 3600))
    },
)
app.autodiscover_tasks()

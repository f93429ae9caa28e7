"""Pages shared by every node: health, home."""

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET


@login_not_required
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Liveness and database check; public, reveals only role and name."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        db = "ok"
    except Exception as exc:  # any database failure means unhealthy
        db = f"error: {exc.__class__.__name__}"
    status = 200 if db == "ok" else 503
    return JsonResponse(
        {
            "status": "ok" if status == 200 else "degraded",
            "role": settings.ROLE,
            "name": settings.NODE_NAME,
            "database": db,
        },
        status=status,
    )


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """The node's dashboard."""
    context: dict = {}
    if settings.ROLE == "orchestrator":
        from orchestrator.models import Datasite

        context["datasites"] = Datasite.objects.all()
    else:
        from datasite.models import OrchestratorLink

        context["orchestrator"] = OrchestratorLink.objects.first()
    return render(request, "webapp/home.html", context)

"""Consent pages: every contributor's consent per purpose with its history, recording one
consent, importing a CSV file of them."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from common.errors import ServiceError
from common.roles import DATA_OWNER, has_role, role_required
from datasite.consent import record_consent
from datasite.forms.consent import ConsentForm, ConsentImportForm, known_contributors
from datasite.models import ConsentEvent, Dataset
from datasite.views.display import DEFAULT_PURPOSE, VIEWERS, known_purposes


def _consent_context(
    request: HttpRequest, form: ConsentForm | None = None, import_form: ConsentImportForm | None = None
) -> dict[str, Any]:
    purposes = known_purposes()
    membership: dict[str, dict[str, int]] = {}
    for ds in Dataset.objects.all():
        for who in ds.contributors().values():
            membership.setdefault(who, {}).setdefault(ds.name, 0)
            membership[who][ds.name] += 1
    latest: dict[tuple[str, str], ConsentEvent] = {}
    history: dict[str, list[ConsentEvent]] = {}
    for event in ConsentEvent.objects.select_related("recorded_by").order_by("at", "id"):
        latest[(event.contributor, event.purpose)] = event
        history.setdefault(event.contributor, []).insert(0, event)
    rows = [
        {
            "contributor": who,
            "datasets": sorted(membership.get(who, {}).items()),
            "cells": [latest.get((who, p)) for p in purposes],
            "history": history.get(who, []),
        }
        for who in sorted(set(membership) | set(history))
    ]
    return {
        "purposes": purposes,
        "rows": rows,
        "known": sorted(known_contributors()),
        "is_owner": has_role(request.user, DATA_OWNER),
        "form": form or ConsentForm(initial={"purpose": DEFAULT_PURPOSE}),
        "import_form": import_form or ConsentImportForm(),
    }


# ----------------------------------------------------------------------------- pages


@require_GET
@role_required(*VIEWERS)
def consent(request: HttpRequest) -> HttpResponse:
    """Every contributor's current consent per purpose, with its history, and the forms."""
    return render(request, "datasite/consent.html", _consent_context(request))


@role_required(DATA_OWNER)
@require_POST
def consent_record(request: HttpRequest) -> HttpResponse:
    form = ConsentForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Consent was not recorded: see the message in the form.")
        return render(request, "datasite/consent.html", _consent_context(request, form=form), status=400)
    d = form.cleaned_data
    try:
        record_consent(d["contributor"], d["purpose"], d["given"], d["evidence"], request.user)
    except ServiceError as exc:
        form.add_error(None, str(exc))
        return render(request, "datasite/consent.html", _consent_context(request, form=form), status=400)
    state = "given" if d["given"] else "withdrawn"
    note = "" if d["given"] else " Its episodes are left out of every later round of every study."
    messages.success(
        request, f"Consent {state} for {d['contributor']} ({d['purpose']}), evidence “{d['evidence']}”.{note}"
    )
    return redirect(reverse("datasite:consent") + f"#c-{d['contributor']}")


@role_required(DATA_OWNER)
@require_POST
def consent_import(request: HttpRequest) -> HttpResponse:
    """Import a CSV of consent events: every line is checked first, then all are saved or none."""
    form = ConsentImportForm(request.POST, request.FILES)
    if not form.is_valid():
        messages.error(request, "Nothing was imported: see the lines named below the import form.")
        return render(
            request, "datasite/consent.html", _consent_context(request, import_form=form), status=400
        )
    rows = form.cleaned_data["rows"]
    try:
        with transaction.atomic():
            for row in rows:
                try:
                    record_consent(row.contributor, row.purpose, row.given, row.evidence, request.user)
                except ServiceError as exc:
                    raise ServiceError(f"line {row.line}: {exc}") from exc
    except ServiceError as exc:
        form.add_error("file", f"Nothing was imported: {exc}")
        return render(
            request, "datasite/consent.html", _consent_context(request, import_form=form), status=400
        )
    given = sum(r.given for r in rows)
    messages.success(
        request, f"Imported {len(rows)} consent records ({given} given, {len(rows) - given} withdrawn)."
    )
    return redirect("datasite:consent")

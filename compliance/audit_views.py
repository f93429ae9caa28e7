"""The audit page under ``/compliance/audit/``: the event list, searchable, and the chain status.

Compliance officers, data owners and node admins read it at every node. Events are listed
newest first, filtered by action prefix, actor, target substring, date range and position
in the chain. The chain is verified with :func:`audit.trail.verify_chain` on every
view (it is never cached: a cached "OK" would hide a later tampering).
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from audit import trail
from audit.models import GENESIS_HASH, AuditEvent
from common.roles import COMPLIANCE_OFFICER, DATA_OWNER, NODE_ADMIN, role_required

AUDIT_READERS = (COMPLIANCE_OFFICER, DATA_OWNER, NODE_ADMIN)
PER_PAGE = 50
DATA_SHOWN = 160  # characters of an event's data shown before it folds


class AuditFilterForm(forms.Form):
    """What to show: every field is optional, all given ones must match."""

    action = forms.CharField(
        required=False,
        max_length=100,
        label="Action starts with",
        widget=forms.TextInput(
            attrs={"placeholder": "e.g. code_request or consent.withdrawn", "list": "audit-actions"}
        ),
    )
    actor = forms.CharField(
        required=False,
        max_length=150,
        label="Actor",
        widget=forms.TextInput(attrs={"placeholder": "username, system or node:NAME"}),
    )
    target = forms.CharField(
        required=False,
        max_length=200,
        label="Target contains",
        widget=forms.TextInput(attrs={"placeholder": "e.g. study:4f2a or dataset:lab-a"}),
    )
    since = forms.DateField(
        required=False, label="From (UTC date)", widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        required=False, label="Until (UTC date, inclusive)", widget=forms.DateInput(attrs={"type": "date"})
    )
    upto = forms.IntegerField(
        required=False,
        min_value=1,
        label="Up to event #",
        widget=forms.NumberInput(attrs={"placeholder": "newest"}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            raise forms.ValidationError("The “from” date is after the “until” date.")
        return data

    def filter(self, events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        """``events`` narrowed to the cleaned filters."""
        d = self.cleaned_data
        if d.get("action"):
            events = events.filter(action__startswith=d["action"].strip())
        if d.get("actor"):
            events = events.filter(actor__iexact=d["actor"].strip())
        if d.get("target"):
            events = events.filter(target__icontains=d["target"].strip())
        if d.get("since"):
            events = events.filter(at__date__gte=d["since"])
        if d.get("until"):
            events = events.filter(at__date__lte=d["until"])
        if d.get("upto"):
            events = events.filter(seq__lte=d["upto"])
        return events


def _data_text(data: Any) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))


def _row(event: AuditEvent, problem_seq: int | None) -> dict[str, Any]:
    text = _data_text(event.data) if event.data else ""
    return {
        "seq": event.seq,
        "at": event.at,
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "data": text,
        "data_short": text if len(text) <= DATA_SHOWN else text[:DATA_SHOWN] + "…",
        "data_long": len(text) > DATA_SHOWN,
        "hash": event.hash,
        "problem": problem_seq is not None and event.seq == problem_seq,
    }


def _known_actions() -> list[str]:
    """Every action recorded here and its first part (``code_request``), for the filter's suggestions."""
    names = set(AuditEvent.objects.values_list("action", flat=True).distinct())
    return sorted(names | {n.split(".")[0] for n in names})


def _query_without_page(request: HttpRequest) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


@require_GET
@role_required(*AUDIT_READERS)
def audit_log(request: HttpRequest) -> HttpResponse:
    """The chain status, then the (filtered) events, newest first, one page at a time."""
    chain = trail.verify_chain()
    form = AuditFilterForm(request.GET or None)
    status = 200
    if form.is_bound and not form.is_valid():
        page, status = None, 400
    else:
        events = AuditEvent.objects.order_by("-seq")
        if form.is_bound:
            events = form.filter(events)
        page = Paginator(events, PER_PAGE).get_page(request.GET.get("page"))
    total = AuditEvent.objects.count()
    context = {
        "form": form,
        "chain": chain,
        "chain_empty": chain.ok and chain.head_hash == GENESIS_HASH,
        "total": total,
        "unverified": max(0, total - chain.count) if not chain.ok else 0,
        "page": page,
        "rows": [_row(e, chain.problem_seq) for e in page] if page is not None else [],
        "filtered": status == 200
        and form.is_bound
        and any(v not in (None, "") for v in form.cleaned_data.values()),
        "query": _query_without_page(request),
        "actions": _known_actions(),
    }
    return render(request, "compliance/audit.html", context, status=status)

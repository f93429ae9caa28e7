"""Compliance report pages under ``/compliance/reports/``: generate, read, download.

Compliance officers and data owners only. A report generated here is signed and kept in
``DATA_DIR/compliance-reports/report-<seq>.json`` (+ ``.sig``), named by the sequence number of its
``report.generated`` audit event, so its HTML page, PDF and JSON show the very same report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from audit.models import AuditEvent
from common.roles import COMPLIANCE_OFFICER, DATA_OWNER, role_required
from compliance import html, pdf, providers, signing
from compliance.reports import build_report
from compliance.scope import ReportError, make_scope

READERS = (COMPLIANCE_OFFICER, DATA_OWNER)
RECENT = 50


class ReportForm(forms.Form):
    scope = forms.ChoiceField(choices=[("study", "One study"), ("site", "The whole node"),
                                       ("range", "A time range")], initial="site")
    study = forms.CharField(required=False, max_length=32, label="Study id (for one study)",
                            widget=forms.TextInput(attrs={"list": "studies"}))
    since = forms.DateField(required=False, label="From (date, for a time range)",
                            widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="Until (date, inclusive)",
                            widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        kind = data.get("scope")
        try:
            self.report_scope = make_scope(
                study=data.get("study") if kind == "study" else None, site=kind == "site",
                since=_date(data.get("since")) if kind == "range" else None,
                until=_date(data.get("until")) if kind == "range" else None,
            )
        except ReportError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return data


def _date(value: Any) -> str | None:
    return value.isoformat() if value else None


def reports_dir() -> Path:
    return Path(settings.DATA_DIR) / "compliance-reports"


def _path(seq: int) -> Path:
    return reports_dir() / f"report-{seq:08d}.json"


def _load(seq: int) -> tuple[dict[str, Any], str]:
    path = _path(seq)
    sig = path.with_name(path.name + signing.SIG_SUFFIX)
    if not (path.is_file() and sig.is_file()):
        raise Http404("no stored report with this number (reports written by the command line are not kept)")
    return signing.load_report(path.read_bytes()), sig.read_text().strip()


def _recent() -> list[dict[str, Any]]:
    events = AuditEvent.objects.filter(action="report.generated").order_by("-seq")[:RECENT]
    return [{"seq": e.seq, "at": e.at, "actor": e.actor, "target": e.target, "data": e.data,
             "stored": _path(e.seq).is_file()} for e in events]


def _index(request: HttpRequest, form: ReportForm, status: int = 200) -> HttpResponse:
    studies = providers.provider(settings.ROLE).known_studies()
    return render(request, "compliance/index.html",
                  {"form": form, "recent": _recent(), "studies": studies}, status=status)


@require_http_methods(["GET", "POST"])
@role_required(*READERS)
def reports(request: HttpRequest) -> HttpResponse:
    """GET: the form and the reports generated so far; POST: generate, sign, keep, show."""
    if request.method == "GET":
        return _index(request, ReportForm())
    form = ReportForm(request.POST)
    if not form.is_valid():
        return _index(request, form, status=400)
    try:
        report = build_report(form.report_scope, request.user, fmt="web")
    except ReportError as exc:
        form.add_error(None, str(exc))
        return _index(request, form, status=400)
    seq = report["generation_event"]["seq"]
    reports_dir().mkdir(parents=True, exist_ok=True)
    signing.write_signed(report, _path(seq))
    return redirect("compliance:report", seq=seq)


@require_GET
@role_required(*READERS)
def report_html(request: HttpRequest, seq: int) -> HttpResponse:
    report, signature = _load(seq)
    check = signing.verify_report(report, signature)
    context = html.context(report)
    context.update(seq=seq, verification=check, verification_text=check.summary(report))
    return render(request, "compliance/report.html", context)


def _download(data: bytes | str, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(data, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response


def _filename(report: dict[str, Any], seq: int, ext: str) -> str:
    return f"fedsilo-report-{report['node']['name']}-{seq}.{ext}"


@require_GET
@role_required(*READERS)
def report_pdf(request: HttpRequest, seq: int) -> HttpResponse:
    report, _ = _load(seq)
    return _download(pdf.render_pdf(report), "application/pdf", _filename(report, seq, "pdf"))


@require_GET
@role_required(*READERS)
def report_json(request: HttpRequest, seq: int) -> HttpResponse:
    report, _ = _load(seq)
    return _download(_path(seq).read_bytes(), "application/json", _filename(report, seq, "json"))


@require_GET
@role_required(*READERS)
def report_sig(request: HttpRequest, seq: int) -> HttpResponse:
    report, signature = _load(seq)
    return _download(signature + "\n", "text/plain; charset=utf-8", _filename(report, seq, "json.sig"))

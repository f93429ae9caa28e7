"""Compliance pages at every node: reports under ``/compliance/reports/``, the audit log."""

from django.urls import path

from compliance import audit_views, views

app_name = "compliance"

REPORT = "compliance/reports/<int:seq>/"
urlpatterns = [
    path("compliance/audit/", audit_views.audit_log, name="audit"),
    path("compliance/reports/", views.reports, name="reports"),
    path(REPORT, views.report_html, name="report"),
    path(f"{REPORT}report.pdf", views.report_pdf, name="report-pdf"),
    path(f"{REPORT}report.json", views.report_json, name="report-json"),
    path(f"{REPORT}report.json.sig", views.report_sig, name="report-sig"),
]

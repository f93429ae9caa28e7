"""Compliance report pages, under ``/compliance/reports/`` at every node."""

from django.urls import path

from compliance import views

app_name = "compliance"

REPORT = "compliance/reports/<int:seq>/"
urlpatterns = [
    path("compliance/reports/", views.reports, name="reports"),
    path(REPORT, views.report_html, name="report"),
    path(f"{REPORT}report.pdf", views.report_pdf, name="report-pdf"),
    path(f"{REPORT}report.json", views.report_json, name="report-json"),
    path(f"{REPORT}report.json.sig", views.report_sig, name="report-sig"),
]

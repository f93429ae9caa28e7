"""A report as a self-contained HTML page (Django templates, styles inline, plots embedded)."""

from __future__ import annotations

from typing import Any

from django.template.loader import render_to_string

from compliance.blocks import when
from compliance.sections import document, title


def context(report: dict[str, Any]) -> dict[str, Any]:
    """Template context of a report: its title, chain state and sections."""
    return {"report": report, "title": title(report), "sections": document(report),
            "generated_at": when(report.get("generated_at")), "chain_ok": report["chain"]["ok"]}


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML file (styles inline, plots embedded)."""
    return render_to_string("compliance/report_file.html", context(report))

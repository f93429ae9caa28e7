"""Reports as people read them: HTML (Django templates) and PDF (ReportLab), from the report dict.

Both formats render the same neutral document model (:func:`document`: sections of paragraphs,
key-value tables, tables, lists and PNG plots), so the HTML page, the PDF and the signed JSON
of one report always show the same figures. Long lists (events, episodes) are cut at
:data:`MAX_ROWS` rows in HTML and PDF; the JSON holds them all.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from django.template.loader import render_to_string

from compliance.reports import INFINITY, ordered_sections

MAX_ROWS = 500
HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ----------------------------------------------------------------------------- formatting


def eps_text(value: float | str | None) -> str:
    """ε as shown in every format: 4 significant digits, ∞ spelled out."""
    if value is None:
        return "—"
    if value == INFINITY or (isinstance(value, float) and math.isinf(value)):
        return "∞ (no DP noise)"
    return f"{float(value):.4g}"


def when(value: str | None) -> str:
    if not value:
        return "—"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def ranges(values: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0–2, 5, 7–8"``."""
    out: list[str] = []
    run: list[int] = []
    for v in sorted(set(values)):
        if run and v != run[-1] + 1:
            out.append(_span(run))
            run = []
        run.append(v)
    if run:
        out.append(_span(run))
    return ", ".join(out) or "—"


def _span(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}–{run[-1]}"


def _text(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _rounds(values: list[int] | None) -> str:
    return ranges(values or []) if values else "—"


# ----------------------------------------------------------------------------- document model


@dataclass
class Block:
    """One piece of a section: ``kind`` is p, ok, warning, h3, kv, table, list or image."""

    kind: str
    text: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    png: bytes | None = None

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png or b"").decode()


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block]


def p(text: str) -> Block:
    return Block("p", text)


def h3(text: str) -> Block:
    return Block("h3", text)


def kv(rows: Iterable[tuple[str, Any]]) -> Block:
    return Block("kv", rows=[[k, _text(v)] for k, v in rows])


def table(headers: list[str], rows: Iterable[list[Any]], what: str = "rows") -> list[Block]:
    """A table (cut at MAX_ROWS, with a note), or a line saying there is nothing."""
    rows = [[_text(c) for c in r] for r in rows]
    if not rows:
        return [p(f"No {what}.")]
    blocks = [Block("table", headers=headers, rows=rows[:MAX_ROWS])]
    if len(rows) > MAX_ROWS:
        blocks.append(p(f"{len(rows) - MAX_ROWS} more {what} are in the JSON report."))
    return blocks


def items(values: Iterable[str]) -> Block:
    return Block("list", items=list(values))


def document(report: dict[str, Any]) -> list[Section]:
    """The report's sections, in order (integrity first), as blocks."""
    out = []
    for key, title, content in ordered_sections(report):
        build = BUILDERS.get(key, _generic)
        out.append(Section(key, title, build(content, report)))
    if "data_access" in report.get("sections", {}):
        out.append(Section("attachment_episodes", "Attachment: episodes read per round",
                           _episode_attachment(report["sections"]["data_access"])))
    return out


def _generic(content: Any, report: dict[str, Any]) -> list[Block]:
    if isinstance(content, list):
        keys = sorted({k for row in content if isinstance(row, dict) for k in row})
        return table(keys, [[row.get(k) for k in keys] for row in content])
    if isinstance(content, dict):
        return [kv((k, v) for k, v in content.items() if not isinstance(v, dict | list))]
    return [p(_text(content))]


def _integrity(sec: dict[str, Any], report: dict[str, Any]) -> list[Block]:
    node, event = report.get("node", {}), report.get("generation_event", {})
    scope = report.get("scope", {})
    return [
        Block("ok" if sec["ok"] else "warning", sec["message"]),
        kv([
            ("Chain status", sec["status"]),
            ("Events verified", sec["count"]),
            ("Head hash", sec["head_hash"]),
            ("First problem", sec.get("first_problem") or "none"),
            *[("Warning", w) for w in sec.get("warnings") or []],
        ]),
        h3("This report"),
        kv([
            ("Node", f"{node.get('name')} ({node.get('role')}, {node.get('public_url')})"),
            ("Node signing key (Ed25519)", node.get("public_key")),
            ("Scope", _scope_text(scope)),
            ("Generated at", when(report.get("generated_at"))),
            ("Generated by", report.get("generated_by")),
            ("Generation event", f"#{event.get('seq')} {event.get('hash')}"),
            ("Schema", report.get("schema")),
        ]),
    ]


def _scope_text(scope: dict[str, Any]) -> str:
    if scope.get("kind") == "study":
        return f"study {scope.get('study')}"
    if scope.get("kind") == "range":
        since, until = scope.get("since"), scope.get("until")
        if since and until:
            return f"from {when(since)} to {when(until)}"
        return f"since {when(since)}" if since else f"until {when(until)}"
    return "the whole site"


def _record(sec: dict[str, Any], report: dict[str, Any]) -> list[Block]:
    contacts = sec.get("contacts") or {}
    blocks = [kv([
        ("Controller", sec.get("controller")),
        ("Contact", contacts.get("contact")),
        ("Data protection officer", contacts.get("dpo")),
        ("Retention", sec.get("retention")),
        ("Transfers of raw data", sec.get("transfers_of_raw_data")),
    ]), h3("Purposes")]
    purposes = sec.get("purposes") or []
    if purposes and isinstance(purposes[0], dict):
        blocks += table(["Purpose", "Consenting contributors", "Studies"], [
            [x["purpose"], x["consenting_contributors"], "; ".join(_study_text(s) for s in x["studies"])]
            for x in purposes], "purposes")
    else:
        blocks.append(p(_text(purposes)))
    if "data_subjects" in sec:
        subjects = sec["data_subjects"]
        blocks += [h3("Categories of data subjects"), p(subjects["category"]), p(subjects["identification"]),
                   *table(["Dataset", "Contributors"], [[k, v] for k, v in subjects["per_dataset"].items()],
                          "datasets")]
    if "data_categories" in sec:
        blocks += [h3("Categories of personal data"), *table(
            ["Dataset", "Robot", "FPS", "Episodes", "Frames", "Trajectories", "Camera images"],
            [[c["dataset"], c["robot_type"], c["fps"], c["episodes"], c["frames"], c["trajectories"],
              c["cameras"]] for c in sec["data_categories"]], "datasets")]
    recipients = sec.get("recipients") or []
    blocks += [h3("Recipients"), items(f"{r['recipient']}: {r['receives']}" for r in recipients)]
    studies = [s for r in recipients for s in r.get("studies", [])]
    if studies:
        blocks += table(["Study", "Aggregation", "The orchestrator receives"],
                        [[s["study"][:12], s["aggregation"], s["receives"]] for s in studies])
    blocks += _security(sec.get("security_measures") or {})
    return blocks


def _study_text(s: dict[str, Any]) -> str:
    return f"{s['title']} ({s['study'][:8]} v{s['version']}, {s['status']})"


def _security(sec: dict[str, Any]) -> list[Block]:
    blocks = [h3("Security measures")]
    if "differential_privacy" in sec:
        blocks += table(["Study", "Version", "DP", "Noise σ", "Clip norm", "δ", "Privacy unit"], [
            [d["study"][:12], d["version"], d["enabled"], d["noise_multiplier"], d["clip_norm"], d["delta"],
             d["unit"]] for d in sec["differential_privacy"]], "approved studies")
    elif "aggregation" in sec:
        blocks += table(["Study", "Aggregation"], [[k, v] for k, v in sec["aggregation"].items()], "studies")
    if sec.get("encryption"):
        blocks.append(items(sec["encryption"]))
    access = sec.get("access_control")
    if access:
        roles = ", ".join(f"{k}: {v}" for k, v in access["users_per_role"].items())
        blocks.append(kv([("Access control", access["model"]), ("Users per role", roles),
                          ("Code approval", access["code_approval"])]))
    return blocks


def _budget_table(rows: list[dict[str, Any]]) -> list[Block]:
    return table(["Dataset", "ε spent", "ε reserved", "ε committed", "ε budget", "δ"], [
        [r["dataset"], eps_text(r["spent"]), eps_text(r["reserved"]), eps_text(r["committed"]),
         f"{r['epsilon_max']:g}", f"{r['delta']:g}"] for r in rows], "datasets")


def _dpia(sec: dict[str, Any], report: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    for risk in sec["risks"]:
        blocks += [h3(f"Risk: {risk['risk']}"), items(risk["mitigations"])]
    modes = "; ".join(f"{mode}: studies {', '.join(s[:12] for s in studies)}"
                      for mode, studies in sec["aggregation_modes"].items())
    blocks += [h3("Measured: ε spent against the budget"), *_budget_table(sec["epsilon_vs_budget"]),
               kv([("Privacy units", sec["privacy_units"] or "none"), ("Aggregation modes", modes or "none"),
                   ("Approvals", ", ".join(f"{k}: {v}" for k, v in sec["approvals"].items()) or "none")])]
    return blocks


def _plan_text(plan: dict[str, Any]) -> str:
    dp = plan.get("dp") or {}
    on = "on" if dp.get("enabled", True) else "OFF"
    return (f"{plan.get('rounds')} rounds × {plan.get('local_steps')} local steps, "
            f"batch {plan.get('batch_size')}, strategy {plan.get('strategy')}, "
            f"aggregation {plan.get('aggregation')}, purpose {plan.get('purpose')}; "
            f"DP {on}: σ {dp.get('noise_multiplier')}, clip {dp.get('clip_norm')}, "
            f"δ {dp.get('delta')}, unit {dp.get('unit')}")


def _approvals(sec: dict[str, Any], report: dict[str, Any]) -> list[Block]:
    if not sec["requests"]:
        return [p("No code request in scope.")]
    blocks = []
    for r in sec["requests"]:
        blocks += [h3(f"{r['title']}: study {r['study'][:8]} v{r['version']}, {r['status']}"), kv([
            ("Study", r["study"]), ("Version", r["version"]), ("Researcher", r["researcher"]),
            ("Code SHA-256", r["code_sha256"]), ("Plan SHA-256", r["plan_sha256"]),
            ("Plan", _plan_text(r["plan"] or {})), ("Datasets", r["datasets"]),
            ("Decision", r["status"]), ("Reviewer", r["reviewer"]), ("Decided at", when(r["decided_at"])),
            ("Reason", r["reason"]), ("Received at", when(r["received_at"])),
        ])]
    return blocks


def _consent(sec: dict[str, Any], report: dict[str, Any]) -> list[Block]:
    blocks = [h3("Coverage per purpose"), *table(
        ["Purpose", "Dataset", "Episodes covered", "Contributors covered"],
        [[x["purpose"], d["dataset"], f"{d['episodes_covered']} of {d['episodes']}",
          f"{d['contributors_covered']} of {d['contributors']}"]
         for x in sec["purposes"] for d in x["datasets"]],
        "purposes"),
        *table(["Purpose", "Contributors consenting", "Contributors withdrawn"],
               [[x["purpose"], x["consenting"], x["withdrawn"]] for x in sec["purposes"]], "purposes"),
        h3("Withdrawals and the rounds that excluded them")]
    rows = []
    for w in sec["withdrawals"]:
        episodes = "; ".join(f"{ds}: {len(e)} ({ranges(e)})" for ds, e in w["episodes"].items())
        for s in w["studies"] or [{}]:
            rows.append([w["contributor"], w["purpose"], when(w["at"]), episodes or "none here",
                         s.get("study", "")[:12], _rounds(s.get("rounds_read_before")),
                         s.get("first_round_excluded"), _rounds(s.get("read_after_withdrawal"))])
    blocks += table(["Contributor", "Purpose", "Withdrawn at", "Episodes", "Study", "Read in rounds",
                     "Excluded from round", "Read after withdrawal"], rows, "withdrawals")
    blocks.append(p(f"Rounds that read withdrawn episodes after the withdrawal: {sec['violations']}."))
    return blocks


def _budgets(sec: dict[str, Any], report: dict[str, Any]) -> list[Block]:
    rows = sec["datasets"]
    blocks = [p(sec["accounting"]), *table(
        ["Dataset", "ε spent", "ε reserved", "ε committed", "ε budget", "ε remaining", "δ", "Rounds charged"],
        [[r["dataset"], eps_text(r["spent"]), eps_text(r["reserved"]), eps_text(r["committed"]),
          f"{r['epsilon_max']:g}", eps_text(r["remaining"]), f"{r['delta']:g}", r["charges"]] for r in rows],
        "datasets")]
    for r in rows:
        blocks += [h3(f"ε over time: {r['dataset']}"),
                   Block("image", text=f"ε of {r['dataset']} over time", png=_epsilon_png(r, report))]
    return blocks


def _epsilon_png(row: dict[str, Any], report: dict[str, Any]) -> bytes:
    from datasite.plots import EpsilonPoint, epsilon_png

    def value(v: Any) -> float:
        return math.inf if v == INFINITY else float(v)

    points = [EpsilonPoint(datetime.fromisoformat(t["at"]), value(t["spent"]), value(t["committed"]))
              for t in row["timeline"]]
    now = datetime.fromisoformat(report["generated_at"]) if report.get("generated_at") else None
    return epsilon_png(points, row["epsilon_max"], title=row["dataset"], now=now)


def _data_access(sec: dict[str, Any], report: dict[str, Any]) -> list[Block]:
    return [h3("Totals per dataset"), *table(
        ["Dataset", "Rounds", "Episode reads", "Distinct episodes"],
        [[t["dataset"], t["rounds"], t["episode_reads"], t["distinct_episodes"]] for t in sec["totals"]],
        "datasets"),
        h3("Per round"), *table(
        ["Study", "Round", "Status", "Started", "Finished", "Episodes read"],
        [[r["study"][:12], r["round"], r["status"] + (" (evaluation)" if r["eval_only"] else ""),
          when(r["started_at"]), when(r["finished_at"]),
          "; ".join(f"{ds}: {n}" for ds, n in r["counts"].items())] for r in sec["rounds"]], "rounds"),
        p("The episode indices of every round are listed in the attachment at the end.")]


def _episode_attachment(sec: dict[str, Any]) -> list[Block]:
    return table(["Study", "Round", "Dataset", "Count", "Episode indices"],
                 [[r["study"][:12], r["round"], ds, len(e), ranges(e)]
                  for r in sec["rounds"] for ds, e in r["episodes"].items()], "rounds")


def _event_log(sec: dict[str, Any], report: dict[str, Any]) -> list[Block]:
    v = sec["verification"]
    return [
        kv([("Chain verification", "verified" if v["ok"] else f"BROKEN: {v['first_problem']}"),
            ("Events verified", v["count"]), ("Head hash", v["head_hash"]),
            ("Events in this report", sec["count"]),
            ("Of which unverified (at or after the break)", sec.get("unverified", 0))]),
        *table(["Action", "Events"], [[k, n] for k, n in sec["actions"].items()], "events"),
        *table(["Seq", "Time (UTC)", "Actor", "Action", "Target", "Hash"],
               [[e["seq"] if e.get("verified", True) else f"{e['seq']} UNVERIFIED",
                 when(e["at"]).removesuffix(" UTC"), e["actor"], e["action"], e["target"], e["hash"][:16]]
                for e in sec["events"]], "events"),
    ]


def _studies(sec: list[dict[str, Any]], report: dict[str, Any]) -> list[Block]:
    blocks = []
    for s in sec:
        blocks += [h3(f"{s['title']}: study {s['study'][:8]}, {s['status']}"), kv([
            ("Study", s["study"]), ("Researcher", s["researcher"]), ("Version", s["version"]),
            ("Code SHA-256", s["code_sha256"]), ("Plan SHA-256", s["plan_sha256"]),
            ("Aggregation", s["aggregation"]), ("Rounds", f"{s['current_round']} of {s['rounds_planned']}"),
            ("DP", ", ".join(f"{k} {v}" for k, v in s["dp"].items())),
            ("Created", when(s["created_at"])), ("Finished", when(s["finished_at"])),
        ])]
    return blocks or [p("No study in scope.")]


def _sites(sec: list[dict[str, Any]], report: dict[str, Any]) -> list[Block]:
    return table(["Study", "Site", "Dataset", "Decision", "Reason", "Projected ε", "Episodes"],
                 [[s["study"][:12], s["site"], s["dataset"], s["status"], s["reason"],
                   eps_text(s["projected_epsilon"]), s["episodes"]] for s in sec], "sites")


def _orch_rounds(sec: list[dict[str, Any]], report: dict[str, Any]) -> list[Block]:
    return table(["Study", "Round", "Status", "Participants", "Dropped", "Updates", "Started", "Finished"],
                 [[r["study"][:12], r["round"], r["status"], r["participants"], r["dropped"], r["updates"],
                   when(r["started_at"]), when(r["finished_at"])] for r in sec], "rounds")


BUILDERS = {
    "integrity": _integrity,
    "record_of_processing": _record,
    "dpia": _dpia,
    "approvals": _approvals,
    "consent": _consent,
    "budgets": _budgets,
    "data_access": _data_access,
    "event_log": _event_log,
    "studies": _studies,
    "sites": _sites,
    "rounds": _orch_rounds,
}


def title(report: dict[str, Any]) -> str:
    name = report.get("node", {}).get("name", "?")
    return f"Compliance report: {name}, {_scope_text(report.get('scope', {}))}"


# ----------------------------------------------------------------------------- HTML


def context(report: dict[str, Any]) -> dict[str, Any]:
    """Template context of a report: its title, chain state and sections."""
    return {"report": report, "title": title(report), "sections": document(report),
            "generated_at": when(report.get("generated_at")), "chain_ok": report["chain"]["ok"]}


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML file (styles inline, plots embedded)."""
    return render_to_string("compliance/report_file.html", context(report))


# ----------------------------------------------------------------------------- PDF


@cache
def _fonts() -> dict[str, str]:
    """DejaVu (shipped with matplotlib) for ε, δ, σ, ∞ and arrows; Helvetica lacks them."""
    import matplotlib
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = {"regular": "DejaVuSans", "bold": "DejaVuSans-Bold", "mono": "DejaVuSansMono"}
    for name in names.values():
        pdfmetrics.registerFont(TTFont(name, str(folder / f"{name}.ttf")))
    return names


def _styles() -> dict[str, Any]:
    from reportlab.lib import colors
    from reportlab.lib.styles import ParagraphStyle

    f = _fonts()
    base = ParagraphStyle("base", fontName=f["regular"], fontSize=9, leading=12)
    return {
        "p": base,
        "title": ParagraphStyle("title", base, fontName=f["bold"], fontSize=16, leading=20, spaceAfter=6),
        "h2": ParagraphStyle("h2", base, fontName=f["bold"], fontSize=12.5, leading=16, spaceBefore=12,
                             spaceAfter=6, textColor=colors.HexColor("#2457c5"), keepWithNext=1),
        "h3": ParagraphStyle("h3", base, fontName=f["bold"], fontSize=10, leading=13, spaceBefore=8,
                             spaceAfter=4, keepWithNext=1),
        "cell": ParagraphStyle("cell", base, fontSize=7.5, leading=9.5),
        "head": ParagraphStyle("head", base, fontName=f["bold"], fontSize=7.5, leading=9.5),
        "mono": ParagraphStyle("mono", base, fontName=f["mono"], fontSize=7.2, leading=9.5),
        "warning": ParagraphStyle("warning", base, fontName=f["bold"], fontSize=10.5, leading=14,
                                  textColor=colors.HexColor("#b3261e")),
        "ok": ParagraphStyle("ok", base, textColor=colors.HexColor("#1e7b45")),
    }


def _para(text: str, style: Any) -> Any:
    from reportlab.platypus import Paragraph

    return Paragraph(escape(text).replace("\n", "<br/>"), style)


def _cell(text: str, styles: dict[str, Any]) -> Any:
    unbroken = HEX64.match(text) or (len(text) > 40 and " " not in text)
    return _para(text, styles["mono"] if unbroken else styles["cell"])


def _widths(rows: list[list[str]], total: float, char: float = 4.9, pad: float = 15.0) -> list[float]:
    """Column widths (pt): each column's longest word fits when it can, the rest of the width
    goes to the columns whose text is longer than that."""
    columns = list(zip(*rows, strict=True))
    natural = [max(len(c) for c in col) * char + pad for col in columns]
    words = [max((len(w) for c in col for w in c.split()), default=1) for col in columns]
    floor = [min(n, 22) * char + pad for n in words]
    if sum(natural) <= total:
        return [w * total / sum(natural) for w in natural]
    if sum(floor) >= total:
        return [w * total / sum(floor) for w in floor]
    extra = [n - f for n, f in zip(natural, floor, strict=True)]
    spare = total - sum(floor)
    return [f + spare * e / sum(extra) for f, e in zip(floor, extra, strict=True)]


def _pdf_table(block: Block, styles: dict[str, Any], width: float) -> Any:
    from reportlab.lib import colors
    from reportlab.platypus import Table, TableStyle

    if block.kind == "kv":
        data = [[_para(k, styles["head"]), _cell(v, styles)] for k, v in block.rows]
        widths = [width * 0.27, width * 0.73]
        style = [("BACKGROUND", (0, 0), (0, -1), colors.HexColor("#f3f5fa"))]
    else:
        data = [[_para(h, styles["head"]) for h in block.headers],
                *[[_cell(c, styles) for c in r] for r in block.rows]]
        widths = _widths([block.headers, *block.rows], width)
        style = [("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e6eaf3"))]
    t = Table(data, colWidths=widths, repeatRows=0 if block.kind == "kv" else 1)
    t.setStyle(TableStyle([*style, ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#c9cfdb")),
                           ("VALIGN", (0, 0), (-1, -1), "TOP"),
                           ("TOPPADDING", (0, 0), (-1, -1), 2), ("BOTTOMPADDING", (0, 0), (-1, -1), 2)]))
    return t


def _flowables(block: Block, styles: dict[str, Any], width: float) -> list[Any]:
    from reportlab.lib import colors
    from reportlab.platypus import Image, ListFlowable, ListItem, Spacer, Table, TableStyle

    if block.kind in ("kv", "table"):
        return [_pdf_table(block, styles, width), Spacer(1, 5)]
    if block.kind in ("warning", "ok"):
        box = Table([[_para(block.text, styles[block.kind])]], colWidths=[width])
        shade, edge = ("#fbe3e1", "#b3261e") if block.kind == "warning" else ("#e4f4ea", "#1e7b45")
        box.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, -1), colors.HexColor(shade)),
                                 ("BOX", (0, 0), (-1, -1), 1.2, colors.HexColor(edge)),
                                 ("TOPPADDING", (0, 0), (-1, -1), 6),
                                 ("BOTTOMPADDING", (0, 0), (-1, -1), 6)]))
        return [box, Spacer(1, 6)]
    if block.kind == "h3":
        return [_para(block.text, styles["h3"])]
    if block.kind == "list":
        return [ListFlowable([ListItem(_para(i, styles["p"]), leftIndent=12) for i in block.items],
                             bulletType="bullet", start="•", leftIndent=12)]
    if block.kind == "image":
        img = Image(io.BytesIO(block.png or b""))
        scale = min(1.0, width / img.imageWidth)
        img.drawWidth, img.drawHeight = img.imageWidth * scale, img.imageHeight * scale
        return [img, Spacer(1, 6)]
    return [_para(block.text, styles["p"])]


def render_pdf(report: dict[str, Any]) -> bytes:
    """An A4 PDF of the report, the ε plots embedded as PNG."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import cm
    from reportlab.platypus import SimpleDocTemplate

    styles = _styles()
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=1.6 * cm, rightMargin=1.6 * cm, topMargin=1.5 * cm,
                            bottomMargin=1.6 * cm, title=title(report), author=report["node"]["name"],
                            subject=report["schema"])
    footer = (f"fedsilo compliance report · {report['node']['name']} · generated "
              f"{when(report.get('generated_at'))} · chain head {report['chain']['head_hash'][:16]}…")

    def on_page(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(_fonts()["regular"], 7)
        canvas.drawString(doc.leftMargin, 0.9 * cm, footer)
        canvas.drawRightString(A4[0] - doc.rightMargin, 0.9 * cm, f"page {doc.page}")
        canvas.restoreState()

    story: list[Any] = [_para(title(report), styles["title"])]
    for n, section in enumerate(document(report), start=1):
        story.append(_para(f"{n}. {section.title}", styles["h2"]))
        for block in section.blocks:
            story += _flowables(block, styles, doc.width)
    doc.build(story, onFirstPage=on_page, onLaterPages=on_page)
    return buf.getvalue()

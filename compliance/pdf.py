"""A report as an A4 PDF (ReportLab), from the same blocks as the HTML page, ε plots embedded."""

from __future__ import annotations

import io
import re
from functools import cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from compliance.blocks import Block, when
from compliance.sections import document, title

HEX64 = re.compile(r"^[0-9a-f]{64}$")


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

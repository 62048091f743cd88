"""A Document as PDF, rendered by ReportLab: real text (extractable, searchable), tables
that wrap and repeat their header, plots as embedded PNG images."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.platypus import (
    Image,
    KeepTogether,
    ListFlowable,
    ListItem,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    TableStyle,
)
from reportlab.platypus import Table as RLTable

from xserve.reports import document as d

__all__ = ["render_pdf"]

MARGIN = 18 * mm
WIDTH = A4[0] - 2 * MARGIN
FLAG_COLOURS = {"warn": colors.HexColor("#fff6d6"), "drift": colors.HexColor("#fbe0dc")}
_FONTS: tuple[str, str, str, str] | None = None


def _fonts() -> tuple[str, str, str, str]:
    """DejaVu (shipped with matplotlib) for text beyond Latin-1 (≥, —, |SHAP|, names in any
    script); the PDF base fonts when it cannot be found."""
    global _FONTS
    if _FONTS is not None:
        return _FONTS
    try:
        import matplotlib
        from reportlab.lib.fonts import addMapping
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.ttfonts import TTFont

        folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        for name, file in (
            ("XS", "DejaVuSans.ttf"),
            ("XS-Bold", "DejaVuSans-Bold.ttf"),
            ("XS-Italic", "DejaVuSans-Oblique.ttf"),
            ("XS-BoldItalic", "DejaVuSans-BoldOblique.ttf"),
            ("XS-Mono", "DejaVuSansMono.ttf"),
        ):
            pdfmetrics.registerFont(TTFont(name, str(folder / file)))
        for bold, italic, face in (
            (0, 0, "XS"),
            (1, 0, "XS-Bold"),
            (0, 1, "XS-Italic"),
            (1, 1, "XS-BoldItalic"),
        ):
            addMapping("XS", bold, italic, face)
        _FONTS = ("XS", "XS-Bold", "XS-Italic", "XS-Mono")
    except Exception:  # no matplotlib fonts: still a valid PDF, with Latin-1 text
        _FONTS = ("Helvetica", "Helvetica-Bold", "Helvetica-Oblique", "Courier")
    return _FONTS


def _styles() -> dict[str, ParagraphStyle]:
    body, bold, italic, mono = _fonts()
    base = getSampleStyleSheet()
    s = {
        "title": ParagraphStyle("t", base["Title"], fontName=bold, fontSize=17, leading=21),
        "subtitle": ParagraphStyle("st", base["Normal"], fontName=body, textColor=colors.grey),
        "h2": ParagraphStyle("h2", base["Heading2"], fontName=bold, fontSize=13, spaceBefore=10),
        "body": ParagraphStyle(
            "b", base["Normal"], fontName=body, fontSize=9.5, leading=12.5, spaceAfter=4
        ),
        "cell": ParagraphStyle("c", base["Normal"], fontName=body, fontSize=8, leading=10),
        "head": ParagraphStyle("h", base["Normal"], fontName=bold, fontSize=8, leading=10),
        "caption": ParagraphStyle(
            "cap", base["Normal"], fontName=italic, fontSize=8, textColor=colors.grey, spaceAfter=6
        ),
    }
    s["note"] = ParagraphStyle("n", s["body"], fontName=italic, textColor=colors.grey)
    s["alert"] = ParagraphStyle("a", s["body"], fontName=bold, textColor=colors.HexColor("#a93226"))
    s["good"] = ParagraphStyle("g", s["body"], textColor=colors.HexColor("#2e7d32"))
    s["mono"] = ParagraphStyle("m", s["body"], fontName=mono, fontSize=8.5)
    s["heading"] = ParagraphStyle("h3", s["body"], fontName=bold, fontSize=10.5, spaceBefore=6)
    return s


def _p(text: str, style: ParagraphStyle) -> Paragraph:
    return Paragraph(escape(text), style)


def _widths(headers: list[str], rows: list[list[str]], body: str, bold: str) -> list[float]:
    """Column widths filling the page: each at least its longest word (so words are not
    broken), the rest shared in proportion to how much longer its text runs."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    pad, size = 14.0, 8.0  # the cell padding (6 + 6) and a little air
    floor, want = [], []
    for j, header in enumerate(headers):
        cells = [r[j] for r in rows if j < len(r)]
        words = [(w, bold) for w in header.split()] + [(w, body) for c in cells for w in c.split()]
        floor.append(
            min(max((stringWidth(w, f, size) for w, f in words), default=0) + pad, WIDTH * 0.4)
        )
        longest = max([stringWidth(c[:60], body, size) for c in cells], default=0.0)
        want.append(max(floor[-1], longest + pad))
    spare = WIDTH - sum(floor)
    if spare <= 0:
        return [WIDTH * f / sum(floor) for f in floor]
    extra = [w - f for w, f in zip(want, floor, strict=True)]
    if sum(extra) <= spare:  # everything fits on one line: spread what is left evenly
        return [w + (spare - sum(extra)) / len(want) for w in want]
    return [f + spare * e / sum(extra) for f, e in zip(floor, extra, strict=True)]


def _table(t: d.Table, st: dict[str, ParagraphStyle]) -> list[Any]:
    data = [[_p(h, st["head"]) for h in t.headers]]
    data += [[_p(c, st["cell"]) for c in row] for row in t.rows]
    style = [
        ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#bbbbbb")),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eef2f6")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]
    for i, flag in enumerate(t.flags or []):
        if flag in FLAG_COLOURS:
            style.append(("BACKGROUND", (0, i + 1), (-1, i + 1), FLAG_COLOURS[flag]))
    out: list[Any] = []
    if t.caption:
        out.append(_p(t.caption, st["caption"]))
    widths = _widths(t.headers, t.rows, st["cell"].fontName, st["head"].fontName)
    table = RLTable(data, colWidths=widths, repeatRows=1)
    table.setStyle(TableStyle(style))
    return [*out, table, Spacer(1, 6)]


def _facts(f: d.Facts, st: dict[str, ParagraphStyle]) -> list[Any]:
    data = [[_p(k, st["head"]), _p(v, st["cell"])] for k, v in f.items]
    table = RLTable(data, colWidths=[WIDTH * 0.28, WIDTH * 0.72])
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, -1), 0.3, colors.HexColor("#dddddd")),
            ]
        )
    )
    return [table, Spacer(1, 6)]


def _figure(f: d.Figure, st: dict[str, ParagraphStyle]) -> list[Any]:
    w, h = ImageReader(io.BytesIO(f.png)).getSize()
    scale = min(WIDTH / w, 1.0, (A4[1] * 0.6) / h)
    image = Image(io.BytesIO(f.png), width=w * scale, height=h * scale)
    return [KeepTogether([image, _p(f.caption, st["caption"])])]


def _block(block: d.Block, st: dict[str, ParagraphStyle]) -> list[Any]:
    if isinstance(block, d.Paragraph):
        return [_p(block.text, st[block.style])]
    if isinstance(block, d.Facts):
        return _facts(block, st)
    if isinstance(block, d.Table):
        return _table(block, st)
    if isinstance(block, d.Figure):
        return _figure(block, st)
    items = [ListItem(_p(i, st["body"])) for i in block.items]
    return [
        ListFlowable(
            items,
            bulletType="1" if block.ordered else "bullet",
            bulletFontName=st["body"].fontName,
            bulletFontSize=9,
        )
    ]


def render_pdf(doc: d.Document) -> bytes:
    st = _styles()
    story: list[Any] = [_p(doc.title, st["title"]), _p(doc.subtitle, st["subtitle"])]
    for i, section in enumerate(doc.sections):
        if section.new_page and i:
            story.append(PageBreak())
        story.append(_p(section.title, st["h2"]))
        for block in section.blocks:
            story.extend(_block(block, st))
    footer = f"{doc.footer} · generated {doc.generated}"
    font = st["body"].fontName

    def decorate(canvas: Any, template: Any) -> None:
        canvas.saveState()
        canvas.setFont(font, 7)
        canvas.setFillColor(colors.grey)
        canvas.drawString(MARGIN, 10 * mm, footer)
        canvas.drawRightString(A4[0] - MARGIN, 10 * mm, f"page {template.page}")
        canvas.restoreState()

    buf = io.BytesIO()
    template = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN + 4 * mm,
        title=doc.title,
        author="xserve",
        subject=doc.subtitle,
    )
    template.build(story, onFirstPage=decorate, onLaterPages=decorate)
    return buf.getvalue()

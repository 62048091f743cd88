"""Reading what ``xserve report`` produced: HTML parsed with the standard library's parser,
PDF text through pypdf, and the audit records straight from the SQLite file."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pypdf


@dataclass
class ParsedHtml:
    tables: dict[str, list[list[str]]] = field(default_factory=dict)
    """Table id -> body rows of cell texts."""
    row_classes: dict[str, list[str | None]] = field(default_factory=dict)
    facts: dict[str, dict[str, str]] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    text: str = ""

    def column(self, table: str, key: str, col: int) -> str:
        """The cell in column ``col`` of the row whose first cell is ``key``."""
        rows = [r for r in self.tables[table] if r[0] == key]
        assert rows, f"{table}: no row {key!r}"
        return rows[0][col]


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.out = ParsedHtml()
        self._table: str | None = None
        self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._dl: str | None = None
        self._dt: str | None = None
        self._list: str | None = None
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or ""
            self.out.tables[self._table] = []
            self.out.row_classes[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
            assert self._table is not None
            self.out.row_classes[self._table].append(a.get("class"))
        elif tag in ("td", "dt", "dd", "li"):
            self._cell = []
        elif tag == "dl":
            self._dl = a.get("id") or ""
            self.out.facts[self._dl] = {}
        elif tag in ("ol", "ul"):
            self._list = a.get("id") or ""
            self.out.lists[self._list] = []
        elif tag == "img":
            self.out.images.append(a.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        text = "".join(self._cell or []).strip()
        if tag == "td" and self._row is not None:
            self._row.append(text)
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.out.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "dt":
            self._dt = text
        elif tag == "dd" and self._dl is not None and self._dt is not None:
            self.out.facts[self._dl][self._dt] = text
        elif tag == "li" and self._list is not None:
            self.out.lists[self._list].append(text)
        if tag in ("td", "dt", "dd", "li"):
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse_html(path: Path) -> ParsedHtml:
    parser = _Parser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.out.text = " ".join(" ".join(parser.texts).split())
    return parser.out


def pdf_text(path: Path) -> str:
    """The PDF's text, whitespace runs folded to one space."""
    reader = pypdf.PdfReader(path)
    return " ".join(" ".join(page.extract_text() or "" for page in reader.pages).split())


def pdf_images(path: Path) -> int:
    return sum(len(page.images) for page in pypdf.PdfReader(path).pages)


def audit_rows(db: Path) -> list[dict[str, Any]]:
    """Every record body with its hash, read with sqlite3 alone."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT body, hash FROM audit_records ORDER BY seq").fetchall()
    out = []
    for body, hash_ in rows:
        record = json.loads(body)
        record["hash"] = hash_
        out.append(record)
    return out


def xserve(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xserve.cli", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )

"""A renderer-neutral document: what a report says, written once, rendered as HTML and PDF.

The report and notice builders produce a :class:`Document`; ``html`` and ``pdf``
render it. Keeping the content here (text, tables of already formatted cells,
PNG figures) is what makes the two formats say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Block",
    "Bullets",
    "Document",
    "Facts",
    "Figure",
    "Paragraph",
    "Section",
    "Style",
    "Table",
]


Style = Literal["body", "heading", "note", "alert", "good", "mono"]


@dataclass(frozen=True)
class Paragraph:
    text: str
    style: Style = "body"


@dataclass(frozen=True)
class Facts:
    """Label and value pairs (a model card, a record's identifiers)."""

    id: str
    items: list[tuple[str, str]]


@dataclass(frozen=True)
class Table:
    id: str
    headers: list[str]
    rows: list[list[str]]
    caption: str | None = None
    flags: list[str | None] | None = None
    """Per row: None, or a status ("warn", "drift") the renderers highlight."""


@dataclass(frozen=True)
class Figure:
    id: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class Bullets:
    id: str
    items: list[str]
    ordered: bool = True


Block = Paragraph | Facts | Table | Figure | Bullets


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    new_page: bool = False

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self


@dataclass
class Document:
    title: str
    subtitle: str
    generated: str
    """When the document was produced (UTC, ISO 8601)."""
    sections: list[Section] = field(default_factory=list)
    footer: str = ""

"""A Document as one self-contained HTML file: every value escaped, plots as data URIs."""

from __future__ import annotations

import base64

import jinja2
from markupsafe import Markup

from xserve.reports.document import Bullets, Document, Facts, Figure, Paragraph, Table

__all__ = ["render_html"]

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ doc.title }}</title>
<style>
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 60em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #ccc; }
.subtitle { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #eef2f6; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.facts dt { font-weight: bold; } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
tr.flag-warn td { background: #fff6d6; } tr.flag-drift td { background: #fbe0dc; }
p.alert { color: #a93226; font-weight: bold; } p.good { color: #2e7d32; }
p.note { color: #555; font-style: italic; }
p.mono, code { font-family: "DejaVu Sans Mono", monospace; overflow-wrap: anywhere; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; }
.page { page-break-before: always; }
footer { margin-top: 3em; color: #777; font-size: 0.8em; }
</style>
</head>
<body>
<header>
<h1>{{ doc.title }}</h1>
<p class="subtitle">{{ doc.subtitle }}</p>
</header>
{% for section in doc.sections %}
<section id="{{ section.id }}"{% if section.new_page %} class="page"{% endif %}>
<h2>{{ section.title }}</h2>
{% for block in section.blocks %}{{ render(block) }}
{% endfor %}
</section>
{% endfor %}
<footer>{{ doc.footer }} · generated {{ doc.generated }}</footer>
</body>
</html>
"""

_BLOCKS = {
    "paragraph": '{% if b.style == "heading" %}<h3>{{ b.text }}</h3>'
    '{% else %}<p class="{{ b.style }}">{{ b.text }}</p>{% endif %}',
    "facts": '<dl class="facts" id="{{ b.id }}">{% for k, v in b.items %}'
    "<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>",
    "table": '<table id="{{ b.id }}">{% if b.caption %}<caption>{{ b.caption }}</caption>'
    "{% endif %}<thead><tr>{% for h in b.headers %}<th>{{ h }}</th>{% endfor %}"
    "</tr></thead><tbody>{% for row in b.rows %}"
    '<tr{% if flags[loop.index0] %} class="flag-{{ flags[loop.index0] }}"{% endif %}>'
    "{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}"
    "</tbody></table>",
    "figure": '<figure id="{{ b.id }}"><img alt="{{ b.caption }}" '
    'src="data:image/png;base64,{{ data }}"><figcaption>{{ b.caption }}</figcaption>'
    "</figure>",
    "bullets": '<{{ tag }} id="{{ b.id }}">{% for item in b.items %}<li>{{ item }}</li>'
    "{% endfor %}</{{ tag }}>",
}

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_TEMPLATES = {k: _ENV.from_string(v) for k, v in _BLOCKS.items()}


def _render(block: object) -> str:
    if isinstance(block, Paragraph):
        return _TEMPLATES["paragraph"].render(b=block)
    if isinstance(block, Facts):
        return _TEMPLATES["facts"].render(b=block)
    if isinstance(block, Table):
        flags = block.flags or [None] * len(block.rows)
        return _TEMPLATES["table"].render(b=block, flags=flags)
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return _TEMPLATES["figure"].render(b=block, data=data)
    if isinstance(block, Bullets):
        return _TEMPLATES["bullets"].render(b=block, tag="ol" if block.ordered else "ul")
    raise TypeError(f"unknown block {type(block).__name__}")


def render_html(doc: Document) -> str:
    # The blocks come back escaped already: mark them safe so they are not escaped twice.
    return _ENV.from_string(_TEMPLATE).render(doc=doc, render=lambda b: Markup(_render(b)))

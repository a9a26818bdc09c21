"""PURE: the report as one self-contained HTML page: inline CSS, charts inlined as data: URIs,
nothing fetched from the network. Plain data in, a string out."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass

from .comparison import Comparison, cell, failed_cell, header, marked_label, notes, reference_cell

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "Noto Sans", "PingFang SC", sans-serif;
       color: #1f2328; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
.meta, .note { color: #59636e; }
.note { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: .5rem .8rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: .8rem 0; }
th, td { border: 1px solid #d0d7de; padding: .3rem .55rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f6f8fa; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.failed { color: #cf222e; text-align: left; }
strong { color: #1a7f37; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; }
figcaption { color: #59636e; font-size: .9rem; }
"""


@dataclass(frozen=True)
class Section:
    """One dataset split: its comparison, and its chart as SVG bytes (None without matplotlib)."""

    comparison: Comparison
    chart_svg: bytes | None = None
    chart_caption: str = ""


def build_html(sections: list[Section], generated_at: str, source: str, charts_note: str = "") -> str:
    """The page: a heading, CHARTS_NOTE when the charts could not be drawn, then per section
    its table and chart. SOURCE names where the results came from."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>evalkit report</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>evalkit report</h1>",
             f'<p class="meta">Recall and zero-shot classification (%) of every evaluation kept in {_text(source)}; '
             f'generated {_text(generated_at)}.</p>']
    if charts_note:
        parts.append(f'<p class="note">{_text(charts_note)}</p>')
    for section in sections:
        parts += _section(section)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _section(section: Section) -> list[str]:
    comparison = section.comparison
    title = f"{comparison.dataset} · {comparison.split}"
    parts = [f"<section><h2>{_text(title)}</h2>"]
    if section.chart_svg is not None:  # the picture first: a sweep's table runs to dozens of rows
        source = "data:image/svg+xml;base64," + base64.b64encode(section.chart_svg).decode("ascii")
        parts.append(f'<figure><img src="{source}" alt="{_text("recall charts: " + title)}">'
                     f"<figcaption>{_text(section.chart_caption)}</figcaption></figure>")
    against = f"; (±x.xx): points against {_text(comparison.baseline)}" if comparison.baseline else ""
    parts.append(f'<p class="meta">The newest result of each label; the best of each column in bold{against}.</p>')
    parts.append(f'<div class="scroll">{comparison_table(comparison)}</div>')
    parts.append("</section>")
    return parts


def comparison_table(comparison: Comparison) -> str:
    """The comparison as an HTML table: the same cells, marks and notes under it as the terminal's
    and comparison.md's."""
    head = "".join(f"<th>{_text(title)}</th>" for title in header(comparison))
    rows = []
    for row in comparison.rows:
        if not row.result.ok:
            cells = f'<td class="failed" colspan="{len(comparison.columns)}">{_text(failed_cell(row))}</td>'
        else:
            # a cell is digits, sign and parentheses; only the bold markers are markup
            cells = "".join(f"<td>{cell(comparison, row, d, m, bold=('<strong>', '</strong>'))}</td>"
                            for d, m in comparison.columns)
        rows.append(f"<tr><td>{_text(marked_label(comparison, row.label))}</td>{cells}</tr>")
    for reference in comparison.references:  # published rows (--reference), as in comparison.md
        cells = "".join(f"<td>{_text(reference_cell(reference, d, m))}</td>" for d, m in comparison.columns)
        rows.append(f'<tr class="published"><td><em>{_text(reference["label"])}</em></td>{cells}</tr>')
    below = "".join(f'<p class="meta">{_text(line)}</p>' for line in notes(comparison))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{below}"


def _text(value: str) -> str:
    return html.escape(value, quote=True)

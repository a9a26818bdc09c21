"""`report`: every comparison kept locally, as one self-contained HTML page with recall charts
(matplotlib, when installed) and, on request, the charts as SVG and PNG files for a paper."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import clock, curves, report_html
from .comparison import Comparison
from .errors import ConfigError
from .store import LocalStore


@dataclass(frozen=True)
class ReportWritten:
    page: Path
    figures: list[Path]
    has_charts: bool           # False: matplotlib is not installed, the page has the tables only


def write_report(store: LocalStore, comparisons: list[Comparison], output: Path | None = None,
                 figures: Path | None = None) -> ReportWritten:
    """The page (default RESULTS_DIR/report.html); with FIGURES, each chart as <dataset>-<split>.svg/.png there."""
    from . import charts  # matplotlib's home, loaded only here

    has_charts = charts.is_available()
    if figures is not None and not has_charts:
        raise ConfigError(f"--figures {figures}: drawing the charts needs matplotlib, which is not installed",
                          f"{charts.INSTALL}, or leave out --figures for a report with the tables only")
    sections, files = [], {}
    for comparison in comparisons:
        chart = curves.build_chart(comparison) if has_charts else None
        drawn = charts.render(chart, charts.FORMATS if figures else ("svg",)) if chart else {}
        files.update({f"{chart.name}.{fmt}": data for fmt, data in drawn.items()} if figures and chart else {})
        sections.append(report_html.Section(comparison, drawn.get("svg"), caption(chart) if chart else ""))
    note = "" if has_charts else f"No charts: they need matplotlib ({charts.INSTALL}); the tables are all here."
    page = report_html.build_html(sections, clock.timestamp(), str(store.root.resolve()), note)
    written = store.save_report(page, output)
    return ReportWritten(written, store.save_figures(figures, files) if figures else [], has_charts)


INTERVALS_NOTE = (" Error bars: each number's 95% bootstrap interval over the split's queries (its images, "
                  "for classification): the ± of the table.")


def caption(chart: curves.Chart) -> str:
    return _what_is_drawn(chart) + (INTERVALS_NOTE if chart.has_intervals else "")


def _what_is_drawn(chart: curves.Chart) -> str:
    if chart.directions == ("zeroshot_classification",):
        return (f"Zero-shot classification (%) on {chart.dataset} {chart.split}: top-1, top-5 and mean per-class "
                "recall" + (", against epoch, a line per experiment." if chart.is_over_epochs else
                            ", one checkpoint per experiment."))
    if chart.is_over_epochs:
        return (f"Recall (%) against epoch on {chart.dataset} {chart.split}: a line per experiment "
                f"({len(chart.series)}), a column per metric, a row per direction.")
    return f"Recall (%) on {chart.dataset} {chart.split}: one checkpoint per experiment."

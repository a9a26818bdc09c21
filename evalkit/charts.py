"""The only importer of matplotlib (the optional extra `plot`: pip install -e '.[plot]'):
curves.Chart -> SVG and PNG bytes, in memory. Imported only by `report`, and matplotlib only
when a chart is drawn, so every other command starts without it."""
from __future__ import annotations

import importlib.util
import io
import warnings

from .comparison import METRIC_TITLES
from .curves import Chart
from .plan import DIRECTION_TITLES

INSTALL = "pip install -e '.[plot]'"
FORMATS = ("svg", "png")
_METRIC_NAMES = {**METRIC_TITLES, "mean_recall": "mean"}
# Fonts with CJK glyphs, tried after DejaVu Sans for Chinese experiment names (when installed)
_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
              "Droid Sans Fallback", "AR PL UMing CN", "Source Han Sans SC", "SimHei", "Microsoft YaHei")


def is_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def render(chart: Chart, formats: tuple[str, ...] = ("svg",)) -> dict[str, bytes]:
    """CHART drawn once, saved in each of FORMATS ('svg', 'png')."""
    import matplotlib
    from matplotlib.figure import Figure

    settings = {"svg.hashsalt": "evalkit", "font.family": ["DejaVu Sans", *_installed(_CJK_FONTS)],
                "axes.prop_cycle": matplotlib.cycler(color=_colors(len(chart.series)))}
    with matplotlib.rc_context(settings), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")  # no CJK font here: boxes, not noise
        figure = Figure(figsize=_size(chart), layout="constrained")
        (_draw_lines if chart.is_over_epochs else _draw_bars)(figure, chart)
        handles, labels = figure.axes[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), frameon=False)
        return {fmt: _save(figure, fmt) for fmt in formats}


def _draw_lines(figure, chart: Chart) -> None:
    """A row per direction, a column per metric; a line per experiment over the epochs."""
    grid = figure.subplots(len(chart.directions), len(chart.metrics), squeeze=False, sharex=True)
    positions = {tick: index for index, tick in enumerate(chart.ticks)}
    for row, direction in zip(grid, chart.directions):
        for axes, metric in zip(row, chart.metrics):
            for number, series in enumerate(chart.series):
                indices = [i for i, (_, recall) in enumerate(series.points) if metric in recall.get(direction, {})]
                xs = [positions[series.points[i][0]] for i in indices]
                ys = [series.points[i][1][direction][metric] for i in indices]
                drawn = axes.errorbar(xs, ys, yerr=_error_bars(series, indices, ys, direction, metric), marker="o",
                                      capsize=3, label=series.experiment)
                _name_intervals(drawn, f"{direction}-{metric}-{number}")
            axes.set_title(f"{DIRECTION_TITLES[direction]} {_METRIC_NAMES[metric]}", fontsize=10)
            axes.set_xticks(range(len(chart.ticks)), chart.ticks)
            axes.grid(alpha=0.3)
        row[0].set_ylabel(_unit(direction))
    for axes in grid[-1]:
        axes.set_xlabel("epoch")


def _draw_bars(figure, chart: Chart) -> None:
    """One checkpoint per experiment: per direction, a group per metric, a bar per experiment."""
    grid = figure.subplots(1, len(chart.directions), squeeze=False, sharey=True)[0]
    width = 0.8 / len(chart.series)
    for axes, direction in zip(grid, chart.directions):
        for index, series in enumerate(chart.series):
            recall = series.points[0][1].get(direction, {})
            heights = [recall.get(metric, 0.0) for metric in chart.metrics]
            offsets = [m + (index - (len(chart.series) - 1) / 2) * width for m in range(len(chart.metrics))]
            errors = [_error_bars(series, [0], [height], direction, metric) for height, metric in zip(heights, chart.metrics)]
            drawn = axes.bar(offsets, heights, width, label=series.experiment,
                             yerr=[[low for (low,), _ in errors], [high for _, (high,) in errors]], capsize=3)
            _name_intervals(drawn.errorbar, f"{direction}-{index}")
        axes.set_title(DIRECTION_TITLES[direction], fontsize=10)
        axes.set_xticks(range(len(chart.metrics)), [_METRIC_NAMES[m] for m in chart.metrics])
        axes.grid(axis="y", alpha=0.3)
    grid[0].set_ylabel(_unit(chart.directions[0]))


def _error_bars(series, indices: list[int], values: list[float], direction: str, metric: str
                ) -> list[list[float]]:
    """matplotlib's yerr: how far each point's 95% interval reaches below and above it (0 and 0
    for a run that kept no interval, so it shows no bar)."""
    below, above = [], []
    for index, value in zip(indices, values):
        low, high = series.interval(index, direction, metric) or (value, value)
        below.append(max(value - low, 0.0))
        above.append(max(high - value, 0.0))
    return [below, above]


def _name_intervals(container, name: str) -> None:
    """The error bars' lines get an id in the SVG (`ci95-…`), so that a reader of the file (a
    test) can tell the intervals were drawn."""
    for lines in container.lines[2]:
        lines.set_gid(f"ci95-{name}")


def _unit(direction: str) -> str:
    return "accuracy (%)" if direction == "zeroshot_classification" else "recall (%)"


def _size(chart: Chart) -> tuple[float, float]:
    legend_rows = (len(chart.series) + 3) // 4
    if chart.is_over_epochs:
        return 12.0, 2.6 * len(chart.directions) + 0.3 * legend_rows + 0.3
    return 3.6 * len(chart.directions) + 1.0, 3.2 + 0.3 * legend_rows


def _colors(count: int) -> list[str]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(index % palette.N) for index in range(max(count, 1))]


def _installed(families: tuple[str, ...]) -> list[str]:
    from matplotlib import font_manager

    present = {font.name for font in font_manager.fontManager.ttflist}
    return [family for family in families if family in present]


def _save(figure, fmt: str) -> bytes:
    out = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {}  # the same chart, the same bytes
    figure.savefig(out, format=fmt, dpi=150, metadata=metadata)
    return out.getvalue()

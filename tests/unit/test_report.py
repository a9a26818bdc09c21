"""The report's pure parts: which experiment and epoch a result is, the chart data of a sweep or a
plain comparison, and the page (self-contained, escaped, the same cells as the terminal)."""
from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import pytest

from evalkit.comparison import ModelResult, build_comparison
from evalkit.curves import CheckpointPoint, build_chart, parse_checkpoint
from evalkit.report_html import Section, build_html

EXP = "/root/autodl-tmp/datapath/experiments/{}/checkpoints/{}.pt"


@pytest.mark.parametrize("label, checkpoint, expected", [
    ("team_distill", EXP.format("team_distill", "epoch_latest"), ("team_distill", None, "latest")),
    ("team_distill@epoch_5", EXP.format("team_distill", "epoch_5"), ("team_distill", 5, "5")),
    ("team_distill@epoch5", EXP.format("team_distill", "epoch5"), ("team_distill", 5, "5")),  # Chinese-CLIP's name
    ("team_distill@epoch_05", EXP.format("team_distill", "epoch_05"), ("team_distill", 5, "5")),
    ("team@epoch_12", EXP.format("muge_finetune_team", "epoch_12"), ("team", 12, "12")),     # a models: name
    ("team", EXP.format("muge_finetune_team", "epoch_latest"), ("team", None, "latest")),
    ("team_distill@best", EXP.format("team_distill", "best"), ("team_distill", None, "best")),
    ("my_label", EXP.format("team_distill", "epoch_7"), ("my_label", 7, "7")),              # --label: the file says
    ("student", "/models/student.pt", ("student", None, "student")),
    ("a@b@epoch_3", EXP.format("x", "epoch_3"), ("a@b", 3, "3")),   # a row kept before rows had an experiment
    ("EXP@Epoch_2", EXP.format("EXP", "Epoch_2"), ("EXP", 2, "2")),
])
def test_parse_checkpoint(label, checkpoint, expected):
    assert parse_checkpoint(ModelResult(label, checkpoint, "ok", {})) == CheckpointPoint(*expected)


def test_a_row_with_its_experiment_recorded_is_charted_under_it():
    """An experiment folder named a@b: its epoch_latest.pt is labelled a@b, not experiment a's."""
    result = ModelResult("a@b", EXP.format("a@b", "epoch_latest"), "ok", {}, experiment="a@b", epoch=4)
    assert parse_checkpoint(result) == CheckpointPoint("a@b", None, "latest")


def recall(base: float, image_to_image: bool = False) -> dict:
    directions = ("text_to_image", "image_to_text") + (("image_to_image",) if image_to_image else ())
    return {d: {"r1": base + i, "r5": base + 10 + i, "r10": base + 20 + i, "mean_recall": base + 10 + i}
            for i, d in enumerate(directions)}


def comparison(*rows: tuple[str, str, float], failed: tuple[str, ...] = ()):
    results = [ModelResult(label, checkpoint, "ok", recall(base)) for label, checkpoint, base in rows]
    results += [ModelResult(label, EXP.format(label, "epoch_latest"), "failed", {}, error="x", exit_code=12)
                for label in failed]
    return build_comparison(results, "Flickr30k-CN", "valid", "2026-12-02T12:00:00+00:00")


SWEEP = comparison(("team@epoch_10", EXP.format("team", "epoch_10"), 40.0),
                   ("team@epoch_2", EXP.format("team", "epoch_2"), 30.0),
                   ("team", EXP.format("team", "epoch_latest"), 41.0),
                   ("large@epoch_2", EXP.format("large", "epoch_2"), 35.0),
                   ("baseline", EXP.format("baseline", "epoch_latest"), 20.0), failed=("huge",))


def test_a_sweep_is_lines_over_epochs_numbered_first_then_latest():
    chart = build_chart(SWEEP)
    assert chart.is_over_epochs and chart.ticks == ("2", "10", "latest")
    assert chart.directions == ("text_to_image", "image_to_text")
    assert chart.metrics == ("r1", "r5", "r10", "mean_recall")
    assert [(s.experiment, [tick for tick, _ in s.points]) for s in chart.series] == [
        ("team", ["2", "10", "latest"]), ("large", ["2"]), ("baseline", ["latest"])]   # the failed one: no point
    team = chart.series[0]
    assert [r["text_to_image"]["r1"] for _, r in team.points] == [30.0, 40.0, 41.0]
    assert chart.name == "Flickr30k-CN-valid"


def test_one_checkpoint_per_experiment_is_a_bar_chart():
    chart = build_chart(comparison(("team", EXP.format("team", "epoch_latest"), 40.0),
                                   ("large", EXP.format("large", "epoch_latest"), 35.0)))
    assert not chart.is_over_epochs and [s.experiment for s in chart.series] == ["team", "large"]


def test_image_to_image_is_a_direction_of_the_chart_when_evaluated():
    results = [ModelResult("team", EXP.format("team", "epoch_latest"), "ok", recall(40.0, image_to_image=True))]
    chart = build_chart(build_comparison(results, "MUGE", "test", "t"))
    assert chart.directions == ("text_to_image", "image_to_text", "image_to_image")


def test_nothing_to_draw_when_every_row_failed():
    assert build_chart(comparison(failed=("huge",))) is None


class _Page(HTMLParser):
    """What a browser would fetch and show: every src/href, the tables' cells, the images."""

    def __init__(self) -> None:
        super().__init__()
        self.links, self.cells, self.images, self.scripts = [], [], [], 0
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if k in attrs]
        self.images += [attrs["src"]] if tag == "img" else []
        self.scripts += tag == "script"
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.cells[-1] += data


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'


def test_the_page_is_self_contained_with_the_chart_inlined():
    page = build_html([Section(SWEEP, SVG, "a caption")], "2026-12-02T12:00:00+00:00", "/r/results")
    parsed = parse(page)
    assert parsed.scripts == 0
    assert all(link.startswith("data:") for link in parsed.links)        # nothing from the network
    [image] = parsed.images
    assert base64.b64decode(image.removeprefix("data:image/svg+xml;base64,")) == SVG
    assert "<style>" in page and "a caption" in page and "Flickr30k-CN · valid" in page


def test_the_table_has_the_terminals_cells_best_in_bold_and_deltas():
    page = build_html([Section(SWEEP)], "t", "/r")
    cells = parse(page).cells
    assert cells[:3] == ["model", "text→image R@1", "text→image R@5"]
    row = cells[cells.index("team"):cells.index("team") + 9]
    assert row[1] == "41.00 (+21.00)"                                        # against baseline
    assert "<td><strong>41.00</strong> (+21.00)</td>" in page                 # the column's best
    assert "failed (exit 12)" in cells


def test_without_charts_the_page_says_how_to_get_them():
    page = build_html([Section(SWEEP)], "t", "/r", charts_note="No charts: they need matplotlib (pip install -e '.[plot]')")
    assert "pip install -e &#x27;.[plot]&#x27;" in page and "<img" not in page


def test_labels_and_names_are_text_never_markup():
    hostile = '<script>alert("x")</script>'
    document = build_comparison([ModelResult(hostile, "/x.pt", "ok", recall(10.0))], "数据 <b>", "valid", "t")
    page = build_html([Section(document)], "t", "/r & <i>")
    assert hostile not in page and "<b>" not in page and "<i>" not in page
    assert parse(page).scripts == 0 and hostile in parse(page).cells
    assert re.search(r"数据 &lt;b&gt; · valid", page)


def with_intervals(*rows: tuple[str, str, float, float]):
    """A comparison whose rows kept 95% intervals of ±HALF around each number, as the runs do."""
    results = []
    for label, checkpoint, base, half in rows:
        found = recall(base)
        ci95 = {d: {m: [value - half, value + half] for m, value in metrics.items()} for d, metrics in found.items()}
        results.append(ModelResult(label, checkpoint, "ok", found, ci95=ci95))
    return build_comparison(results, "Flickr30k-CN", "valid", "2026-12-02T12:00:00+00:00")


def test_each_point_of_the_chart_carries_its_interval():
    chart = build_chart(with_intervals(("team@epoch_2", EXP.format("team", "epoch_2"), 30.0, 1.5),
                                       ("team", EXP.format("team", "epoch_latest"), 41.0, 2.0)))
    assert chart.has_intervals and [s.interval(i, "text_to_image", "r1") for s in chart.series for i in (0, 1)] == [
        [28.5, 31.5], [39.0, 43.0]]
    assert not build_chart(SWEEP).has_intervals   # runs made before intervals existed


@pytest.mark.parametrize("rows", [
    (("team@epoch_2", EXP.format("team", "epoch_2"), 30.0, 1.5), ("team", EXP.format("team", "epoch_latest"), 41.0, 2.0)),
    (("team", EXP.format("team", "epoch_latest"), 30.0, 1.5), ("large", EXP.format("large", "epoch_latest"), 41.0, 2.0)),
], ids=["lines over epochs", "grouped bars"])
def test_the_charts_draw_each_interval_as_an_error_bar_from_its_low_to_its_high(rows):
    pytest.importorskip("matplotlib")
    from matplotlib.container import ErrorbarContainer
    from matplotlib.figure import Figure
    from evalkit import charts

    chart = build_chart(with_intervals(*rows))
    figure = Figure()
    (charts._draw_lines if chart.is_over_epochs else charts._draw_bars)(figure, chart)
    spans = sorted({round(float(segment[1][1] - segment[0][1]), 6) for axes in figure.axes
                    for container in axes.containers
                    for bars in (container if isinstance(container, ErrorbarContainer) else container.errorbar).lines[2]
                    for segment in bars.get_segments()})
    assert spans == [3.0, 4.0]   # each bar spans its row's interval: ±1.5 and ±2.0
    svg = charts.render(chart)["svg"].decode()
    assert svg.count('id="ci95-') == (8 if chart.is_over_epochs else 4)   # per axes and series


def test_the_caption_says_what_the_error_bars_are_only_when_there_are_some():
    from evalkit.report import INTERVALS_NOTE, caption
    drawn = build_chart(with_intervals(("team", EXP.format("team", "epoch_latest"), 30.0, 1.5)))
    assert caption(drawn).endswith(INTERVALS_NOTE) and "95% bootstrap interval" in INTERVALS_NOTE
    assert INTERVALS_NOTE not in caption(build_chart(SWEEP))

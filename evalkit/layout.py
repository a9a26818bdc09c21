"""rich, beside view.py: what is printed at the console's width. evalkit's own lines break at
words on a terminal (a path kept whole); a table that does not fit changes shape (short direction
names, a table per direction or dataset split, each label above its values) instead of cutting a
label or a header with '…'."""
from __future__ import annotations

from typing import Callable

from rich.cells import cell_len
from rich.console import Console, JustifyMethod, RenderableType
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

from .comparison import METRIC_TITLES, Comparison, cell, failed_cell, marked_label, reference_cell
from .evaluation import NAMED
from .plan import DIRECTION_TITLES
from .significance import plus_minus
from .summary import ImageRecall, Recall
from .terminal_text import wrap_words

UNBOUNDED = 10_000  # columns: a renderable measured at its natural width
SHORT_DIRECTIONS = {"text_to_image": "t→i", "image_to_text": "i→t", "image_to_image": "i→i",
                    "zeroshot_classification": "zero-shot"}
Rows = list[tuple[Text, list[Text]]]  # a table's rows: each label and its cells


def show_line(console: Console, text: str, style: str = "") -> None:
    """One of evalkit's own lines: on a terminal, broken at words at its width, a path kept whole (on
    a line of its own when it does not fit); piped, one line, for grep."""
    for line in wrap_words(text, console.width) if console.is_terminal else [text]:
        console.print(Text(line, style=style), soft_wrap=True)


def recall_table(label: str, recalls: dict[str, Recall], chosen_by: str = NAMED, ci95: dict | None = None) -> Table:
    """The title names the evaluation; when the user did not name its checkpoint, how it was chosen.
    With CI95 (summary.json's), each value shows its 95% interval's half-width: '52.10 ±1.4'."""
    title = f"Recall (%) — {label}" + ("" if chosen_by == NAMED else f" ({chosen_by})")
    table = Table(title=Text(title), min_width=max(map(cell_len, title.split())))  # the label whole
    table.add_column("direction")
    with_map = any(isinstance(recall, ImageRecall) for recall in recalls.values())
    for column in ("R@1", "R@5", "R@10", "Mean Recall", *(("mAP@10",) if with_map else ())):
        table.add_column(column, justify="right")
    for direction, recall in recalls.items():
        values = [f"{value:.2f}" + plus_minus((ci95 or {}).get(direction, {}).get(metric))
                  for metric, value in zip(("r1", "r5", "r10", "mean_recall"),
                                           (recall.r1, recall.r5, recall.r10, recall.mean_recall))]
        if with_map:
            values.append(f"{recall.map10:.2f}" if isinstance(recall, ImageRecall) else "")
        table.add_row(DIRECTION_TITLES[direction], *values)
    return table


def show_table(console: Console, table: Table) -> None:
    """TABLE; a title with a word wider than the console (a long label) goes whole on lines above it."""
    if table.title and (table.min_width or 0) > console.width:
        show_line(console, str(table.title), "italic")
        table.title, table.min_width = None, None
    console.print(table)


def show_comparison_table(console: Console, comparison: Comparison) -> None:
    """As wide as the console allows, every label whole: one table, its directions named in full or
    as t→i / i→t; else a table per direction; else per direction, each label above its numbers.
    The best of each column in bold green; ±deltas against the baseline."""
    columns, by_direction = comparison.columns, directions_of(comparison.columns)
    rows = comparison_rows(comparison, columns)
    layouts = [[labelled_table(comparison_title(comparison), "model", titles, rows)]
               for titles in ([f"{DIRECTION_TITLES[d]} {METRIC_TITLES[m]}" for d, m in columns],
                              [f"{SHORT_DIRECTIONS[d]}\n{METRIC_TITLES[m]}" for d, m in columns])]
    layouts.append([labelled_table(comparison_title(comparison, direction), "model",
                                   [METRIC_TITLES[m] for _, m in shown], comparison_rows(comparison, shown))
                    for direction, shown in by_direction])
    if not show_first_fitting(console, layouts):
        for direction, shown in by_direction:
            show_labels_above(console, comparison_title(comparison, direction), [METRIC_TITLES[m] for _, m in shown],
                              comparison_rows(comparison, shown))


def comparison_title(comparison: Comparison, direction: str | None = None) -> str:
    if comparison.is_classification:
        title = "Zero-shot classification (%)"
    else:
        title = f"{DIRECTION_TITLES[direction]} recall (%)" if direction else "Recall (%)"
    title += f" — {comparison.dataset} {comparison.split}"
    return title + (f" (±: against {comparison.baseline})" if comparison.baseline else "")


def directions_of(columns: tuple[tuple[str, str], ...]) -> list[tuple[str, list[tuple[str, str]]]]:
    """(direction, its columns), in the columns' order."""
    grouped: dict[str, list[tuple[str, str]]] = {}
    for direction, metric in columns:
        grouped.setdefault(direction, []).append((direction, metric))
    return list(grouped.items())


def comparison_rows(comparison: Comparison, columns: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> Rows:
    """Each model's label and its COLUMNS' cells, then the published rows in italics."""
    rows: Rows = []
    for row in comparison.rows:
        if row.result.ok:
            cells = [Text.from_markup(cell(comparison, row, d, m, bold=("[bold green]", "[/]"))) for d, m in columns]
        else:
            cells = [Text(failed_cell(row), style="red"), *[Text("–") for _ in columns[1:]]]
        rows.append((Text(marked_label(comparison, row.label)), cells))
    for reference in comparison.references:
        rows.append((Text(reference["label"], style="italic"),
                     [Text(reference_cell(reference, d, m), style="italic") for d, m in columns]))
    return rows


def labelled_table(title: str, first: str, titles: list[str], rows: Rows, justify: JustifyMethod = "right") -> Table:
    """A column of labels, never wrapped, then one column per title; the title's words never split."""
    table = Table(title=Text(title), min_width=max(map(cell_len, title.split())))
    table.add_column(first, no_wrap=True)
    for column in titles:
        table.add_column(column, justify=justify, overflow="fold")
    for label, cells in rows:
        table.add_row(label, *cells)
    return table


def fits(console: Console, renderable: RenderableType) -> bool:
    """Whether RENDERABLE at its natural width fits the console: nothing in it wrapped or cut."""
    return Measurement.get(console, console.options.update_width(UNBOUNDED), renderable).maximum <= console.width


def show_first_fitting(console: Console, layouts: list[list[Table]]) -> bool:
    """Print the first layout whose tables all fit the console; False when none does."""
    for tables in layouts:
        if all(fits(console, table) for table in tables):
            for table in tables:
                console.print(table)
            return True
    return False


def show_labels_above(console: Console, title: str, titles: list[str], rows: Rows) -> None:
    """A narrow console's last resort: each label on a line of its own, whole, its values under it
    in columns."""
    columns = [[Text(column), *(cells[index] for _, cells in rows)] for index, column in enumerate(titles)]
    widths = [max(text.cell_len for text in texts) for texts in columns]
    if sum(widths) + 2 * len(widths) > console.width:  # values wrap at their spaces
        widths = [max(cell_len(word) for text in texts for word in text.plain.split()) for texts in columns]

    def values(cells: list[Text]) -> Table:
        grid = Table.grid(*(Column(width=width + 2, justify="right", overflow="fold") for width in widths),
                          padding=(0, 0, 0, 2), pad_edge=True)  # the width holds the padding
        grid.add_row(*cells)
        return grid
    show_line(console, title, "italic")
    console.print(values([Text(column, style="bold") for column in titles]))
    for label, cells in rows:
        console.print(label, soft_wrap=True)
        console.print(values(cells))


PUBLISHED = "Chinese-CLIP's published retrieval results (%)"
PUBLISHED_DIRECTIONS = ("text_to_image", "image_to_text")


def show_references(console: Console, rows: list[dict]) -> None:
    """`python -m evalkit references`: one line per published result. Narrower, a table per dataset
    split; then without the setup (the name says it); then each name above its numbers."""
    def table_rows(group: list[dict], *facts: str) -> Rows:
        return [(Text(row["name"]), [*(Text(row[fact]) for fact in facts),
                                     *(Text(published(row["recall"], d)) for d in PUBLISHED_DIRECTIONS)])
                for row in group]
    splits: dict[str, list[dict]] = {}
    for row in rows:
        splits.setdefault(f"{PUBLISHED} — {row['dataset']} {row['split']}", []).append(row)
    recall_titles = [f"{DIRECTION_TITLES[d]} R@1/5/10" for d in PUBLISHED_DIRECTIONS]
    layouts = [[labelled_table(PUBLISHED, "name", ["dataset", "split", "setup", *recall_titles],
                               table_rows(rows, "dataset", "split", "setup"), justify="left")]]
    layouts += [[labelled_table(title, "name", [*facts, *(t.replace(" ", "\n") for t in recall_titles)],
                                table_rows(group, *facts), justify="left") for title, group in splits.items()]
                for facts in (("setup",), ())]
    if not show_first_fitting(console, layouts):
        for title, group in splits.items():
            show_labels_above(console, title, [f"{SHORT_DIRECTIONS[d]} R@1/5/10" for d in PUBLISHED_DIRECTIONS],
                              table_rows(group))
    show_line(console, "source: OFA-Sys/Chinese-CLIP Results.md; --reference NAME adds one to a table", "dim")


def show_classification_reference_rows(console: Console, title: str, rows: list[dict],
                                       metric: Callable[[dict], str]) -> None:
    """Published classification ROWS a line each, its name first (`references | grep NAME`), by
    dataset; a dataset not comparable with top-1 marked †; METRIC: a row's metric as shown. The
    name says the model: without a column of its own, the table fits 80 columns."""
    table = Table(title=Text(title))
    for column in ("name", "dataset", "metric"):
        table.add_column(column, no_wrap=True)
    table.add_column("%", justify="right", no_wrap=True)
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        for row in (row for row in rows if row["dataset"] == dataset):
            table.add_row(row["name"], dataset + ("†" if row["warnings"] else ""), metric(row), f"{row['value']:.1f}")
    console.print(table)


def published(recall: dict, direction: str) -> str:
    """'79.1/94.8/97.4': a published row's R@1/5/10 in one cell."""
    return "/".join(f"{recall[direction][m]:.1f}" for m in ("r1", "r5", "r10")) if direction in recall else "–"


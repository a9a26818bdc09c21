"""PURE: several models' recall side by side: the best of each column, deltas against the
baseline, and the same table as JSON, CSV and Markdown (to paste into a paper or a chat)."""
from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field, replace

from . import comparability
from .plan import DIRECTION_TITLES
from .significance import CLASSIFICATION, is_significant, plus_minus, significance
from .terminal_text import said_once

BASELINE = "baseline"
METRICS = ("r1", "r5", "r10", "mean_recall")
METRIC_TITLES = {"r1": "R@1", "r5": "R@5", "r10": "R@10", "mean_recall": "MR", "map10": "mAP@10",
                 "top1": "top-1", "top5": "top-5", "mean_per_class_recall": "MPCR"}
SHORT_DIRECTIONS = {"text_to_image": "t2i", "image_to_text": "i2t", "image_to_image": "i2i",
                    CLASSIFICATION: "zs"}
COLUMNS = tuple((direction, metric) for direction in ("text_to_image", "image_to_text") for metric in METRICS)
# a column group of its own, shown when some model has image→image numbers (--image-to-image)
IMAGE_COLUMNS = tuple(("image_to_image", metric) for metric in (*METRICS, "map10"))
# a zero-shot classification dataset's columns, in place of retrieval's (zeroshot.py)
CLASSIFICATION_COLUMNS = tuple((CLASSIFICATION, metric) for metric in ("top1", "top5", "mean_per_class_recall"))
MARKDOWN_MARKER = "\\*"  # a bare * would start emphasis


@dataclass(frozen=True)
class ModelResult:
    """One model's row: its recall in percent per direction, or why it failed."""

    label: str
    checkpoint: str
    status: str                                   # "ok" or "failed"
    recall: dict[str, dict[str, float]]           # direction -> metric -> value
    error: str | None = None
    exit_code: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    server_output_dir: str | None = None
    checkpoint_chosen_by: str | None = None       # evaluation.NAMED, LAST_EXTRACT or SERVER_LATEST
    provenance: dict | None = None                # summary.json's: what the numbers were made from
    warnings: tuple[str, ...] = ()                # the traps it fell into (traps.py)
    ci95: dict[str, dict[str, list[float]]] | None = None  # direction -> metric -> [low, high], percent
    # query_hits.json's directions (significance.parse_query_hits): what paired tests read; not shown
    query_hits: dict | None = field(default=None, repr=False, compare=False)
    # across epochs: the experiment and the training epoch and step the checkpoint holds (the
    # evaluation's, kept in summary.json), and whether this is its experiment's best row
    # (epochs.annotate: highest average of the directions' mean recall)
    experiment: str | None = None
    epoch: int | None = None
    best: bool = False
    step: int | None = None
    # on the best row, against its experiment's runner-up on the same queries (epochs.annotate):
    # {"label", direction -> {"delta", "p_value"} of mean recall, "significant"}
    versus_runner_up: dict | None = None
    run_id: str | None = None  # the run whose numbers these are (summary.json's)
    # not evaluated by this command: the cell was unchanged since that run (unchanged.py)
    reused: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def value(self, direction: str, metric: str) -> float | None:
        return self.recall.get(direction, {}).get(metric)

    def interval(self, direction: str, metric: str) -> list[float] | None:
        return (self.ci95 or {}).get(direction, {}).get(metric)


@dataclass(frozen=True)
class Row:
    """One model's row of a comparison: its result and, against the baseline, its deltas."""

    result: ModelResult
    delta: dict[str, dict[str, float]] | None = None  # direction -> metric -> points
    # against the baseline, on the same queries: direction -> metric -> {"delta", "p_value"}
    significance: dict[str, dict[str, dict[str, float]]] | None = None

    @property
    def label(self) -> str:
        return self.result.label


@dataclass(frozen=True)
class Comparison:
    """Several models' recall on one dataset split, as shown, saved and printed with --json."""

    dataset: str
    split: str
    generated_at: str
    baseline: str | None            # its label, when a successful baseline row is present
    rows: tuple[Row, ...]
    best: dict[str, list[str]]      # column key -> the labels with its best value
    columns: tuple[tuple[str, str], ...] = COLUMNS  # (direction, metric) shown, in order
    footnotes: dict[str, list[str]] = field(default_factory=dict)  # label -> why not comparable (comparability.py)
    references: tuple[dict, ...] = ()      # published rows (references.reference_rows)
    reference_anchor: str | None = None    # the label the published rows' deltas are against

    @property
    def is_comparable(self) -> bool:
        return not any(note != comparability.UNKNOWN for notes in self.footnotes.values() for note in notes)

    def to_dict(self) -> dict:
        """comparison.json's document (and --json's)."""
        return {"dataset": self.dataset, "split": self.split, "generated_at": self.generated_at,
                "baseline": self.baseline,
                "models": [_model_dict(row, self.footnotes.get(row.label, [])) for row in self.rows],
                "best": self.best, "comparable": self.is_comparable,
                "references": [dict(row, metrics=clip_benchmark_metrics(row["recall"])) for row in self.references],
                "reference_anchor": self.reference_anchor}

    @property
    def is_classification(self) -> bool:
        return self.columns == CLASSIFICATION_COLUMNS

    @property
    def has_significance(self) -> bool:
        return any(row.significance for row in self.rows)

    @property
    def has_intervals(self) -> bool:
        return any(row.result.ci95 for row in self.rows)


def _model_dict(row: Row, footnotes: list[str]) -> dict:
    found = dict(asdict(row.result), delta=row.delta, footnotes=footnotes,
                 metrics=clip_benchmark_metrics(row.result.recall))
    del found["query_hits"]  # the raw hits stay in query_hits.json beside the summary
    if not found["ci95"]:
        del found["ci95"]
    if row.significance:
        found["significance"] = row.significance
    return found


# CLIP_benchmark's retrieval keys: image retrieval is text→image, text retrieval image→text; fractions.
CLIP_BENCHMARK = {"image_retrieval_recall": "text_to_image", "text_retrieval_recall": "image_to_text"}
CLIP_BENCHMARK_CLASSIFICATION = {"acc1": "top1", "acc5": "top5", "mean_per_class_recall": "mean_per_class_recall"}


def clip_benchmark_metrics(recall: dict[str, dict[str, float]]) -> dict[str, float]:
    """recall in percent -> CLIP_benchmark's `metrics` (e.g. image_retrieval_recall@5: 0.836)."""
    if CLASSIFICATION in recall:  # zeroshot_classification's: acc1, acc5, mean_per_class_recall (a published row: some)
        found = recall[CLASSIFICATION]
        return {key: round(found[metric] / 100, 10) for key, metric in CLIP_BENCHMARK_CLASSIFICATION.items()
                if metric in found}
    return {f"{key}@{k}": round(recall[direction][f"r{k}"] / 100, 10)
            for key, direction in CLIP_BENCHMARK.items() if direction in recall for k in (1, 5, 10)
            if f"r{k}" in recall[direction]}


def build_comparison(results: list[ModelResult], dataset: str, split: str, generated_at: str,
                     baseline_label: str = BASELINE) -> Comparison:
    """Rows in the order given, best labels per column, deltas against the baseline (the row
    labelled BASELINE_LABEL) and, where both ran on the same queries, their significance."""
    baseline = next((r for r in results if r.label == baseline_label and r.ok), None)
    columns = CLASSIFICATION_COLUMNS if any(CLASSIFICATION in r.recall for r in results) else \
        COLUMNS + (IMAGE_COLUMNS if any("image_to_image" in r.recall for r in results) else ())
    rows = tuple(Row(result, _delta(result, baseline, columns),
                     significance(result.query_hits, baseline.query_hits) if result.ok else None)
                 if baseline and result is not baseline else Row(result) for result in results)
    return Comparison(dataset, split, generated_at, baseline_label if baseline else None, rows,
                      {column_key(*column): _best(results, *column) for column in columns}, columns,
                      comparability.footnotes(results))


def with_references(comparison: Comparison, references: list) -> Comparison:
    """COMPARISON with published rows below its models: retrieval's (references.Reference) under a
    retrieval table, classification's (zeroshot_references.find's rows) under a classification
    table; their deltas are against the baseline, or without one against the first model that
    succeeded."""
    from .references import Reference, reference_rows  # the data files are read only when references are asked for
    from .zeroshot_references import comparison_rows
    retrieval = [reference for reference in references if isinstance(reference, Reference)]
    classification = [reference for reference in references if not isinstance(reference, Reference)]
    if not (classification if comparison.is_classification else retrieval):
        return comparison  # a matrix's table shows the references of its own task
    anchor = next((row.result for row in comparison.rows if row.label == comparison.baseline), None) \
        or next((row.result for row in comparison.rows if row.result.ok), None)
    recall = anchor.recall if anchor else None
    rows = comparison_rows(classification, comparison.dataset, recall) if comparison.is_classification else \
        reference_rows(retrieval, comparison.dataset, comparison.split, recall)
    return replace(comparison, references=tuple(rows), reference_anchor=anchor.label if anchor else None)


def column_key(direction: str, metric: str) -> str:
    return f"{SHORT_DIRECTIONS[direction]}_{metric}"


def _best(results: list[ModelResult], direction: str, metric: str) -> list[str]:
    values = {r.label: r.value(direction, metric) for r in results if r.ok}
    values = {label: value for label, value in values.items() if value is not None}
    if len(values) < 2:
        return []  # with one model there is nothing to win
    top = max(values.values())
    return [label for label, value in values.items() if value == top]


def _delta(result: ModelResult, baseline: ModelResult,
           columns: tuple[tuple[str, str], ...]) -> dict[str, dict[str, float]] | None:
    if not result.ok:
        return None
    delta: dict[str, dict[str, float]] = {}
    for direction, metric in columns:
        mine, theirs = result.value(direction, metric), baseline.value(direction, metric)
        if mine is not None and theirs is not None:
            delta.setdefault(direction, {})[metric] = round(mine - theirs, 10)
    return delta


def cell(comparison: Comparison, row: Row, direction: str, metric: str, bold=("**", "**"),
         marker: str = "*") -> str:
    """'45.20', '**45.20**' for the column's best, '45.20 (+1.10)' against the baseline; with
    per-query hits '45.20 ±1.4' (the 95% interval's half-width) and '(+1.10*)' when p < 0.05."""
    value = row.result.value(direction, metric)
    if value is None:
        return "–"
    text = f"{value:.2f}"
    if row.label in comparison.best[column_key(direction, metric)]:
        text = f"{bold[0]}{text}{bold[1]}"
    text += plus_minus(row.result.interval(direction, metric))
    delta = (row.delta or {}).get(direction, {}).get(metric)
    if delta is not None:
        text += f" ({delta:+.2f}{marker if is_significant(p_value(row, direction, metric)) else ''})"
    return text


def reference_cell(reference: dict, direction: str, metric: str) -> str:
    """A published row's cell: its number and, against the anchor, its delta."""
    value = reference["recall"].get(direction, {}).get(metric)
    if value is None:
        return "–"
    delta = ((reference["delta"] or {}).get(direction) or {}).get(metric)
    return f"{value:.2f}" + (f" ({delta:+.2f})" if delta is not None else "")


def marks(comparison: Comparison) -> dict[str, str]:
    """label -> its footnote mark (†1, †2 ...), for the rows that have footnotes."""
    return {label: f"†{index}" for index, label in enumerate(
        [row.label for row in comparison.rows if comparison.footnotes.get(row.label)], start=1)}


def marked_label(comparison: Comparison, label: str) -> str:
    mark = marks(comparison).get(label)
    return f"{label} {mark}" if mark else label


def notes(comparison: Comparison, marker: str = "*", once: bool = False) -> list[str]:
    """The lines under the table: what ± and the marker mean, footnotes, each row's warnings (ONCE:
    each warning once, naming its rows), where published rows come from."""
    statistics = footnote(comparison, marker)
    lines = [statistics] if statistics else []
    lines += [f"{mark} {label}: " + "; ".join(comparison.footnotes[label]) for label, mark in marks(comparison).items()]
    warned = [(row.label, row.result.warnings) for row in comparison.rows]
    lines += said_once(warned) if once else [f"warning: {label}: {warning}" for label, warnings in warned
                                             for warning in warnings]
    lines += [f"best of {row.result.experiment}: {row.label}{note}" for row in comparison.rows
              if row.result.best and (note := runner_up_note(row.result.versus_runner_up))]
    reused = [row for row in comparison.rows if row.result.reused]
    if reused:
        lines.append(f"{len(reused)} of {len(comparison.rows)} rows unchanged since their last run keep its numbers "
                     "(--reevaluate evaluates them again)")
    if comparison.references:
        lines.append("published rows: Chinese-CLIP's own results"
                     + (f", (±x.xx) against {comparison.reference_anchor}" if comparison.reference_anchor else ""))
    for reference in comparison.references:
        computed = reference["mean_recall_computed"]
        lines.append(f"{reference['label']}: {reference['model']}, {reference['setup']}, {reference['dataset']} "
                     f"{reference['split']}; source: {_source(reference['source'])}"
                     + (f"; MR computed from R@1/5/10 ({', '.join(DIRECTION_TITLES[d] for d in computed)})"
                        if computed else ""))
        lines += [f"warning: {reference['label']}: {warning}" for warning in reference["warnings"]]
    return lines


def runner_up_note(versus: dict | None) -> str:
    """'' when the best is significantly better than its runner-up (or nothing was paired);
    else what the mark does not say."""
    if not versus or versus["significant"]:
        return ""
    p_values = ", ".join(f"p {versus[d]['p_value']:.2g}" for d in ("text_to_image", "image_to_text", CLASSIFICATION)
                         if d in versus)
    return f" (not significantly better than {versus['label']}: {p_values})"


def _source(source: dict) -> str:
    return f"{source['repository']} {source['file']} @ {source['commit'][:12]}, “{source['section']}”, " \
           f"row {source['row']}, {source['columns']}"


def p_value(row: Row, direction: str, metric: str) -> float | None:
    return (row.significance or {}).get(direction, {}).get(metric, {}).get("p_value")


def footnote(comparison: Comparison, marker: str = "*") -> str | None:
    """What ± and the marker mean, under a table that shows them."""
    notes = []
    if comparison.has_intervals:
        notes.append("±: half-width of the 95% bootstrap interval over the "
                     + ("images" if comparison.is_classification else "queries"))
    if comparison.has_significance:
        notes.append(f"{marker}: differs from {comparison.baseline} with p < 0.05 on the same "
                     + ("images (exact McNemar test for top-1 and top-5, paired bootstrap within each class for MPCR)"
                        if comparison.is_classification else
                        "queries (exact McNemar test for R@k, paired bootstrap for MR)"))
    return "; ".join(notes) or None


def failed_cell(row: Row) -> str:
    return f"failed (exit {row.result.exit_code})"


def header(comparison: Comparison) -> list[str]:
    return ["model"] + [f"{DIRECTION_TITLES[d]} {METRIC_TITLES[m]}" for d, m in comparison.columns]


def to_markdown(comparison: Comparison) -> str:
    what = "Zero-shot classification" if comparison.is_classification else "Recall"
    lines = [f"{what} (%) on {comparison.dataset} {comparison.split}"
             + (f"; (±x.xx) against {comparison.baseline}" if comparison.baseline else ""), "",
             "| " + " | ".join(header(comparison)) + " |",
             "|---" + "|---:" * len(comparison.columns) + "|"]
    for row in comparison.rows:
        if not row.result.ok:
            cells = [failed_cell(row)] + ["–"] * (len(comparison.columns) - 1)
        else:
            cells = [cell(comparison, row, d, m, marker=MARKDOWN_MARKER) for d, m in comparison.columns]
        lines.append("| " + " | ".join([_markdown_escape(marked_label(comparison, row.label)), *cells]) + " |")
    for reference in comparison.references:
        cells = [reference_cell(reference, d, m) for d, m in comparison.columns]
        lines.append("| " + " | ".join([f"*{_markdown_escape(reference['label'])}*", *cells]) + " |")
    below = notes(comparison, marker=MARKDOWN_MARKER)
    return "\n".join(lines + ([""] + [f"{_markdown_escape(line)}  " for line in below] if below else [])) + "\n"


def _markdown_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_csv(comparison: Comparison) -> str:
    """One row per model, plain numbers (deltas in their own columns), for spreadsheets."""
    keys = [column_key(d, m) for d, m in comparison.columns]
    delta_keys = [f"delta_{key}" for key in keys] if comparison.baseline else []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if comparison.references and not delta_keys and comparison.reference_anchor:
        delta_keys = [f"delta_{key}" for key in keys]
    annotated = bool(comparison.footnotes or comparison.references
                     or any(row.result.warnings for row in comparison.rows))
    statistics_keys = _statistics_header(comparison, keys)
    writer.writerow(["model", "status", *keys, *delta_keys, *statistics_keys, "checkpoint", "error",
                     *(("comparable", "notes") if annotated else ())])
    for row in comparison.rows:
        result = row.result
        values = [result.recall.get(d, {}).get(m, "") for d, m in comparison.columns]
        deltas = [(row.delta or {}).get(d, {}).get(m, "") for d, m in comparison.columns] if delta_keys else []
        row_notes = [*comparison.footnotes.get(row.label, []), *result.warnings]
        comparable = not any(note != comparability.UNKNOWN for note in comparison.footnotes.get(row.label, []))
        writer.writerow([result.label, result.status, *values, *deltas, *_statistics(comparison, row),
                         result.checkpoint, result.error or "",
                         *((comparable, " | ".join(row_notes)) if annotated else ())])
    for reference in comparison.references:
        values = [reference["recall"].get(d, {}).get(m, "") for d, m in comparison.columns]
        deltas = [((reference["delta"] or {}).get(d) or {}).get(m, "") for d, m in comparison.columns] \
            if delta_keys else []
        writer.writerow([reference["label"], "published", *values, *deltas, *[""] * len(statistics_keys),
                         _source(reference["source"]), "", not reference["warnings"], " | ".join(reference["warnings"])])
    return out.getvalue()


def _statistics_header(comparison: Comparison, keys: list[str]) -> list[str]:
    """ci95_low_/ci95_high_ and p_ columns, only when some row has them."""
    intervals = [f"ci95_{end}_{key}" for key in keys for end in ("low", "high")] if comparison.has_intervals else []
    return intervals + ([f"p_{key}" for key in keys] if comparison.has_significance else [])


def _statistics(comparison: Comparison, row: Row) -> list:
    found: list = []
    if comparison.has_intervals:
        for direction, metric in comparison.columns:
            found += row.result.interval(direction, metric) or ["", ""]
    if comparison.has_significance:
        found += [_blank_if_none(p_value(row, d, m)) for d, m in comparison.columns]
    return found


def _blank_if_none(value):
    return "" if value is None else value

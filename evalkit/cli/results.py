"""click only: `results` and `report`, everything evaluated so far (no connection): as tables, or
as one HTML page with charts."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .. import clock, view
from ..comparison import BASELINE, Comparison, build_comparison, to_csv, to_markdown, with_references
from ..comparability import UNKNOWN
from ..config import build_settings
from ..epochs import annotate, in_epoch_order, selected, trends
from ..errors import NotComparable, NothingEvaluated
from ..evaluation import SPLITS
from ..store import LocalStore
from .guard import CONTEXT, debug_option, guarded
from .options import config_option
from .references import reference_option

RESULT_FORMATS = ("table", "markdown", "csv", "json")


@click.command(context_settings=CONTEXT)
@config_option("YAML config: its results_dir and the order of its `models:`")
@click.option("--results-dir", help="local results folder  [default: results]")
@click.option("--dataset-name", help="only this dataset")
@click.option("--split", type=click.Choice(SPLITS), help="only this split")
@click.option("--format", "output_format", type=click.Choice(RESULT_FORMATS), default="table",
              show_default=True, help="markdown and csv paste into a paper or a spreadsheet")
@click.option("--strict", is_flag=True,
              help="refuse (exit 22) a comparison whose rows were not made the same way (dataset, context "
                   "length, precision, KNN mode, upstream scripts, top_k)")
@click.option("--baseline", default=BASELINE, show_default=True, metavar="NAME",
              help="the label the others are compared with: deltas, and their significance on the same queries")
@reference_option
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="only this experiment (or label); repeatable")
@click.option("--best", "best_only", is_flag=True,
              help="one row per experiment: its best checkpoint (highest average of both directions' mean recall)")
@debug_option
@guarded
def results(config: Path | None, results_dir: str | None, dataset_name: str | None, split: str | None,
            output_format: str, strict: bool, baseline: str, references: tuple, models: tuple[str, ...],
            best_only: bool, debug: bool) -> None:
    """Compare everything evaluated so far, from the local results folder (no connection).

    One table per dataset and split: a row per label (its newest run), the best of each
    column highlighted, deltas against `baseline` (or --baseline NAME) when there is one, marked
    when significant (p < 0.05) on the same queries, and each value's 95% interval (±). An
    experiment's epochs are in order, its best row marked; under the table, its trend.

    \b
    Example:
      python -m evalkit results --split test --best --format markdown
    """
    _, found = _evaluated(config, results_dir, dataset_name, split, baseline, models, best_only)
    out, _ = view.make_consoles()
    documents = [with_references(document, list(references)) for document in found]
    if strict:
        _refuse_incomparable(documents)
    for document in documents:
        if output_format == "table":
            view.show_comparison(out, document, [])
            view.show_trends(out, [] if best_only else trends([row.result for row in document.rows]))
        elif output_format == "markdown":
            click.echo(to_markdown(document))
        elif output_format == "csv":
            click.echo(to_csv(document), nl=False)
    if output_format == "json":
        click.echo(json.dumps([document.to_dict() for document in documents], ensure_ascii=False, indent=2))


@click.command(context_settings=CONTEXT)
@config_option("YAML config: its results_dir and the order of its `models:`")
@click.option("--results-dir", help="local results folder  [default: results]")
@click.option("--dataset-name", help="only this dataset")
@click.option("--split", type=click.Choice(SPLITS), help="only this split")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="where to write the page  [default: RESULTS_DIR/report.html]")
@click.option("--figures", type=click.Path(file_okay=False, path_type=Path),
              help="also write each chart as <dataset>-<split>.svg and .png in this folder (for a paper)")
@click.option("--baseline", default=BASELINE, show_default=True, metavar="NAME",
              help="the label the others are compared with: deltas, and their significance on the same queries")
@reference_option
@debug_option
@guarded
def report(config: Path | None, results_dir: str | None, dataset_name: str | None, split: str | None,
           output: Path | None, figures: Path | None, baseline: str, references: tuple, debug: bool) -> None:
    """Write everything evaluated so far as one self-contained HTML page (no connection).

    Per dataset and split: the comparison table and charts of recall against epoch, a line per
    experiment (EXP, EXP@epoch_N), both directions, R@1 / R@5 / R@10 / mean; one checkpoint per
    experiment gives grouped bars. The page needs no network to view. Charts need matplotlib
    (pip install -e '.[plot]'); without it the page has the tables.

    \b
    Example:
      python -m evalkit report --output team-sweep.html --dataset-name Flickr30k-CN
    """
    store, found = _evaluated(config, results_dir, dataset_name, split, baseline)
    documents = [with_references(document, list(references)) for document in found]
    from ..report import write_report  # matplotlib loads only for this command
    view.show_report_written(view.make_consoles()[0], write_report(store, documents, output, figures))


def _evaluated(config: Path | None, results_dir: str | None, dataset_name: str | None,
               split: str | None, baseline: str = BASELINE, models: tuple[str, ...] = (),
               best_only: bool = False) -> tuple[LocalStore, list[Comparison]]:
    """The store, and a comparison per dataset split of what it holds (exit 15 when nothing);
    MODELS and BEST_ONLY filter the rows (epochs.selected)."""
    settings = build_settings(config, {"results_dir": results_dir})
    store = LocalStore.of(settings)
    found = {key: kept for key, rows in store.load_evaluated(dataset_name, split).items()
             if (kept := selected(annotate(rows), models, best_only))}
    if not found:
        scope = " ".join(filter(None, (dataset_name, split, *models)))
        raise NothingEvaluated(f"no results under {store.root.resolve()}" + (f" for {scope}" if scope else ""),
                               "evaluate first, or point --results-dir / --config at your results folder")
    registry = list(settings.models)
    return store, [build_comparison(_in_registry_order(rows, registry), dataset, split_name, clock.timestamp(),
                                    baseline)
                   for (dataset, split_name), rows in sorted(found.items())]


def _refuse_incomparable(documents: list) -> None:
    refused = [(document, label, notes) for document in documents for label, notes in document.footnotes.items()
               if not document.is_comparable and any(note != UNKNOWN for note in notes)]
    if refused:
        raise NotComparable("not comparable: " + "; ".join(
            f"{document.dataset} {document.split} {label}: " + ", ".join(n for n in notes if n != UNKNOWN)
            for document, label, notes in refused),
            "evaluate those checkpoints again with the same settings, or drop --strict to see the table "
            "with footnotes")


def _in_registry_order(rows: list, registry: list[str]) -> list:
    """Registered models first, in the config's order (team, large, ...), then the rest by name;
    an experiment's checkpoints by epoch, epoch_latest.pt last."""
    return in_epoch_order(rows, {name: index for index, name in enumerate(registry)})

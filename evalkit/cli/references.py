"""click only: `references` (Chinese-CLIP's published results) and the repeatable
`--reference NAME` option of the evaluation commands and `results`."""
from __future__ import annotations

import json
from typing import Callable

import click

from .. import view
from ..references import Reference, all_references, find, names, reference_rows
from .guard import CONTEXT, debug_option, guarded


def _to_references(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[Reference | dict, ...]:
    """Each NAME as a published retrieval result (a Reference) or classification row (a dict)."""
    from .. import zeroshot_references
    found: dict[str, Reference | dict] = {}
    for name in value:
        reference = find(name) or zeroshot_references.find(name)
        if reference is None:
            raise click.BadParameter(f"no published result is named {name!r}; known: {', '.join(names())}, and the "
                                     "zero-shot classification rows, named as vit-b-16-cifar100-zeroshot-classification "
                                     "(python -m evalkit references | grep NAME finds each with its number)")
        found[reference.name if isinstance(reference, Reference) else reference["name"]] = reference  # each once
    return tuple(found.values())


def reference_option(command: Callable) -> Callable:
    return click.option("--reference", "references", multiple=True, metavar="NAME", callback=_to_references,
                        help="add Chinese-CLIP's published result NAME as a row with deltas, retrieval or zero-shot "
                             "classification (e.g. vit-b-16-cifar100-zeroshot-classification) under the table of its "
                             "task; repeatable (python -m evalkit references lists the names)")(command)


@click.command(context_settings=CONTEXT)
@click.option("--json", "json_output", is_flag=True, help="the data file's entries, with their sources")
@click.option("--classification", is_flag=True,
              help="only the zero-shot image classification results (with --json: their entries)")
@debug_option
@guarded
def references(json_output: bool, classification: bool, debug: bool) -> None:
    """List Chinese-CLIP's published results, each usable as --reference NAME: retrieval, and
    zero-shot image classification with the metric each was published in (piped: a line per
    number, its name first, for grep).

    Copied from the Chinese-CLIP repository's result tables (Results.md): MUGE (valid),
    Flickr30K-CN and COCO-CN (test), zero-shot and fine-tuned; CIFAR-10 … ImageNet zero-shot
    classification; RN50 to ViT-H-14.

    \b
    Example:
      python -m evalkit references --json
    """
    from ..zeroshot_references import classification_rows, dataset_notes
    if classification:
        found = classification_rows()
        if json_output:
            click.echo(json.dumps(found, ensure_ascii=False, indent=2))
        else:
            view.show_classification_references(view.make_consoles()[0], found, dataset_notes())
        return
    rows = [row for reference in all_references() for row in reference_rows([reference], reference.dataset,
                                                                             reference.split)]
    if json_output:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    out, _ = view.make_consoles()
    view.show_references(out, rows)
    view.show_classification_references(out, classification_rows(), dataset_notes())

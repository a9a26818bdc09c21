"""--help of the evaluation commands with their options under headings, by click's own means (a
Command whose format_options writes one section per group)."""
from __future__ import annotations

import click

# Each option's parameter name under the heading it is shown in, in this order.
OPTION_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What to evaluate", ("step", "model_path", "models", "dataset_name", "split", "image_to_image",
                          "skip_text_to_image", "skip_image_to_text")),
    ("The server", ("config", "host", "datapath")),
    ("Models and towers", ("vision_model", "text_model", "label")),
    ("Steps and reuse", ("force_extraction", "skip_extraction", "reevaluate", "knn")),
    ("Sweeps and evaluation while training", ("watch", "until_epoch")),
    ("Running: GPUs, detach, executor", ("device", "gpu", "gpus", "executor", "detach", "dry_run", "probe_job")),
    ("Output", ("results_dir", "json_output", "references", "verbose", "debug", "version", "help")),
)
OTHER = "Other options"


class GroupedCommand(click.Command):
    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        help_option = self.get_help_option(ctx)
        records = {"help" if param is help_option else param.name: param.get_help_record(ctx)
                   for param in self.get_params(ctx)}
        records = {name: record for name, record in records.items() if record}
        for title, names in OPTION_GROUPS:
            rows = [records.pop(name) for name in names if name in records]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        if records:  # an option no group names yet: still shown, and a test asks for its group
            with formatter.section(OTHER):
                formatter.write_dl(list(records.values()))

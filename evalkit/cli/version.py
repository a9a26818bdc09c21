"""`--version` on every entry point: evalkit's version; with -v also the versions a bug report
needs (Python, paramiko, click, rich), read from the installed packages without importing them."""
from __future__ import annotations

import platform
import sys
from typing import Any, Callable

import click

LIBRARIES = ("paramiko", "click", "rich")


def installed(package: str) -> str:
    from importlib import metadata  # ~50 ms to import: only when a version is asked for, not on every start

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def version_text(verbose: bool) -> str:
    lines = [f"evalkit {installed('evalkit')}"]
    if verbose:
        lines.append(f"Python {platform.python_version()} ({sys.executable})")
        lines += [f"{package} {installed(package)}" for package in LIBRARIES]
    return "\n".join(lines)


class VersionOption(click.Option):
    """An eager flag that prints the version and exits before any other option is checked (a
    required --step included); it sees the whole command line, so `--version -v` and
    `-v --version` both add the libraries' versions."""

    def handle_parse_result(self, ctx: click.Context, opts: dict[str, Any], args: list[str]) -> tuple[Any, list[str]]:
        if opts.get(self.name) and not ctx.resilient_parsing:
            click.echo(version_text(bool(opts.get("verbose"))))
            ctx.exit()
        return super().handle_parse_result(ctx, opts, args)


def version_option(command: Callable) -> Callable:
    return click.option("--version", cls=VersionOption, is_flag=True, is_eager=True, expose_value=False,
                        help="show evalkit's version and exit; with -v also Python's, paramiko's, click's "
                             "and rich's")(command)

"""What every command of the command line shares: its error handling and option helpers."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from typing import Callable

import click

from edgeport.errors import EXIT_INTERNAL, EdgeportError, first_line


def split_list(text: str | None) -> tuple[str, ...] | None:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None


def run_action(action: Callable[[], int]) -> None:
    """Run a command body, turning edgeport errors into one line and the documented exit code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what matters reaches the report and the summary instead
        try:
            import onnxruntime

            onnxruntime.set_default_logger_severity(3)
            code = action()
        except EdgeportError as exc:
            click.echo(f"edgeport: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("edgeport: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug of ours: say so, with a way to see more
            if os.environ.get("EDGEPORT_DEBUG"):
                traceback.print_exc()
            first = first_line(exc) if str(exc).strip() else ""
            click.echo(f"edgeport: internal error: {type(exc).__name__}: {first[:300]} (set EDGEPORT_DEBUG=1 for a traceback, and please report it)", err=True)
            sys.exit(EXIT_INTERNAL)
    sys.exit(code)


def with_options(options):
    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func

    return decorate

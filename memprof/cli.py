"""The `memprof` command: a click group that wires subcommands and turns user errors into one line.

Each subcommand lives in `memprof.commands.<name>` and only parses arguments and wires pieces;
heavy imports (torch, pandas, matplotlib) happen inside the commands that need them, so that
`memprof estimate` starts fast.
"""

from __future__ import annotations

import importlib
import sys

import click

from memprof._version import __version__
from memprof.estimators.errors import MemprofError

# Parameters whose flag is not `--` + the name with dashes (the model is the MODEL argument).
FLAGS: dict[str, str] = {"model": "MODEL"}

USAGE_ERROR = 2  # what a user's mistake exits with (click's own usage errors use it too)

# name -> module under memprof.commands exposing a click command of the same name
COMMANDS: dict[str, str] = {
    "compare": "compare",
    "estimate": "estimate",
    "fit": "fit",
    "optimizers": "optimizers",
    "presets": "presets",
    "run": "run",
    "replay": "replay",
    "report": "report",
    "validate": "validate",
}


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs (or help lists it)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"memprof.commands.{COMMANDS[name]}")
        return getattr(module, name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memprof")
def cli() -> None:
    """Estimate and measure the GPU memory of PyTorch training."""


def flag_of(parameter: str) -> str:
    """The command-line spelling of a library parameter: batch_size -> --batch-size."""
    return FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


def usage_line(exc: click.UsageError) -> str:
    """click's usage error as one line: its message, then where the help is."""
    message = " ".join(exc.format_message().split())
    command = exc.ctx.command_path if exc.ctx is not None else "memprof"
    return f"{message} (see '{command} --help')"


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; a MemprofError becomes one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="memprof", standalone_mode=False)
    except MemprofError as exc:
        click.echo(f"memprof: error: {exc.cli_message(flag_of)}", err=True)
        return USAGE_ERROR
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:  # `memprof` alone: the help, as click shows it
        exc.show()
        return exc.exit_code
    except click.UsageError as exc:  # unknown option, missing argument, bad choice: one line, like ours
        click.echo(f"memprof: error: {usage_line(exc)}", err=True)
        return USAGE_ERROR
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("memprof: aborted", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

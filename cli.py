"""The ``crossclr`` command line: a Click group whose commands live beside the code they drive.

Each package keeps its commands in a ``commands`` module (``COMMANDS`` and, for the ``prepare`` group,
``PREPARE_COMMANDS``); torch is imported only inside the commands that need it, so ``crossclr predict``
and ``crossclr info`` start without it.
"""

from __future__ import annotations

import logging
import sys

import click

from crossclr_infer import __version__
from crossclr_infer.commands import cache as cache_commands
from crossclr_infer.commands import infer as infer_commands
from crossclr_infer.commands import ntu as ntu_commands
from export import commands as export_commands
from training import commands as train_commands
from training import eval_commands

_MODULES = (ntu_commands, cache_commands, infer_commands, train_commands, eval_commands, export_commands)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crossclr")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def crossclr(verbose: int) -> None:
    """CrosSCLR skeleton action representation learning: prepare, train, evaluate, export, predict."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@crossclr.group()
def prepare() -> None:
    """Turn skeleton data (raw NTU, arrays, official .npy files) into an HDF5 cache."""


for _module in _MODULES:
    for _cmd in getattr(_module, "COMMANDS", []):
        crossclr.add_command(_cmd)
    for _cmd in getattr(_module, "PREPARE_COMMANDS", []):
        prepare.add_command(_cmd)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit status 1, never a traceback."""
    try:
        crossclr.main(args=argv, prog_name="crossclr", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (ValueError, OSError, KeyError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        click.echo(f"error: {msg}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()

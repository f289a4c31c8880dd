"""The ``fleetfl`` command line.

Each package that offers commands has a ``cli`` module with ``register(subparsers)``; this module
only assembles them, so that every command's code lives next to what it drives. Packages are
imported lazily where possible: ``fleetfl server start`` must not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

#: Packages whose ``cli.register(subparsers)`` adds commands, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "datasets.cli",
    "federated.cli",
    "clearml_local.cli",
    "queues.cli",
    "components.cli",
    "pipelines.commands",
    "autoscaler.cli",
)


class CLIError(Exception):
    """A user error: printed as ``fleetfl: error: <message>`` with exit code 2, no traceback."""


#: Errors that report bad input (config, data, paths). Every package's own input errors subclass
#: ``ValueError`` so that they reach the user as one clear line; ``-v`` shows the traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (CLIError, ValueError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``fleetfl`` parser with every registered command."""
    parser = argparse.ArgumentParser(
        prog="fleetfl",
        description="Federated YOLO detection for driving fleets (Flower + ultralytics + ClearML).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that package has no commands yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fleetfl``; every command sets ``func(args) -> int`` on its sub-parser."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if args.verbose:
            raise
        parser.exit(2, f"fleetfl: error: {exc}\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

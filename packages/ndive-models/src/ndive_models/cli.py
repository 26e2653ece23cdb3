"""The ``ndive`` command line: one argparse subcommand per module in :data:`SUBCOMMANDS`.

To add a subcommand, write a module with

- ``NAME`` (the subcommand), ``HELP`` (one line),
- ``add_arguments(parser)`` adding its options to an ``argparse.ArgumentParser``,
- ``run(args) -> int`` doing the work (heavy imports inside ``run``, so ``ndive --help``
  stays fast and works without optional extras),

and append its import path to :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

#: Modules implementing subcommands, in ``--help`` order.
SUBCOMMANDS = [
    "ndive_models._cmd_generate",
    "ndive_models._cmd_validate_data",
    "ndive_models._cmd_train",
    "ndive_models._cmd_evaluate",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ndive", description="NDIVE: jet data generation, training and evaluation."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for path in SUBCOMMANDS:
        mod = importlib.import_module(path)
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=mod.__doc__,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _terminate(signum, frame):
    # SIGTERM (kill) -> SystemExit, so context managers clean up (e.g. delete partial files).
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

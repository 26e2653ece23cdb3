"""Check a jet file's layout, print its physics summary and optionally draw validation plots.

Plots: pulls of the five track parameters (primary tracks), signed d0 significance by track
origin, flavour fractions, tracks per jet by flavour, b- and c-hadron decay lengths, and the
number of displaced truth vertices per jet.
"""

from __future__ import annotations

import argparse
import json

NAME = "validate-data"
HELP = "check a jet file, print a physics summary, draw validation plots"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="HDF5 file written by `ndive generate`")
    p.add_argument("--plots", metavar="DIR", default=None, help="write PNG plots into DIR")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the summary as JSON")


def run(args) -> int:
    from .data.validation import validate_file

    summary, text = validate_file(args.file, args.plots)  # errors: one line from cli.main
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0

"""Rewrite a jet file of an older schema (1.x: a (5, 5) ``cov`` sub-array, no ATLAS-named
fields) in the current layout, which atlas-ftag-tools, salt and puma read.

The new file is written under a temporary name and renamed when complete, so OUT may be IN
(converted in place). The project's own readers also read 1.x files without conversion.
"""

from __future__ import annotations

import argparse
import sys

NAME = "convert"
HELP = "upgrade a jet file of an older schema to the current layout"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="IN", help="jet file of schema 1.x")
    p.add_argument("out", metavar="OUT", help="output file (may be IN)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from .data import SchemaError, convert
    from .data.schema import SCHEMA_VERSION

    try:
        out = convert(args.file, args.out, progress=not args.no_progress)
    except (SchemaError, OSError) as err:
        print(f"ndive convert: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} (schema {SCHEMA_VERSION})")
    return 0

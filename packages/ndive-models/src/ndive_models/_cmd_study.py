"""Run a model comparison described by a study config (YAML): generate (or reuse) balanced
training and test files, train every listed model from its config file with overrides,
evaluate them together (one ROC with ratio panels) and write a report. Resumable: rerun the
same command after an interruption. Shipped: ``study_family.yaml`` (DIPS, GN2-small,
GN3-small, each with and without NDIVE). See docs/models.md.
"""

from __future__ import annotations

import argparse

NAME = "study"
HELP = "compare several models from a study config: data, trainings, evaluation, report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE",
                   help="study YAML (a path, or the name of a shipped one, e.g. "
                        "study_family.yaml)")
    p.add_argument("--workdir", default=None, help="data, runs and logs (overrides the config)")
    p.add_argument("--report", default=None, help="report directory (overrides the config)")
    p.add_argument("--only", action="append", default=[], metavar="LABEL",
                   help="train and evaluate only these models (repeatable)")


def run(args) -> int:
    import sys

    from .study import run_study

    try:
        return run_study(args.config, workdir=args.workdir, report=args.report,
                         only=args.only or None)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"ndive study: error: {err}", file=sys.stderr)
        return 2

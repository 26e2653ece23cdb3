"""Reproduce the NDIVE paper's comparison (baseline vs FTAG+NDIVE): generate balanced
training and test files, train every model for several seeds, evaluate on the test file and
write a report. Resumable: rerun the same command after an interruption. See
docs/training.md.
"""

from __future__ import annotations

import argparse

NAME = "paper"
HELP = "reproduce the paper's comparison: data, trainings, evaluation, report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jets", type=int, default=30000, help="training-file jets (balanced)")
    p.add_argument("--test-jets", type=int, default=12000, help="test-file jets (balanced)")
    p.add_argument("--max-train-jets", type=int, default=None,
                   help="train on at most N jets of the training file (after the 10%% "
                        "validation split)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=2, help="trainings per model (paper: 5)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="learning rate (paper: 1e-4 over many more steps)")
    p.add_argument("--optimizer", default="novograd")
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=2, help="trainings run at the same time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training")
    p.add_argument("--workers", type=int, default=2, help="generator processes")
    p.add_argument("--skip-references", action="store_true",
                   help="train only the baseline and FTAG+NDIVE")
    p.add_argument("--workdir", default="runs/paper", help="data, runs and logs")
    p.add_argument("--report", default="docs/results/paper", help="report directory")


def run(args) -> int:
    from .paper import run as run_paper

    return run_paper(args)

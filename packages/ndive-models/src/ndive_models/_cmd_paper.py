"""Reproduce the NDIVE paper's comparison (baseline vs FTAG+NDIVE): generate (or reuse) the
balanced training and test shards of every condition, train every model for several seeds,
evaluate each finished training on the test shards, write its small results (to commit) and
the report. Idempotent and resumable: rerun the same command after an interruption, on this
machine or on a fresh clone. See docs/paper.md.
"""

from __future__ import annotations

import argparse

NAME = "paper"
HELP = "reproduce the paper's comparison: data, trainings, evaluation, report"


#: ``(flag, study key, help, type)`` of the options that override a key of the study.
OPTIONS = (
    ("--jets", "data.train.jets", "training-file jets (balanced)", int),
    ("--test-jets", "data.test.jets", "test-file jets (balanced)", int),
    ("--max-train-jets", "training.max_jets",
     "train on at most N jets of the training file (after the validation split)", int),
    ("--epochs", "training.epochs", "maximum epochs", int),
    ("--seeds", "seeds", "trainings per model (paper: 5)", int),
    ("--batch-size", "training.batch_size", "jets per step", int),
    ("--lr", "training.lr", "learning rate (paper: 1e-4 over many more steps)", float),
    ("--lr-schedule", "training.lr_schedule", "constant | cosine", str),
    ("--optimizer", "training.optimizer", "novograd | adamw | lion", str),
    ("--patience", "training.patience", "early-stopping patience (epochs)", int),
    ("--monitor", "training.monitor",
     "validation quantity for best.pt and early stopping (loss | flavour | ...)", str),
    ("--dim", "training.model.dim", "model embedding size", int),
    ("--device", "training.device", "auto | cpu | cuda", str),
    ("--jobs", "jobs", "trainings run at the same time", int),
    ("--threads", "threads", "torch threads per training", int),
    ("--workers", "data.workers", "generator processes", int),
    ("--workdir", "workdir", "training outputs (checkpoints, logs)", str),
    ("--data-dir", "data.dir", "where the shards are (read or generated)", str),
    ("--report", "report", "report directory", str),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", default="paper/default", metavar="FILE",
                   help="study YAML: a file or a shipped study (paper/default, paper/study, "
                        "paper/cpu_15k, paper/cpu_27k, paper/full, studies/family_cpu)")
    for flag, key, helptext, typ in OPTIONS:
        # without the option the study's value holds: no argparse default
        p.add_argument(flag, type=typ, default=argparse.SUPPRESS,
                       metavar=flag[2:].upper().replace("-", "_"),
                       help=f"{helptext} (overrides '{key}')")
    p.add_argument("--skip-references", action="store_true",
                   help="train only the runs not marked 'reference' (the baseline and "
                        "FTAG+NDIVE)")
    p.add_argument("--conditions", nargs="+", metavar="NAME",
                   help="run only these conditions of the study (default: all)")
    p.add_argument("--runs", nargs="+", metavar="NAME",
                   help="run only these runs of the study (names in its 'runs': all their "
                        "seeds) or trainings (<run>_s<seed>, e.g. ftag_ndive_s7)")
    p.add_argument("--plan", action="store_true",
                   help="print what is done, what remains and the CPU hours left; run nothing")
    p.add_argument("--wait-data", type=float, default=0.0, metavar="SECONDS",
                   help="wait for missing shards (another process generates them), polling "
                        "at this interval, instead of generating them")
    p.add_argument("--train-only", action="store_true",
                   help="train, but evaluate nothing and make no test shard: a finished "
                        "training waits in its committed partial/ for a later run (on any "
                        "machine, without the training shards) to evaluate it")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite the report from the finished trainings' results")
    p.add_argument("--smoke", action="store_true",
                   help="pre-flight: every run once, 1 epoch on 1,500 jets of each "
                        "condition's first training shard, evaluated on its first test shard, "
                        "under WORKDIR/smoke (the study's results untouched): catches a "
                        "failing setting in minutes")


def study_from_args(args) -> dict:
    """The checked study of a parsed ``ndive paper`` command line (options applied)."""
    from .paper import load_study, smoke_study

    over = {key: getattr(args, flag[2:].replace("-", "_")) for flag, key, _, _ in OPTIONS
            if hasattr(args, flag[2:].replace("-", "_"))}
    study = load_study(args.study, over)
    return smoke_study(study) if args.smoke else study


def run(args) -> int:
    import sys

    from .paper import run_study

    try:
        return run_study(study_from_args(args), skip_references=args.skip_references,
                         only_conditions=args.conditions, only_runs=args.runs,
                         plan_only=args.plan, report_only=args.report_only,
                         wait_data=args.wait_data, train_only=args.train_only)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"ndive paper: error: {err}", file=sys.stderr)
        return 2

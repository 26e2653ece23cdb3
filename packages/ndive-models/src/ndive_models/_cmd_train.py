"""Train a model (baseline, ndive or ftag_ndive) on a jet file; see ``docs/training.md``.

A YAML/TOML config (``--config``: a file, or one of the shipped ``baseline``, ``ndive``,
``ftag_ndive``) gives the defaults, flags and ``--set key=value`` override
it. Checkpoints (``last.pt`` every epoch, ``best.pt``), ``history.json`` and the run logs
(``config.yaml``: the resolved configuration; ``provenance.json``: package versions and git
revision; ``steps.csv``: loss and learning rate per step; ``tensorboard/`` when TensorBoard is
installed) go to ``--out``; ``--resume`` continues bit for bit. For several GPUs or processes use
``torchrun --nproc-per-node K -m ndive_models.train`` with the same options.
"""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "train NDIVE, the GN2-like baseline or FTAG+NDIVE"


_FLAGS = (
    ("--train", "train", str, "training file (HDF5)"),
    ("--val", "val", str, "validation file (default: split off the training file)"),
    ("--out", "out", str, "output directory"),
    ("--model", "model.name", str, "baseline | ndive | ftag_ndive"),
    ("--backbone", "model.backbone", str, "transformer | dips (baseline, ftag_ndive)"),
    ("--weights", "model.weights", str, "NDIVE track weights: predicted | truth | all"),
    ("--epochs", "epochs", int, "epochs"),
    ("--batch-size", "batch_size", int, "jets per step (all processes together)"),
    ("--optimizer", "optimizer", str, "novograd | adamw | lion"),
    ("--lr", "lr", float, "learning rate (the peak of a schedule)"),
    ("--lr-schedule", "lr_schedule", str, "constant | cosine"),
    ("--warmup-epochs", "warmup_epochs", float, "linear learning-rate warm-up (epochs)"),
    ("--seed", "seed", int, "seed (initialisation, data order)"),
    ("--max-jets", "max_jets", int, "use at most N training jets"),
    ("--patience", "patience", int, "early-stopping patience (epochs)"),
    ("--monitor", "monitor", str, "validation quantity of best.pt and early stopping"),
    ("--device", "device", str, "auto | cpu | cuda | cuda:N"),
    ("--threads", "threads", int, "PyTorch intra-op threads (default 1; 0: PyTorch's choice)"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="YAML or TOML config file, or a shipped config: baseline | ndive | "
                        "ftag_ndive | dips | gn2 | gn3 | gn2_regression | gn2_ndive | "
                        "gn3_ndive (docs/models.md)")
    for flag, key, typ, helptext in _FLAGS:
        p.add_argument(flag, dest=key.replace(".", "__"), type=typ, default=None,
                       metavar=flag[2:].upper().replace("-", "_"),
                       help=f"{helptext} (overrides '{key}')")
    p.add_argument("--compile", dest="model__fit_compile", default=None,
                   action=argparse.BooleanOptionalAction,
                   help="torch.compile the vertex fit (default: on; overrides "
                        "'model.fit_compile')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set model.dim=64 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an OUT that holds a previous run's checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args):
    """The :class:`~ndive_models.train.TrainConfig` of a parsed command line."""
    import yaml

    over = {}
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            over[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            over[k.strip()] = v  # a plain string; the config's type check names the key
    for _, key, _, _ in _FLAGS:
        v = getattr(args, key.replace(".", "__"))
        if v is not None:
            over[key] = v
    if args.model__fit_compile is not None:
        over["model.fit_compile"] = args.model__fit_compile
    if args.no_progress:
        over["progress"] = False
    from .train import load_config

    return load_config(args.config, over)


def run(args) -> int:
    """Train as the parsed command line says; returns the exit status."""
    from pathlib import Path

    from .train import _dist_info, train

    cfg = config_from_args(args)
    last = Path(cfg.out) / "last.pt"
    if last.exists() and not (args.resume or args.overwrite):
        raise ValueError(f"--out {cfg.out}: holds a previous run ({last}); pass --resume to "
                         "continue it or --overwrite to start afresh")
    summary = train(cfg, resume=args.resume)  # errors: one line from cli.main
    if _dist_info()[0] == 0:
        print(f"best validation loss {summary['best_val']:.4f} at epoch "
              f"{summary['best_epoch']}; checkpoints in {summary['out']}")
    return 0

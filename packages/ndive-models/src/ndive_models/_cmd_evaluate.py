"""Evaluate trained checkpoints on a test file.

Writes to --out: predictions/<label>_<k>.h5 in the FTAG layout (a jets table with
<label>_pb/_pc/_pu, HadronConeExclTruthLabelID, pt in MeV, eta, eventNumber and the NDIVE
vertex, covariance and fit_ok; a tracks table with the track weights: what puma's Results and
ftag's H5Reader read), metrics.json (light and c rejections at the working points with binomial
errors and the spread over seeds; NDIVE track-selection efficiency and purity; vertex
residuals and pulls for NDIVE, all tracks and perfect selection) and PNG plots (ROC curves
with a ratio panel and seed bands, track selection, vertex residuals). Checkpoints of the same
model (name and weight option) are treated as trainings with different seeds. --puma also
draws puma's ROC and discriminant plots (ATLAS style) into OUT/puma.
"""

from __future__ import annotations

import argparse

NAME = "evaluate"
HELP = "evaluate checkpoints: predictions HDF5, metrics JSON, ROC and vertexing plots"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files (.pt)")
    p.add_argument("--test", required=True, metavar="FILE.h5", help="test jets")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--fc", type=float, default=0.05, help="c fraction f_c in D_b")
    p.add_argument("--reference", default=None,
                   help="label of the ratio-panel reference (default: baseline, if evaluated)")
    p.add_argument("--max-jets", type=int, default=None, help="use the first N test jets")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--no-plots", action="store_true", help="metrics and predictions only")
    p.add_argument("--puma", action="store_true",
                   help="also draw ROC and discriminant plots with puma into OUT/puma "
                        "(pip install 'ndive-models[ftag]')")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of a previous evaluation in --out")
    p.add_argument("--threads", type=int, default=None,
                   help="PyTorch intra-op threads (default 1; 0: PyTorch's choice)")


def check_args(args) -> None:
    """Refuse (ValueError, naming the option) what would give wrong results silently."""
    from pathlib import Path

    if args.max_jets is not None and args.max_jets < 1:
        raise ValueError(f"--max-jets must be a positive number of jets, got {args.max_jets}")
    if not 0.0 <= args.fc <= 1.0:
        raise ValueError(f"--fc is the c fraction in D_b and must be in [0, 1], got {args.fc}")
    metrics = Path(args.out) / "metrics.json"
    if metrics.exists() and not args.overwrite:
        raise ValueError(f"--out {args.out}: holds a previous evaluation ({metrics}); pass "
                         "--overwrite to replace it")


def run(args) -> int:
    from ._runtime import set_threads
    from .evaluate import evaluate

    check_args(args)  # errors: one line from cli.main
    set_threads(args.threads)
    m = evaluate(args.checkpoints, args.test, args.out, f_c=args.fc, reference=args.reference,
                 max_jets=args.max_jets, device=args.device, plots=not args.no_plots,
                 puma=args.puma)
    for mm in m["models"].values():
        if "rejection" in mm:
            r = mm["rejection"]
            print(f"{mm['display']}: light rejection @70% {r['light']['0.70']['mean']:.1f}, "
                  f"c rejection @70% {r['c']['0.70']['mean']:.2f}")
        if "track_selection" in mm:
            ts = mm["track_selection"]
            print(f"{mm['display']}: track selection eff b {ts['b']['efficiency']:.2f} "
                  f"c {ts['c']['efficiency']:.2f}")
    print(f"metrics and plots in {args.out}")
    return 0

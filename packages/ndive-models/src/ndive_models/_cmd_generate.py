"""Generate Pythia 8 ttbar jets (14 TeV) with an ATLAS-like tracker into an FTAG-style HDF5 file.

Jets: anti-kT R=0.4, pT > 20 GeV, |eta| < 2.5; tracks: exact-helix perigee parameters w.r.t.
the primary vertex (Bz = 2 T), Delphes ATLAS resolutions. The file is written to FILE.h5.partial
and renamed at the end (Ctrl-C, kill or a failing worker leave no file); the same seed and
options give an identical file. Needs pip install 'ndive-models[generate]'. Details:
docs/generation.md.
"""

from __future__ import annotations

import argparse
import sys

NAME = "generate"
HELP = "generate ttbar jets (Pythia 8 + fastjet + ATLAS-like tracker) to HDF5"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jets", type=int, required=True, metavar="N", help="jets to write")
    p.add_argument("--out", required=True, metavar="FILE.h5", help="output file")
    p.add_argument("--seed", type=int, default=1, help="master seed (workers derive theirs)")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="generator processes; 1 runs Pythia in this process (part of the options: "
        "changes the event sequence)",
    )
    p.add_argument("--balance", action="store_true", help="equal numbers of b, c and light jets")
    p.add_argument(
        "--max-tracks",
        type=int,
        default=15,
        help="track slots per jet (highest-pT tracks kept; n_tracks_all keeps count)",
    )
    p.add_argument(
        "--mpi",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="multiparton interactions (underlying event)",
    )
    p.add_argument(
        "--hadronic-w",
        action="store_true",
        help="force W -> quarks (about 15%% c-jets instead of 11.5%%)",
    )
    p.add_argument(
        "--batch-events", type=int, default=50, help="events per work unit (part of the options)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def check_output(path, overwrite: bool, option: str = "--out") -> None:
    """Refuse (ValueError) an output file name that is a directory, or an existing file
    without ``overwrite``: before any work, so that nothing is lost or computed in vain."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a directory; give a file name")
    if path.exists() and not overwrite:
        raise ValueError(f"{option} {path}: exists; pass --overwrite to replace it")


def run(args) -> int:
    from .generate import GenerationConfig, WorkerError, generate

    check_output(args.out, args.overwrite)  # errors (here and below): one line from cli.main
    try:
        cfg = GenerationConfig(
            n_jets=args.jets,
            seed=args.seed,
            workers=args.workers,
            balance=args.balance,
            max_tracks=args.max_tracks,
            mpi=args.mpi,
            hadronic_w=args.hadronic_w,
            batch_events=args.batch_events,
        )
        result = generate(cfg, args.out, progress=not args.no_progress)
    except WorkerError as err:  # no file was written (the partial file is deleted)
        print(f"ndive generate: error: {err}", file=sys.stderr)
        return 1
    fl = ", ".join(f"{k} {v}" for k, v in result.n_per_flavour.items())
    print(
        f"wrote {result.n_jets} jets ({fl}) from {result.n_events} events to {result.path} "
        f"in {result.seconds:.1f} s ({result.jets_per_second:.0f} jets/s)"
    )
    return 0

"""Generate Pythia 8 ttbar jets (14 TeV) with an ATLAS-like tracker into an FTAG-style HDF5 file.

Jets: anti-kT R=0.4, pT > 20 GeV, |eta| < 2.5; tracks: exact-helix perigee parameters w.r.t.
the primary vertex (Bz = 2 T), Delphes ATLAS resolutions. The default is the NDIVE paper's
clean sample (true PV at the origin, no pileup); --preset run3 adds a beam spot, pileup, a
reconstructed PV, fakes, radius-dependent tracking, correlated covariances and soft leptons. The file is written to FILE.h5.partial
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
        "--only",
        choices=("b", "c", "light"),
        default=None,
        help="write jets of this flavour alone (e.g. extra light jets for a test set; the "
        "other jets are simulated and dropped)",
    )
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
    g = p.add_argument_group(
        "realistic detector (docs/generation.md); --preset sets all of them, any option given "
        "explicitly wins"
    )
    g.add_argument(
        "--preset",
        choices=("clean", "run3"),
        default="clean",
        help="clean: the NDIVE paper's sample (default); run3: ATLAS-like Run 3 (beam spot "
        "12 um x 12 um x 35 mm, pileup mu 50, reconstructed PV, fake rate 0.005, radial "
        "tracking, correlated covariance, soft leptons, FTAG track selection)",
    )
    g.add_argument("--beamspot", type=float, nargs=3, metavar=("SX", "SY", "SZ"), default=None,
                   help="beam-spot widths [mm] (clean: 0 0 0)")  # fmt: skip
    g.add_argument("--pileup", type=float, metavar="MU", default=None,
                   help="mean minimum-bias interactions per event, Poisson (clean: 0)")  # fmt: skip
    g.add_argument("--reco-pv", action=argparse.BooleanOptionalAction, default=None,
                   help="reconstruct the PV with vertexfit; tracks w.r.t. it")  # fmt: skip
    g.add_argument("--fake-rate", type=float, metavar="R", default=None,
                   help="fake tracks per real track, in [0, 1] (clean: 0)")  # fmt: skip
    g.add_argument("--radial-tracking", action=argparse.BooleanOptionalAction, default=None,
                   help="efficiency and resolution depend on the production radius")  # fmt: skip
    g.add_argument("--covariance", choices=("diagonal", "correlated"), default=None,
                   help="track covariance (clean: diagonal)")  # fmt: skip
    g.add_argument("--soft-leptons", action=argparse.BooleanOptionalAction, default=None,
                   help="reconstruct soft electrons and muons (leptonID, lepton_pt)")  # fmt: skip
    g.add_argument("--track-selection", action=argparse.BooleanOptionalAction, default=None,
                   help="FTAG selection |d0| < 3.5 mm, |z0 sin(theta)| < 5 mm w.r.t. the PV")  # fmt: skip
    g.add_argument("--pileup-pool", type=int, metavar="N", default=None,
                   help="draw the pileup from N minimum-bias events simulated once per worker "
                   "and drawn turned and mirrored at random (faster; the particle content of an "
                   "interaction is reused; default 0: every interaction is new)")  # fmt: skip


_DETECTOR_OPTIONS = ("beamspot", "pileup", "reco_pv", "fake_rate", "radial_tracking",
                     "covariance", "soft_leptons", "track_selection", "pileup_pool")  # fmt: skip


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
        explicit = {k: getattr(args, k) for k in _DETECTOR_OPTIONS if getattr(args, k) is not None}
        cfg = GenerationConfig.from_preset(
            args.preset,
            **explicit,
            n_jets=args.jets,
            seed=args.seed,
            workers=args.workers,
            balance=args.balance,
            only=args.only,
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
        f"wrote {result.n_jets} jets ({fl}) from {result.n_events} events"
        + (f" ({result.n_pileup_events} pileup events simulated)" if cfg.pileup > 0 else "")
        + f" to {result.path} "
        f"in {result.seconds:.1f} s ({result.jets_per_second:.0f} jets/s)"
    )
    return 0

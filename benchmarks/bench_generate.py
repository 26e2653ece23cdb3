"""Throughput of `ndive generate`: jets/s with 2 worker processes, all jets and balanced.

Usage: python benchmarks/bench_generate.py OUT.json [--jets N] [--balanced-jets N]
       [--workers W] [--no-mpi]

Prints a table and writes the numbers as JSON to OUT.json. Wall time includes starting the
workers and initialising Pythia; "steady" excludes the time to the first batch. Goals on the
2-core machines (issue 4): >= 1,300 jets/s unbalanced with MPI on, >= 450 jets/s balanced.
Needs pip install 'ndive-models[generate]'.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from ndive_models.generate import GenerationConfig, generate


def run_case(name: str, cfg: GenerationConfig, tmpdir: Path) -> dict:
    res = generate(cfg, tmpdir / f"{name}.h5", progress=False)
    return {
        "case": name,
        "jets": res.n_jets,
        "events": res.n_events,
        "per_flavour": res.n_per_flavour,
        "wall_s": round(res.seconds, 3),
        "startup_s": round(res.startup_seconds, 3),
        "jets_per_s": round(res.jets_per_second, 1),
        "steady_jets_per_s": round(res.steady_jets_per_second, 1),
        "options": {"workers": cfg.workers, "balance": cfg.balance, "mpi": cfg.mpi},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="JSON output path")
    p.add_argument("--jets", type=int, default=20000, help="jets in the unbalanced run")
    p.add_argument("--balanced-jets", type=int, default=6000, help="jets in the balanced run")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-mpi", action="store_true")
    args = p.parse_args(argv)
    mpi = not args.no_mpi
    cases = [
        ("all", GenerationConfig(n_jets=args.jets, workers=args.workers, mpi=mpi, seed=1)),
        ("balanced", GenerationConfig(n_jets=args.balanced_jets, workers=args.workers,
                                      mpi=mpi, seed=1, balance=True)),  # fmt: skip
    ]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_case(name, cfg, Path(tmp)) for name, cfg in cases]
    print(f"{'case':10s} {'jets':>7s} {'events':>7s} {'wall s':>7s} {'jets/s':>8s} "
          f"{'steady jets/s':>14s}")  # fmt: skip
    for r in rows:
        print(f"{r['case']:10s} {r['jets']:7d} {r['events']:7d} {r['wall_s']:7.1f} "
              f"{r['jets_per_s']:8.0f} {r['steady_jets_per_s']:14.0f}")  # fmt: skip
    meta = {"python": sys.version.split()[0], "machine": platform.machine(),
            "cpus": os.cpu_count(), "mpi": mpi}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"benchmark": "generate", "meta": meta,
                                          "results": rows}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

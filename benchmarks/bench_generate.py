"""Throughput of `ndive generate`: jets/s with 2 worker processes, all jets and balanced, and
the realistic preset (``--preset run3``) at pileup mu = 0, 20 and 60.

Usage: python benchmarks/bench_generate.py [OUT.json] [--quick] [--jets N]
       [--balanced-jets N] [--pileup-jets N] [--workers W] [--no-mpi]

Prints a table and writes the numbers as JSON (default benchmarks/results/generate.json).
"wall" includes starting the workers and initialising Pythia; "steady" excludes the time to
the first batch (the rate of a long run). "pythia only" runs Pythia alone in the same
worker processes: the ceiling of the "all" case on this machine at this moment.
"run3 mu=M" is the realistic preset with pileup M (minimum-bias Pythia events in the same
workers, the PV fit, fakes, ...); "pythia only mu=60" its Pythia part alone.
"cpu_bound_2core" divides the CPU time of the parent and its workers over 2 cores: what an
idle 2-core machine would reach if the work packed perfectly; it is much less sensitive to
other load on the machine than the wall-clock rates. Goals on the 2-core machines (issue 4):
>= 1,300 jets/s unbalanced with MPI on, >= 450 jets/s balanced. Needs
pip install 'ndive-models[generate]'.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np

GOALS = {"all": 1300.0, "balanced": 450.0}  # jets/s, 2 workers, MPI on (issue 4)


def _case(name: str, cfg, tmpdir: Path) -> dict:
    from ndive_models.generate import generate

    before = _cpu()
    res = generate(cfg, tmpdir / f"{name}.h5", progress=False)
    parent, workers = (a - b for a, b in zip(_cpu(), before))
    # CPU time is far less sensitive to other load than wall time: the rate 2 idle cores
    # would reach if the work packed perfectly (an upper bound on the steady rate).
    cpu_rate = 2 * res.n_jets / (parent + workers) if parent + workers > 0 else float("nan")
    from ndive_models.data import read_jets
    from ndive_models.data.schema import ORIGIN

    _, tracks = read_jets(res.path)
    origin = tracks["ftagTruthOriginLabel"][tracks["valid"]]
    return {
        "case": name,
        "workers": cfg.workers,
        "mpi": cfg.mpi,
        "jets": res.n_jets,
        "events": res.n_events,
        "b/c/light": "/".join(str(v) for v in res.n_per_flavour.values()),
        "wall_s": round(res.seconds, 2),
        "startup_s": round(res.startup_seconds, 2),
        "jets_per_s": round(res.jets_per_second, 1),
        "steady_jets_per_s": round(res.steady_jets_per_second, 1),
        "cpu_ms_per_jet_parent": round(1e3 * parent / res.n_jets, 3),
        "cpu_ms_per_jet_workers": round(1e3 * workers / res.n_jets, 3),
        "cpu_bound_2core_jets_per_s": round(cpu_rate, 1),
        "goal_jets_per_s": GOALS.get(name) if cfg.mpi and cfg.workers == 2 else None,
        "pileup_track_fraction": round(float(np.mean(origin == ORIGIN["Pileup"])), 4),
        "fake_track_fraction": round(float(np.mean(origin == ORIGIN["Fake"])), 4),
    }


def _pythia_only(cfg, jets_per_event: float, name: str = "pythia only") -> dict:
    """Pythia alone in the same worker processes: the ceiling of the "all" case."""
    import time

    from ndive_models.generate._pipeline import _pythia_only
    from ndive_models.generate._workers import WorkerPool

    n_batches = -(-round(cfg.n_jets / jets_per_event) // cfg.batch_events)
    before = _cpu()
    t0 = time.perf_counter()
    with WorkerPool(cfg.workers, _pythia_only, (cfg,)) as pool:
        events = pool.get(0)
        t1 = time.perf_counter()
        for k in range(1, n_batches):
            events += pool.get(k % cfg.workers)
        t2 = time.perf_counter()
    parent, workers = (a - b for a, b in zip(_cpu(), before))
    jets = events * jets_per_event  # at the jets per event of the "all" case
    first = cfg.batch_events * jets_per_event
    return {
        "case": name,
        "workers": cfg.workers,
        "mpi": cfg.mpi,
        "jets": round(jets),
        "events": events,
        "b/c/light": "",
        "wall_s": round(t2 - t0, 2),
        "startup_s": round(t1 - t0, 2),
        "jets_per_s": round(jets / (t2 - t0), 1),
        "steady_jets_per_s": round((jets - first) / (t2 - t1), 1),
        "cpu_ms_per_jet_parent": round(1e3 * parent / jets, 3),
        "cpu_ms_per_jet_workers": round(1e3 * workers / jets, 3),
        "cpu_bound_2core_jets_per_s": round(2 * jets / (parent + workers), 1),
        "goal_jets_per_s": None,
        "pileup_track_fraction": None,
        "fake_track_fraction": None,
    }


def _cost_per_event(cfg, batches: int) -> dict:
    """CPU per event of one worker's work, in this process, after one warm-up batch (so no
    start-up cost): the ttbar Pythia, the pileup Pythia and everything else (jets, tracks,
    truth, PV fit, ...). Thread time of this process only, insensitive to other load."""
    import time

    from ndive_models.generate._event import process_batch
    from ndive_models.generate._pipeline import _ChargeTable, _generators

    pythia, pileup, rng, det_rng = _generators(cfg, 0)
    charge_of = _ChargeTable(pythia.particleData)
    cost = {"pythia": 0.0, "pileup": 0.0, "rest": 0.0}
    events = jets = 0
    for k in range(batches + 1):
        t0 = time.thread_time()
        batch = pythia.nextBatch(cfg.batch_events)
        t1 = time.thread_time()
        pu, n_pu = None, None
        if pileup is not None:
            n_pu = det_rng.poisson(cfg.pileup, len(batch))
            pu = pileup.nextBatch(int(n_pu.sum()))
        t2 = time.thread_time()
        out, _ = process_batch(batch, charge_of, rng, max_tracks=cfg.max_tracks, bz=cfg.bz,
                               event_offset=0, detector=cfg.detector, det_rng=det_rng,
                               pileup=pu, n_pileup=n_pu)  # fmt: skip
        t3 = time.thread_time()
        if k == 0:
            continue  # warm-up: imports, first calls
        cost["pythia"] += t1 - t0
        cost["pileup"] += t2 - t1
        cost["rest"] += t3 - t2
        events += len(batch)
        jets += len(out)
    total = sum(cost.values())
    return {
        "events": events,
        "jets": jets,
        **{f"ms_per_event_{k}": round(1e3 * v / events, 2) for k, v in cost.items()},
        "ms_per_event": round(1e3 * total / events, 2),
        "jets_per_s_per_core": round(jets / total, 1),
    }


def _cpu() -> tuple[float, float]:
    """(this process, its finished children) user + system CPU seconds."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def run(
    quick: bool = False,
    *,
    jets: int | None = None,
    balanced_jets: int | None = None,
    pileup_jets: int | None = None,
    workers: int = 2,
    mpi: bool = True,
) -> dict:
    """Generate an unbalanced and a balanced file; returns ``{"title", "rows", "notes"}``.

    ``quick``: 3,000 + 1,000 jets (about 10-20 s on an idle 2-core machine) instead of
    20,000 + 6,000, and 300 instead of 2,000 jets per pileup value.
    """
    from ndive_models.generate import GenerationConfig, require_generate_extra

    require_generate_extra()
    jets = jets or (3000 if quick else 20000)
    balanced_jets = balanced_jets or (1000 if quick else 6000)
    pileup_jets = pileup_jets or (300 if quick else 2000)
    cases = [
        ("all", GenerationConfig(n_jets=jets, workers=workers, mpi=mpi, seed=1)),
        ("balanced", GenerationConfig(n_jets=balanced_jets, workers=workers, mpi=mpi, seed=1,
                                      balance=True)),
    ]  # fmt: skip
    for mu in (0.0, 20.0, 60.0):
        cfg = GenerationConfig.from_preset("run3", n_jets=pileup_jets, workers=workers, mpi=mpi,
                                           seed=1, pileup=mu)  # fmt: skip
        cases.append((f"run3 mu={mu:g}", cfg))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [_case(name, cfg, Path(tmp)) for name, cfg in cases]
    rows.append(_pythia_only(cases[0][1], rows[0]["jets"] / rows[0]["events"]))
    rows.append(_pythia_only(cases[-1][1], rows[-2]["jets"] / rows[-2]["events"],
                             "pythia only mu=60"))  # fmt: skip
    per_event = [{"case": "clean", **_cost_per_event(cases[0][1], 4 if quick else 20)}]
    for name, cfg in cases[2:]:
        per_event.append({"case": name, **_cost_per_event(cfg, 2 if quick else 10)})
    notes = [
        (f"python {sys.version.split()[0]}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end"),
        ("goal (issue 4, idle 2-core machine, 2 workers, MPI on): >= 1,300 jets/s all, "
        ">= 450 jets/s balanced; compare steady_jets_per_s"),
        ("'pythia only': the same workers running Pythia alone for the events of 'all' (jets "
        "counted at the jets per event of 'all'): the ceiling; all / pythia only = efficiency"),
        ("'run3 mu=M': --preset run3 with pileup M; 'pythia only mu=60': its ttbar and "
        "minimum-bias Pythia alone (the ceiling of 'run3 mu=60')"),
    ]
    notes.append("per_event: CPU per event of one worker after a warm-up batch (thread time, "
                 "insensitive to other load): ttbar Pythia, pileup Pythia, the rest (jets, "
                 "tracks, truth, PV fit); jets_per_s_per_core = the rate of one idle core")
    return {"title": "ndive generate: Pythia 8 ttbar jets per second", "rows": rows,
            "per_event": per_event, "notes": notes}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="benchmarks/results/generate.json")
    p.add_argument("--quick", action="store_true", help="small files (well under a minute)")
    p.add_argument("--jets", type=int, default=None, help="jets in the unbalanced run")
    p.add_argument("--balanced-jets", type=int, default=None, help="jets in the balanced run")
    p.add_argument("--pileup-jets", type=int, default=None, help="jets per pileup value")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-mpi", action="store_true")
    args = p.parse_args(argv)
    result = run(args.quick, jets=args.jets, balanced_jets=args.balanced_jets,
                 pileup_jets=args.pileup_jets, workers=args.workers,
                 mpi=not args.no_mpi)  # fmt: skip
    cols = list(result["rows"][0])
    print(result["title"])
    print("  ".join(f"{c:>{max(len(c), 8)}}" for c in cols))
    for r in result["rows"]:
        print("  ".join(f"{r[c]!s:>{max(len(c), 8)}}" for c in cols))
    cols = list(result["per_event"][0])
    print("CPU per event, one core")
    print("  ".join(f"{c:>{max(len(c), 8)}}" for c in cols))
    for r in result["per_event"]:
        print("  ".join(f"{r[c]!s:>{max(len(c), 8)}}" for c in cols))
    for n in result["notes"]:
        print("note:", n)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

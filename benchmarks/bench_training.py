"""Training-step throughput (jets/s) of the baseline, NDIVE and FTAG+NDIVE (PyTorch).

Toy jets from ``vertexfit.toy`` (one displaced vertex, 2-15 tracks) stand in for a jet file,
so the benchmark needs no event generator. One step = forward, loss, backward, NovoGrad
update, at the paper's sizes (dim 32, 1 layer, 1 head). Run: python benchmarks/bench_training.py
"""

from __future__ import annotations

import argparse
import json
import time


def _toy_batch(n_jets: int, seed: int = 0) -> dict:
    import numpy as np
    import torch

    import vertexfit

    toy = vertexfit.toy.generate(n_jets, 15, seed=seed, variable=True)
    rng = np.random.default_rng(seed)
    mask = toy.mask
    phi = np.arctan2(np.sin(toy.tracks[..., 2]).sum(1), np.cos(toy.tracks[..., 2]).sum(1))
    theta = np.where(mask, toy.tracks[..., 3], 0).sum(1) / mask.sum(1)
    eta = -np.log(np.tan(theta / 2))
    params = np.where(mask[..., None], toy.tracks, [0, 0, 0, np.pi / 2, 0])
    cov = np.where(mask[..., None, None], toy.cov, np.eye(5))
    t = lambda a, dt=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)
    return {
        "params": t(params), "cov": t(cov), "valid": t(mask, torch.bool),
        "jet": t(np.stack([rng.uniform(20, 200, n_jets), eta, phi], -1)),
        "flavour": t(rng.integers(0, 3, n_jets), torch.int64),
        "origin": t(np.where(mask, 3, 0), torch.int64),
        "vertex_index": t(np.where(mask, 1, -1), torch.int64),
        "hf_vertex": t(toy.vertex), "truth_weight": t(mask.astype(np.float32)),
    }


def run(quick: bool = False, threads: int = 1) -> dict:
    import torch

    from ndive_models._optim import NovoGrad
    from ndive_models.data import feature_stats
    from ndive_models.models import ModelConfig, build_model, total_loss

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    batch_size = 100
    steps = 5 if quick else 15
    batch = _toy_batch(batch_size * (steps + 1))
    stats = feature_stats(batch, 2.0)
    # (label, model name, compiled fit): every model takes one step in turn, so that all
    # see the same machine load (ratios within one run are the headline)
    cases = [("baseline", "baseline", False), ("ndive", "ndive", True),
             ("ftag_ndive", "ftag_ndive", True), ("ndive eager", "ndive", False),
             ("ftag_ndive eager", "ftag_ndive", False)]
    runs = []
    for label, name, compiled in cases:
        torch.manual_seed(0)
        model = build_model(ModelConfig(name=name, fit_compile=compiled), stats, 2.0)
        runs.append((label, model, NovoGrad(model.parameters(), lr=1e-3), []))
    try:
        for s in range(steps + 1):
            b = {k: v[s * batch_size:(s + 1) * batch_size] for k, v in batch.items()}
            for _label, model, opt, times in runs:
                t0 = time.perf_counter()
                loss = total_loss(model.loss_terms(model(b), b))
                opt.zero_grad()
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old_threads)
    rows = []
    for label, _, _, times in runs:
        t = sorted(times[1:])[len(times[1:]) // 2]  # median, first step (compile) dropped
        rows.append({"model": label, "batch": batch_size, "step_ms": round(1e3 * t, 1),
                     "jets_per_s": round(batch_size / t, 1),
                     "first_step_s": round(times[0], 2), "threads": threads or old_threads})
    js = {r["model"]: r["jets_per_s"] for r in rows}
    return {
        "title": "Training step throughput (CPU unless CUDA is the default device)",
        "rows": rows,
        "ratios": {
            "ftag_ndive / baseline jets/s": round(js["ftag_ndive"] / js["baseline"], 3),
            "ftag_ndive eager / baseline jets/s": round(js["ftag_ndive eager"] / js["baseline"],
                                                        3),
            "ftag_ndive compiled / eager jets/s": round(js["ftag_ndive"]
                                                        / js["ftag_ndive eager"], 2),
        },
        "notes": ["toy jets (vertexfit.toy, 2-15 tracks), batch 100, NovoGrad, float64 fit",
                  f"{threads or 'default'} intra-op thread(s); the models take steps in turn "
                  "(interleaved); median over steps after the first (compiling) step, whose "
                  "time is first_step_s",
                  "goal (issue 12): ftag_ndive / baseline >= 0.5 (stretch 0.8)"],
    }


def _worker(model_name: str, threads: int, steps: int) -> float:
    """jets/s of ``steps`` training steps of ``model_name`` (eager fit) in this process."""
    import torch

    from ndive_models._optim import NovoGrad
    from ndive_models.data import feature_stats
    from ndive_models.models import ModelConfig, build_model, total_loss

    if threads:
        torch.set_num_threads(threads)
    batch = _toy_batch(100 * (steps + 1), seed=1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=model_name, fit_compile=False),
                        feature_stats(batch, 2.0), 2.0)
    opt = NovoGrad(model.parameters(), lr=1e-3)
    t0 = None
    for s in range(steps + 1):
        if s == 1:
            t0 = time.perf_counter()
        b = {k: v[s * 100:(s + 1) * 100] for k, v in batch.items()}
        loss = total_loss(model.loss_terms(model(b), b))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 100 * steps / (time.perf_counter() - t0)


def concurrent(model_name: str = "baseline", steps: int = 40) -> dict:
    """Solo vs two simultaneous trainings (subprocesses), with 1 thread each and with
    PyTorch's default: ``{threads: (solo jets/s, mean jets/s of the two, ratio)}``."""
    import subprocess
    import sys

    def start(threads):
        return subprocess.Popen([sys.executable, __file__, "--worker", model_name,
                                 "--threads", str(threads), "--steps", str(steps)],
                                stdout=subprocess.PIPE, text=True)

    out = {}
    for threads in (1, 0):
        solo = float(start(threads).communicate()[0])
        pair = [start(threads) for _ in range(2)]
        both = [float(p.communicate()[0]) for p in pair]
        out["1" if threads else "default"] = (solo, sum(both) / 2, sum(both) / 2 / solo)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="PyTorch intra-op threads (default 1; 0: PyTorch's default)")
    p.add_argument("--concurrent", action="store_true",
                   help="also: two trainings at once vs one alone, 1 thread and default threads")
    p.add_argument("--worker", metavar="MODEL", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=40, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(_worker(args.worker, args.threads, args.steps))
        return 0
    res = run(quick=args.quick, threads=args.threads)
    if args.concurrent:
        for threads, (solo, pair, ratio) in concurrent(steps=args.steps).items():
            res["ratios"][f"two concurrent / solo (baseline, {threads} thread(s))"] = round(
                ratio, 2)
            res["notes"].append(f"{threads} thread(s): solo {solo:.0f} jets/s, two at once "
                                f"{pair:.0f} jets/s each")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

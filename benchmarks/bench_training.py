"""Training-step throughput (jets/s) of the paper's models (baseline, NDIVE, FTAG+NDIVE) and
of every shipped FTAG-family config (DIPS, GN2, GN3, GN2 + regression, GN2 + NDIVE,
GN3 + NDIVE; ``ndive_models/configs/``) at its real size (PyTorch, one thread).

Toy jets from ``vertexfit.toy`` (one displaced vertex, 2-15 tracks) stand in for a jet file,
so the benchmark needs no event generator. One step = forward, loss, backward, optimiser
update: NovoGrad for the paper's models (dim 32, 1 layer, 1 head), the config's optimiser
and loss balancing for the family. Run: python benchmarks/bench_training.py
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
    jet_class = rng.integers(0, 6, n_jets)
    pt = rng.uniform(20, 200, n_jets)
    muon = mask & (rng.random(mask.shape) < 0.05)
    return {
        "params": t(params), "cov": t(cov), "valid": t(mask, torch.bool),
        "jet": t(np.stack([pt, eta, phi], -1)),
        "flavour": t(np.minimum(jet_class, 2), torch.int64),
        "jet_class": t(jet_class, torch.int64),
        "pt_truth": t(pt * rng.uniform(1.0, 1.2, n_jets)),
        "lepton_id": t(np.where(muon, 13, 0), torch.int64),
        "lepton_pt": t(np.where(muon, 5.0, 0.0)),
        "origin": t(np.where(mask, 3, 0), torch.int64),
        "vertex_index": t(np.where(mask, 1, -1), torch.int64),
        "hf_vertex": t(toy.vertex), "truth_weight": t(mask.astype(np.float32)),
    }


#: Shipped configs benchmarked, in table order.
FAMILY = ("dips", "gn2", "gn2_regression", "gn3", "gn2_ndive", "gn3_ndive")


def _family_configs():
    """``{config name: (TrainConfig)}`` of the shipped FTAG-family configs."""
    from pathlib import Path

    import ndive_models
    from ndive_models.train import load_config

    d = Path(ndive_models.__file__).parent / "configs"
    return {n: load_config(d / f"{n}.yaml") for n in FAMILY}


def _step_time(model, opt, batch, batch_size, steps, balance):
    from ndive_models.models import total_loss

    times, cpu = [], []
    for s in range(steps + 1):
        b = {k: v[s * batch_size:(s + 1) * batch_size] for k, v in batch.items()}
        t0, c0 = time.perf_counter(), time.process_time()
        loss = total_loss(model.loss_terms(model(b), b), balance=balance)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # medians, first step (warm-up) dropped
    return sorted(times[1:])[len(times[1:]) // 2], sorted(cpu[1:])[len(cpu[1:]) // 2]


def _row(name, optimizer, model, batch_size, t):
    wall, cpu = t
    return {"model": name, "optimizer": optimizer, "params": _n_params(model),
            "batch": batch_size, "step_ms": round(1e3 * wall, 1),
            "jets_per_s": round(batch_size / wall, 1), "cpu_step_ms": round(1e3 * cpu, 1),
            "jets_per_cpu_s": round(batch_size / cpu, 1), "threads": 1}


def run(quick: bool = False) -> dict:
    import torch

    from ndive_models._optim import NovoGrad, make_optimizer
    from ndive_models.data import feature_stats
    from ndive_models.models import ModelConfig, build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: comparable across machines and loads
    try:
        batch_size = 100
        steps = 2 if quick else 6
        batch = _toy_batch(batch_size * (steps + 1))
        stats = feature_stats(batch, 2.0)
        rows = []
        for name in ("baseline", "ndive", "ftag_ndive"):
            torch.manual_seed(0)
            model = build_model(ModelConfig(name=name), stats, 2.0)
            t = _step_time(model, NovoGrad(model.parameters(), lr=1e-3), batch, batch_size,
                           steps, "fixed")
            rows.append(_row(name, "novograd", model, batch_size, t))
        for name, cfg in _family_configs().items():
            torch.manual_seed(0)
            model = build_model(cfg.model, stats, 2.0)
            opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
            t = _step_time(model, opt, batch, batch_size, steps, cfg.model.loss_balance)
            rows.append(_row(f"{name}.yaml", cfg.optimizer, model, batch_size, t))
    finally:
        torch.set_num_threads(threads)
    by = {r["model"]: r["jets_per_cpu_s"] for r in rows}
    return {
        "title": "Training step throughput (CPU unless CUDA is the default device)",
        "rows": rows,
        "ratios": {"baseline / ftag_ndive jets/s": round(by["baseline"] / by["ftag_ndive"], 2),
                   "dips / gn2 jets/s": round(by["dips.yaml"] / by["gn2.yaml"], 2),
                   "gn2 / gn3 jets/s": round(by["gn2.yaml"] / by["gn3.yaml"], 2),
                   "gn2 / gn2_ndive jets/s": round(by["gn2.yaml"] / by["gn2_ndive.yaml"], 2)},
        "notes": ["toy jets (vertexfit.toy, 2-15 tracks), batch 100, float64 fit, one thread "
                  "(torch.set_num_threads(1))",
                  "paper models: NovoGrad, dim 32; *.yaml: the shipped config at its real size "
                  "with its optimiser and loss balancing",
                  "median over steps after one warm-up step; ratios from CPU time (one thread: "
                  "the wall time of an idle core; wall times on a shared machine include waits)"],
    }


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    print(json.dumps(run(quick=args.quick), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

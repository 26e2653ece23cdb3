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


def run(quick: bool = False) -> dict:
    import torch

    from ndive_models._optim import NovoGrad
    from ndive_models.data import feature_stats
    from ndive_models.models import ModelConfig, build_model, total_loss

    batch_size = 100
    steps = 3 if quick else 10
    batch = _toy_batch(batch_size * (steps + 1))
    stats = feature_stats(batch, 2.0)
    rows = []
    for name in ("baseline", "ndive", "ftag_ndive"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name=name), stats, 2.0)
        opt = NovoGrad(model.parameters(), lr=1e-3)
        times = []
        for s in range(steps + 1):
            b = {k: v[s * batch_size:(s + 1) * batch_size] for k, v in batch.items()}
            t0 = time.perf_counter()
            loss = total_loss(model.loss_terms(model(b), b))
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        t = sorted(times[1:])[len(times[1:]) // 2]  # median, first step (warm-up) dropped
        rows.append({"model": name, "batch": batch_size, "step_ms": round(1e3 * t, 1),
                     "jets_per_s": round(batch_size / t, 1),
                     "threads": torch.get_num_threads()})
    base = rows[0]["jets_per_s"]
    return {
        "title": "Training step throughput (CPU unless CUDA is the default device)",
        "rows": rows,
        "ratios": {"baseline / ftag_ndive jets/s": round(base / rows[2]["jets_per_s"], 2)},
        "notes": ["toy jets (vertexfit.toy, 2-15 tracks), batch 100, NovoGrad, float64 fit",
                  "median over steps after one warm-up step"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    print(json.dumps(run(quick=args.quick), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

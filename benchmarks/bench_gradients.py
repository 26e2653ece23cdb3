"""Gradients of the vertex fit: forward+backward throughput, implicit vs unrolled.

Usage: python benchmarks/bench_gradients.py [OUT.json] [--quick] [--jets N]
       [--backends numpy jax torch] [--n-iters 1 3 10 30]

Two tables (15 tracks per jet, float64, toy vertices from ``vertexfit.toy.generate``):

* ``throughput``: jets/s of the forward fit alone and of forward + backward (a scalar loss
  of the vertex and the chi2, gradients w.r.t. tracks, cov and weights), per backend, 10
  iterations. NumPy uses the public rules (``vertexfit.fit_vjp`` then the pullback), JAX
  ``jax.jit(jax.grad(...))``, PyTorch ``loss.backward()``. ``fwd_bwd_over_fwd`` is the ratio
  of the two times in the same run (issue 3 goal for JAX: <= 2, and >= 50,000 jets/s).
* ``implicit_vs_unrolled``: time of forward + backward and the memory the backward pass
  needs, as ``n_iter`` grows, for the implicit rule and for plain autodiff through the
  unrolled iterations (``vertexfit.fit(..., adjoint="unrolled")``). Memory: PyTorch counts
  the bytes autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``;
  tracemalloc does not see torch's CPU allocator); NumPy (implicit only: no autodiff) the
  tracemalloc peak of fit_vjp + pullback; JAX the compiled executable's
  ``memory_analysis()`` temporary bytes.

Each time is the best of a few warm repeats; the machines are shared and noisy, so compare
ratios within one run.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

import numpy as np
from _common import best_time, emit, to_backend

import vertexfit

TITLE = "vertex fit gradients (forward+backward, implicit vs unrolled)"


def _problem(name, n_jets, n_tracks=15, seed=1):
    t = vertexfit.toy.generate(n_jets, n_tracks, seed=seed, variable=True, min_tracks=2)
    w = np.where(t.mask, 1.0, 0.0)
    return [to_backend(name, a) for a in (t.tracks, t.cov, w, t.mask)]


def _functions(name, n_iter):
    """``(forward(), forward_backward())`` builders for one backend; each returns a callable
    of (tracks, cov, weights, mask)."""
    if name == "numpy":
        def fwd(t, c, w, m):
            return vertexfit.fit(t, c, w, mask=m, n_iter=n_iter)

        def fwd_bwd(t, c, w, m):
            res, pullback = vertexfit.fit_vjp(t, c, w, mask=m, n_iter=n_iter)
            return pullback({"vertex": np.ones_like(res.vertex), "chi2": np.ones_like(res.chi2)})

        return fwd, fwd_bwd
    if name == "jax":
        import jax
        import jax.numpy as jnp

        def loss(t, c, w, m):
            r = vertexfit.fit(t, c, w, mask=m, n_iter=n_iter)
            return jnp.sum(r.vertex) + jnp.sum(r.chi2)

        opts = vertexfit.jax_compiler_options()
        f = jax.jit(lambda t, c, w, m: vertexfit.fit(t, c, w, mask=m, n_iter=n_iter),
                    compiler_options=opts)
        g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), compiler_options=opts)
        return (lambda *a: jax.block_until_ready(f(*a)),
                lambda *a: jax.block_until_ready(g(*a)))
    import torch

    def fwd_t(t, c, w, m):
        with torch.no_grad():
            return vertexfit.fit(t, c, w, mask=m, n_iter=n_iter)

    def fwd_bwd_t(t, c, w, m):
        leaves = [a.detach().requires_grad_() for a in (t, c, w)]
        r = vertexfit.fit(*leaves, mask=m, n_iter=n_iter)
        (r.vertex.sum() + r.chi2.sum()).backward()
        return [a.grad for a in leaves]

    return fwd_t, fwd_bwd_t


def bench_throughput(name, n_jets, n_iter=10):
    args = _problem(name, n_jets)
    fwd, fwd_bwd = _functions(name, n_iter)
    t0 = time.perf_counter()
    fwd(*args)
    fwd_bwd(*args)
    first = time.perf_counter() - t0
    t_f = best_time(lambda: fwd(*args))
    t_fb = best_time(lambda: fwd_bwd(*args))
    return {"backend": name, "n_jets": n_jets, "n_tracks": 15, "n_iter": n_iter,
            "forward_jets_per_s": n_jets / t_f, "fwd_bwd_jets_per_s": n_jets / t_fb,
            "fwd_bwd_over_fwd": t_fb / t_f, "first_calls_s": first}


def _torch_saved_bytes(fn):
    """Bytes of the tensors autograd saves for backward while ``fn`` builds the graph."""
    import torch

    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def bench_memory(name, n_jets, n_iter, unrolled):
    """One row: forward+backward time and backward memory, implicit or unrolled."""
    args = _problem(name, n_jets)
    adjoint = "unrolled" if unrolled else "implicit"
    row = {"backend": name, "n_jets": n_jets, "n_iter": n_iter, "mode": adjoint}
    if name == "torch":
        import torch

        def fb():
            leaves = [a.detach().requires_grad_() for a in args[:3]]

            def build():
                r = vertexfit.fit(*leaves, mask=args[3], n_iter=n_iter, adjoint=adjoint)
                return r.vertex.sum() + r.chi2.sum()

            loss, nbytes = _torch_saved_bytes(build)
            loss.backward()
            return nbytes

        row["memory_bytes"] = fb()
        row["memory_kind"] = "autograd saved tensors"
        row["seconds"] = best_time(fb)
        del torch
    elif name == "numpy":
        _, fwd_bwd = _functions(name, n_iter)
        tracemalloc.start()
        fwd_bwd(*args)
        row["memory_bytes"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        row["memory_kind"] = "tracemalloc peak (whole fit + pullback)"
        row["seconds"] = best_time(lambda: fwd_bwd(*args))
    else:
        import jax
        import jax.numpy as jnp

        def loss(t, c, w, m):
            r = vertexfit.fit(t, c, w, mask=m, n_iter=n_iter, adjoint=adjoint)
            return jnp.sum(r.vertex) + jnp.sum(r.chi2)

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2)),
                           compiler_options=vertexfit.jax_compiler_options()
                           ).lower(*args).compile()
        try:
            ma = compiled.memory_analysis()
            row["memory_bytes"] = int(ma.temp_size_in_bytes)
            row["memory_kind"] = "XLA temp bytes (memory_analysis)"
        except Exception as e:  # not every JAX backend reports it
            row["memory_bytes"] = None
            row["memory_kind"] = f"unavailable: {type(e).__name__}"
        compiled(*args)
        row["seconds"] = best_time(lambda: jax.block_until_ready(compiled(*args)))
    row["jets_per_s"] = n_jets / row["seconds"]
    return row


def run(quick: bool = False, *, jets=None, backends=None, n_iters=None) -> dict:
    """Measure; returns ``{"title", "rows", "notes", "ratios"}``."""
    backends = backends or ["numpy", "jax", "torch"]
    n_jets = jets or (1000 if quick else 10_000)
    n_iters = n_iters or ([1, 10] if quick else [1, 3, 10, 30])
    rows, notes, ratios = [], [], {}
    available = []
    for name in backends:
        try:
            to_backend(name, np.zeros(1))
            available.append(name)
        except ImportError:
            notes.append(f"{name}: not installed, skipped")
    for name in available:
        r = bench_throughput(name, n_jets)
        rows.append({"table": "throughput", **r})
        ratios[f"{name} fwd_bwd/fwd"] = r["fwd_bwd_over_fwd"]
    mem_jets = 200 if quick else 1000
    # JAX compiles one program per n_iter and mode (minutes for the unrolled backward):
    # full runs only
    for name in [b for b in available if not (quick and b == "jax")]:
        modes = (False,) if name == "numpy" else (False, True)
        for unrolled in modes:
            for n in n_iters:
                rows.append({"table": "implicit_vs_unrolled",
                             **bench_memory(name, mem_jets, n, unrolled)})
    for name in available:
        mem = {(r["mode"], r["n_iter"]): r for r in rows
               if r["table"] == "implicit_vs_unrolled" and r["backend"] == name}
        lo, hi = min(n_iters), max(n_iters)
        for mode in ("implicit", "unrolled"):
            a, b = mem.get((mode, lo)), mem.get((mode, hi))
            if a and b and a["memory_bytes"] and b["memory_bytes"]:
                ratios[f"{name} {mode} memory n_iter {hi}/{lo}"] = (b["memory_bytes"]
                                                                    / a["memory_bytes"])
        a, b = mem.get(("implicit", hi)), mem.get(("unrolled", hi))
        if a and b:
            ratios[f"{name} unrolled/implicit time at n_iter {hi}"] = b["seconds"] / a["seconds"]
    notes.append("fwd_bwd_over_fwd: forward+backward time over forward time, same run; "
                 "timings are best of warm repeats on a shared machine")
    if quick:
        notes.append("quick: no JAX implicit-vs-unrolled rows (one compile per n_iter)")
    return {"title": TITLE, "rows": rows, "notes": notes, "ratios": ratios}


def format_table(result) -> str:
    lines = [(f"{'backend':8s} {'jets':>6s} {'fwd jets/s':>11s} {'fwd+bwd jets/s':>15s} "
             f"{'ratio':>6s}")]
    for r in result["rows"]:
        if r["table"] == "throughput":
            lines.append(f"{r['backend']:8s} {r['n_jets']:6d} {r['forward_jets_per_s']:11.0f} "
                         f"{r['fwd_bwd_jets_per_s']:15.0f} {r['fwd_bwd_over_fwd']:6.2f}")
    lines.append("")
    lines.append(f"{'backend':8s} {'mode':9s} {'n_iter':>6s} {'jets/s':>9s} {'memory MB':>10s}"
                 "  memory kind")
    for r in result["rows"]:
        if r["table"] == "implicit_vs_unrolled":
            mb = "n/a" if r["memory_bytes"] is None else f"{r['memory_bytes'] / 1e6:.2f}"
            lines.append(f"{r['backend']:8s} {r['mode']:9s} {r['n_iter']:6d} "
                         f"{r['jets_per_s']:9.0f} {mb:>10s}  {r['memory_kind']}")
    for k, v in result["ratios"].items():
        lines.append(f"ratio {k}: {v:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=TITLE)
    p.add_argument("out", nargs="?", help="JSON output path")
    p.add_argument("--quick", action="store_true", help="1,000 jets, n_iter 1 and 10")
    p.add_argument("--jets", type=int)
    p.add_argument("--backends", nargs="+")
    p.add_argument("--n-iters", type=int, nargs="+")
    args = p.parse_args(argv)
    res = run(args.quick, jets=args.jets, backends=args.backends, n_iters=args.n_iters)
    return emit(res, format_table(res), args.out)


if __name__ == "__main__":
    sys.exit(main())

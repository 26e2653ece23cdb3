"""Forward fit throughput: jets/s of ``vertexfit.fit`` per backend vs the SciPy reference.

Usage: python benchmarks/bench_fit.py [OUT.json] [--quick] [--jets 1000 10000 100000]
       [--tracks 15] [--n-iter 10] [--backends numpy jax torch] [--dtype float64]
       [--compile-jets 100 1000 10000]

Toy vertices from ``vertexfit.toy.generate`` (15 tracks per jet, 10 iterations, float64 by
default). Each case is timed as the best of several repeats after a warm-up call (JAX: the
compile time is reported separately). Machines are shared and noisy: the headline numbers
are the ratios within one run (speed-up over SciPy, JAX/NumPy, PyTorch/NumPy). Goals on the
2-core machines (issue 2): JAX >= 100,000 jets/s, NumPy >= 20,000, PyTorch within 2x of
NumPy, >= 300x the SciPy reference. With PyTorch, eager vs compiled
(``fit(compile=True)``) rows, forward and forward+backward, one thread, interleaved; goal
(issue 12): compiled forward+backward >= 20,000 jets/s at batch 100. With JAX, the compile
time of ``jax.jit(fit)`` and ``jax.jit(jax.grad(fit))`` at 2,000 jets x 15 tracks, with
XLA's default options and with ``vertexfit.jax_compiler_options()`` (goal, issue 12: < 5 s
each).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from _common import best_time, emit, to_backend

import vertexfit

TITLE = "vertex fit throughput (forward)"


def _namespace(name):
    if name in ("numpy", "numpy-1thread"):
        import array_api_compat.numpy as xp
    elif name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)  # benchmark process only
        import jax.numpy as xp
    elif name == "torch":
        import array_api_compat.torch as xp
    else:
        raise ValueError(f"unknown backend {name!r}")
    return xp


def _fitter(name, n_iter):
    if name != "jax":
        return lambda t, c, m: vertexfit.fit(t, c, mask=m, n_iter=n_iter)
    import jax

    f = jax.jit(lambda t, c, m: vertexfit.fit(t, c, mask=m, n_iter=n_iter),
                compiler_options=vertexfit.jax_compiler_options())

    def run(t, c, m):
        out = f(t, c, m)
        jax.block_until_ready(out)
        return out

    return run


def bench_backend(name, n_jets, n_tracks, n_iter, dtype, seed=1):
    """One row: jets/s of ``vertexfit.fit`` on backend ``name`` (warm, best of repeats).

    ``"numpy-1thread"`` is NumPy with ``VERTEXFIT_NUM_THREADS=1`` (the default uses every
    CPU of the process for batches of more than ~2000 jets).
    """
    if name == "numpy-1thread":
        old = os.environ.get("VERTEXFIT_NUM_THREADS")
        os.environ["VERTEXFIT_NUM_THREADS"] = "1"
        try:
            row = bench_backend("numpy", n_jets, n_tracks, n_iter, dtype, seed)
        finally:
            if old is None:
                del os.environ["VERTEXFIT_NUM_THREADS"]
            else:
                os.environ["VERTEXFIT_NUM_THREADS"] = old
        return {**row, "backend": name}
    toy = vertexfit.toy.generate(n_jets, n_tracks, seed=seed, variable=True, min_tracks=2)
    args = [to_backend(name, a, dtype) for a in (toy.tracks, toy.cov, toy.mask)]
    fn = _fitter(name, n_iter)
    t0 = time.perf_counter()
    out = fn(*args)
    first = time.perf_counter() - t0
    conv = float(np.mean(np.asarray(out.converged)))
    best = best_time(lambda: fn(*args), repeats=5 if n_jets <= 10_000 else 3)
    return {
        "backend": name,
        "dtype": np.dtype(dtype).name,
        "n_jets": n_jets,
        "n_tracks": n_tracks,
        "n_iter": n_iter,
        "seconds": best,
        "jets_per_s": n_jets / best,
        "first_call_s": first,
        "converged_fraction": conv,
    }


def bench_jax_compile(n_jets=2000, n_tracks=15, n_iter=10, seed=1, repeats=5):
    """Rows: seconds to trace, lower and compile ``jax.jit(fit)`` and ``jax.jit(jax.grad(fit))``
    (float64, weights as the differentiated input, a loss of the vertex, its covariance and
    the chi2), with XLA's default options and with :func:`vertexfit.jax_compiler_options`,
    and the warm run time of each compiled program (timed interleaved, best of
    ``repeats``). ``compile_cpu_s`` is the process CPU time of the compilation (less
    sensitive to other load on the machine than the wall time ``compile_s``).
    """
    import jax
    import jax.numpy as jnp

    toy = vertexfit.toy.generate(n_jets, n_tracks, seed=seed, variable=True, min_tracks=2)
    t, c = (to_backend("jax", a) for a in (toy.tracks, toy.cov))
    m = jnp.asarray(toy.mask)
    rng = np.random.default_rng(seed)
    w = jnp.asarray(np.where(toy.mask, 0.5 + 0.5 * rng.random(toy.mask.shape), 0.0))

    def fit(t, c, w, m):
        return vertexfit.fit(t, c, w, mask=m, n_iter=n_iter)

    def loss(w, t, c, m):
        r = vertexfit.fit(t, c, w, mask=m, n_iter=n_iter)
        return jnp.sum(r.vertex) + jnp.sum(r.vertex_cov) + jnp.sum(r.chi2)

    options = {"default": {}, "recommended": vertexfit.jax_compiler_options()}
    rows = []
    for what, fn, args in (("jit(fit)", fit, (t, c, w, m)),
                           ("jit(grad(fit))", jax.grad(loss), (w, t, c, m))):
        compiled = {}
        for name, opts in options.items():
            # a new function object per variant: jax.jit's caches must not serve the other
            f = jax.jit(lambda *a, fn=fn: fn(*a), compiler_options=opts or None)
            t0 = time.perf_counter()
            lowered = f.lower(*args)
            t1, c1 = time.perf_counter(), time.process_time()
            compiled[name] = lowered.compile()
            t2, c2 = time.perf_counter(), time.process_time()
            jax.block_until_ready(compiled[name](*args))
            rows.append({"table": f"JAX compile time ({n_jets} jets x {n_tracks} tracks, "
                                  f"float64, n_iter={n_iter})",
                         "function": what, "options": name, "n_tracks": n_tracks,
                         "trace_lower_s": t1 - t0, "compile_s": t2 - t1,
                         "compile_cpu_s": c2 - c1})
        times = {name: [] for name in compiled}
        for _ in range(repeats):
            for name, exe in compiled.items():
                t0 = time.perf_counter()
                jax.block_until_ready(exe(*args))
                times[name].append(time.perf_counter() - t0)
        for row in rows[-len(compiled):]:
            row["run_s"] = min(times[row["options"]])
    return rows


def bench_reference(n_jets, n_tracks, seed=1):
    """One row: jets/s of the SciPy per-vertex reference fit."""
    toy = vertexfit.toy.generate(n_jets, n_tracks, seed=seed, variable=True, min_tracks=2)
    t0 = time.perf_counter()
    out = vertexfit.reference.fit(toy.tracks, toy.cov, mask=toy.mask)
    dt = time.perf_counter() - t0
    return {
        "backend": "scipy-reference",
        "dtype": "float64",
        "n_jets": n_jets,
        "n_tracks": n_tracks,
        "n_iter": None,
        "seconds": dt,
        "jets_per_s": n_jets / dt,
        "first_call_s": dt,
        "converged_fraction": float(np.mean(out.converged)),
    }


def bench_torch_compile(jet_counts, n_tracks, n_iter, dtype, seed=1, repeats=5):
    """Rows of eager vs compiled (``fit(..., compile=True)``) PyTorch, forward and
    forward+backward, one intra-op thread, timed interleaved (eager, compiled, eager, ...)
    so that both see the same machine load; best of ``repeats`` each.

    The first compiled call compiles (or loads Inductor's disk cache): its time is the
    ``first_call_s`` of the first compiled row.
    """
    import torch

    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for n in jet_counts:
            toy = vertexfit.toy.generate(n, n_tracks, seed=seed, variable=True, min_tracks=2)
            t, c, m = (to_backend("torch", a, dtype) for a in (toy.tracks, toy.cov, toy.mask))
            w = torch.rand(t.shape[:2], dtype=t.dtype, generator=torch.Generator().manual_seed(0))
            w = 0.1 + 0.9 * w

            def fwd(compile, t=t, c=c, w=w, m=m):
                return vertexfit.fit(t, c, w, mask=m, n_iter=n_iter, compile=compile)

            def fwd_bwd(compile, t=t, c=c, w=w, m=m):
                ws = w.clone().requires_grad_(True)
                res = vertexfit.fit(t, c, ws, mask=m, n_iter=n_iter, compile=compile)
                (res.vertex.sum() + res.vertex_cov.sum()).backward()
                return res

            for mode, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                first = {}
                for compile in (False, True):
                    t0 = time.perf_counter()
                    out = fn(compile)
                    first[compile] = time.perf_counter() - t0
                times = {False: [], True: []}
                reps = repeats if n <= 1000 else max(2, repeats // 2)
                for _ in range(reps):
                    for compile in (False, True):
                        t0 = time.perf_counter()
                        fn(compile)
                        times[compile].append(time.perf_counter() - t0)
                for compile in (False, True):
                    best = min(times[compile])
                    rows.append({
                        "backend": "torch-compiled" if compile else "torch",
                        "mode": mode, "dtype": np.dtype(dtype).name, "n_jets": n,
                        "n_tracks": n_tracks, "n_iter": n_iter, "seconds": best,
                        "jets_per_s": n / best, "first_call_s": first[compile],
                        "converged_fraction": float(out.converged.double().mean()),
                        "threads": 1})
    finally:
        torch.set_num_threads(old_threads)
    return rows


def run(quick: bool = False, *, jets=None, n_tracks=15, n_iter=10, backends=None,
        dtype="float64", reference_jets=None, compile_jets=None) -> dict:
    """Measure; returns ``{"title", "rows", "notes", "ratios"}`` (see the module docstring)."""
    jets = jets or ([1000, 10_000] if quick else [1000, 10_000, 100_000])
    backends = backends or ["numpy", "numpy-1thread", "jax", "torch"]
    reference_jets = reference_jets or (30 if quick else 200)
    rows, notes = [], []
    for name in backends:
        try:
            _namespace(name)
        except ImportError:
            notes.append(f"{name}: not installed, skipped")
            continue
        for n in jets:
            rows.append(bench_backend(name, n, n_tracks, n_iter, dtype))
    jax_compile = []
    if "jax" in backends and _has_jax():
        jax_compile = bench_jax_compile(n_tracks=n_tracks, n_iter=n_iter,
                                        repeats=3 if quick else 5)
    compiled = []
    if "torch" in backends and _has_torch():
        compile_jets = compile_jets or ([100, 1000] if quick else [100, 1000, 10_000])
        compiled = bench_torch_compile(compile_jets, n_tracks, n_iter, dtype)
    ref = bench_reference(reference_jets, n_tracks)
    rows.append(ref)
    best = {}
    for r in rows:
        best[r["backend"]] = max(best.get(r["backend"], 0.0), r["jets_per_s"])
    ratios = {f"{b}/scipy-reference": v / ref["jets_per_s"] for b, v in best.items()
              if b != "scipy-reference"}
    if "numpy" in best:
        ratios.update({f"{b}/numpy": v / best["numpy"] for b, v in best.items()
                       if b not in ("numpy", "numpy-1thread", "scipy-reference")})
    by = {(r["backend"], r["mode"], r["n_jets"]): r["jets_per_s"] for r in compiled}
    for (b, mode, n), v in by.items():
        if b == "torch-compiled":
            ratios[f"torch-compiled/torch {mode} @{n} (1 thread)"] = v / by[("torch", mode, n)]
    by_jc = {(r["function"], r["options"]): r for r in jax_compile}
    for what in ("jit(fit)", "jit(grad(fit))"):
        if (what, "default") in by_jc and (what, "recommended") in by_jc:
            d, r = by_jc[(what, "default")], by_jc[(what, "recommended")]
            ratios[f"jax compile time {what} recommended/default options"] = (
                r["compile_s"] / d["compile_s"])
            ratios[f"jax run time {what} recommended/default options"] = r["run_s"] / d["run_s"]
    notes.append("best-of-repeats wall time of a warm call; JAX compile time is in "
                 "first_call_s; ratios use each backend's best jets/s in this run")
    if jax_compile:
        notes.append("JAX rows use jax.jit(..., compiler_options=vertexfit.jax_compiler_options()) "
                     "(XLA:CPU's classic emitter); the JAX compile table compares it with XLA's "
                     "default options in one process, run times timed interleaved")
    if compiled:
        notes.append("torch vs torch-compiled rows: one intra-op thread, eager and compiled "
                     "calls interleaved; the first compiled call compiles or loads "
                     "Inductor's disk cache (first_call_s)")
    return {"title": TITLE, "rows": rows + compiled + jax_compile, "notes": notes,
            "ratios": ratios}


def _has_jax():
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def _has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def format_table(result) -> str:
    lines = [(f"{'backend':16s} {'mode':8s} {'dtype':8s} {'jets':>7s} {'jets/s':>10s} "
             f"{'first call s':>12s} {'converged':>9s}")]
    for r in result["rows"]:
        if "function" in r:  # the JAX compile rows: below
            continue
        lines.append(f"{r['backend']:16s} {r.get('mode', 'fwd'):8s} {r['dtype']:8s} "
                     f"{r['n_jets']:7d} "
                     f"{r['jets_per_s']:10.0f} {r['first_call_s']:12.2f} "
                     f"{r['converged_fraction']:9.3f}")
    for r in result["rows"]:
        if "function" in r:
            lines.append(f"JAX {r['function']:15s} {r['options']:12s} trace+lower "
                         f"{r['trace_lower_s']:5.2f} s  compile {r['compile_s']:6.2f} s "
                         f"({r['compile_cpu_s']:.2f} s CPU)  run {r['run_s']:.3f} s")
    for k, v in result["ratios"].items():
        lines.append(f"ratio {k}: {v:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=TITLE)
    p.add_argument("out", nargs="?", help="JSON output path")
    p.add_argument("--quick", action="store_true", help="1e3 and 1e4 jets only")
    p.add_argument("--jets", type=int, nargs="+")
    p.add_argument("--tracks", type=int, default=15)
    p.add_argument("--n-iter", type=int, default=10)
    p.add_argument("--backends", nargs="+",
                   help="numpy, numpy-1thread, jax, torch (default: all)")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--compile-jets", type=int, nargs="+",
                   help="batch sizes of the eager vs compiled PyTorch rows (default 100 1000 "
                        "10000; --quick: 100 1000)")
    args = p.parse_args(argv)
    res = run(args.quick, jets=args.jets, n_tracks=args.tracks, n_iter=args.n_iter,
              backends=args.backends, dtype=args.dtype, compile_jets=args.compile_jets)
    return emit(res, format_table(res), args.out)


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by the ``bench_<topic>.py`` scripts (not a topic itself: no ``bench_`` prefix)."""

from __future__ import annotations

import json
import time

import numpy as np


def to_backend(name: str, a, dtype=np.float64):
    """NumPy array -> ``"numpy"``, ``"jax"`` or ``"torch"`` array; floats cast to ``dtype``.

    JAX gets ``jax_enable_x64`` switched on: in the benchmark process only, never by the
    library.
    """
    a = np.ascontiguousarray(a)
    if a.dtype != np.bool_:
        a = a.astype(dtype)
    if name == "torch":
        import torch

        return torch.from_numpy(a)
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        return jax.numpy.asarray(a)
    return a


def best_time(fn, repeats: int = 3, budget_s: float = 20.0) -> float:
    """Smallest wall time [s] of ``repeats`` calls of ``fn`` (fewer once ``budget_s`` is spent)."""
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return min(times)


def emit(result: dict, table: str, out=None) -> int:
    """Print ``table``; write ``result`` as JSON to ``out`` if given. Returns exit code 0."""
    print(table)
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
    return 0

"""Large batches in chunks of jets, at two levels, both through :func:`_speed.map_jets`.

* :func:`fit_in_chunks`: the whole fit, validation included, on chunks of the batch where
  that pays: NumPy arrays in :func:`_speed.num_threads` threads (NumPy releases the GIL
  inside its loops, so chunks run side by side), and JAX under tracing (``jit``, ``vmap``,
  ``grad``), where ``lax.map`` keeps every chunk's temporaries in cache, the derivative
  rule's included. Eager JAX validates the whole batch first, to raise.
* :func:`core_in_chunks`: the fit core on cache-sized chunks of an already validated batch,
  on every backend.

Every jet is fitted on its own, so no chunking changes a number.
"""

from __future__ import annotations

import math

import numpy as np

from . import _xp
from ._speed import CHUNK_ELEMENTS, chunk_jets, map_jets, num_threads
from ._validate import SAFE_TRACK

__all__ = ["core_in_chunks", "fit_in_chunks"]

_EYE3 = np.eye(3).tolist()
_EYE5 = np.eye(5).tolist()


def core_in_chunks(core, xp, tracks, cov, weights, seed, cpos, ccov, *, n_iter, model):
    """``core`` (the fit core's signature) on chunks of ``CHUNK_ELEMENTS`` track slots;
    on JAX the last chunk is padded with harmless jets of weight 0."""
    B, T = tracks.shape[0], tracks.shape[1]
    name = _xp.backend_name(xp)

    def run(*args):
        return core(xp, *args, n_iter=n_iter, model=model)

    args = (tracks, cov, weights, seed, cpos, ccov)
    if name != "jax" and _xp.is_lazy(tracks):  # inside torch.func.vmap: one piece
        return run(*args)
    step = chunk_jets(name, T)
    if B <= step:
        return run(*args)
    return map_jets(xp, run, args, (SAFE_TRACK, _EYE5, 0.0, 0.0, 0.0, _EYE3), step)


def fit_in_chunks(fit, tracks, cov, weights, mask, seed, constraint, ref):
    """``fit(tracks, cov, weights, mask, seed, constraint, ref)`` (a :class:`VertexFit`) on
    chunks of jets, or ``None`` where that does not apply (other backends, batches of one
    chunk, or shapes that ``fit`` must reject with its own message).

    If a NumPy chunk raises, ``fit`` runs on the whole batch to raise the usual message:
    the first problem, at its batch index in the whole batch.
    """
    name = _xp.backend_name(_xp.namespace(tracks))
    if name == "numpy":
        threads = num_threads()
        if threads < 2 or not all(
                a is None or type(a) is np.ndarray
                for a in (tracks, cov, weights, mask, seed, ref,
                          *(constraint if isinstance(constraint, tuple) else ()))):
            return None
    elif name == "jax" and _xp.is_lazy(tracks):
        threads = 0
    else:
        return None
    plan = _split(tracks, cov, weights, mask, seed, constraint, ref, CHUNK_ELEMENTS[name],
                  threads)
    if plan is None:
        return None
    batch, step, args = plan

    def run(tr, cv, w, m, sd, rf, cpos, ccov):
        return fit(tr, cv, w, m, sd, None if cpos is None else (cpos, ccov), rf)

    xp = _xp.namespace(tracks)
    fills = (SAFE_TRACK, _EYE5, 1.0, True, 0.0, 0.0, 0.0, _EYE3)
    try:
        out = map_jets(xp, run, args, fills, step, threads=threads)
    except ValueError:
        if name == "jax":
            raise
        fit(tracks, cov, weights, mask, seed, constraint, ref)
        raise  # the whole batch raised nothing: not an input problem
    return out._make([xp.reshape(o, batch + tuple(o.shape[1:])) for o in out])


def _split(tracks, cov, weights, mask, seed, constraint, ref, elements, threads):
    """``(batch, step, args)`` for :func:`fit_in_chunks`: the inputs with the batch
    flattened to B jets (seed, ref and constraint broadcast per jet) and the chunk length
    (chunks of ~``elements`` track slots; with ``threads``, a multiple of ``threads`` equal
    chunks). ``None`` if there would be a single chunk or the shapes do not fit."""
    xp = _xp.namespace(tracks)
    if tracks.ndim < 2 or tracks.shape[-1] != 5:
        return None
    tshape = tuple(tracks.shape[:-1])
    batch, T = tshape[:-1], tshape[-1]
    B = math.prod(batch)
    step = max(1, elements // max(T, 1))
    if B < 2 * step or tuple(cov.shape) != tshape + (5, 5) or any(
            a is not None and tuple(a.shape) != tshape for a in (weights, mask)):
        return None
    try:
        per_jet = [None if a is None else
                   xp.reshape(xp.broadcast_to(a, batch + tail), (B,) + tail)
                   for a, tail in ((seed, (3,)), (ref, (3,)))]
        con = [None, None]
        if constraint is not None:
            cpos, ccov = constraint
            con = [xp.reshape(xp.broadcast_to(cpos, batch + (3,)), (B, 3)),
                   xp.reshape(xp.broadcast_to(ccov, batch + (3, 3)), (B, 3, 3))]
    except (TypeError, ValueError, RuntimeError, AttributeError):
        return None
    args = [xp.reshape(tracks, (B, T, 5)), xp.reshape(cov, (B, T, 5, 5)),
            None if weights is None else xp.reshape(weights, (B, T)),
            None if mask is None else xp.reshape(mask, (B, T)), *per_jet, *con]
    if threads:
        n = -(-B // step)
        n = -(-n // threads) * threads
        step = -(-B // n)
    return batch, step, args

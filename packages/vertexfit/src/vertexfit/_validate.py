"""Validation and sanitising of the fit's inputs (shared by the fit, chi2 and the rules).

Eager backends raise one ``ValueError`` naming the argument, the problem and the first
offending batch index. Where values cannot be read (``jax.jit``, ``torch.func.vmap``) the
offending jets are flagged instead and computed on harmless placeholder values, so that
garbage reaches neither values nor gradients.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _xp
from ._model import get_model
from ._smallmat import ldl, sym_get

__all__ = ["SAFE_TRACK", "Prepared", "broadcast_batch", "flat", "prepare"]

# A slot that is masked out (or a jet whose input is invalid under jit) is replaced by this
# harmless track (d0, z0, phi, theta, rho) with unit covariance before any arithmetic.
SAFE_TRACK = (0.0, 0.0, 0.0, math.pi / 2, 0.0)


class Prepared(NamedTuple):
    """Validated, sanitised inputs with their batch shape (the vertex and prior local)."""

    tracks: object   # (..., T, 5), SAFE_TRACK where not ``mask``
    cov: object      # (..., T, 5, 5) symmetrised, identity where not ``mask``
    weights: object  # (..., T), 0 where not ``mask``
    mask: object     # (..., T) bool: the slot is used (input mask and a valid jet)
    seed: object     # (..., 3) starting vertex relative to ``ref``
    cpos: object     # (..., 3) prior position relative to ``ref``, or None
    ccov: object     # (..., 3, 3) symmetrised prior covariance, or None
    ref: object      # (..., 3) reference point
    bad: object      # (...) bool: the jet's input was invalid (only possible under tracing)
    batch: tuple     # the batch shape ``...``

    def flat(self, xp):
        """The fit core's arguments ``(tracks, cov, weights, seed, cpos, ccov)`` with the
        batch dimensions flattened to one jet axis."""
        T = self.tracks.shape[-2]
        return (flat(xp, self.tracks, self.batch, (T, 5)),
                flat(xp, self.cov, self.batch, (T, 5, 5)),
                flat(xp, self.weights, self.batch, (T,)),
                flat(xp, self.seed, self.batch, (3,)),
                flat(xp, self.cpos, self.batch, (3,)),
                flat(xp, self.ccov, self.batch, (3, 3)))


def flat(xp, a, batch, tail):
    """``a`` of shape ``batch + tail`` reshaped to ``(prod(batch),) + tail`` (None stays)."""
    if a is None:
        return None
    # -1, not the product of the batch sizes: a traced export (torch.onnx) keeps the jet axis
    # dynamic only if no size is turned into a Python constant
    return xp.reshape(a, ((-1,) if all(tail) else (math.prod(batch),)) + tail)


def prepare(tracks, cov, weights, mask, seed, constraint, ref, n_iter, model):
    """Validate (raising eagerly, flagging under tracing) and sanitise the fit's inputs.

    Returns ``(xp, Prepared)``.
    """
    get_model(model)
    if not (isinstance(n_iter, int) and n_iter >= 0):
        raise ValueError(f"n_iter must be a non-negative int, got {n_iter!r}")
    cpos = ccov = None
    if constraint is not None:
        try:
            cpos, ccov = constraint
        except (TypeError, ValueError):
            raise ValueError("constraint must be a (position (..., 3), covariance (..., 3, 3)) "
                             "pair") from None
    xp = _xp.namespace(tracks, cov, weights, seed, ref, cpos, ccov)
    if tracks.ndim < 2 or tracks.shape[-1] != 5:
        raise ValueError(f"tracks must have shape (..., T, 5), got {tuple(tracks.shape)}")
    tshape = tuple(tracks.shape[:-1])
    batch = tshape[:-1]
    if tuple(cov.shape) != tshape + (5, 5):
        raise ValueError(f"cov must have shape {tshape + (5, 5)} to match tracks "
                         f"{tuple(tracks.shape)}, got {tuple(cov.shape)}")
    dtype = _xp.float_dtype(xp, tracks, cov, weights)
    if not xp.isdtype(tracks.dtype, "real floating"):
        raise ValueError(f"tracks must be floating point, got {tracks.dtype}")
    tracks = xp.astype(tracks, dtype, copy=False)
    cov = xp.astype(cov, dtype, copy=False)
    dev = _xp.device(tracks)
    default_weights = weights is None
    if default_weights:
        weights = xp.ones(tshape, dtype=dtype, device=dev)
    elif tuple(weights.shape) != tshape:
        raise ValueError(f"weights must have shape {tshape}, got {tuple(weights.shape)}")
    weights = xp.astype(weights, dtype)
    if mask is None:
        mask = xp.ones(tshape, dtype=xp.bool, device=dev)
    elif tuple(mask.shape) != tshape:
        raise ValueError(f"mask must have shape {tshape}, got {tuple(mask.shape)}")
    elif mask.dtype != xp.bool:
        raise ValueError(f"mask must be boolean, got {mask.dtype}")
    zeros3 = xp.zeros(batch + (3,), dtype=dtype, device=dev)
    ref = zeros3 if ref is None else broadcast_batch(xp, ref, batch, "ref", dtype)
    seed = ref if seed is None else broadcast_batch(xp, seed, batch, "seed", dtype)
    if cpos is not None:
        cpos = broadcast_batch(xp, cpos, batch, "constraint position", dtype)
        if ccov.shape[-2:] != (3, 3):
            raise ValueError(f"constraint covariance must have shape (..., 3, 3), "
                             f"got {tuple(ccov.shape)}")
        ccov = xp.broadcast_to(xp.astype(ccov, dtype), batch + (3, 3))

    # value checks, per jet
    m = mask
    problems = []
    bad_t = ~xp.all(xp.isfinite(tracks), axis=-1) & m
    problems.append(("tracks", "NaN or inf in an unmasked track", xp.any(bad_t, axis=-1)))
    th = tracks[..., 3]
    bad_th = ~((th > 0) & (th < math.pi)) & m & ~bad_t
    problems.append(("tracks", "theta outside (0, pi)", xp.any(bad_th, axis=-1)))
    comps, bad_spd, fin_c = _spd_check(xp, cov, 5, m)
    bad_c = ~fin_c & m
    problems.append(("cov", "NaN or inf in an unmasked covariance", xp.any(bad_c, axis=-1)))
    problems.append(("cov", "not symmetric positive definite", xp.any(bad_spd, axis=-1)))
    if not default_weights:  # checking the default ones made XLA constant-fold for seconds
        bad_w = ~(xp.isfinite(weights) & (weights >= 0)) & m
        problems.append(("weights", "negative, NaN or inf weight", xp.any(bad_w, axis=-1)))
    for name, a in (("seed", seed), ("ref", ref), ("constraint position", cpos)):
        if a is not None:
            problems.append((name, "NaN or inf", ~xp.all(xp.isfinite(a), axis=-1)))
    if ccov is not None:
        _, bad_p, fin = _spd_check(xp, ccov, 3, xp.ones(batch, dtype=xp.bool, device=dev))
        problems.append(("constraint covariance", "NaN or inf", ~fin))
        problems.append(("constraint covariance", "not symmetric positive definite", bad_p))

    bad_jet = xp.zeros(batch, dtype=xp.bool, device=dev)
    for name, problem, flags in problems:
        if _xp.can_inspect(xp, xp.any(flags)):
            _fail(name, problem, flags)
        bad_jet = bad_jet | flags

    good = m & ~bad_jet[..., None]
    safe = xp.asarray(SAFE_TRACK, dtype=dtype, device=dev)
    tracks_s = xp.where(good[..., None], tracks, safe)
    g = xp.reshape(good, (-1,))
    cov_s = xp.reshape(xp.stack([
        xp.where(g, sym_get(comps, i, j), 1.0 if i == j else 0.0)
        for i in range(5) for j in range(5)], axis=-1), tshape + (5, 5))
    w_s = xp.where(good, weights, xp.zeros_like(weights))
    okb = ~bad_jet[..., None]
    seed_l = xp.where(okb, seed - ref, zeros3)
    if cpos is not None:
        cpos = xp.where(okb, cpos - ref, zeros3)
        ccov = xp.where(okb[..., None], (ccov + xp.matrix_transpose(ccov)) / 2,
                        xp.eye(3, dtype=dtype, device=dev))
    return xp, Prepared(tracks_s, cov_s, w_s, good, seed_l, cpos, ccov, ref, bad_jet, batch)


def broadcast_batch(xp, a, batch, name, dtype):
    """``a`` (``(..., 3)``) cast to ``dtype`` and broadcast to ``batch + (3,)``, or a clear
    error naming ``name``."""
    if a is None:
        return None
    if a.shape[-1:] != (3,):
        raise ValueError(f"{name} must have shape (..., 3), got {tuple(a.shape)}")
    try:
        return xp.broadcast_to(xp.astype(a, dtype), batch + (3,))
    except (ValueError, RuntimeError):
        raise ValueError(
            f"{name} of shape {tuple(a.shape)} does not broadcast to the batch {batch}"
        ) from None


def _fail(name, problem, flags):
    """Raise (eager) naming the argument, the problem and the first offending jet."""
    idx = np.argwhere(_xp.to_numpy(flags))
    where = f" (first at batch index {tuple(int(i) for i in idx[0])})" if idx.size else ""
    raise ValueError(f"{name}: {problem}{where}")


def _planes(xp, V, n):
    """``(n*n, N)`` contiguous component planes of the matrices ``V (..., n, n)``."""
    flat_v = xp.permute_dims(xp.reshape(V, (-1, n * n)), (1, 0))
    return xp.reshape(xp.reshape(flat_v, (-1,)), (n * n, -1))  # a copy in component order


def _spd_check(xp, V, n, use):
    """Symmetrised components and the not-SPD flag of the matrices ``V (..., n, n)``.

    Returns ``(comps, bad, finite)``: the upper components ``(V + V^T) / 2`` as flat
    ``(N,)`` planes (identity where a matrix is not finite or not ``use``), the flag
    ``(...)``: asymmetric (``|V_ij - V_ji| > max(1e-6, 100 eps) sqrt(|V_ii V_jj|)``) or not
    positive definite (an LDL pivot <= 0), and whether all entries are finite ``(...)``.
    """
    planes = _planes(xp, V, n)  # one contiguous pass, then per-component work
    shape = tuple(V.shape[:-2])
    finite = xp.reshape(xp.all(xp.isfinite(planes), axis=0), shape)
    use = xp.reshape(use & finite, (-1,))
    eps = max(1e-6, 100 * _xp.eps(xp, planes.dtype))
    planes = _xp.unstack(xp, planes, axis=0)
    with _xp.quiet(xp):  # unused slots may hold finite garbage (1e300): flags, not warnings
        d = [xp.sqrt(xp.abs(planes[n * k + k])) for k in range(n)]
        asym = xp.zeros_like(use)
        comps = {}
        for i in range(n):
            for j in range(i, n):
                if i == j:
                    comps[(i, i)] = xp.where(use, planes[n * i + i], 1.0)
                    continue
                a, b = planes[n * i + j], planes[n * j + i]
                asym = asym | (xp.abs(a - b) > eps * (d[i] * d[j]))
                comps[(i, j)] = xp.where(use, (a + b) / 2, 0.0)
        _, D = ldl(comps, n)
    notpd = D[0] <= 0
    for dk in D[1:]:
        notpd = notpd | ~(dk > 0)
    return comps, xp.reshape((asym | notpd) & use, shape), finite

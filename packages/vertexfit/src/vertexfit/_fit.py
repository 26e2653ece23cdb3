"""The batched, masked, weighted Billoir vertex fit (NIM A 241, 115; arXiv:2310.12804 App. A).

Notation (docs/fit.md): for track i with measured perigee ``q_i`` (5), covariance ``V_i``,
weight ``w_i`` and model ``h(u, p_i)`` (``u`` the vertex relative to ``ref``, ``p_i`` =
(phi, theta, rho) at the vertex), the fit minimises

    S(u, p) = sum_i w_i r_i^T G_i r_i + (u - u_c)^T P (u - u_c),   r_i = q_i - h(u, p_i),

with ``G_i = V_i^-1`` and an optional Gaussian vertex prior (``u_c``, ``P = Sigma_c^-1``).
Each Gauss-Newton iteration linearises h with its exact Jacobian ``J_i = [A_i | B_i]`` and
solves the normal equations by the Schur complement over the per-track 3x3 blocks:

    W_i = (B^T G B)^-1,  E_i = W_i B^T G A,
    M   = P + sum_i w_i (A^T G A - A^T G B E_i)           (3x3, the vertex information),
    du  = M^-1 [P (u_c - u) + sum_i w_i (A^T G r - E_i^T B^T G r)],
    dp_i = W_i B^T G r - E_i du.

Weights multiply only the track's contribution to the vertex equations, so a track of
weight 0 still gets its own best momentum at the vertex and nothing divides by a weight.
At the solution, ``vertex_cov = M^-1``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
from typing import NamedTuple

from . import _xp
from ._jet import Jet, Ops
from ._model import get_model
from ._smallmat import ldl, sum_terms, sym_from_array, sym_get, sym_inverse, sym_to_array

__all__ = ["VertexFit", "chi2", "fit"]

# A slot that is masked out (or a jet whose input is invalid under jit) is replaced by this
# harmless track (d0, z0, phi, theta, rho) with unit covariance before any arithmetic, so
# garbage there can reach neither values nor gradients.
_SAFE_TRACK = (0.0, 0.0, 0.0, math.pi / 2, 0.0)
# Track slots per chunk of jets (NumPy/PyTorch loops, NumPy threads, JAX lax.map): keeps
# the ~100 live per-track temporaries in cache.
_CHUNK_ELEMENTS = {"numpy": 49152, "torch": 65536, "other": 32768, "jax": 16384}


class VertexFit(NamedTuple):
    """Result of :func:`vertexfit.fit` (a NamedTuple, hence a JAX/PyTorch pytree).

    Attributes:
        vertex: ``(..., 3)`` fitted vertex [mm], global frame.
        vertex_cov: ``(..., 3, 3)`` its covariance [mm^2].
        momenta: ``(..., T, 3)`` track momenta at the vertex, ``(phi, theta, rho)``;
            zero in masked slots. ``phi`` in (-pi, pi].
        chi2: ``(...)`` the minimised objective: weighted track chi2 sum plus the prior term.
        track_chi2: ``(..., T)`` each track's unweighted chi2 ``r^T V^-1 r`` to the fitted
            vertex (zero in masked slots).
        ndf: ``(...)`` degrees of freedom ``2 sum(w) - 3`` (+3 with a vertex constraint):
            each track adds 5 measurements and 3 momentum parameters; with weights the sum
            of weights counts the tracks, as in adaptive vertex fitting.
        converged: ``(...)`` bool; False if the last step moved the vertex by more than
            1e-3 of its error, fewer than two tracks have positive weight (and no
            constraint), the vertex system was singular, or (under ``jax.jit`` / vmap) the
            jet's input was invalid.
    """

    vertex: object
    vertex_cov: object
    momenta: object
    chi2: object
    track_chi2: object
    ndf: object
    converged: object


# --------------------------------------------------------------------------------------------
# the pieces shared by the fit, chi2 and the implicit gradients
# --------------------------------------------------------------------------------------------
def evaluate(xp, model, u, p, order, trig=None):
    """Model at vertex ``u`` (3 arrays (B, 1)) and momenta ``p`` (3 arrays (B, T)).

    ``order`` 0 returns plain arrays, 1 jets with the Jacobian, 2 jets with the Hessian.
    Variables: 0..2 the vertex, 3..5 (phi, theta, rho). ``trig``: optional precomputed
    ``(sin, cos)`` of ``p[0]``.
    """
    M = Ops(xp, None if trig is None else {id(p[0]): trig})
    if order == 0:
        return get_model(model)(M, *u, *p)
    args = [Jet.variable(a, k, order) for k, a in enumerate((*u, *p))]
    return get_model(model)(M, *args)


def barrier_jets(xp, jets):
    """:func:`vertexfit._xp.barrier` for a list of :class:`Jet` (or plain array) outputs."""
    parts = _xp.barrier(xp, [(o.v, o.g, o.h) if isinstance(o, Jet) else (o, None, None)
                             for o in jets])
    return [Jet(v, g, h) if g is not None else v for v, g, h in parts]


def residuals(xp, q, h):
    """``q - h`` for 5 component arrays, the phi difference wrapped to (-pi, pi]."""
    vals = [hk.v if isinstance(hk, Jet) else hk for hk in h]
    r = [q[k] - vals[k] for k in range(5)]
    r[2] = Ops(xp).wrap_near(r[2])
    return r


def weighted_norm(G, r, n=5):
    """``(G r, r^T G r)`` for a symmetric component matrix ``G``."""
    Gr = [sum_terms([(G[(a, b)] if a <= b else G[(b, a)]) * r[b] for b in range(n)])
          for a in range(n)]
    return Gr, sum_terms([r[a] * Gr[a] for a in range(n)])


def normal_blocks(G, jets, Gr, nvar=6):
    """Gauss-Newton blocks of one track: ``F = J^T G J`` (sym dict) and ``b = J^T G r``.

    Exploits the sparsity of J (structural zeros are skipped, unit entries not multiplied).
    """
    J = [[o.d(c) for c in range(nvar)] for o in jets]
    GJ = {}
    for c in range(nvar):
        for r in range(5):
            terms = []
            for s in range(5):
                jsc = J[s][c]
                if jsc is None:
                    continue
                g = G[(r, s)] if r <= s else G[(s, r)]
                terms.append(g if isinstance(jsc, float) and jsc == 1.0 else g * jsc)
            GJ[(r, c)] = sum_terms(terms) if terms else None
    F = {}
    for a in range(nvar):
        for c in range(a, nvar):
            terms = [_mul1(J[r][a], GJ[(r, c)]) for r in range(5) if J[r][a] is not None]
            F[(a, c)] = sum_terms(terms)
    b = [sum_terms([_mul1(J[r][a], Gr[r]) for r in range(5) if J[r][a] is not None])
         for a in range(nvar)]
    return F, b, J


def _mul1(j, x):
    return x if isinstance(j, float) and j == 1.0 else j * x


def schur_terms(F, b):
    """Per-track Schur pieces: W = Fpp^-1, E = W Fpv, S = Fvv - Fvp E, rv = bv - E^T bp."""
    return _schur(F, b)[:5]


def _schur(F, b, xp=None):
    """:func:`schur_terms` plus (given ``xp``) the per-track flag ``ok``: the momentum block
    Fpp is numerically positive definite (every LDL pivot > 64 eps x its diagonal entry).

    A track that is not ok (in float32 an almost degenerate helix, or a padding slot whose
    free momenta drifted far) must not enter the vertex sums nor move its momenta: the
    caller masks it with ``ok`` (``xp.where``, so that inf/NaN cannot leak as 0 * NaN).
    """
    Fpp = {(i, j): F[(3 + i, 3 + j)] for i in range(3) for j in range(i, 3)}
    W, D = sym_inverse(Fpp, 3)
    ok = None
    if xp is not None:
        tol = 64.0 * _xp.eps(xp, D[0].dtype)
        for k in range(3):
            dk = D[k] > tol * Fpp[(k, k)]
            ok = dk if ok is None else ok & dk
    Wg = lambda i, k: W[(i, k)] if i <= k else W[(k, i)]
    E = [[sum_terms([Wg(i, k) * F[(a, 3 + k)] for k in range(3)]) for a in range(3)]
         for i in range(3)]
    S = {(a, c): F[(a, c)] - sum_terms([F[(a, 3 + i)] * E[i][c] for i in range(3)])
         for a in range(3) for c in range(a, 3)}
    bp = b[3:6]
    rv = [b[a] - sum_terms([E[i][a] * bp[i] for i in range(3)]) for a in range(3)]
    Wbp = [sum_terms([Wg(i, k) * bp[k] for k in range(3)]) for i in range(3)]
    return W, E, S, rv, Wbp, ok


def guarded_inverse3(xp, Mmat, singular):
    """Inverse of the 3x3 vertex information, regularised where it is (near) singular.

    Returns ``(inverse, bad)``; ``bad`` (B,) marks jets whose matrix was not safely
    positive definite (pivot <= 64 eps * largest diagonal) or flagged ``singular``.
    """
    diag = [Mmat[(k, k)] for k in range(3)]
    scale = xp.maximum(xp.maximum(xp.abs(diag[0]), xp.abs(diag[1])), xp.abs(diag[2]))
    _, D = ldl(Mmat, 3)
    tol = 64.0 * _xp.eps(xp, scale.dtype) * scale
    bad = singular | ~xp.isfinite(scale)
    for d in D:
        bad = bad | ~(d > tol)
    lam = xp.where(bad, scale + 1.0, xp.zeros_like(scale))
    lam = xp.where(xp.isfinite(lam), lam, xp.ones_like(lam))
    Mreg = dict(Mmat)
    for k in range(3):
        Mreg[(k, k)] = xp.where(bad, xp.where(xp.isfinite(diag[k]), diag[k], 0.0) + lam, diag[k])
    inv, _ = sym_inverse(Mreg, 3)
    return inv, bad


# --------------------------------------------------------------------------------------------
# the core: arrays already validated, sanitised and flattened to a jet axis B
# --------------------------------------------------------------------------------------------
def _linearised_step(xp, model, G, q, w, P, cpos, singular, u, p, trig=None):
    """One Gauss-Newton linearisation at (u, p): the vertex system and per-track pieces.

    Track-major layout: per-track arrays are (T, B), per-jet arrays (B,). Returns
    ``(Minv, bad, rhs, (E, Wbp), tchi2)``.
    """
    # stage boundaries (see _xp.barrier): the model's values and Jacobian, then G r and
    # the normal blocks, then the per-track Schur pieces are each computed once
    jets = barrier_jets(xp, evaluate(xp, model, [a[None, :] for a in u], p, 1, trig))
    r = residuals(xp, q, jets)
    Gr, tchi2 = weighted_norm(G, r)
    Gr, tchi2 = _xp.barrier(xp, (Gr, tchi2))
    F, b, _ = normal_blocks(G, jets, Gr)
    F, b = _xp.barrier(xp, (F, b))
    _, E, S, rv, Wbp, tok = _schur(F, b, xp)
    # a numerically singular track (see schur_terms) contributes exactly nothing, never NaN
    Mmat = {k: xp.sum(w * xp.where(tok, v, 0.0), axis=0) for k, v in S.items()}
    rhs = [xp.sum(w * xp.where(tok, rv[a], 0.0), axis=0) for a in range(3)]
    if P is not None:
        dc = [c - u[a] for a, c in enumerate(_xp.unstack(xp, cpos, axis=-1))]
        for k in Mmat:
            Mmat[k] = Mmat[k] + P[k]
        rhs = [rhs[a] + sum_terms([(P[(a, c)] if a <= c else P[(c, a)]) * dc[c]
                                   for c in range(3)]) for a in range(3)]
    Minv, bad = guarded_inverse3(xp, Mmat, singular)
    bad = bad | xp.any(~tok & (w > 0), axis=0)
    return Minv, bad, rhs, _xp.barrier(xp, (E, Wbp, tok)), tchi2


_UPPER5 = [(i, j) for i in range(5) for j in range(i, 5)]
_NPACK = 5 + len(_UPPER5) + 1


def _pack(xp, tracks, cov, weights, *, track_major):
    """``(21, T, B)`` (or ``(21, B, T)``): the 5 track parameters, the 15 upper components
    of ``cov`` and the weight of every slot, each component one contiguous plane."""
    V = sym_from_array(xp, cov, 5)
    comps = [*_xp.unstack(xp, tracks, axis=-1), *(V[ij] for ij in _UPPER5), weights]
    if track_major:
        comps = [xp.permute_dims(c, (1, 0)) for c in comps]
    return xp.stack(comps, axis=0)


def _core(xp, tracks, cov, weights, seed, cpos, ccov, *, n_iter, model):
    """Fit on sanitised inputs: tracks (B,T,5), cov (B,T,5,5) SPD, weights (B,T) (0 in
    masked slots), seed (B,3) local, cpos (B,3) local and ccov (B,3,3) or ``None``.

    Returns ``(u (B,3), vertex_cov (B,3,3), momenta (B,T,3), chi2 (B,), track_chi2 (B,T),
    ok (B,) bool)``; ``u`` is relative to the reference point.
    """
    X = _pack(xp, tracks, cov, weights, track_major=True)
    return _core_packed(xp, X, seed, cpos, ccov, n_iter=n_iter, model=model)


def _core_packed(xp, X, seed, cpos, ccov, *, n_iter, model):
    """:func:`_core` on the track-major packed components ``X`` (21, T, B) of :func:`_pack`.

    Track-major (T, B) internally: per-jet sums over tracks become fast row additions, and
    every component is read contiguously.
    """
    X = _xp.unstack(xp, X, axis=0)
    G, _ = sym_inverse({ij: X[5 + n] for n, ij in enumerate(_UPPER5)}, 5)
    q = list(X[:5])
    w = X[_NPACK - 1]
    P = None if ccov is None else sym_inverse(sym_from_array(xp, ccov, 3), 3)[0]
    singular = xp.sum(xp.astype(w > 0, xp.int32), axis=0) < 2
    if P is not None:
        singular = xp.zeros_like(singular)

    # (sin, cos) of the momenta's phi travel in the loop state: computed once per iteration
    # at the end of the previous one, so that XLA cannot re-fuse (duplicate) them into the
    # many consumers of the linearisation (it did: 27 sines per iteration)
    def step(_, state):
        u, p, _, trig = state
        Minv, _, rhs, (E, Wbp, tok), _ = _linearised_step(xp, model, G, q, w, P, cpos,
                                                           singular, u, p, trig)
        du = [sum_terms([(Minv[(a, c)] if a <= c else Minv[(c, a)]) * rhs[c]
                         for c in range(3)]) for a in range(3)]
        dp = [xp.where(tok, Wbp[i] - sum_terms([E[i][a] * du[a][None, :] for a in range(3)]),
                       0.0) for i in range(3)]
        p = [p[i] + dp[i] for i in range(3)]
        return ([u[a] + du[a] for a in range(3)], p, du, _xp.sincos(xp, p[0]))

    u0 = list(_xp.unstack(xp, seed, axis=-1))
    p0 = [q[2], q[3], q[4]]
    state = (u0, p0, [xp.zeros_like(u0[0]) for _ in range(3)], _xp.sincos(xp, p0[0]))
    u, p, du, trig = _xp.fori_loop(xp, n_iter, step, state)
    # final pass: covariance and chi2 at the solution, no step
    Minv, bad, _, _, track_chi2 = _linearised_step(xp, model, G, q, w, P, cpos, singular, u, p,
                                                   trig)

    total = xp.sum(w * track_chi2, axis=0)
    if P is not None:
        dc = [u[a] - c for a, c in enumerate(_xp.unstack(xp, cpos, axis=-1))]
        _, prior = weighted_norm(P, dc, 3)
        total = total + prior
    C = sym_to_array(xp, Minv, 3)
    sig = [xp.sqrt(Minv[(k, k)]) for k in range(3)]
    scale = xp.abs(u[0]) + xp.abs(u[1]) + xp.abs(u[2]) + 1.0
    tiny = 16.0 * _xp.eps(xp, scale.dtype) * scale
    moved = [xp.abs(du[k]) > 1e-3 * sig[k] + tiny for k in range(3)]
    ok = ~bad & ~(moved[0] | moved[1] | moved[2]) & xp.isfinite(total)
    pw = Ops(xp).wrap(p[0])
    momenta = xp.stack(xp.broadcast_arrays(pw, p[1], p[2]), axis=-1)
    return (xp.stack(u, axis=-1), C, xp.permute_dims(momenta, (1, 0, 2)), total,
            xp.permute_dims(track_chi2, (1, 0)), ok)


# --------------------------------------------------------------------------------------------
# validation, sanitising, chunking, dispatch
# --------------------------------------------------------------------------------------------
def _fail(name, problem, flags, xp):
    """Raise (eager) naming the argument, the problem and the first offending jet."""
    import numpy as np

    idx = np.argwhere(np.asarray(_to_host(xp, flags)))
    where = f" (first at batch index {tuple(int(i) for i in idx[0])})" if idx.size else ""
    raise ValueError(f"{name}: {problem}{where}")


def _to_host(xp, a):
    try:
        import numpy as np

        return np.from_dlpack(a) if not hasattr(a, "detach") else a.detach().cpu().numpy()
    except Exception:
        import numpy as np

        return np.asarray(a)


def _planes(xp, V, n):
    """``(n*n, N)`` contiguous component planes of the matrices ``V (..., n, n)``."""
    flat = xp.permute_dims(xp.reshape(V, (-1, n * n)), (1, 0))
    return xp.reshape(xp.reshape(flat, (-1,)), (n * n, -1))  # a copy in component order


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
    planes = _xp.unstack(xp, planes, axis=0)  # (JAX autodiff: transposes to one stack)
    comp = lambda i, j: planes[n * i + j]
    with _quiet(xp):  # unused slots may hold finite garbage (1e300): flags, not warnings
        d = [xp.sqrt(xp.abs(comp(k, k))) for k in range(n)]
        asym = xp.zeros_like(use)
        comps = {}
        for i in range(n):
            for j in range(i, n):
                if i == j:
                    comps[(i, i)] = xp.where(use, comp(i, i), 1.0)
                    continue
                a, b = comp(i, j), comp(j, i)
                asym = asym | (xp.abs(a - b) > eps * (d[i] * d[j]))
                comps[(i, j)] = xp.where(use, (a + b) / 2, 0.0)
        _, D = ldl(comps, n)
    notpd = D[0] <= 0
    for dk in D[1:]:
        notpd = notpd | ~(dk > 0)
    return comps, xp.reshape((asym | notpd) & use, shape), finite


def _broadcast_batch(xp, a, batch, name, dtype):
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


def _prepare(tracks, cov, weights, mask, seed, constraint, ref, n_iter, model):
    """Validate (raising eagerly, flagging under tracing) and sanitise the fit's inputs."""
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
    dev = _xp.array_api_compat.device(tracks)
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
    ref = zeros3 if ref is None else _broadcast_batch(xp, ref, batch, "ref", dtype)
    seed = ref if seed is None else _broadcast_batch(xp, seed, batch, "seed", dtype)
    if cpos is not None:
        cpos = _broadcast_batch(xp, cpos, batch, "constraint position", dtype)
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
    if not default_weights:  # (checking the default ones made XLA constant-fold for seconds)
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
        answer = _xp.can_inspect(xp, xp.any(flags))
        if answer:
            _fail(name, problem, flags, xp)
        bad_jet = bad_jet | flags

    good = m & ~bad_jet[..., None]
    safe = xp.asarray(_SAFE_TRACK, dtype=dtype, device=dev)
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
    return xp, dict(tracks=tracks_s, cov=cov_s, weights=w_s, mask=good, seed=seed_l,
                    cpos=cpos, ccov=ccov, ref=ref, bad=bad_jet, batch=batch)


def _flat(xp, a, batch, tail):
    if a is None:
        return None
    # -1, not the product of the batch sizes: a traced export (torch.onnx) keeps the jet
    # axis dynamic only if no size is turned into a Python constant
    return xp.reshape(a, ((-1,) if all(tail) else (math.prod(batch),)) + tail)


def _core_chunked(xp, tracks, cov, weights, seed, cpos, ccov, *, n_iter, model):
    """Run :func:`_core` over chunks of jets on eager backends (cache-sized temporaries)."""
    B, T = tracks.shape[0], tracks.shape[1]
    name = _xp.backend_name(xp)
    if name == "jax":
        return _core_mapped(xp, tracks, cov, weights, seed, cpos, ccov, n_iter=n_iter,
                            model=model)
    if _xp.is_lazy(tracks):
        return _core(xp, tracks, cov, weights, seed, cpos, ccov, n_iter=n_iter, model=model)
    step = max(1, _CHUNK_ELEMENTS.get(name, 32768) // max(T, 1))
    if B <= step:
        return _core(xp, tracks, cov, weights, seed, cpos, ccov, n_iter=n_iter, model=model)

    parts = []
    for s in range(0, B, step):
        sl = slice(s, min(B, s + step))
        parts.append(_core(xp, tracks[sl], cov[sl], weights[sl], seed[sl],
                           None if cpos is None else cpos[sl],
                           None if ccov is None else ccov[sl], n_iter=n_iter, model=model))
    return tuple(xp.concat([p[k] for p in parts], axis=0) for k in range(len(parts[0])))


def num_threads() -> int:
    """Threads the NumPy fit uses for batches of more than one chunk (~2000 jets).

    ``VERTEXFIT_NUM_THREADS`` if set (1 disables threading), else the CPUs this process
    may run on, at most 8. JAX and PyTorch use their own thread pools.
    """
    env = os.environ.get("VERTEXFIT_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"VERTEXFIT_NUM_THREADS must be a positive integer, got {env!r}") \
                from None
        if n < 1:
            raise ValueError(f"VERTEXFIT_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _core_mapped(xp, tracks, cov, weights, seed, cpos, ccov, *, n_iter, model):
    """:func:`_core` over cache-sized chunks of jets inside one JAX program (``lax.map``).

    XLA keeps every intermediate at a fusion boundary in memory; at 1e4-1e5 jets those
    per-track arrays overflow the caches and the fit ran 1.5-2x slower per jet than at 1e3.
    The inputs are packed once into component-major chunks ``(n, 21, T, chunk)``; the jet
    axis is padded with harmless jets (weight 0) to a multiple of the chunk.
    """
    import jax

    B, T = tracks.shape[0], tracks.shape[1]
    step = max(1, _CHUNK_ELEMENTS["jax"] // max(T, 1))
    if B <= step:
        return _core(xp, tracks, cov, weights, seed, cpos, ccov, n_iter=n_iter, model=model)
    n = -(-B // step)
    pad = n * step - B
    dtype = tracks.dtype
    X = xp.permute_dims(_pack(xp, tracks, cov, weights, track_major=False), (1, 0, 2))
    filler = [*_SAFE_TRACK, *[1.0 if i == j else 0.0 for i, j in _UPPER5], 0.0]
    X = xp.reshape(_pad(xp, X, pad, xp.asarray(filler, dtype=dtype)[:, None]),
                   (n, step, _NPACK, T))
    X = xp.permute_dims(X, (0, 2, 3, 1))  # (n, 21, T, step)

    def fill(a, value):
        return None if a is None else xp.reshape(_pad(xp, a, pad, value),
                                                 (n, step) + tuple(a.shape[1:]))

    args = (X, fill(seed, 0.0), fill(cpos, 0.0), fill(ccov, xp.eye(3, dtype=dtype)))
    out = jax.lax.map(lambda c: _core_packed(xp, *c, n_iter=n_iter, model=model), args)
    return tuple(xp.reshape(o, (n * step,) + tuple(o.shape[2:]))[:B] for o in out)


def fit(tracks, cov, weights=None, *, mask=None, seed=None, n_iter=10, model="helix",
        constraint=None, ref=None):
    """Fit a common vertex to each jet's tracks (batched, masked, weighted, differentiable).

    Args:
        tracks: ``(..., T, 5)`` perigee parameters ``(d0, z0, phi, theta, rho)`` w.r.t.
            ``ref`` [mm, mm, rad, rad, 1/mm]; ``...`` are batch dimensions (jets), ``T`` the
            padded track axis.
        cov: ``(..., T, 5, 5)`` their covariance (full; see
            :func:`vertexfit.covariance_from_sigmas`). Symmetrised before use.
        weights: ``(..., T)`` non-negative track weights multiplying each track's inverse
            covariance (default 1). The vertex is invariant under a common scaling.
        mask: ``(..., T)`` bool, False for padding (default: all True). Masked slots may
            hold anything (NaN included); they contribute nothing and get zero gradient.
        seed: ``(..., 3)`` starting vertex [mm] (default: the reference point ``ref``, i.e.
            the primary vertex in the paper's setup). Momenta start at the measured
            ``(phi, theta, rho)``. The result does not depend on the seed once converged.
        n_iter: number of Gauss-Newton iterations (fixed, no early exit: jit-friendly; the
            fit converges in 2-4 for vertices within tens of mm of the seed).
        model: ``"helix"`` (exact, default) or ``"billoir"`` (first order, paper App. A).
        constraint: optional ``(position (..., 3), covariance (..., 3, 3))`` Gaussian prior
            on the vertex (beam spot or primary vertex).
        ref: ``(..., 3)`` reference point of ``tracks`` [mm] (default: the origin).

    Returns:
        :class:`VertexFit` with arrays of the input namespace, dtype and device.

    On NumPy, batches of at least ~6,500 jets (of 15 tracks) run in chunks in
    ``VERTEXFIT_NUM_THREADS`` threads (default: the CPUs available, at most 8); the result
    does not depend on the thread count.

    Raises:
        ValueError: on eager backends (NumPy, PyTorch, JAX outside ``jit``) for wrong shapes,
            NaN/inf in unmasked inputs, a covariance that is not symmetric positive definite,
            theta outside (0, pi) or negative weights; the message names the argument, the
            problem and the first offending batch index. Under ``jax.jit`` or
            ``torch.func.vmap`` values cannot be checked: the offending jets are computed on
            harmless placeholder values and flagged ``converged=False`` (never NaN).
    """
    args = (tracks, cov, weights, mask, seed, constraint, ref, n_iter, model)
    return _fit_batched(*args) or _fit(*args)


def _fit(tracks, cov, weights, mask, seed, constraint, ref, n_iter, model):
    xp, a = _prepare(tracks, cov, weights, mask, seed, constraint, ref, n_iter, model)
    with _quiet(xp):  # padding and degenerate jets are handled by masks, not by warnings
        out = _dispatch(xp)(xp, *_core_args(xp, a), n_iter=n_iter, model=model)
    return _finish(xp, a, out)


def _fit_batched(tracks, cov, weights, mask, seed, constraint, ref, n_iter, model):
    """The whole fit (validation included) on chunks of jets, or ``None`` where that does
    not apply (other backends, small batches, or inputs whose shapes the plain path must
    reject with its own message).

    * NumPy: equal chunks in :func:`num_threads` threads. NumPy releases the GIL inside its
      loops, so chunks run side by side. If any chunk raises, the plain path re-runs on the
      whole batch to raise the usual message (the first problem, at its batch index in the
      whole batch).
    * JAX under tracing (``jit``, ``vmap``, ``grad``): ``lax.map`` over cache-sized chunks,
      the last one padded with harmless jets; the validation flags per chunk as it would on
      the whole batch. (Eager JAX validates the whole batch first, to raise.)
    """
    name = _xp.backend_name(_xp.namespace(tracks))
    if name == "numpy":
        import numpy as np

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
    plan = _split(tracks, cov, weights, mask, seed, constraint, ref,
                  _CHUNK_ELEMENTS[name], threads)
    if plan is None:
        return None
    batch, B, step, flat = plan

    def run(chunk):
        tr, cv, w, m, sd, rf, cpos, ccov = chunk
        return _fit(tr, cv, w, m, sd, None if cpos is None else (cpos, ccov), rf,
                    n_iter, model)

    if name == "jax":
        import jax

        xp = _xp.namespace(tracks)
        n = -(-B // step)
        fill = [_SAFE_TRACK, xp.eye(5, dtype=cov.dtype), 1.0, True, 0.0, 0.0, 0.0,
                xp.eye(3, dtype=cov.dtype)]
        chunks = [None if a is None else xp.reshape(_pad(xp, a, n * step - B, f),
                                                    (n, step) + tuple(a.shape[1:]))
                  for a, f in zip(flat, fill)]
        out = jax.lax.map(run, chunks)
        return VertexFit(*[xp.reshape(xp.reshape(o, (n * step,) + tuple(o.shape[2:]))[:B],
                                      batch + tuple(o.shape[2:])) for o in out])

    import numpy as np

    def part(s):
        sl = slice(s, min(B, s + step))
        return [None if a is None else a[sl] for a in flat]

    try:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(lambda s: run(part(s)), range(0, B, step)))
    except ValueError:
        _fit(tracks, cov, weights, mask, seed, constraint, ref, n_iter, model)
        raise  # the plain path found nothing: not an input problem
    return VertexFit(*[np.concatenate([p[k] for p in parts], axis=0).reshape(
        batch + parts[0][k].shape[1:]) for k in range(len(VertexFit._fields))])


def _split(tracks, cov, weights, mask, seed, constraint, ref, elements, threads):
    """``(batch, B, step, flat)`` for :func:`_fit_batched`: the inputs with the batch
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
    flat = [xp.reshape(tracks, (B, T, 5)), xp.reshape(cov, (B, T, 5, 5)),
            None if weights is None else xp.reshape(weights, (B, T)),
            None if mask is None else xp.reshape(mask, (B, T)), *per_jet, *con]
    if threads:
        n = -(-B // step)
        n = -(-n // threads) * threads
        step = -(-B // n)
    return batch, B, step, flat


def _pad(xp, a, pad, value):
    """``a`` with ``pad`` more entries along axis 0, each ``value`` (broadcast)."""
    if pad == 0:
        return a
    v = xp.broadcast_to(xp.asarray(value, dtype=a.dtype), (pad,) + tuple(a.shape[1:]))
    return xp.concat([a, v], axis=0)


def _core_args(xp, a):
    """The core's flattened arguments ``(tracks, cov, weights, seed, cpos, ccov)`` from the
    dict of :func:`_prepare` (batch dimensions flattened to one jet axis)."""
    batch = a["batch"]
    T = a["tracks"].shape[-2]
    return (
        _flat(xp, a["tracks"], batch, (T, 5)),
        _flat(xp, a["cov"], batch, (T, 5, 5)),
        _flat(xp, a["weights"], batch, (T,)),
        _flat(xp, a["seed"], batch, (3,)),
        _flat(xp, a["cpos"], batch, (3,)),
        _flat(xp, a["ccov"], batch, (3, 3)),
    )


def _finish(xp, a, out):
    """:class:`VertexFit` from the core's output: batch shape restored, global frame,
    padding zeroed, ndf (docs/fit.md: ``2 sum(w) - 3``, +3 with a constraint)."""
    u, C, mom, total, tchi2, ok = out
    batch = a["batch"]
    T = a["tracks"].shape[-2]
    good = a["mask"]
    vertex = xp.reshape(u, batch + (3,)) + a["ref"]
    momenta = xp.where(good[..., None], xp.reshape(mom, batch + (T, 3)), 0.0)
    track_chi2 = xp.where(good, xp.reshape(tchi2, batch + (T,)), 0.0)
    ndf = 2.0 * xp.sum(a["weights"], axis=-1) - 3.0
    if a["ccov"] is not None:
        ndf = ndf + 3.0
    converged = xp.reshape(ok, batch) & ~a["bad"]
    return VertexFit(vertex, xp.reshape(C, batch + (3, 3)), momenta,
                     xp.reshape(total, batch), track_chi2, ndf, converged)


def _quiet(xp):
    """NumPy floating-point warnings off (intermediate inf/NaN in masked-out lanes)."""
    if _xp.backend_name(xp) not in ("jax", "torch"):  # NumPy, and NumPy-based (strict)
        import numpy as np

        return np.errstate(divide="ignore", invalid="ignore", over="ignore")
    return contextlib.nullcontext()


def _dispatch(xp):
    """The differentiable core for autodiff backends, the plain chunked core otherwise."""
    name = _xp.backend_name(xp)
    if name == "jax":
        try:
            from ._jax import fit_core
        except ImportError:  # gradients module not available
            return _core_chunked
        return fit_core
    if name == "torch":
        import torch

        if torch.jit.is_tracing():
            # tracing for export (torch.onnx): no gradients needed, and the TorchScript
            # tracer wires the outputs of the autograd.Function to the wrong values
            return _core
        try:
            from ._torch import fit_core
        except ImportError:
            return _core_chunked
        return fit_core
    return _core_chunked


def chi2(tracks, cov, vertex, momenta, weights=None, *, mask=None, model="helix", ref=None):
    """The fit objective at a given vertex and momenta: ``sum_i w_i r_i^T V_i^-1 r_i``.

    Args:
        tracks: ``(..., T, 5)`` measured perigee parameters w.r.t. ``ref``.
        cov: ``(..., T, 5, 5)`` their covariance.
        vertex: ``(..., 3)`` vertex [mm] (global frame).
        momenta: ``(..., T, 3)`` ``(phi, theta, rho)`` of each track at the vertex.
        weights: ``(..., T)`` (default 1). mask: ``(..., T)`` bool (default all True).
        model: ``"helix"`` or ``"billoir"``. ref: ``(..., 3)`` (default origin).

    Returns:
        ``(...)`` chi2. Plain array code: differentiable by JAX/PyTorch autodiff.
    """
    xp, a = _prepare(tracks, cov, weights, mask, None, None, ref, 0, model)
    if momenta.shape[-1:] != (3,) or tuple(momenta.shape[:-1]) != tuple(tracks.shape[:-1]):
        raise ValueError(f"momenta must have shape {tuple(tracks.shape[:-1]) + (3,)}, "
                         f"got {tuple(momenta.shape)}")
    v = _broadcast_batch(xp, vertex, a["batch"], "vertex", a["tracks"].dtype) - a["ref"]
    t = a["tracks"]
    G, _ = sym_inverse(sym_from_array(xp, a["cov"], 5), 5)
    safe_p = xp.asarray(_SAFE_TRACK[2:], dtype=t.dtype, device=_xp.array_api_compat.device(t))
    mom = xp.where(a["mask"][..., None], xp.astype(momenta, t.dtype), safe_p)
    h = evaluate(xp, model, [c[..., None] for c in _xp.unstack(xp, v, axis=-1)],
                 _xp.unstack(xp, mom, axis=-1), 0)
    r = residuals(xp, _xp.unstack(xp, t, axis=-1), h)
    _, tchi2 = weighted_norm(G, r)
    return xp.sum(a["weights"] * tchi2, axis=-1)

"""The classic, non-differentiable vertex fit: SciPy minimisation of the exact chi2.

One vertex at a time, in a Python loop, in float64 NumPy: the test oracle and the benchmark
baseline for :func:`vertexfit.fit`. It shares no fitting code with the batched fit: it only
calls the public objective :func:`vertexfit.chi2` (the one place where the residual and the
chi2 are written) and minimises

    S(v, p) = sum_i chi2(track i; v, p_i, w_i) + (v - v_c)^T Sigma_c^-1 (v - v_c)

over the vertex ``v`` and all momenta ``p_i`` with ``scipy.optimize.minimize`` (method
``trust-exact``). Derivatives are central finite differences of :func:`vertexfit.chi2`, in
coordinates scaled by the measurement errors; because S is a sum of per-track terms that
each depend on six numbers ``(v, p_i)`` only, all of them come from one batched call of
:func:`vertexfit.chi2` per iteration (85 evaluations per track), never from a dense
``(3 + 3T)^2`` difference table. Steps are 1e-4 (gradient) and 1e-3 (Hessian) standard
deviations, where S is quadratic to far better than the tolerances.

``vertex_cov`` is twice the inverse of the exact Hessian of S at the minimum, marginalised to
the vertex (the observed information; it differs from the Gauss-Newton ``(J^T G J)^-1`` of
:func:`vertexfit.fit` by terms of order residual x model curvature, ~1e-3 relative).

SciPy is an optional dependency: ``pip install 'vertexfit[scipy]'``.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from ._angle import wrap_phi
from ._fit import VertexFit, degrees_of_freedom
from ._fit import chi2 as _chi2
from ._xp import to_numpy

__all__ = ["fit"]

_H_GRAD = 1e-4  # finite-difference steps, in standard deviations of each parameter
_H_HESS = 1e-3
_STEP_TOL = 1e-6  # convergence: remaining Newton step, in standard deviations


def _scipy_optimize():
    try:
        import scipy.optimize
    except ImportError:  # pragma: no cover - exercised only without scipy
        raise ImportError(
            "vertexfit.reference needs SciPy: pip install 'vertexfit[scipy]'"
        ) from None
    return scipy.optimize


def _line_seed(tracks, ref):
    """Least-squares meeting point of the tracks' tangent lines at their perigees.

    A cheap, data-driven start (exact for straight tracks). Slightly regularised towards the
    reference point so that nearly parallel tracks cannot send it far away.
    """
    d0, z0, phi, theta = tracks[:, 0], tracks[:, 1], tracks[:, 2], tracks[:, 3]
    point = np.stack([d0 * np.sin(phi), -d0 * np.cos(phi), z0], axis=-1)
    u = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)
    proj = np.eye(3) - u[:, :, None] * u[:, None, :]
    A = proj.sum(0) + 1e-6 * np.eye(3)
    b = np.einsum("nij,nj->i", proj, point)
    return ref + np.linalg.solve(A, b)


class _Problem:
    """S(v, p) and its derivatives for one jet, from batched calls of vertexfit.chi2."""

    def __init__(self, tracks, cov, weights, ref, prior, model, vscale, pscale):
        self.tracks = tracks[None, :, None, :]  # (1, n, 1, 5): every track its own "jet"
        self.cov = cov[None, :, None, :, :]
        self.weights = weights[None, :, None]
        self.ref = ref
        self.prior = prior  # None or (position (3,), information (3, 3))
        self.model = model
        self.n = tracks.shape[0]
        self.vscale = vscale  # (3,)
        self.pscale = pscale  # (n, 3)

    def per_track(self, v, p, dv, dp):
        """chi2 of each track for E displacements: dv (E, 3) and dp (E, n, 3) -> (E, n)."""
        E = dv.shape[0]
        vert = np.broadcast_to((v + dv)[:, None, :], (E, self.n, 3))
        mom = (p + dp)[:, :, None, :]
        return _chi2(
            np.broadcast_to(self.tracks, (E, self.n, 1, 5)),
            np.broadcast_to(self.cov, (E, self.n, 1, 5, 5)),
            vert,
            mom,
            np.broadcast_to(self.weights, (E, self.n, 1)),
            model=self.model,
            ref=self.ref,
        )

    def local_derivatives(self, v, p):
        """Value, gradient (n, 6) and Hessian (n, 6, 6) of each track's chi2 in the scaled
        variables (v / vscale, p_i / pscale_i), by central differences in one batch."""
        n = self.n
        scale = np.concatenate([np.broadcast_to(self.vscale, (n, 3)), self.pscale], axis=1)
        steps = [np.zeros(6)]
        for k in range(6):
            for h in (_H_GRAD, -_H_GRAD, _H_HESS, -_H_HESS):
                e = np.zeros(6)
                e[k] = h
                steps.append(e)
        pairs = [(a, b) for a in range(6) for b in range(a + 1, 6)]
        for a, b in pairs:
            for sa, sb in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                e = np.zeros(6)
                e[a] = sa * _H_HESS
                e[b] = sb * _H_HESS
                steps.append(e)
        U = np.stack(steps)  # (E, 6) scaled displacements, the same for every track
        D = U[:, None, :] * scale[None, :, :]  # (E, n, 6)
        # the vertex part must be common to all tracks of one evaluation: it is, because
        # vscale is shared; take it from track 0
        f = self.per_track(v, p, D[:, 0, :3], D[:, :, 3:])
        f0 = f[0]
        g = np.empty((n, 6))
        H = np.empty((n, 6, 6))
        for k in range(6):
            fpg, fmg, fph, fmh = f[1 + 4 * k : 5 + 4 * k]
            g[:, k] = (fpg - fmg) / (2 * _H_GRAD)
            H[:, k, k] = (fph - 2 * f0 + fmh) / _H_HESS**2
        base = 1 + 24
        for m, (a, b) in enumerate(pairs):
            fpp, fpm, fmp, fmm = f[base + 4 * m : base + 4 * m + 4]
            H[:, a, b] = H[:, b, a] = (fpp - fpm - fmp + fmm) / (4 * _H_HESS**2)
        return f0, g, H

    def assemble(self, v, p, free_vertex=True):
        """Total S, gradient and Hessian over the free scaled variables.

        With ``free_vertex`` the variables are (v, p_1..p_n); otherwise (p_1..p_n) only.
        """
        f0, g, H = self.local_derivatives(v, p)
        n = self.n
        off = 3 if free_vertex else 0
        N = off + 3 * n
        grad = np.zeros(N)
        hess = np.zeros((N, N))
        total = f0.sum()
        for i in range(n):
            sl = slice(off + 3 * i, off + 3 * i + 3)
            grad[sl] = g[i, 3:]
            hess[sl, sl] = H[i, 3:, 3:]
            if free_vertex:
                hess[:3, sl] = H[i, :3, 3:]
                hess[sl, :3] = H[i, 3:, :3]
        if free_vertex:
            grad[:3] = g[:, :3].sum(0)
            hess[:3, :3] = H[:, :3, :3].sum(0)
            if self.prior is not None:
                pos, info = self.prior
                d = v - pos
                total = total + d @ info @ d
                Is = info * np.outer(self.vscale, self.vscale)
                grad[:3] += 2.0 * (info @ d) * self.vscale
                hess[:3, :3] += 2.0 * Is
        return total, grad, hess


def _minimise(problem, v0, p0, free_vertex, gtol, maxiter):
    """Trust-region Newton (scipy ``trust-exact``) in scaled variables from (v0, p0)."""
    opt = _scipy_optimize()
    n = problem.n
    vs, ps = problem.vscale, problem.pscale
    cache = {}

    def unpack(u):
        if free_vertex:
            return v0 + u[:3] * vs, p0 + u[3:].reshape(n, 3) * ps
        return v0, p0 + u.reshape(n, 3) * ps

    def evaluate(u):
        key = u.tobytes()
        if key not in cache:
            cache.clear()
            cache[key] = problem.assemble(*unpack(u), free_vertex=free_vertex)
        return cache[key]

    u0 = np.zeros((3 if free_vertex else 0) + 3 * n)
    res = opt.minimize(
        lambda u: evaluate(u)[0],
        u0,
        jac=lambda u: evaluate(u)[1],
        hess=lambda u: evaluate(u)[2],
        method="trust-exact",
        options={"gtol": gtol, "maxiter": maxiter},
    )
    v, p = unpack(res.x)
    total, grad, hess = problem.assemble(v, p, free_vertex=free_vertex)
    # Converged when the remaining Newton step is negligible (1e-6 standard deviations):
    # near the minimum, rounding in S (~1e-16 S) stalls the trust region before gtol is
    # reached although the solution is already far more accurate than needed.
    try:
        step = np.linalg.solve(hess, grad)
        ok = bool(res.success) or bool(np.max(np.abs(step)) <= _STEP_TOL)
    except np.linalg.LinAlgError:
        ok = False
    return v, p, total, hess, ok


def _fit_one(tracks, cov, weights, valid, seed, ref, prior, model, gtol, maxiter):
    """Fit one jet (NumPy float64). Returns vertex, vertex_cov, momenta, chi2, track_chi2,
    converged."""
    T = tracks.shape[0]
    active = valid & (weights > 0)
    momenta = np.zeros((T, 3))
    track_chi2 = np.zeros(T)
    vertex_cov = np.zeros((3, 3))
    n_act = int(active.sum())
    if seed is None:
        seed = _line_seed(tracks[active], ref) if n_act >= 2 else ref.copy()
    if n_act < 2 and prior is None:
        return seed, vertex_cov, momenta, 0.0, track_chi2, False

    sig = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
    vscale = np.full(3, float(np.median(sig[valid][:, :2])) if valid.any() else 1.0)

    def start_momenta(sel, v):
        # first-order transport of phi from the perigee to the vertex (docs/conventions.md)
        q = tracks[sel]
        x, y = v[0] - ref[0], v[1] - ref[1]
        Q = x * np.cos(q[:, 2]) + y * np.sin(q[:, 2])
        return np.stack([q[:, 2] + Q * q[:, 4], q[:, 3], q[:, 4]], axis=-1)

    v = seed
    ok = True
    total = 0.0
    if n_act == 0:  # only the prior: it is the answer
        v, vertex_cov, total = prior[0].copy(), np.linalg.inv(prior[1]), 0.0
    else:
        sel = active
        prob = _Problem(tracks[sel], cov[sel], weights[sel], ref, prior, model, vscale,
                        sig[sel][:, 2:])
        v, p, total, hess, ok = _minimise(prob, seed, start_momenta(sel, seed), True, gtol, maxiter)
        momenta[sel] = p
        try:
            cov_u = 2.0 * np.linalg.inv(hess)
            vertex_cov = cov_u[:3, :3] * np.outer(vscale, vscale)
        except np.linalg.LinAlgError:
            ok = False
    # tracks of weight zero do not move the vertex; they still get their best momenta
    idle = valid & ~active
    if idle.any():
        prob = _Problem(tracks[idle], cov[idle], np.ones(int(idle.sum())), ref, None, model,
                        vscale, sig[idle][:, 2:])
        _, p, _, _, ok_idle = _minimise(prob, v, start_momenta(idle, v), False, gtol, maxiter)
        momenta[idle] = p
        ok = ok and ok_idle
    # each track's own (unweighted) chi2 at the solution
    if valid.any():
        prob = _Problem(tracks[valid], cov[valid], np.ones(int(valid.sum())), ref, None, model,
                        vscale, sig[valid][:, 2:])
        track_chi2[valid] = prob.per_track(v, momenta[valid], np.zeros((1, 3)),
                                           np.zeros((1, int(valid.sum()), 3)))[0]
    momenta[valid, 0] = wrap_phi(momenta[valid, 0])
    ok = ok and bool(np.all(np.isfinite(vertex_cov))) and np.isfinite(total)
    return v, vertex_cov, momenta, float(total), track_chi2, ok


def fit(tracks, cov, weights=None, *, mask=None, seed=None, model="helix", constraint=None,
        ref=None, n_iter=None, gtol=1e-10, maxiter=200):
    """Classic vertex fit: exact-chi2 minimisation with SciPy, one vertex at a time.

    Same inputs and result as :func:`vertexfit.fit` (see there for shapes and units); the
    differences are:

    * computed in float64 NumPy (inputs of any namespace are copied to NumPy); the result
      is converted back to the namespace, dtype and device of ``tracks``;
    * ``seed`` (default): the least-squares meeting point of the tracks' tangent lines;
    * ``n_iter`` is accepted for drop-in compatibility and ignored: the minimiser stops when
      the gradient of S in units of the parameters' standard deviations is below ``gtol``
      (or after ``maxiter`` iterations, then ``converged`` is False);
    * ``vertex_cov`` is ``2 H^-1`` (H the exact Hessian of S) marginalised to the vertex.

    Tracks with weight 0 do not affect the vertex; their momenta are the best ones at the
    fitted vertex. ``track_chi2`` is each track's unweighted chi2; ``chi2`` the minimised S
    (weighted sum plus prior); ``ndf = 2 sum(w) - 3`` (+3 with a constraint), as in
    :func:`vertexfit.fit`. A jet with fewer than two tracks of positive weight and no
    constraint returns the seed, a zero covariance and ``converged=False``.

    Raises:
        ImportError: if SciPy is not installed (``pip install 'vertexfit[scipy]'``).
        ValueError: from :func:`vertexfit.chi2` for invalid inputs, and for shape mismatches.
    """
    _scipy_optimize()
    xp = array_api_compat.array_namespace(tracks)
    out_dtype = tracks.dtype
    device = array_api_compat.device(tracks)
    t = to_numpy(tracks, np.float64)
    if t.ndim < 2 or t.shape[-1] != 5:
        raise ValueError(f"tracks must have shape (..., T, 5), got {t.shape}")
    batch, T = t.shape[:-2], t.shape[-2]
    c = to_numpy(cov, np.float64)
    if c.shape != t.shape[:-1] + (5, 5):
        raise ValueError(f"cov must have shape {t.shape[:-1] + (5, 5)}, got {c.shape}")
    w = np.ones(t.shape[:-1]) if weights is None else to_numpy(weights, np.float64)
    if w.shape != t.shape[:-1]:
        raise ValueError(f"weights must have shape {t.shape[:-1]}, got {w.shape}")
    m = np.ones(t.shape[:-1], bool) if mask is None else to_numpy(mask, bool)
    if m.shape != t.shape[:-1]:
        raise ValueError(f"mask must have shape {t.shape[:-1]}, got {m.shape}")
    B = math.prod(batch)

    def per_jet(a, name, tail):
        if a is None:
            return [None] * B
        a = to_numpy(a, np.float64)
        try:
            return np.broadcast_to(a, batch + tail).reshape((B,) + tail)
        except ValueError:
            raise ValueError(f"{name} of shape {a.shape} does not broadcast to "
                             f"{batch + tail}") from None

    refs = per_jet(ref, "ref", (3,)) if ref is not None else np.zeros((B, 3))
    seeds = per_jet(seed, "seed", (3,))
    if constraint is not None:
        cpos, ccov = constraint
        cpos, ccov = per_jet(cpos, "constraint position", (3,)), per_jet(ccov, "constraint "
                                                                          "covariance", (3, 3))
    t, c, w, m = (a.reshape((B,) + a.shape[len(batch):]) for a in (t, c, w, m))

    res = {k: [] for k in ("vertex", "vertex_cov", "momenta", "chi2", "track_chi2", "conv")}
    for j in range(B):
        prior = None
        if constraint is not None:
            prior = (cpos[j], np.linalg.inv(ccov[j]))
        v, vc, p, s, tc, ok = _fit_one(t[j], c[j], w[j], m[j], seeds[j], refs[j], prior, model,
                                       gtol, maxiter)
        for k, val in zip(res, (v, vc, p, s, tc, ok)):
            res[k].append(val)

    ndf = degrees_of_freedom(np, np.where(m, w, 0.0), constraint is not None)

    def back(a, tail, dtype=out_dtype):
        a = np.asarray(a).reshape(batch + tail)
        return xp.asarray(a, dtype=dtype, device=device)

    return VertexFit(
        vertex=back(res["vertex"], (3,)),
        vertex_cov=back(res["vertex_cov"], (3, 3)),
        momenta=back(res["momenta"], (T, 3)),
        chi2=back(res["chi2"], ()),
        track_chi2=back(res["track_chi2"], (T,)),
        ndf=back(ndf, ()),
        converged=back(res["conv"], (), dtype=xp.bool),
    )

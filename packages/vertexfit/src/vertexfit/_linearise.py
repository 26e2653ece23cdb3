"""The linearisation shared by the fit and its implicit gradients: model jets, residuals,
the per-track normal blocks, their Schur complement and the arrow-shaped solve.

Layout: track-major component arrays (per-track ``(T, B)``, per-jet ``(B,)``); a symmetric
matrix is a component dict (see :mod:`vertexfit._smallmat`). Notation as in ``docs/fit.md``
and ``docs/gradients.md``: for one track with Jacobian ``J = [A | B]`` (vertex | momentum),
information ``G`` and residual ``r``, the normal blocks are ``F = J^T G J`` and
``b = J^T G r``; the Schur pieces ``W = Fpp^-1``, ``E = W Fpv``, ``S = Fvv - Fvp E`` reduce
the (3 + 3T)-dimensional arrow system to a 3x3 one per jet.
"""

from __future__ import annotations

from . import _speed, _xp
from ._angle import wrap_difference
from ._jet import Jet, Ops
from ._model import get_model
from ._smallmat import ldl, mul, sum_terms, sym_get, sym_inverse, sym_matvec

__all__ = [
    "back_substitute",
    "barrier_jets",
    "evaluate",
    "guarded_inverse3",
    "normal_blocks",
    "residuals",
    "schur",
    "weighted_norm",
]


def evaluate(xp, model, u, p, order, phi_sincos=None):
    """Model at vertex ``u`` (3 arrays (B, 1) or (1, B)) and momenta ``p`` (3 arrays).

    ``order`` 0 returns plain arrays, 1 jets with the Jacobian, 2 jets with the Hessian.
    Variables: 0..2 the vertex, 3..5 (phi, theta, rho). ``phi_sincos``: ``(sin, cos)`` of
    ``p[0]`` if already known (order >= 1).
    """
    if order == 0:
        return get_model(model)(Ops(xp), *u, *p)
    args = [Jet.variable(a, k, order) for k, a in enumerate((*u, *p))]
    args[3].sincos = phi_sincos
    return get_model(model)(Ops(xp), *args)


def barrier_jets(xp, jets):
    """:func:`vertexfit._speed.barrier` for a list of :class:`Jet` (or plain array) outputs."""
    parts = _speed.barrier(xp, [(o.v, o.g, o.h) if isinstance(o, Jet) else (o, None, None)
                                for o in jets])
    return [Jet(v, g, h) if g is not None else v for v, g, h in parts]


def residuals(xp, q, h):
    """``q - h`` for 5 component arrays, the phi difference wrapped to [-pi, pi]."""
    vals = [hk.v if isinstance(hk, Jet) else hk for hk in h]
    r = [q[k] - vals[k] for k in range(5)]
    r[2] = wrap_difference(xp, r[2])
    return r


def weighted_norm(G, r, n=5):
    """``(G r, r^T G r)`` for a symmetric component matrix ``G``."""
    Gr = sym_matvec(G, r, n)
    return Gr, sum_terms([r[a] * Gr[a] for a in range(n)])


def normal_blocks(G, jets, Gr, nvar=6):
    """Gauss-Newton blocks of one track: ``F = J^T G J`` (sym dict) and ``b = J^T G r``.

    Exploits the sparsity of J (structural zeros are skipped, unit entries not multiplied).
    Returns ``(F, b, J)`` with ``J[k][c] = dh_k / dx_c`` (``None``: structural zero).
    """
    J = [[o.d(c) for c in range(nvar)] for o in jets]
    GJ = {}
    for c in range(nvar):
        for r in range(5):
            terms = [mul(J[s][c], sym_get(G, r, s)) for s in range(5) if J[s][c] is not None]
            GJ[(r, c)] = sum_terms(terms) if terms else None
    F = {}
    for a in range(nvar):
        for c in range(a, nvar):
            F[(a, c)] = sum_terms([mul(J[r][a], GJ[(r, c)]) for r in range(5)
                                   if J[r][a] is not None])
    b = [sum_terms([mul(J[r][a], Gr[r]) for r in range(5) if J[r][a] is not None])
         for a in range(nvar)]
    return F, b, J


def schur(xp, F, b):
    """Per-track Schur pieces of the normal blocks and the flag that they are usable.

    Returns ``(W, E, S, rv, Wbp, ok)``: ``W = Fpp^-1``, ``E = W Fpv`` (``E[i][a]``),
    ``S = Fvv - Fvp E``, ``rv = bv - E^T bp``, ``Wbp = W bp`` and ``ok``: the momentum block
    Fpp is numerically positive definite (every LDL pivot > 64 eps x its diagonal entry).
    A track that is not ok (in float32 an almost degenerate helix, or a padding slot whose
    free momenta drifted far) must not enter the vertex sums nor move its momenta: callers
    mask it with ``ok`` (``xp.where``, so that inf/NaN cannot leak as 0 * NaN).
    """
    Fpp = {(i, j): F[(3 + i, 3 + j)] for i in range(3) for j in range(i, 3)}
    W, D = sym_inverse(Fpp, 3)
    tol = 64.0 * _xp.eps(xp, D[0].dtype)
    ok = None
    for k in range(3):
        dk = D[k] > tol * Fpp[(k, k)]
        ok = dk if ok is None else ok & dk
    E = [[sum_terms([sym_get(W, i, k) * F[(a, 3 + k)] for k in range(3)]) for a in range(3)]
         for i in range(3)]
    S = {(a, c): F[(a, c)] - sum_terms([F[(a, 3 + i)] * E[i][c] for i in range(3)])
         for a in range(3) for c in range(a, 3)}
    bp = b[3:6]
    rv = [b[a] - sum_terms([E[i][a] * bp[i] for i in range(3)]) for a in range(3)]
    Wbp = sym_matvec(W, bp, 3)
    return W, E, S, rv, Wbp, ok


def back_substitute(Wg, E, du, scale=None):
    """Momentum part of the arrow solve: ``dp_i = (W g)_i - scale * E_i^T-row du``.

    ``Wg``: 3 per-track arrays (``None``: zero), ``E[i][a]`` the Schur factors, ``du`` the
    vertex part (3 per-jet arrays), ``scale`` an optional per-track factor (the weights, in
    the transposed solve).
    """
    out = []
    for i in range(3):
        Edu = sum_terms([E[i][a] * du[a] for a in range(3)])
        Edu = Edu if scale is None else scale * Edu
        out.append(-Edu if Wg[i] is None else Wg[i] - Edu)
    return out


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

"""Exact implicit differentiation of the vertex fit, written once in array-API code.

The fit's solution ``x* = (u, p_1..p_T)`` solves the stationarity system (per-track scaled,
so that tracks of weight 0 keep a well-defined momentum; halved for convenience)

    f_u   = sum_i w_i (-A_i^T G_i r_i) + P (u - u_c) = 0,
    f_p_i = -B_i^T G_i r_i = 0                              (unweighted),

with ``r_i = q_i - h(u, p_i)``, ``J_i = dh/d(u, p_i) = [A_i | B_i]`` and ``G_i = V_i^-1``.
Its Jacobian ``K = df/dx`` is arrow shaped,

    K = [[P + sum_i w_i N^i_uu,  w_i N^i_up],
         [N^i_pu,                N^i_pp   ]],   N^i = J^T G J - sum_k (G r)_k grad^2 h_k,

(``N`` is half the exact per-track Hessian of ``s_i = r^T G r``), so tangents
``dx = -K^-1 (df/dalpha) dalpha`` and cotangents ``alpha_bar = -(df/dalpha)^T K^-T x_bar``
cost one Schur complement over 3x3 blocks, O(T) per jet, never a dense (3+3T)^2 matrix.
The outputs ``vertex_cov``, ``chi2`` and ``track_chi2`` depend on ``x*`` and on the inputs
directly; their partial derivatives are added before/after the solve. The derivation is in
``docs/gradients.md``; the symbols there match the variable names here.

Two levels of API:

* :func:`core_jvp` / :func:`core_vjp` act on the core's sanitised, flattened, local-frame
  arrays (the signature of the fit core, ``vertexfit._fit._core``); the JAX and PyTorch
  adapters (``_jax.py``, ``_torch.py``) use them.
* :func:`fit_jvp` / :func:`fit_vjp` take the same arguments as :func:`vertexfit.fit` and
  handle masking, symmetrisation, broadcasting and the reference point: any framework (or
  plain NumPy) can use them.
"""

from __future__ import annotations

from typing import NamedTuple

from . import _linearise as lin
from . import _speed, _xp
from ._fit import VertexFit, fit_with_core
from ._smallmat import (
    add,
    ldl,
    mul,
    sub,
    sum_terms,
    sym_from_array,
    sym_get,
    sym_inverse,
    sym_matvec,
)
from ._validate import flat

__all__ = ["FitGradients", "fit_vjp", "fit_jvp", "core_vjp", "core_jvp"]

_HESSIANS = ("exact", "gauss-newton")
_OUTPUTS = ("vertex", "vertex_cov", "momenta", "chi2", "track_chi2")


# --------------------------------------------------------------------------------------------
# sparse component arithmetic (vertexfit._smallmat): None is a structural zero
# --------------------------------------------------------------------------------------------
def _acc(lst, k, term):
    lst[k] = term if lst[k] is None else (lst[k] if term is None else lst[k] + term)


def _sym_matmul3(X, Y):
    """``X Y`` for 3x3 symmetric component dicts (result as a full list of rows)."""
    return [[sum_terms([sym_get(X, a, k) * sym_get(Y, k, c) for k in range(3)])
             for c in range(3)] for a in range(3)]


def _sandwich3(X, Y):
    """``X Y X`` for symmetric 3x3 component dicts; symmetric, returned as a dict."""
    XY = _sym_matmul3(X, Y)
    return {(a, c): sum_terms([XY[a][k] * sym_get(X, k, c) for k in range(3)])
            for a in range(3) for c in range(a, 3)}


def _sandwich5(G, Y):
    """``G Y G`` for symmetric 5x5 component dicts (``Y`` entries may be None)."""
    GY = [[add([mul(sym_get(G, a, k), sym_get(Y, k, c)) for k in range(5)]) for c in range(5)]
          for a in range(5)]
    return {(a, c): add([mul(GY[a][k], sym_get(G, k, c)) for k in range(5)])
            for a in range(5) for c in range(a, 5)}


# --------------------------------------------------------------------------------------------
# the linearisation at the solution: everything both directions need
# --------------------------------------------------------------------------------------------
class _Lin(NamedTuple):
    w: object      # (B, T) weights
    G: dict        # 5x5 inverse covariance per track, components (B, T)
    P: dict | None  # 3x3 prior information, components (B,)
    d: list | None  # u - u_c, 3 x (B,)
    r: list        # residuals, 5 x (B, T)
    Gr: list       # G r
    s: object      # (B, T) r^T G r
    J: list        # J[k][c] = dh_k/dx_c, c = 0..5 (None: structural zero)
    H: list        # H[k][(a, c)] = d2 h_k / dx_a dx_c, a <= c
    b: list        # J^T G r, 6 x (B, T)
    Eg: list       # Gauss-Newton E = (B^T G B)^-1 B^T G A, Eg[i][a]
    Z: list        # J K = A - B Eg, 5 x 3 (the measurement-space map of the vertex)
    WN: dict       # N_pp^-1 (3x3 sym), exact (or GN) Hessian
    EN: list       # N_pp^-1 N_pu, EN[i][a]
    Sinv: dict     # inverse Schur complement of K (3x3 sym, components (B,))
    C: dict        # the fit's vertex covariance M^-1 (3x3 sym, components (B,))


def _tsum(xp, x, w):
    """Sum a per-track quantity over the track axis; ``x`` (T, B), or (B,) / a float
    (a term that happens not to depend on the track) which is broadcast first."""
    if not hasattr(x, "shape") or tuple(x.shape) != tuple(w.shape):
        x = xp.broadcast_to(x + xp.zeros_like(w), w.shape)
    return xp.sum(x, axis=0)


def _tm(xp, a):
    """(B, T, ...) -> track-major (T, B, ...) and back (per-jet sums become row additions,
    per-jet (B,) arrays broadcast without reshaping; the layout of the fit's core)."""
    return xp.permute_dims(a, (1, 0) + tuple(range(2, a.ndim)))


def _at_solution(xp, model, tracks, cov, weights, cpos, ccov, u, momenta, C, hessian):
    """Order-2 jets of the model at the solution and the Schur pieces of ``K`` and ``M``."""
    _check_hessian(hessian)
    G, _ = sym_inverse(sym_from_array(xp, _tm(xp, cov), 5), 5)
    q = list(_xp.unstack(xp, _tm(xp, tracks), axis=-1))
    w = _tm(xp, weights)
    uu = list(_xp.unstack(xp, u, axis=-1))
    # stage boundaries (JAX: computed once, see vertexfit._speed.barrier), as in the fit
    jets = lin.barrier_jets(xp, lin.evaluate(xp, model, [a[None, :] for a in uu],
                                     list(_xp.unstack(xp, _tm(xp, momenta), axis=-1)), 2))
    r = lin.residuals(xp, q, jets)
    Gr, s = _speed.barrier(xp, lin.weighted_norm(G, r))
    F, b, J = lin.normal_blocks(G, jets, Gr)
    F, b = _speed.barrier(xp, (F, b))
    H = [dict(o.h) for o in jets]
    # Gauss-Newton Schur pieces: the fit's own vertex information M (vertex_cov = M^-1).
    # A track whose Gauss-Newton momentum block is numerically singular (``tok`` False:
    # float32 near-degenerate helices, padding whose free momenta drifted) is ignored by the
    # fit (vertexfit._linearise.schur): it gets weight 0 and zero Schur factors here too, by
    # ``where`` so that its inf/NaN cannot leak into the jet as 0 * NaN.
    _, Eg, _, _, _, tok = lin.schur(xp, F, b)
    Eg, tok = _speed.barrier(xp, (Eg, tok))
    w = xp.where(tok, w, 0.0)
    Eg = [[xp.where(tok, e, 0.0) for e in row] for row in Eg]
    Z = [[sub(J[k][a], add([mul(J[k][3 + i], Eg[i][a]) for i in range(3)])) for a in range(3)]
         for k in range(5)]
    N = F
    if hessian == "exact":
        N = {key: sub(F[key], add([mul(Gr[k], H[k].get(key)) for k in range(5)]))
             for key in F}
        # A momentum block that is (numerically) singular can only occur far from a sane
        # fit (e.g. a masked placeholder track); fall back to its Gauss-Newton block there so
        # that nothing becomes inf/NaN. Genuine tracks at the optimum never hit this.
        _, Dn = ldl({(i, j): N[(3 + i, 3 + j)] for i in range(3) for j in range(i, 3)}, 3)
        scale = xp.abs(F[(3, 3)]) + xp.abs(F[(4, 4)]) + xp.abs(F[(5, 5)])
        tol = 1e3 * _xp.eps(xp, scale.dtype) * scale
        bad = ~(xp.abs(Dn[0]) > tol) | ~(xp.abs(Dn[1]) > tol) | ~(xp.abs(Dn[2]) > tol)
        N = _speed.barrier(xp, {key: xp.where(bad, F[key], N[key]) for key in F})
    WN, EN, SN, _, _ = _speed.barrier(xp, lin.schur(xp, N, b, check=False)[:5])
    WN = {key: xp.where(tok, v, 0.0) for key, v in WN.items()}
    EN = [[xp.where(tok, e, 0.0) for e in row] for row in EN]
    Mk = {key: _tsum(xp, w * xp.where(tok, SN[key], 0.0), w) for key in SN}
    P = d = None
    if ccov is not None:
        P, _ = sym_inverse(sym_from_array(xp, ccov, 3), 3)
        Mk = {key: Mk[key] + P[key] for key in Mk}
        d = [uu[a] - c for a, c in enumerate(_xp.unstack(xp, cpos, axis=-1))]
    Sinv, _ = lin.guarded_inverse3(
        xp, Mk, xp.zeros(w.shape[1:], dtype=xp.bool, device=_xp.device(w)))
    # every array materialised once (JAX): XLA would otherwise re-fuse shared per-track
    # subexpressions into each consumer of the rule, as in the fit. The jets, G r, the
    # normal blocks and the Schur factors came out of barriers above; w, Eg, WN, EN are one
    # select away from them
    G, P, d, r, Z, Sinv = _speed.barrier(xp, (G, P, d, r, Z, Sinv))
    return _Lin(w, G, P, d, r, Gr, s, J, H, b, Eg, Z, WN, EN, Sinv, sym_from_array(xp, C, 3))


def _arrow_solve(xp, L, gu, gp, transpose=False):
    """Solve ``K dx = g`` (or ``K^T lam = g`` with ``transpose``) by the Schur complement.

    ``gu``: 3 x (B,) vertex part, ``gp``: 3 x (B, T) per-track parts (None: zero). The
    weights couple the tracks to the vertex rows of ``K`` only, so they multiply the
    per-track part of the vertex right-hand side (``K``) or of the back substitution
    (``K^T``). Returns ``(dx_u 3 x (B,), dx_p 3 x (B, T))``.
    """
    w = L.w
    rhs = []
    for a in range(3):
        t = add([mul(L.EN[i][a], gp[i]) for i in range(3)])
        if t is not None and not transpose:
            t = w * t
        x = sub(gu[a], None if t is None else _tsum(xp, t, w))
        rhs.append(x if x is not None else w[0, ...] * 0.0)
    du = sym_matvec(L.Sinv, rhs, 3)
    Wg = [add([mul(sym_get(L.WN, i, k), gp[k]) for k in range(3)]) for i in range(3)]
    return du, lin.back_substitute(Wg, L.EN, du, w if transpose else None)


# --------------------------------------------------------------------------------------------
# the core rules
# --------------------------------------------------------------------------------------------
def core_vjp(xp, tracks, cov, weights, cpos, ccov, outputs, cotangents, *, model,
             hessian="exact"):
    """Reverse-mode rule of the fit core (arrays as in ``vertexfit._fit._core``).

    Args:
        xp: array namespace.
        tracks, cov, weights, cpos, ccov: the core's inputs (B,T,5), (B,T,5,5) (upper
            triangle read), (B,T), (B,3) | None, (B,3,3) | None (upper triangle read).
        outputs: ``(u (B,3), vertex_cov (B,3,3), momenta (B,T,3), ...)``, the core's result.
        cotangents: ``(u_bar, vertex_cov_bar, momenta_bar, chi2_bar, track_chi2_bar)`` of
            shapes (B,3), (B,3,3), (B,T,3), (B,), (B,T); any may be ``None`` (zero).
        model: the track model the fit used. hessian: ``"exact"`` (default) or
            ``"gauss-newton"`` (drops the residual-curvature term of the implicit Hessian:
            cheaper, approximate; see docs/gradients.md).

    Returns:
        ``(tracks_bar (B,T,5), cov_bar (B,T,5,5), weights_bar (B,T), cpos_bar (B,3) | None,
        ccov_bar (B,3,3) | None)``. ``cov_bar`` and ``ccov_bar`` are upper triangular:
        the core reads only the upper triangle of its (symmetrised) covariances.
    """
    u, C, mom = outputs[0], outputs[1], outputs[2]
    ub_in, Cb, pb, chib, tb = cotangents
    L = _at_solution(xp, model, tracks, cov, weights, cpos, ccov, u, mom, C, hessian)
    w, G, P, d, J, Z = L.w, L.G, L.P, L.d, L.J, L.Z
    zero_t = w * 0.0
    xb = [None] * 6     # per-track direct x cotangents (vertex rows summed over tracks later)
    ub = [None] * 3     # vertex-level direct cotangent
    qb = [None] * 5
    Gb = {(k, m): None for k in range(5) for m in range(k, 5)}  # symmetric G_bar
    wb = None
    Pb = None if P is None else {key: None for key in P}
    ucb = [None] * 3

    # chi2 and track_chi2: s_i = r^T G r, d s = 2 (G r)^T (dq - J dx) + r^T dG r
    sbar = None if tb is None else _tm(xp, tb)
    if chib is not None:
        sbar = chib * w if sbar is None else sbar + chib * w
        wb = chib * L.s
        if P is not None:
            Pd = [sum_terms([sym_get(P, a, c) * d[c] for c in range(3)]) for a in range(3)]
            for a in range(3):
                _acc(ub, a, 2.0 * chib * Pd[a])
                _acc(ucb, a, -2.0 * chib * Pd[a])
            for key in Pb:
                _acc(Pb, key, chib * d[key[0]] * d[key[1]])
    if sbar is not None:
        for c in range(6):
            _acc(xb, c, -2.0 * sbar * L.b[c])
        for k in range(5):
            _acc(qb, k, 2.0 * sbar * L.Gr[k])
        for key in Gb:
            _acc(Gb, key, sbar * L.r[key[0]] * L.r[key[1]])

    # vertex_cov C = M^-1, M = P + sum_i w_i Z_i^T G_i Z_i; E is stationary in M (Schur
    # complement), so only w, G, P and J (through x) carry dM.
    if Cb is not None:
        Cbs = {(a, c): 0.5 * (Cb[:, a, c] + Cb[:, c, a]) for a in range(3) for c in range(a, 3)}
        Mb = {key: -v for key, v in _sandwich3(L.C, Cbs).items()}
        Y = [[sum_terms([mul(Z[k][c], sym_get(Mb, c, a)) for c in range(3)])
              for a in range(3)] for k in range(5)]
        GY = [[sum_terms([sym_get(G, k, m) * Y[m][a] for m in range(5)]) for a in range(3)]
              for k in range(5)]
        wb_c = sum_terms([GY[k][a] * Z[k][a] for k in range(5) for a in range(3)])
        wb = wb_c if wb is None else wb + wb_c
        for (k, m) in Gb:
            _acc(Gb, (k, m), w * sum_terms([Y[k][a] * Z[m][a] for a in range(3)]))
        for k in range(5):
            if not L.H[k]:
                continue
            # J_bar[k] = 2 w G Z M_bar K^T, K = [I; -Eg]
            Jb = [GY[k][c] if c < 3 else
                  -sum_terms([GY[k][a] * L.Eg[c - 3][a] for a in range(3)]) for c in range(6)]
            for (a, c), h in L.H[k].items():
                _acc(xb, c, 2.0 * w * Jb[a] * h)
                if a != c:
                    _acc(xb, a, 2.0 * w * Jb[c] * h)
        if P is not None:
            for key in Pb:
                _acc(Pb, key, Mb[key])

    if ub_in is not None:
        for a, c in enumerate(_xp.unstack(xp, ub_in, axis=-1)):
            _acc(ub, a, c)
    if pb is not None:
        for i, c in enumerate(_xp.unstack(xp, _tm(xp, pb), axis=-1)):
            _acc(xb, 3 + i, c)

    # implicit part: lam = K^-T x_bar, alpha_bar = -(df/dalpha)^T lam
    xu = [add([ub[a], None if xb[a] is None else _tsum(xp, xb[a], w)]) for a in range(3)]
    lu, lp = _arrow_solve(xp, L, xu, xb[3:], transpose=True)
    # a = w A lam_u + B lam_p: the solve's cotangent mapped to measurement space
    lam = [w * lu[a] for a in range(3)] + lp
    av = [add([mul(J[k][c], lam[c]) for c in range(6)]) for k in range(5)]
    for k in range(5):
        _acc(qb, k, sum_terms([mul(sym_get(G, k, m), av[m]) for m in range(5)]))
    for (k, m) in Gb:
        _acc(Gb, (k, m), 0.5 * (av[k] * L.r[m] + av[m] * L.r[k]))
    wb_i = sum_terms([L.b[a] * lu[a] for a in range(3)])
    wb = wb_i if wb is None else wb + wb_i
    if P is not None:
        for a in range(3):
            _acc(ucb, a, sum_terms([sym_get(P, a, c) * lu[c] for c in range(3)]))
        for (a, c) in Pb:
            _acc(Pb, (a, c), -0.5 * (lu[a] * d[c] + lu[c] * d[a]))

    # dG = -G dV G
    Vb = {key: -v for key, v in _sandwich5(G, Gb).items()}
    tracks_bar = _tm(xp, xp.stack([x if x is not None else zero_t for x in qb], axis=-1))
    cov_bar = _tm(xp, _upper_array(xp, Vb, 5, zero_t))
    cpos_bar = ccov_bar = None
    if P is not None:
        zb = w[0, ...] * 0.0
        cpos_bar = xp.stack([x if x is not None else zb for x in ucb], axis=-1)
        Sb = {key: -v for key, v in _sandwich3(P, {k: v if v is not None else zb
                                                   for k, v in Pb.items()}).items()}
        ccov_bar = _upper_array(xp, Sb, 3, zb)
    return tracks_bar, cov_bar, _tm(xp, wb), cpos_bar, ccov_bar


def _upper_array(xp, sym, n, zero):
    """Gradient w.r.t. a matrix of which only the upper triangle is read, from the
    symmetric gradient ``sym``: off-diagonal entries count twice, the lower triangle zero."""
    rows = []
    for i in range(n):
        row = []
        for j in range(n):
            v = sym_get(sym, i, j)
            v = zero if v is None else v
            row.append(zero if i > j else (v if i == j else 2.0 * v))
        rows.append(xp.stack(row, axis=-1))
    return xp.stack(rows, axis=-2)


def core_jvp(xp, tracks, cov, weights, cpos, ccov, outputs, tangents, *, model,
             hessian="exact"):
    """Forward-mode rule of the fit core (arrays as in ``vertexfit._fit._core``).

    Args:
        tangents: ``(tracks_dot (B,T,5), cov_dot (B,T,5,5), weights_dot (B,T),
            cpos_dot (B,3) | None, ccov_dot (B,3,3) | None)``; covariance tangents are read
            from their upper triangle, like the core reads its covariances. Any may be None.
        Other arguments as in :func:`core_vjp`.

    Returns:
        ``(u_dot (B,3), vertex_cov_dot (B,3,3), momenta_dot (B,T,3), chi2_dot (B,),
        track_chi2_dot (B,T))``.
    """
    u, C, mom = outputs[0], outputs[1], outputs[2]
    dq_in, dV_in, dw, dcpos, dccov = tangents
    if dcpos is not None:
        dcpos = _xp.unstack(xp, dcpos, axis=-1)
    L = _at_solution(xp, model, tracks, cov, weights, cpos, ccov, u, mom, C, hessian)
    w, G, P, d, J, Z = L.w, L.G, L.P, L.d, L.J, L.Z
    zero_t = w * 0.0
    zero_b = w[0, ...] * 0.0
    dq = [None] * 5 if dq_in is None else list(_xp.unstack(xp, _tm(xp, dq_in), axis=-1))
    dw = None if dw is None else _tm(xp, dw)
    dG = None
    if dV_in is not None:
        dV = sym_from_array(xp, _tm(xp, dV_in), 5)
        dG = {key: -v for key, v in _sandwich5(G, dV).items()}
    dP = None
    if P is not None and dccov is not None:
        dP = {key: -v for key, v in _sandwich3(P, sym_from_array(xp, dccov, 3)).items()}

    # e = G dq + dG r: the measurement-space tangent of the residual's pull
    e = [add([add([mul(sym_get(G, k, m), dq[m]) for m in range(5)]),
               None if dG is None else sum_terms([sym_get(dG, k, m) * L.r[m] for m in range(5)])])
         for k in range(5)]
    gp = [add([mul(J[k][3 + i], e[k]) for k in range(5)]) for i in range(3)]
    gu = []
    for a in range(3):
        t = add([w * add([mul(J[k][a], e[k]) for k in range(5)]) if any(x is not None for x in e)
                  else None, None if dw is None else dw * L.b[a]])
        ga = None if t is None else _tsum(xp, t, w)
        if P is not None:
            if dcpos is not None:
                ga = add([ga, sum_terms([sym_get(P, a, c) * dcpos[c] for c in range(3)])])
            if dP is not None:
                ga = sub(ga, sum_terms([sym_get(dP, a, c) * d[c] for c in range(3)]))
        gu.append(ga if ga is not None else zero_b)
    gp = [x if x is not None else zero_t for x in gp]

    # K dx = g: dx_u = S^-1 (g_u - sum w EN^T g_p), dp = WN g_p - EN dx_u
    du, dp = _arrow_solve(xp, L, gu, gp)
    dx = list(du) + dp

    # track chi2: ds = 2 (G r).(dq - J dx) + r^T dG r = 2 (G r).dq - 2 b.dx + r^T dG r
    ds = -2.0 * sum_terms([L.b[c] * dx[c] for c in range(6)])
    gq = add([mul(L.Gr[k], dq[k]) for k in range(5)])
    if gq is not None:
        ds = ds + 2.0 * gq
    if dG is not None:
        ds = ds + sum_terms([(1.0 if k == m else 2.0) * dG[(k, m)] * L.r[k] * L.r[m]
                             for (k, m) in dG])
    dchi2_t = w * ds if dw is None else w * ds + dw * L.s
    dchi2 = _tsum(xp, dchi2_t, w)
    if P is not None:
        dd = [du[a] if dcpos is None else du[a] - dcpos[a] for a in range(3)]
        dchi2 = dchi2 + 2.0 * sum_terms([sym_get(P, a, c) * d[a] * dd[c]
                                         for a in range(3) for c in range(3)])
        if dP is not None:
            dchi2 = dchi2 + sum_terms([sym_get(dP, a, c) * d[a] * d[c]
                                       for a in range(3) for c in range(3)])

    # vertex_cov: dM = sum_i [dw Z^T G Z + w (2 sym(Z^T G dJ K) + Z^T dG Z)] + dP
    GZ = [[sum_terms([sym_get(G, k, m) * Z[m][a] for m in range(5)]) for a in range(3)]
          for k in range(5)]
    dJK = [[None] * 3 for _ in range(5)]
    for k in range(5):
        if not L.H[k]:
            continue
        dJ = [None] * 6   # dJ[k][a] = sum_c H_k[a, c] dx_c
        for (a, c), h in L.H[k].items():
            _acc(dJ, a, h * dx[c])
            if a != c:
                _acc(dJ, c, h * dx[a])
        dJK[k] = [sub(dJ[a], add([mul(dJ[3 + i], L.Eg[i][a]) for i in range(3)]))
                  for a in range(3)]
    dM = {}
    for a in range(3):
        for c in range(a, 3):
            t = [mul(dJK[k][a], GZ[k][c]) for k in range(5)]
            t += [mul(dJK[k][c], GZ[k][a]) for k in range(5)]
            if dG is not None:
                t += [(sym_get(dG, k, m) * Z[k][a] * Z[m][c]) for k in range(5) for m in range(5)]
            term = w * add(t)
            if dw is not None:
                term = term + dw * sum_terms([Z[k][a] * GZ[k][c] for k in range(5)])
            dM[(a, c)] = _tsum(xp, term, w)
            if dP is not None:
                dM[(a, c)] = dM[(a, c)] + dP[(a, c)]
    dC = {key: -v for key, v in _sandwich3(L.C, dM).items()}
    dC_arr = xp.stack([xp.stack([sym_get(dC, a, c) for c in range(3)], axis=-1)
                       for a in range(3)], axis=-2)
    return (xp.stack(du, axis=-1), dC_arr, _tm(xp, xp.stack(dp, axis=-1)), dchi2, _tm(xp, ds))


# --------------------------------------------------------------------------------------------
# public rules at the level of vertexfit.fit
# --------------------------------------------------------------------------------------------
class FitGradients(NamedTuple):
    """Cotangents of :func:`vertexfit.fit`'s inputs, each with its input's shape and dtype.

    ``tracks (..., T, 5)``, ``cov (..., T, 5, 5)`` (symmetric), ``weights (..., T)``,
    ``constraint`` = ``(position_bar (..., 3), covariance_bar (..., 3, 3))``, ``ref (...,
    3)``, ``seed`` (zero: the converged fit does not depend on it). A field is ``None`` where
    the argument was ``None`` (``cov``/``tracks`` never are). Masked track slots are exactly
    zero.
    """

    tracks: object
    cov: object
    weights: object
    constraint: object
    ref: object
    seed: object


def _unbroadcast(xp, g, like):
    """Sum ``g`` down to the shape of ``like`` (the inverse of broadcasting)."""
    if like is None:
        return None
    shape = tuple(like.shape)
    extra = g.ndim - len(shape)
    if extra:
        g = xp.sum(g, axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = xp.sum(g, axis=axes, keepdims=True)
    return xp.astype(g, like.dtype) if xp.isdtype(like.dtype, "real floating") else g


def _get(cot, name):
    if cot is None:
        return None
    if isinstance(cot, dict):
        return cot.get(name)
    return getattr(cot, name, None)


def _check_hessian(hessian):
    if hessian not in _HESSIANS:
        raise ValueError(f"hessian must be one of {_HESSIANS}, got {hessian!r}")


def _sym(xp, a):
    return 0.5 * (a + xp.matrix_transpose(a))


def fit_vjp(tracks, cov, weights=None, *, mask=None, seed=None, n_iter=10, model="helix",
            constraint=None, ref=None, hessian="exact"):
    """Fit and return the reverse-mode rule of :func:`vertexfit.fit` (any array backend).

    Arguments are those of :func:`vertexfit.fit`, plus ``hessian``: ``"exact"`` (default)
    or ``"gauss-newton"`` (approximate implicit Hessian; see ``docs/gradients.md``).

    Returns:
        ``(result, pullback)``: ``result`` is the :class:`VertexFit`; ``pullback(cot)``
        takes cotangents of the outputs (a :class:`VertexFit` or a dict with any of
        ``vertex (..., 3)``, ``vertex_cov (..., 3, 3)``, ``momenta (..., T, 3)``,
        ``chi2 (...)``, ``track_chi2 (..., T)``; missing or ``None`` means zero; ``ndf``
        and ``converged`` are ignored) and returns :class:`FitGradients`. Cost O(T) per jet,
        independent of ``n_iter``. Gradients are those of the converged fit (implicit
        function theorem): check ``result.converged``.
    """
    _check_hessian(hessian)
    xp, prep, args, out, res = fit_with_core(tracks, cov, weights, mask, seed, constraint,
                                             ref, n_iter, model)
    batch, good, s = prep.batch, prep.mask, prep.wscale
    T = args[0].shape[-2]
    okb = ~prep.bad[..., None]

    def pullback(cot):
        vb = _get(cot, "vertex")
        cb = [None if x is None else xp.broadcast_to(xp.astype(x, args[0].dtype), shp)
              for x, shp in ((vb, batch + (3,)), (_get(cot, "vertex_cov"), batch + (3, 3)),
                             (_get(cot, "momenta"), batch + (T, 3)), (_get(cot, "chi2"), batch),
                             (_get(cot, "track_chi2"), batch + (T,)))]
        if cb[2] is not None:
            cb[2] = xp.where(good[..., None], cb[2], 0.0)
        if cb[4] is not None:
            cb[4] = xp.where(good, cb[4], 0.0)
        if s is not None:  # the core ran on weights / s: vertex_cov = C / s, chi2 = s S
            cb[1] = None if cb[1] is None else cb[1] / s[..., None, None]
            cb[3] = None if cb[3] is None else cb[3] * s
        tails = ((3,), (3, 3), (T, 3), (), (T,))
        cots = [flat(xp, x, batch, t) for x, t in zip(cb, tails)]
        tb, Vb, wb, cpb, ccb = core_vjp(xp, args[0], args[1], args[2], args[4], args[5], out,
                                        cots, model=model, hessian=hessian)
        tb = xp.where(good[..., None], xp.reshape(tb, batch + (T, 5)), 0.0)
        Vb = xp.where(good[..., None, None], _sym(xp, xp.reshape(Vb, batch + (T, 5, 5))), 0.0)
        wb = xp.where(good, xp.reshape(wb, batch + (T,)), 0.0)
        if s is not None:
            wb = wb / s[..., None]
        dtype = args[0].dtype
        ref_bar = (xp.zeros(batch + (3,), dtype=dtype, device=_xp.device(tb))
                   if cb[0] is None else cb[0])
        cons = None
        if constraint is not None:
            cpb = xp.where(okb, xp.reshape(cpb, batch + (3,)), 0.0)
            ccb = xp.where(okb[..., None], _sym(xp, xp.reshape(ccb, batch + (3, 3))), 0.0)
            ref_bar = ref_bar - cpb
            cons = (_unbroadcast(xp, cpb, constraint[0]), _unbroadcast(xp, ccb, constraint[1]))
        ref_out = None if ref is None else _unbroadcast(xp, ref_bar, ref)
        seed_out = None if seed is None else xp.zeros_like(seed)
        wts = None if weights is None else _unbroadcast(xp, wb, weights)
        return FitGradients(xp.astype(tb, tracks.dtype), xp.astype(Vb, cov.dtype), wts, cons,
                            ref_out, seed_out)

    return res, pullback


def fit_jvp(tracks, cov, weights=None, *, tangents, mask=None, seed=None, n_iter=10,
            model="helix", constraint=None, ref=None, hessian="exact"):
    """Fit and push input tangents forward through :func:`vertexfit.fit` (any backend).

    Args:
        tangents: dict with any of ``tracks (..., T, 5)``, ``cov (..., T, 5, 5)``,
            ``weights (..., T)``, ``constraint`` (``(position (..., 3), covariance (..., 3,
            3))``), ``ref (..., 3)`` (``seed`` is accepted and has no effect); missing or
            ``None`` means zero.
        Other arguments as in :func:`vertexfit.fit` and :func:`fit_vjp`.

    Returns:
        ``(result, result_dot)``: two :class:`VertexFit`; in ``result_dot`` the fields
        ``vertex``, ``vertex_cov``, ``momenta``, ``chi2``, ``track_chi2`` and ``ndf`` are the
        tangents and ``converged`` is ``None``.
    """
    _check_hessian(hessian)
    xp, prep, args, out, res = fit_with_core(tracks, cov, weights, mask, seed, constraint,
                                             ref, n_iter, model)
    batch, good = prep.batch, prep.mask
    T = args[0].shape[-2]
    dtype = args[0].dtype
    okb = ~prep.bad[..., None]
    tg = dict(tangents or {})

    def conv(x, shape):
        return None if x is None else xp.broadcast_to(xp.astype(x, dtype), shape)

    dq = conv(tg.get("tracks"), batch + (T, 5))
    dV = conv(tg.get("cov"), batch + (T, 5, 5))
    dw = conv(tg.get("weights"), batch + (T,))
    dref = conv(tg.get("ref"), batch + (3,))
    dcons = tg.get("constraint")
    dq = None if dq is None else xp.where(good[..., None], dq, 0.0)
    dV = None if dV is None else xp.where(good[..., None, None], _sym(xp, dV), 0.0)
    dw = None if dw is None else xp.where(good, dw, 0.0)
    dcpos = dccov = None
    if constraint is not None:
        dcp = None if dcons is None else conv(dcons[0], batch + (3,))
        dcc = None if dcons is None else conv(dcons[1], batch + (3, 3))
        if dcp is not None or dref is not None:
            dcp = dcp if dcp is not None else xp.zeros_like(dref)
            dcpos = xp.where(okb, dcp if dref is None else dcp - dref, 0.0)
        if dcc is not None:
            dccov = xp.where(okb[..., None], _sym(xp, dcc), 0.0)
    dndf = (xp.zeros(batch, dtype=dtype, device=_xp.device(good))
            if dw is None else 2.0 * xp.sum(dw, axis=-1))  # d ndf = 2 sum(dw)
    s = prep.wscale
    if s is not None and dw is not None:  # the core ran on weights / s
        dw = dw / s[..., None]
    tans = (flat(xp, dq, batch, (T, 5)), flat(xp, dV, batch, (T, 5, 5)),
            flat(xp, dw, batch, (T,)), flat(xp, dcpos, batch, (3,)),
            flat(xp, dccov, batch, (3, 3)))
    du, dC, dmom, dchi2, dts = core_jvp(xp, args[0], args[1], args[2], args[4], args[5], out,
                                        tans, model=model, hessian=hessian)
    dvertex = xp.reshape(du, batch + (3,))
    if dref is not None:
        dvertex = dvertex + dref
    dC, dchi2 = xp.reshape(dC, batch + (3, 3)), xp.reshape(dchi2, batch)
    if s is not None:
        dC, dchi2 = dC / s[..., None, None], dchi2 * s
    dot = VertexFit(dvertex, dC,
                    xp.where(good[..., None], xp.reshape(dmom, batch + (T, 3)), 0.0),
                    dchi2, xp.where(good, xp.reshape(dts, batch + (T,)), 0.0), dndf, None)
    return res, dot


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

Data path: :func:`fit` -> :func:`vertexfit._validate.prepare` -> the core on a flat jet axis
(chunked by :mod:`vertexfit._batching`, wrapped for autodiff by :mod:`vertexfit._adjoint`)
-> :func:`_finish`. The core packs the inputs track-major and runs :func:`_step`, one
Gauss-Newton step on fixed shapes with step control, ``n_iter`` times.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

from . import _adjoint, _batching, _speed, _xp
from ._angle import wrap_phi
from ._linearise import (
    back_substitute,
    barrier_jets,
    evaluate,
    guarded_inverse3,
    normal_blocks,
    residuals,
    schur,
    weighted_norm,
)
from ._smallmat import sym_from_array, sym_inverse, sym_matvec, sym_to_array
from ._validate import SAFE_TRACK, broadcast_batch, prepare

__all__ = ["VertexFit", "chi2", "degrees_of_freedom", "fit", "fit_with_core"]


class VertexFit(NamedTuple):
    """Result of :func:`vertexfit.fit` (a NamedTuple, hence a JAX/PyTorch pytree).

    Attributes:
        vertex: ``(..., 3)`` fitted vertex [mm], global frame.
        vertex_cov: ``(..., 3, 3)`` its covariance [mm^2].
        momenta: ``(..., T, 3)`` track momenta at the vertex, ``(phi, theta, rho)``;
            zero in masked slots. ``phi`` in (-pi, pi] (:func:`vertexfit.wrap_phi`).
        chi2: ``(...)`` the minimised objective: weighted track chi2 sum plus the prior term.
        track_chi2: ``(..., T)`` each track's unweighted chi2 ``r^T V^-1 r`` to the fitted
            vertex (zero in masked slots).
        ndf: ``(...)`` degrees of freedom ``2 sum(w) - 3`` (+3 with a vertex constraint):
            each track adds 5 measurements and 3 momentum parameters; with weights the sum
            of weights counts the tracks, as in adaptive vertex fitting.
        converged: ``(...)`` bool; True where the Gauss-Newton step from the result would
            move the vertex by less than 1e-3 of its error and the last step did not
            increase the objective. False otherwise (``n_iter=0`` from a seed that is not
            the solution, a fit still moving or oscillating), where fewer than two tracks
            have positive weight (and no constraint), the vertex system was singular, or
            (under ``jax.jit`` / vmap) the jet's input was invalid.
    """

    vertex: object
    vertex_cov: object
    momenta: object
    chi2: object
    track_chi2: object
    ndf: object
    converged: object


def fit(tracks, cov, weights=None, *, mask=None, seed=None, n_iter=10, model="helix",
        constraint=None, ref=None, adjoint="implicit", compile=False):
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
            fit converges in 2-4 for vertices within tens of mm of the seed). A step that
            increases the objective is taken back and retried shorter (docs/fit.md);
            fits that never do so take exactly the plain Gauss-Newton steps.
        model: ``"helix"`` (exact, default) or ``"billoir"`` (first order, paper App. A).
        constraint: optional ``(position (..., 3), covariance (..., 3, 3))`` Gaussian prior
            on the vertex (beam spot or primary vertex).
        ref: ``(..., 3)`` reference point of ``tracks`` [mm] (default: the origin).
        adjoint: how JAX and PyTorch differentiate the fit. ``"implicit"`` (default):
            implicit differentiation at the converged fit (docs/gradients.md), O(T) per
            jet, memory independent of ``n_iter``. ``"unrolled"``: plain autodiff through
            the ``n_iter`` iterations (a baseline; memory grows with ``n_iter``, and the
            derivative is that of the last iterate). Values are identical; NumPy ignores it.
        compile: PyTorch only (ignored elsewhere; on JAX use ``jax.jit``): run the
            Gauss-Newton step (step control included) and the implicit backward compiled by
            ``torch.compile`` (Inductor; ``vertexfit._speed``), the same arithmetic as the
            eager path (agreement to 1e-12 in float64 is tested). The first call in a process
            compiles (about a minute of CPU per unit; Inductor's disk cache serves later
            processes); a failed compilation warns once and runs eagerly. See docs/fit.md
            ("Speed").

    Returns:
        :class:`VertexFit` with arrays of the input namespace, dtype and device.

    On NumPy, batches of at least ~6,500 jets (of 15 tracks) run in chunks in
    ``VERTEXFIT_NUM_THREADS`` threads (default: the CPUs available, at most 8); the result
    does not depend on the thread count.

    Raises:
        ValueError: for an unknown ``adjoint`` or ``model``, a ``compile`` that is not a
            bool, and on eager backends (NumPy, PyTorch, JAX outside ``jit``) for wrong
            shapes, NaN/inf in unmasked inputs, a covariance that is not symmetric positive
            definite, theta outside (0, pi) or negative weights; the message names the
            argument, the problem and the first offending batch index. Under ``jax.jit`` or
            ``torch.func.vmap`` values cannot be checked: the offending jets are computed on
            harmless placeholder values and flagged ``converged=False`` (never NaN).
    """
    _adjoint.check(adjoint)
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False, got {compile!r}")

    def whole(tracks, cov, weights, mask, seed, constraint, ref):
        xp, prep = prepare(tracks, cov, weights, mask, seed, constraint, ref, n_iter, model)
        core = _adjoint.differentiable(xp, _chunked_core, adjoint)
        extra = {"compiled": True} if compile and _xp.backend_name(xp) == "torch" else {}
        with _xp.quiet(xp):  # padding and degenerate jets are handled by masks, not warnings
            out = core(xp, *prep.flat(xp), n_iter=n_iter, model=model, **extra)
        return _finish(xp, prep, out)

    args = (tracks, cov, weights, mask, seed, constraint, ref)
    return _batching.fit_in_chunks(whole, *args) or whole(*args)


def fit_with_core(tracks, cov, weights, mask, seed, constraint, ref, n_iter, model):
    """The plain fit (no autodiff rule) and what the derivative rules need of it.

    Returns ``(xp, prepared, core_inputs, core_outputs, result)``: the namespace, the
    :class:`vertexfit._validate.Prepared` inputs, the core's flat inputs and outputs, and
    the :class:`VertexFit`.
    """
    xp, prep = prepare(tracks, cov, weights, mask, seed, constraint, ref, n_iter, model)
    args = prep.flat(xp)
    with _xp.quiet(xp):
        out = _chunked_core(xp, *args, n_iter=n_iter, model=model)
    return xp, prep, args, out, _finish(xp, prep, out)


def degrees_of_freedom(xp, weights, constrained):
    """``2 sum(w) - 3`` over the last axis, +3 with a vertex constraint (docs/fit.md)."""
    ndf = 2.0 * xp.sum(weights, axis=-1) - 3.0
    return ndf + 3.0 if constrained else ndf


def _finish(xp, prep, out):
    """:class:`VertexFit` from the core's output: batch shape restored, global frame,
    padding zeroed."""
    u, C, mom, total, tchi2, ok = out
    batch = prep.batch
    T = prep.tracks.shape[-2]
    good = prep.mask
    vertex = xp.reshape(u, batch + (3,)) + prep.ref
    momenta = xp.where(good[..., None], xp.reshape(mom, batch + (T, 3)), 0.0)
    track_chi2 = xp.where(good, xp.reshape(tchi2, batch + (T,)), 0.0)
    ndf = degrees_of_freedom(xp, prep.weights, prep.ccov is not None)
    converged = xp.reshape(ok, batch) & ~prep.bad
    C, total = xp.reshape(C, batch + (3, 3)), xp.reshape(total, batch)
    if prep.wscale is not None:  # the core ran on weights / wscale (_validate._weight_scale)
        C, total = C / prep.wscale[..., None, None], total * prep.wscale
    return VertexFit(vertex, C, momenta, total, track_chi2, ndf, converged)


# --------------------------------------------------------------------------------------------
# the core: validated inputs on one jet axis B; track-major (T, B) inside
# --------------------------------------------------------------------------------------------
def _chunked_core(xp, tracks, cov, weights, seed, cpos, ccov, *, n_iter, model,
                  compiled=False):
    """:func:`_core` on cache-sized chunks of jets (:func:`_batching.core_in_chunks`)."""
    core = functools.partial(_core, compiled=True) if compiled else _core
    return _batching.core_in_chunks(core, xp, tracks, cov, weights, seed, cpos, ccov,
                                    n_iter=n_iter, model=model)


class _Problem(NamedTuple):
    """What stays fixed during the iterations (per-track (T, B), per-jet (B,))."""

    q: list            # the 5 measured perigee parameters
    G: dict            # 5x5 inverse covariance
    w: object          # weights (0 in masked slots)
    P: dict | None     # 3x3 prior information
    cpos: list | None  # 3 prior position components
    singular: object   # (B,) fewer than two weighted tracks and no prior


class _State(NamedTuple):
    """The loop state: vertex ``u`` (3 x (B,)), momenta ``p`` (3 x (T, B)) and ``(sin, cos)``
    of the momenta's phi (``None`` in a compiled step, which computes them where it needs
    them); for the step control the last point whose step was kept (``base_u``,
    ``base_p`` and its objective ``base_s`` (B,)), the step taken from it (``su``, ``sp``)
    and the step length factor ``alpha`` (B,), 1 for a plain Gauss-Newton step."""

    u: list
    p: list
    phi_sincos: tuple
    base_u: list
    base_p: list
    base_s: object
    su: list
    sp: list
    alpha: object


# A step that increased the objective is taken back and retried this much shorter; each kept
# step lets the length grow back by 2 (up to the full Gauss-Newton step).
_SHRINK = 0.25


def _core(xp, tracks, cov, weights, seed, cpos, ccov, *, n_iter, model, compiled=False):
    """Fit on sanitised inputs: tracks (B,T,5), cov (B,T,5,5) SPD, weights (B,T) (0 in
    masked slots), seed (B,3) local, cpos (B,3) local and ccov (B,3,3) or ``None``.

    Returns ``(u (B,3), vertex_cov (B,3,3), momenta (B,T,3), chi2 (B,), track_chi2 (B,T),
    ok (B,) bool)``; ``u`` is relative to the reference point. ``compiled`` (PyTorch):
    :func:`_step` compiled by ``torch.compile`` (:func:`vertexfit._speed.compiled`).
    """
    prob, state = _setup(xp, tracks, cov, weights, seed, cpos, ccov, sincos=not compiled)
    if compiled:
        state, (Minv, bad, du, track_chi2, total) = _compiled_steps(xp, model, prob, state,
                                                                    n_iter)
    else:
        step = functools.partial(_step, xp, model)

        # n_iter + 1 steps; the last one only linearises at the solution (the vertex
        # covariance, chi2 and the step that would come next, for `converged`; its update is
        # dropped): one step function is the whole iteration (one copy of the linearisation
        # in an XLA program)
        def body(_, carry):
            state, _ = carry
            nxt, at_state = step(prob, state)
            return nxt, (state, at_state)

        zero = xp.zeros_like(state.u[0])
        at0 = (state, ({k: zero for k in _UPPER3}, xp.zeros_like(prob.singular),
                       [zero for _ in range(3)], xp.zeros_like(prob.w), zero))
        state, (Minv, bad, du, track_chi2, total) = _speed.fori_loop(
            xp, n_iter + 1, body, (state, at0))[1]
    u, p = state.u, state.p
    sig = [xp.sqrt(Minv[(k, k)]) for k in range(3)]
    scale = xp.abs(u[0]) + xp.abs(u[1]) + xp.abs(u[2]) + 1.0
    tiny = 16.0 * _xp.eps(xp, scale.dtype) * scale
    still = [~(xp.abs(du[k]) <= 1e-3 * sig[k] + tiny) for k in range(3)]
    ok = (~bad & ~(still[0] | still[1] | still[2]) & _not_worse(xp, total, state.base_s)
          & xp.isfinite(total))
    momenta = xp.stack(xp.broadcast_arrays(wrap_phi(p[0]), p[1], p[2]), axis=-1)
    return (xp.stack(u, axis=-1), sym_to_array(xp, Minv, 3),
            xp.permute_dims(momenta, (1, 0, 2)), total, xp.permute_dims(track_chi2, (1, 0)),
            ok)


def _compiled_steps(xp, model, prob, state, n_iter):
    """The ``n_iter + 1`` steps of :func:`_core` with :func:`_step` compiled as one unit
    (:func:`vertexfit._speed.compiled`), called on a few packed arrays: every array a
    compiled call takes or returns costs guards and bookkeeping on each of the calls, which
    at small batches cost more than the step's arithmetic (docs/fit.md, "Speed").

    Returns what the loop of :func:`_core` returns: the state at which the last step
    linearised and that step's ``(Minv, bad, du, track_chi2, S)``.
    """
    step = _speed.compiled(f"fit step [{model}]", functools.partial(_packed_step, xp, model))
    fixed = _pack_problem(xp, prob)
    carry = _pack_state(xp, state)
    for _ in range(n_iter + 1):
        at_state = carry
        *carry, AJ, bad, track_chi2 = step(*fixed, *carry)
    Minv, du, total = _unpack(_xp.unstack(xp, AJ, axis=0), (_UPPER3, 3, 1))
    return _unpack_state(xp, *at_state), (Minv, bad, du, track_chi2, total[0])


def _packed_step(xp, model, PT, PJ, singular, ST, SJ):
    """:func:`_step` on packed arrays (:func:`_pack_problem`, :func:`_pack_state`); returns
    the next state's ``(ST, SJ)``, then ``AJ`` = (Minv components, du, S) (10, B), ``bad``
    (B,) and the track chi2 (T, B)."""
    q, G, w = _unpack(_xp.unstack(xp, PT, axis=0), (5, _UPPER5, 1))
    P = cpos = None
    if PJ is not None:
        P, cpos = _unpack(_xp.unstack(xp, PJ, axis=0), (_UPPER3, 3))
    prob = _Problem(q, G, w[0], P, cpos, singular)
    nxt, (Minv, bad, du, tchi2, total) = _step(xp, model, prob, _unpack_state(xp, ST, SJ))
    AJ = xp.stack([*(Minv[k] for k in _UPPER3), *du, total], axis=0)
    return (*_pack_state(xp, nxt), AJ, bad, tchi2)


def _pack_problem(xp, prob):
    """``(PT (21, T, B): q, G upper components, w; PJ (9, B): P upper components, cpos, or
    None; singular (B,))``."""
    PT = xp.stack([*prob.q, *(prob.G[k] for k in _UPPER5), prob.w], axis=0)
    PJ = None
    if prob.P is not None:
        PJ = xp.stack([*(prob.P[k] for k in _UPPER3), *prob.cpos], axis=0)
    return PT, PJ, prob.singular


def _pack_state(xp, state):
    """``(ST (9, T, B): p, base_p, sp; SJ (11, B): u, base_u, base_s, su, alpha)`` of a
    :class:`_State` without phi ``(sin, cos)``."""
    ST = xp.stack([*state.p, *state.base_p, *state.sp], axis=0)
    SJ = xp.stack([*state.u, *state.base_u, state.base_s, *state.su, state.alpha], axis=0)
    return ST, SJ


def _unpack_state(xp, ST, SJ):
    p, base_p, sp = _unpack(_xp.unstack(xp, ST, axis=0), (3, 3, 3))
    u, base_u, base_s, su, alpha = _unpack(_xp.unstack(xp, SJ, axis=0), (3, 3, 1, 3, 1))
    return _State(u, p, None, base_u, base_p, base_s[0], su, sp, alpha[0])


def _unpack(rows, layout):
    """Split ``rows`` into consecutive groups: an int ``n`` -> a list of n rows, a list of
    index pairs -> a dict of symmetric components."""
    out, i = [], 0
    for part in layout:
        n = part if isinstance(part, int) else len(part)
        group = list(rows[i:i + n])
        out.append(group if isinstance(part, int) else dict(zip(part, group)))
        i += n
    return out


def _objective(xp, prob, u, track_chi2):
    """S at the vertex ``u``: the weighted track chi2 sum plus the prior term (B,)."""
    total = xp.sum(prob.w * track_chi2, axis=0)
    if prob.P is not None:
        _, prior = weighted_norm(prob.P, [u[a] - c for a, c in enumerate(prob.cpos)], 3)
        total = total + prior
    return total


def _not_worse(xp, s_new, s_old):
    """``s_new`` is not above ``s_old`` beyond rounding (sqrt(eps) relative); False for NaN."""
    tol = _xp.eps(xp, s_new.dtype) ** 0.5
    return s_new <= s_old + tol * (1.0 + xp.abs(s_old))


_UPPER5 = [(i, j) for i in range(5) for j in range(i, 5)]
_UPPER3 = [(i, j) for i in range(3) for j in range(i, 3)]


def _setup(xp, tracks, cov, weights, seed, cpos, ccov, sincos=True):
    """The fixed :class:`_Problem` and the starting :class:`_State` (``sincos`` False: no
    phi ``(sin, cos)`` in it).

    The inputs are packed once into one track-major ``(21, T, B)`` array (the 5 track
    parameters, the 15 upper covariance components, the weight), so that per-jet sums over
    tracks are row additions and every component is read contiguously.
    """
    V = sym_from_array(xp, cov, 5)
    X = xp.stack([xp.permute_dims(c, (1, 0)) for c in
                  (*_xp.unstack(xp, tracks, axis=-1), *(V[ij] for ij in _UPPER5), weights)],
                 axis=0)
    X = _xp.unstack(xp, X, axis=0)
    G, _ = sym_inverse({ij: X[5 + n] for n, ij in enumerate(_UPPER5)}, 5)
    w = X[-1]
    P = None if ccov is None else sym_inverse(sym_from_array(xp, ccov, 3), 3)[0]
    singular = xp.sum(xp.astype(w > 0, xp.int32), axis=0) < 2
    if P is not None:
        singular = xp.zeros_like(singular)
    cpos = None if cpos is None else list(_xp.unstack(xp, cpos, axis=-1))
    u0 = list(_xp.unstack(xp, seed, axis=-1))
    p0 = list(X[2:5])
    state = _State(u0, p0, _speed.sincos(xp, p0[0]) if sincos else None, u0, p0,
                   xp.full_like(u0[0], math.inf),
                   [xp.zeros_like(u0[0]) for _ in range(3)],
                   [xp.zeros_like(p0[0]) for _ in range(3)], xp.ones_like(u0[0]))
    return _Problem(list(X[:5]), G, w, P, cpos, singular), state


def _step(xp, model, prob, state):
    """One Gauss-Newton step with step control (same shapes in and out, no data-dependent
    control flow, so a compiler can build it once and reuse it for every iteration).

    Returns ``(next_state, (Minv, bad, du, track_chi2, S))``: the next :class:`_State`, and,
    linearised at ``state``, the inverse vertex information, bad-jet flags, the full
    Gauss-Newton vertex step, the track chi2 (T, B) and the objective S (B,).

    The linearisation at the current point also gives the objective S there. If S did not
    rise (beyond rounding), the point is kept and the next step is the Gauss-Newton step from
    it, times ``alpha`` (which doubles back towards 1 after a shortened step). If S rose, the
    step that led here is taken back and retried :data:`_SHRINK` as long from the last kept
    point. A fit whose S never rises takes the plain Gauss-Newton steps, bit for bit
    (``alpha`` stays exactly 1). Low-momentum tracks need this (docs/fit.md).
    """
    Minv, bad, rhs, (E, Wbp, tok), tchi2 = _normal_equations(xp, model, prob, state)
    s_here = _objective(xp, prob, state.u, tchi2)
    keep = _not_worse(xp, s_here, state.base_s)
    du = sym_matvec(Minv, rhs, 3)
    dp = [xp.where(tok, d, 0.0) for d in back_substitute(Wbp, E, du)]
    # min(2 alpha, 1) as a select: xp.minimum with a Python scalar asks for a result type,
    # which torch.compile cannot trace in one graph
    grown = 2.0 * state.alpha
    alpha = xp.where(keep, xp.where(grown < 1.0, grown, 1.0), _SHRINK * state.alpha)
    f = xp.where(keep, alpha, _SHRINK)
    su = [xp.where(keep, du[a], state.su[a]) * f for a in range(3)]
    sp = [xp.where(keep, dp[i], state.sp[i]) * f for i in range(3)]
    base_u = [xp.where(keep, state.u[a], state.base_u[a]) for a in range(3)]
    base_p = [xp.where(keep, state.p[i], state.base_p[i]) for i in range(3)]
    base_s = xp.where(keep, s_here, state.base_s)
    u = [base_u[a] + su[a] for a in range(3)]
    p = [base_p[i] + sp[i] for i in range(3)]
    # sin/cos of the new phi travel in the state: computed once here, so that XLA cannot
    # re-fuse (duplicate) them into the many consumers of the next linearisation
    trig = None if state.phi_sincos is None else _speed.sincos(xp, p[0])
    return (_State(u, p, trig, base_u, base_p, base_s, su, sp, alpha),
            (Minv, bad, du, tchi2, s_here))


def _normal_equations(xp, model, prob, state):
    """The Gauss-Newton system linearised at ``state``: the vertex part reduced by the Schur
    complement, and the per-track pieces for the momentum update.

    Returns ``(Minv, bad, rhs, (E, Wbp, tok), track_chi2)``: the inverse vertex
    information ``M^-1`` (3x3 sym, (B,) components), the jets whose ``M`` was singular, the
    vertex right-hand side (3 x (B,)), the per-track Schur factors ``E``, ``W B^T G r`` and
    usable-track flags (:func:`vertexfit._linearise.schur`), and each track's chi2 (T, B).
    """
    w, P = prob.w, prob.P
    # stage boundaries (see _speed.barrier): the model's values and Jacobian, then G r and
    # the normal blocks, then the per-track Schur pieces are each computed once
    jets = barrier_jets(xp, evaluate(xp, model, [a[None, :] for a in state.u], state.p, 1,
                                     state.phi_sincos))
    r = residuals(xp, prob.q, jets)
    Gr, tchi2 = _speed.barrier(xp, weighted_norm(prob.G, r))
    F, b, _ = normal_blocks(prob.G, jets, Gr)
    F, b = _speed.barrier(xp, (F, b))
    _, E, S, rv, Wbp, tok = schur(xp, F, b)
    # a numerically singular track (see schur) contributes exactly nothing, never NaN
    Mmat = {k: xp.sum(w * xp.where(tok, v, 0.0), axis=0) for k, v in S.items()}
    rhs = [xp.sum(w * xp.where(tok, rv[a], 0.0), axis=0) for a in range(3)]
    if P is not None:
        Mmat = {k: Mmat[k] + P[k] for k in Mmat}
        rhs = [a + b for a, b in zip(rhs, sym_matvec(P, [c - u for c, u in
                                                        zip(prob.cpos, state.u)], 3))]
    Minv, bad = guarded_inverse3(xp, Mmat, prob.singular)
    bad = bad | xp.any(~tok & (w > 0), axis=0)
    return Minv, bad, rhs, _speed.barrier(xp, (E, Wbp, tok)), tchi2


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
    xp, prep = prepare(tracks, cov, weights, mask, None, None, ref, 0, model)
    if momenta.shape[-1:] != (3,) or tuple(momenta.shape[:-1]) != tuple(tracks.shape[:-1]):
        raise ValueError(f"momenta must have shape {tuple(tracks.shape[:-1]) + (3,)}, "
                         f"got {tuple(momenta.shape)}")
    t = prep.tracks
    v = broadcast_batch(xp, vertex, prep.batch, "vertex", t.dtype) - prep.ref
    G, _ = sym_inverse(sym_from_array(xp, prep.cov, 5), 5)
    safe_p = xp.asarray(SAFE_TRACK[2:], dtype=t.dtype, device=_xp.device(t))
    mom = xp.where(prep.mask[..., None], xp.astype(momenta, t.dtype), safe_p)
    h = evaluate(xp, model, [c[..., None] for c in _xp.unstack(xp, v, axis=-1)],
                 _xp.unstack(xp, mom, axis=-1), 0)
    r = residuals(xp, _xp.unstack(xp, t, axis=-1), h)
    _, tchi2 = weighted_norm(G, r)
    return xp.sum(prep.weights * tchi2, axis=-1)

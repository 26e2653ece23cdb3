"""Gradients of the vertex fit: implicit differentiation (vertexfit._implicit) and adapters.

References, each independent of the code under test:

* central finite differences (Richardson-extrapolated) of the whole fit re-run to convergence;
* a dense oracle per jet: the stationarity system and the outputs are written as plain
  functions of (x, alpha), differentiated by JAX autodiff into dense matrices, and solved
  with ``numpy.linalg.solve`` on the full (3+3T)^2 Hessian (no Schur complement, no jets);
* plain autodiff unrolled through ``n_iter`` iterations of the fit (JAX and PyTorch).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vertexfit as vf
from vertexfit import toy
from vertexfit._implicit import fit_jvp, fit_vjp

OUTPUTS = ("vertex", "vertex_cov", "momenta", "chi2", "track_chi2")
N_ITER = 20


# --------------------------------------------------------------------------------------------
# problems and helpers
# --------------------------------------------------------------------------------------------
def make_problem(n_jets=3, n_tracks=6, seed=0, *, variable=True, constraint=False,
                 ref=False, zero_weight=False, fill=np.nan):
    """Toy jets (float64 NumPy) with random weights; padding holds ``fill``."""
    t = toy.generate(n_jets, n_tracks, seed=seed, variable=variable, min_tracks=3, fill=fill,
                     displacement=3.0)
    rng = np.random.default_rng(seed + 1000)
    w = rng.uniform(0.3, 1.0, t.mask.shape)
    if zero_weight:
        w[:, 1] = 0.0  # a track with its own momentum but no say on the vertex
    w = np.where(t.mask, w, fill)
    kw = dict(mask=t.mask, n_iter=N_ITER)
    if constraint:
        pos = t.vertex + rng.normal(0.0, 0.5, t.vertex.shape)
        c = rng.normal(0.0, 0.3, (n_jets, 3, 3))
        kw["constraint"] = (pos, np.einsum("jab,jcb->jac", c, c) + np.diag([1.0, 1.5, 4.0]))
    if ref:
        kw["ref"] = rng.normal(0.0, 0.05, (n_jets, 3))
    return t, w, kw


def sigmas(cov):
    return np.sqrt(np.abs(np.diagonal(cov, axis1=-2, axis2=-1)))


def directions(t, w, kw, rng):
    """Random input directions in natural units (sigmas), zero in masked slots."""
    m = t.mask
    s = np.where(m[..., None], sigmas(np.nan_to_num(t.cov)), 0.0)
    d = {"tracks": rng.normal(size=t.tracks.shape) * s}
    a = rng.normal(size=t.cov.shape)
    d["cov"] = (a + np.swapaxes(a, -1, -2)) * 0.05 * s[..., :, None] * s[..., None, :]
    d["weights"] = np.where(m & (np.nan_to_num(w) > 0), rng.normal(size=w.shape), 0.0)
    if "constraint" in kw:
        pos, ccov = kw["constraint"]
        b = rng.normal(size=ccov.shape)
        d["constraint"] = (rng.normal(size=pos.shape), 0.1 * (b + np.swapaxes(b, -1, -2)))
    if "ref" in kw:
        d["ref"] = rng.normal(0.0, 0.01, kw["ref"].shape)
    return d


def shifted(t, w, kw, d, h):
    """Arguments of ``vf.fit`` moved by ``h`` along the directions ``d``."""
    args = {"tracks": t.tracks, "cov": t.cov, "weights": w}
    kw = dict(kw)
    for k, v in d.items():
        if k == "constraint":
            kw[k] = (kw[k][0] + h * v[0], kw[k][1] + h * v[1])
        elif k == "ref":
            kw[k] = kw[k] + h * v
        else:
            args[k] = np.where(np.isfinite(args[k]), args[k] + h * v, args[k])
    return args["tracks"], args["cov"], args["weights"], kw


def finite_difference(t, w, kw, d, h):
    """Richardson-extrapolated central difference of every fit output along ``d``."""

    def central(hh):
        p = vf.fit(*shifted(t, w, kw, d, hh)[:3], **shifted(t, w, kw, d, hh)[3])
        m = vf.fit(*shifted(t, w, kw, d, -hh)[:3], **shifted(t, w, kw, d, -hh)[3])
        out = {}
        for k in OUTPUTS:
            diff = getattr(p, k) - getattr(m, k)
            if k == "momenta":  # phi is wrapped to (-pi, pi]
                diff[..., 0] = np.remainder(diff[..., 0] + np.pi, 2 * np.pi) - np.pi
            out[k] = diff / (2 * hh)
        return out

    d1, d2 = central(h), central(h / 2)
    return {k: (4 * d2[k] - d1[k]) / 3 for k in OUTPUTS}


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def random_cotangents(shape_of, rng):
    return {k: rng.normal(size=shape_of[k]) for k in OUTPUTS}


# --------------------------------------------------------------------------------------------
# the array-API rules against finite differences of the re-converged fit (NumPy)
# --------------------------------------------------------------------------------------------
@settings(max_examples=5, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n_tracks=st.integers(3, 7), constraint=st.booleans(),
       ref=st.booleans())
def test_jvp_and_vjp_match_finite_differences(seed, n_tracks, constraint, ref):
    t, w, kw = make_problem(3, n_tracks, seed, constraint=constraint, ref=ref,
                            zero_weight=seed % 2 == 0)
    rng = np.random.default_rng(seed)
    dirs = directions(t, w, kw, rng)
    res, pullback = fit_vjp(t.tracks, t.cov, w, **kw)
    assert np.all(res.converged)
    shapes = {k: getattr(res, k).shape for k in OUTPUTS}
    cot = random_cotangents(shapes, rng)
    grads = pullback(cot)
    for name, d in dirs.items():
        fd = finite_difference(t, w, kw, {name: d}, 1e-3 if name != "weights" else 1e-4)
        _, dot = fit_jvp(t.tracks, t.cov, w, tangents={name: d}, **kw)
        # the requirement: the fitted vertex w.r.t. weights, tracks, cov (<= 1e-6)
        assert rel_err(dot.vertex, fd["vertex"]) <= 1e-6, name
        for k in OUTPUTS:
            assert rel_err(getattr(dot, k), fd[k]) <= 1e-5, (name, k)
        # VJP: <cot, J d> = <J^T cot, d>
        g = getattr(grads, name)
        if name == "constraint":
            got = np.sum(g[0] * d[0]) + np.sum(g[1] * d[1])
        else:
            got = np.sum(np.where(np.isfinite(d), g * d, 0.0))
        want = sum(np.sum(cot[k] * fd[k]) for k in OUTPUTS)
        assert abs(got - want) <= 1e-6 * abs(want) + 1e-9 * np.sqrt(
            sum(np.sum(cot[k] ** 2) * np.sum(fd[k] ** 2) for k in OUTPUTS)), name
    assert np.all(grads.seed == 0) if grads.seed is not None else True


def test_vjp_is_the_adjoint_of_the_jvp_on_every_backend(backend):
    """The array-API rules run on every namespace: <cot, J d> == <J^T cot, d> to 1e-12,
    with the input's namespace, dtype and shapes."""
    if backend.is_jax:
        pytest.skip("JAX compiles two fits and both rules here: see the slow test below; "
                    "the JAX adapter tests exercise the same rules under jit by default")
    check_adjoint(backend)


@pytest.mark.slow
def test_public_rules_work_under_jax_jit(backend):
    if not backend.is_jax:
        pytest.skip("the JAX case of the test above")
    check_adjoint(backend)


def check_adjoint(backend):
    t, w, kw = make_problem(2, 5, seed=3, constraint=True)
    rng = np.random.default_rng(4)
    dirs = directions(t, w, kw, rng)
    shapes = {"vertex": (2, 3), "vertex_cov": (2, 3, 3), "momenta": (2, 5, 3), "chi2": (2,),
              "track_chi2": (2, 5)}
    cot = random_cotangents(shapes, rng)
    A = backend.asarray

    def rules(tracks, cov, w, mask, cpos, ccov, cot, tg):
        kw2 = dict(mask=mask, n_iter=N_ITER, constraint=(cpos, ccov))
        res, pullback = fit_vjp(tracks, cov, w, **kw2)
        _, dot = fit_jvp(tracks, cov, w, tangents=tg, **kw2)
        g = pullback(cot)
        return res.vertex, g.tracks, g.cov, g.weights, g.constraint, dot._replace(converged=None)

    tg = {k: (tuple(A(x) for x in v) if k == "constraint" else A(v)) for k, v in dirs.items()}
    vertex, gt, gc, gw, gcons, dot = backend.jit(rules)(
        A(t.tracks), A(t.cov), A(w), A(t.mask), *(A(x) for x in kw["constraint"]),
        {k: A(v) for k, v in cot.items()}, tg)
    backend.check(vertex, (2, 3))
    backend.check(gt, t.tracks.shape)
    backend.check(gc, t.cov.shape)
    backend.check(gw, w.shape)
    backend.check(dot.vertex_cov, (2, 3, 3))
    lhs = sum(float(np.sum(cot[k] * backend.to_numpy(getattr(dot, k)))) for k in OUTPUTS)
    rhs = sum(float(np.sum(backend.to_numpy(g) * dirs[k]))
              for g, k in ((gt, "tracks"), (gc, "cov"), (gw, "weights")))
    rhs += sum(float(np.sum(backend.to_numpy(a) * b)) for a, b in zip(gcons, dirs["constraint"]))
    assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + abs(rhs)) + 1e-300


# --------------------------------------------------------------------------------------------
# padding, invariances, degenerate jets
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fill", [np.nan, np.inf, -1e300, 0.0])
def test_masked_slots_get_exactly_zero_gradient(fill):
    t, w, kw = make_problem(3, 6, seed=11, fill=fill, constraint=True)
    assert not t.mask.all()
    _, pullback = fit_vjp(t.tracks, t.cov, w, **kw)
    rng = np.random.default_rng(0)
    res = vf.fit(t.tracks, t.cov, w, **kw)
    g = pullback(random_cotangents({k: getattr(res, k).shape for k in OUTPUTS}, rng))
    for name in ("tracks", "cov", "weights"):
        a = getattr(g, name)
        assert np.all(np.isfinite(a)), name
        pad = ~t.mask.reshape(t.mask.shape + (1,) * (a.ndim - 2))
        assert np.all(np.where(pad, a, 0.0) == 0.0) and np.any(a != 0), name
        assert np.all(a[~t.mask] == 0.0), name


def test_common_weight_scaling_gradient_is_orthogonal_to_the_weights():
    """The vertex and momenta are invariant under w -> s w: d/ds = grad_w . w = 0."""
    t, w, kw = make_problem(4, 7, seed=21, variable=False)
    res, pullback = fit_vjp(t.tracks, t.cov, w, **kw)
    rng = np.random.default_rng(1)
    for out in ("vertex", "momenta"):
        g = pullback({out: rng.normal(size=getattr(res, out).shape)}).weights
        dot = np.sum(g * w, axis=-1)
        scale = np.linalg.norm(g, axis=-1) * np.linalg.norm(w, axis=-1)
        assert np.all(scale > 0)
        assert np.all(np.abs(dot) <= 1e-10 * scale), (out, dot / scale)
    # chi2 is homogeneous of degree one in the weights: grad . w = chi2 (Euler)
    g = pullback({"chi2": np.ones(res.chi2.shape)}).weights
    np.testing.assert_allclose(np.sum(g * w, axis=-1), res.chi2, rtol=1e-10)


def test_gauss_newton_option_is_approximate_and_exact_for_noise_free_tracks():
    t, w, kw = make_problem(3, 6, seed=5, variable=False)
    cot = {"vertex": np.ones((3, 3)), "momenta": np.ones((3, 6, 3))}
    g_ex = fit_vjp(t.tracks, t.cov, w, **kw)[1](cot)
    g_gn = fit_vjp(t.tracks, t.cov, w, hessian="gauss-newton", **kw)[1](cot)
    assert rel_err(g_gn.tracks, g_ex.tracks) > 1e-4  # noisy tracks: the curvature term counts
    clean = t._replace(tracks=t.true_tracks)
    g_ex = fit_vjp(clean.tracks, t.cov, w, **kw)[1](cot)
    g_gn = fit_vjp(clean.tracks, t.cov, w, hessian="gauss-newton", **kw)[1](cot)
    assert rel_err(g_gn.tracks, g_ex.tracks) <= 1e-7  # zero residuals: identical Hessians
    with pytest.raises(ValueError, match="hessian"):
        fit_vjp(t.tracks, t.cov, w, hessian="newton", **kw)


def test_degenerate_jets_give_finite_gradients():
    """One effective track (no constraint): finite numbers and converged=False, no NaN."""
    t, w, kw = make_problem(2, 4, seed=8, variable=False)
    w[0, 1:] = 0.0
    res, pullback = fit_vjp(t.tracks, t.cov, w, **kw)
    assert not res.converged[0]
    g = pullback({k: np.ones(getattr(res, k).shape) for k in OUTPUTS})
    for name in ("tracks", "cov", "weights"):
        assert np.all(np.isfinite(getattr(g, name))), name

"""Gradients of the vertex fit: implicit differentiation (vertexfit._implicit) and adapters.

References, each independent of the code under test:

* central finite differences (Richardson-extrapolated) of the whole fit re-run to convergence;
* a dense oracle per jet: the stationarity system and the outputs are written as plain
  functions of (x, alpha), differentiated by JAX autodiff into dense matrices, and solved
  with ``numpy.linalg.solve`` on the full (3+3T)^2 Hessian (no Schur complement, no jets);
* plain autodiff unrolled through ``n_iter`` iterations of the fit (JAX and PyTorch).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vertexfit as vf
from vertexfit import fit_jvp, fit_vjp, toy

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


# --------------------------------------------------------------------------------------------
# dense oracle: full (3+3T)^2 Hessian, dense solve
# --------------------------------------------------------------------------------------------
@functools.cache
def dense_oracle(T, model):
    """Dense derivative matrices of one jet with ``T`` tracks (vmapped over jets).

    The stationarity system ``f(x, alpha) = 0`` (``x = (u, p_1..p_T)``; vertex rows
    ``d/du [sum w s + prior] / 2``, momentum rows ``d s_i / d p_i / 2``) and the outputs
    ``o(x, alpha)`` are written as plain tensor functions; ``torch.func`` autodiff gives the
    dense matrices ``K = df/dx`` ((3+3T)^2: the full Hessian), ``df/dalpha``, ``do/dx`` and
    ``do/dalpha``. ``vertex_cov`` is ``(P + sum w (A^T G A - A^T G B (B^T G B)^-1 B^T G
    A))^-1`` with dense inverses. ``alpha = (tracks, cov, weights, cpos, ccov)`` flattened.
    """
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xt
    from torch.func import grad, jacfwd, vmap

    from vertexfit._linearise import evaluate, residuals

    sizes = (5 * T, 25 * T, T, 3, 9)
    inv, ein = torch.linalg.inv, torch.einsum

    def split(a):
        q, V, ww, cp, cc = torch.split(a, sizes)
        V = V.reshape(T, 5, 5)
        cc = cc.reshape(3, 3)
        return q.reshape(T, 5), inv((V + V.mT) / 2), ww, cp, inv((cc + cc.T) / 2)

    def model_h(u, p):
        h = evaluate(xt, model, [u[k].expand(T) for k in range(3)], [p[:, k] for k in range(3)],
                     0)
        return torch.stack(torch.broadcast_tensors(*h), dim=-1)

    def track_chi2(u, p, q, G):
        r = torch.stack(residuals(xt, list(q.T), list(model_h(u, p).T)), dim=-1)
        return ein("ta,tab,tb->t", r, G, r)

    def unpack(x):
        return x[:3], x[3:].reshape(T, 3)

    def f(x, a):
        u, p = unpack(x)
        q, G, ww, cp, P = split(a)
        fu = grad(lambda u: 0.5 * ((ww * track_chi2(u, p, q, G)).sum()
                                   + (u - cp) @ P @ (u - cp)))(u)
        fp = grad(lambda p: 0.5 * track_chi2(u, p, q, G).sum())(p)
        return torch.cat([fu, fp.reshape(-1)])

    def outputs(x, a):
        u, p = unpack(x)
        q, G, ww, cp, P = split(a)
        s = track_chi2(u, p, q, G)
        Aj = jacfwd(model_h, 0)(u, p)                                       # (T, 5, 3)
        Bj = ein("taic->tac", jacfwd(model_h, 1)(u, p) * torch.eye(T, dtype=x.dtype)[:, None,
                                                                                      :, None])
        AGA = ein("tka,tkm,tmc->tac", Aj, G, Aj)
        AGB = ein("tka,tkm,tmc->tac", Aj, G, Bj)
        BGB = ein("tka,tkm,tmc->tac", Bj, G, Bj)
        M = P + ein("t,tac->ac", ww, AGA - AGB @ inv(BGB) @ AGB.mT)
        chi2 = (ww * s).sum() + (u - cp) @ P @ (u - cp)
        return torch.cat([u, inv(M).reshape(-1), p.reshape(-1), chi2[None], s])

    def derivs(x, a):
        return (jacfwd(f, 0)(x, a), jacfwd(f, 1)(x, a), jacfwd(outputs, 0)(x, a),
                jacfwd(outputs, 1)(x, a))

    def run(x, a):
        out = vmap(derivs)(torch.from_numpy(x), torch.from_numpy(a))
        return [m.detach().numpy() for m in out]

    return run, sizes


def dense_oracle_vjp(tracks, cov, w, cpos, ccov, vertex, momenta, cot, model="helix"):
    """VJP of the fit outputs w.r.t. (tracks, cov, weights, cpos, ccov) by a dense solve:
    ``do/dalpha_total = do/dalpha - do/dx K^-1 df/dalpha`` with ``numpy.linalg.solve``."""
    J, T = tracks.shape[:2]
    derivs, sizes = dense_oracle(T, model)
    x = np.concatenate([vertex, momenta.reshape(J, -1)], axis=-1)
    a = np.concatenate([np.reshape(v, (J, -1)) for v in (tracks, cov, w, cpos, ccov)], axis=-1)
    K, f_a, o_x, o_a = derivs(x, a)
    total = o_a - o_x @ np.linalg.solve(K, f_a)
    cbar = np.concatenate([np.reshape(cot[k], (J, -1)) for k in OUTPUTS], axis=-1)
    g = np.einsum("jo,joa->ja", cbar, total)
    parts = np.split(g, np.cumsum(sizes)[:-1], axis=-1)
    return (parts[0].reshape(J, T, 5), parts[1].reshape(J, T, 5, 5), parts[2], parts[3],
            parts[4].reshape(J, 3, 3))


@pytest.mark.parametrize("model", ["helix", pytest.param("billoir", marks=pytest.mark.slow)])
def test_vjp_matches_dense_oracle(model):
    """Every output's cotangent, every input, with a constraint and a zero-weight track."""
    t, w, kw = make_problem(3, 4, seed=17, variable=False, constraint=True, zero_weight=True)
    kw["model"] = model
    res, pullback = fit_vjp(t.tracks, t.cov, w, **kw)
    assert np.all(res.converged)
    rng = np.random.default_rng(2)
    cot = random_cotangents({k: getattr(res, k).shape for k in OUTPUTS}, rng)
    g = pullback(cot)
    want = dense_oracle_vjp(t.tracks, t.cov, w, *kw["constraint"], res.vertex, res.momenta,
                            cot, model)
    got = (g.tracks, g.cov, g.weights, *g.constraint)
    # compare in natural units (gradient x input scale): entries span many decades
    s = sigmas(t.cov)
    scales = (s, s[..., :, None] * s[..., None, :], 1.0, 1.0, 1.0)
    for name, a, b, sc in zip(("tracks", "cov", "weights", "cpos", "ccov"), got, want, scales):
        err = rel_err(a * sc, b * sc)
        assert err <= 1e-10, (name, err)


# --------------------------------------------------------------------------------------------
# adapters: a shared problem with every input differentiable and every output used
# --------------------------------------------------------------------------------------------
ADAPTER_INPUTS = ("tracks", "cov", "weights", "cpos", "ccov", "ref", "seed")


@functools.cache
def adapter_problem():
    """Padded (NaN) jets with a constraint, a reference point, a seed, random cotangents and
    the NumPy rules' gradients (the common reference of the JAX and PyTorch tests)."""
    t, w, kw = make_problem(3, 5, seed=41, constraint=True, ref=True, zero_weight=True)
    rng = np.random.default_rng(7)
    inputs = {"tracks": t.tracks, "cov": t.cov, "weights": w, "cpos": kw["constraint"][0],
              "ccov": kw["constraint"][1], "ref": kw["ref"],
              "seed": kw["ref"] + rng.normal(0.0, 0.1, (3, 3))}
    res, pullback = fit_vjp(t.tracks, t.cov, w, mask=t.mask, n_iter=N_ITER,
                            constraint=kw["constraint"], ref=kw["ref"], seed=inputs["seed"])
    cot = random_cotangents({k: getattr(res, k).shape for k in OUTPUTS}, rng)
    g = pullback(cot)
    want = {"tracks": g.tracks, "cov": g.cov, "weights": g.weights, "cpos": g.constraint[0],
            "ccov": g.constraint[1], "ref": g.ref, "seed": g.seed}
    return t.mask, inputs, cot, want


def adapter_loss(xp, inputs, mask, cot, n_iter=N_ITER, adjoint="implicit"):
    """Sum of <cotangent, output> over every differentiable output of ``vf.fit``."""
    r = vf.fit(inputs["tracks"], inputs["cov"], inputs["weights"], mask=mask, n_iter=n_iter,
               constraint=(inputs["cpos"], inputs["ccov"]), ref=inputs["ref"],
               seed=inputs["seed"], adjoint=adjoint)
    return sum(xp.sum(getattr(r, k) * cot[k]) for k in OUTPUTS)


def check_adapter_grads(got, want, mask, tol):
    for k in ADAPTER_INPUTS:
        g = np.asarray(got[k])
        assert g.shape == want[k].shape, k
        assert np.all(np.isfinite(g)), k
        if k == "seed":
            assert np.all(g == 0.0)
            continue
        if k in ("tracks", "cov", "weights"):
            assert np.all(g[~mask] == 0.0), k  # padding holds NaN: exactly zero gradient
        assert rel_err(g, want[k]) <= tol, (k, rel_err(g, want[k]))


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------
def _torch_leaves(inputs, requires_grad=True):
    torch = pytest.importorskip("torch")
    return {k: torch.asarray(np.ascontiguousarray(v), dtype=torch.float64)
            .requires_grad_(requires_grad) for k, v in inputs.items()}


def test_torch_backward_matches_the_rules():
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xt

    mask, inputs, cot, want = adapter_problem()
    leaves = _torch_leaves(inputs)
    tcot = {k: torch.asarray(v) for k, v in cot.items()}
    adapter_loss(xt, leaves, torch.asarray(mask), tcot).backward()
    check_adapter_grads({k: v.grad.numpy() for k, v in leaves.items()}, want, mask, 1e-10)


def test_torch_implicit_matches_unrolled_autodiff():
    """Autodiff through 30 unrolled iterations (the core without the custom rule)."""
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xt

    mask, inputs, cot, _ = adapter_problem()
    tcot = {k: torch.asarray(v) for k, v in cot.items()}
    grads = []
    for adjoint in ("implicit", "unrolled"):
        leaves = _torch_leaves(inputs)
        adapter_loss(xt, leaves, torch.asarray(mask), tcot, n_iter=30, adjoint=adjoint).backward()
        grads.append({k: v.grad.numpy() for k, v in leaves.items()})
    implicit, unrolled = grads
    for k in ADAPTER_INPUTS:
        if k == "seed":  # unrolled: ~0 after 30 iterations; implicit: exactly 0
            assert np.max(np.abs(unrolled[k])) <= 1e-6 * np.max(np.abs(unrolled["ref"]))
            continue
        assert rel_err(implicit[k], unrolled[k]) <= 1e-6, (k, rel_err(implicit[k], unrolled[k]))


def test_torch_func_transforms_equal_eager_loops():
    torch = pytest.importorskip("torch")
    from torch.func import grad, jacfwd, jacrev, jvp, vmap

    mask, inputs, cot, _ = adapter_problem()
    x = _torch_leaves(inputs, requires_grad=False)
    m = torch.asarray(mask)
    vcot = torch.asarray(cot["vertex"])

    def one_jet(tracks, cov, weights, mask, cpos, ccov, ref, c):
        r = vf.fit(tracks, cov, weights, mask=mask, n_iter=N_ITER, constraint=(cpos, ccov),
                   ref=ref)
        return (r.vertex * c).sum() + r.chi2

    args = (x["tracks"], x["cov"], x["weights"], m, x["cpos"], x["ccov"], x["ref"], vcot)
    batched = vmap(grad(one_jet, argnums=(0, 2, 4)))(*args)
    for j in range(3):
        leaves = [a[j].clone().requires_grad_(a.dtype == torch.float64) for a in args]
        one_jet(*leaves).backward()
        for b, i in zip(batched, (0, 2, 4)):
            np.testing.assert_allclose(b[j].numpy(), leaves[i].grad.numpy(), rtol=1e-12,
                                       atol=1e-12 * float(b.abs().max()))

    def vertex_of(weights, tracks):
        return vf.fit(tracks, x["cov"], weights, mask=m, n_iter=N_ITER).vertex

    jr = jacrev(vertex_of, argnums=(0, 1))(x["weights"], x["tracks"])
    jf = jacfwd(vertex_of, argnums=(0, 1))(x["weights"], x["tracks"])
    for a, b in zip(jr, jf):
        assert a.shape == b.shape and torch.isfinite(a).all()
        assert rel_err(a.numpy(), b.numpy()) <= 1e-11
    d = torch.where(m, torch.randn(m.shape, dtype=torch.float64, generator=torch.Generator()
                                   .manual_seed(0)), 0.0)
    _, dv = jvp(lambda w: vertex_of(w, x["tracks"]), (x["weights"],), (d,))
    np.testing.assert_allclose(dv.numpy(), torch.einsum("jajt,jt->ja", jr[0].reshape(
        3, 3, 3, 5), d).numpy(), rtol=1e-10, atol=1e-14)


def test_torch_gradcheck_and_gradgradcheck():
    """Double backward works: the backward is differentiable torch code on the inputs and the
    saved outputs (which link back to the Function). Inputs are scaled to O(1) so that the
    finite differences of gradcheck stay valid (covariances stay positive definite)."""
    torch = pytest.importorskip("torch")
    t = toy.generate(1, 4, seed=9)
    q0 = torch.asarray(t.tracks)
    sg = torch.asarray(sigmas(t.cov))

    def fn(z, a, w):
        cov = sg[..., :, None] * (a + a.mT) / 2 * sg[..., None, :]
        r = vf.fit(q0 + sg * z, cov, w, n_iter=N_ITER)
        return r.vertex, r.vertex_cov, r.momenta, r.chi2, r.track_chi2

    gen = torch.Generator().manual_seed(0)
    inputs = (torch.zeros(1, 4, 5, dtype=torch.float64, requires_grad=True),
              (torch.eye(5, dtype=torch.float64) + 0.1 * torch.rand(
                  1, 4, 5, 5, dtype=torch.float64, generator=gen)).requires_grad_(),
              (0.5 + torch.rand(1, 4, dtype=torch.float64, generator=gen)).requires_grad_())
    opts = dict(eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
    assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True, **opts)
    assert torch.autograd.gradgradcheck(fn, inputs, **opts)


def test_torch_float32_runs_and_is_close_to_float64():
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xt

    mask, inputs, cot, _ = adapter_problem()
    grads = {}
    for dtype in (torch.float32, torch.float64):
        leaves = {k: torch.asarray(np.ascontiguousarray(v), dtype=dtype).requires_grad_()
                  for k, v in inputs.items() if k != "seed"}
        r = vf.fit(leaves["tracks"], leaves["cov"], leaves["weights"], mask=torch.asarray(mask),
                   n_iter=N_ITER, constraint=(leaves["cpos"], leaves["ccov"]), ref=leaves["ref"])
        loss = sum(xt.sum(getattr(r, k) * torch.asarray(cot[k], dtype=dtype))
                   for k in ("vertex", "momenta"))
        loss.backward()
        for k, v in leaves.items():
            assert v.grad.dtype == dtype and torch.isfinite(v.grad).all(), k
        grads[dtype] = {k: v.grad.double().numpy() for k, v in leaves.items()}
    # natural units; float32 loses ~1e-2 here (measured 2-4% on tracks): the exact momentum
    # block N_pp = B^T G B - sum (G r)_k H_k is badly scaled (rho vs angles); float64 is exact
    s = np.nan_to_num(sigmas(inputs["cov"]))
    for k, sc in (("tracks", s), ("weights", 1.0), ("cpos", 1.0), ("ref", 1.0)):
        err = rel_err(grads[torch.float32][k] * sc, grads[torch.float64][k] * sc)
        assert err <= 0.1, (k, err)


# --------------------------------------------------------------------------------------------
# JAX: everything under one jax.jit (compilation dominates the cost of these tests)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jax_results():
    """grad, jacfwd, jacrev and vmap, all in one compiled function, as NumPy arrays."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    mask, inputs, cot, _ = adapter_problem()
    x = {k: jnp.asarray(v) for k, v in inputs.items()}
    jcot = {k: jnp.asarray(v) for k, v in cot.items()}
    m = jnp.asarray(mask)

    def transforms(x, m, jcot):
        out = {"grad": jax.grad(lambda x: adapter_loss(jnp, x, m, jcot, n_iter=30))(x)}

        def vertex_of(weights, tracks):
            return vf.fit(tracks, x["cov"], weights, mask=m, n_iter=N_ITER).vertex

        # w.r.t. the weights only: symbolic-zero tangents prune the rule (and the compile)
        out["jacfwd"] = jax.jacfwd(vertex_of)(x["weights"], x["tracks"])
        out["jacrev"] = jax.jacrev(vertex_of)(x["weights"], x["tracks"])

        def one_jet(tracks, cov, weights, mask, cpos, ccov, ref, c):
            r = vf.fit(tracks, cov, weights, mask=mask, n_iter=N_ITER, constraint=(cpos, ccov),
                       ref=ref)
            return jnp.sum(r.vertex * c) + r.chi2

        out["vmap"] = jax.vmap(jax.grad(one_jet, argnums=(2, 4)))(
            x["tracks"], x["cov"], x["weights"], m, x["cpos"], x["ccov"], x["ref"],
            jcot["vertex"])
        return out

    res = jax.jit(transforms)(x, m, jcot)
    return jax.tree_util.tree_map(np.asarray, res)


def test_jax_grad_matches_the_rules(jax_results):
    mask, _, _, want = adapter_problem()
    check_adapter_grads(jax_results["grad"], want, mask, 1e-10)


@pytest.mark.slow
def test_jax_implicit_matches_unrolled_autodiff(jax_results):
    """Reverse mode through 30 unrolled iterations (the plain core; ~4 min to compile here)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    mask, inputs, cot, _ = adapter_problem()
    x = {k: jnp.asarray(v) for k, v in inputs.items()}
    jcot = {k: jnp.asarray(v) for k, v in cot.items()}
    unrolled = jax.jit(jax.grad(lambda x: adapter_loss(jnp, x, jnp.asarray(mask), jcot,
                                                       n_iter=30, adjoint="unrolled")))(x)
    implicit = jax_results["grad"]
    for k in ADAPTER_INPUTS:
        if k == "seed":
            assert np.max(np.abs(unrolled[k])) <= 1e-6 * np.max(np.abs(unrolled["ref"]))
            continue
        assert rel_err(implicit[k], unrolled[k]) <= 1e-6, (k, rel_err(implicit[k], unrolled[k]))


def test_jax_jacfwd_equals_jacrev(jax_results):
    a, b = jax_results["jacfwd"], jax_results["jacrev"]
    assert a.shape == b.shape == (3, 3, 3, 5) and np.all(np.isfinite(a))
    assert rel_err(a, b) <= 1e-11
    mask, _, _, _ = adapter_problem()
    assert np.all(a.transpose(2, 3, 0, 1)[~mask] == 0)


def test_jax_and_torch_agree_with_eager_loops(jax_results):
    """JAX (jit, vmap over jets) vs PyTorch (eager loop over jets and batched backward)."""
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xt

    mask, inputs, cot, _ = adapter_problem()
    leaves = _torch_leaves(inputs)
    adapter_loss(xt, leaves, torch.asarray(mask), {k: torch.asarray(v) for k, v in cot.items()},
                 n_iter=30).backward()
    for k in ADAPTER_INPUTS:
        err = rel_err(jax_results["grad"][k], leaves[k].grad.numpy())
        assert err <= 1e-10, (k, err)
    x = _torch_leaves(inputs, requires_grad=False)
    for j in range(mask.shape[0]):
        one = {k: x[k][j].clone().requires_grad_() for k in ("tracks", "cov", "weights", "cpos",
                                                              "ccov", "ref")}
        r = vf.fit(one["tracks"], one["cov"], one["weights"], mask=torch.asarray(mask[j]),
                   n_iter=N_ITER, constraint=(one["cpos"], one["ccov"]), ref=one["ref"])
        ((r.vertex * torch.asarray(cot["vertex"][j])).sum() + r.chi2).backward()
        for got, k in zip(jax_results["vmap"], ("weights", "cpos")):
            err = rel_err(got[j], one[k].grad.numpy())
            assert err <= 1e-10, (j, k, err)


# --------------------------------------------------------------------------------------------
# closed-form functions: plain autodiff (no custom rule) on both backends
# --------------------------------------------------------------------------------------------
def closed_form_problem():
    t = toy.generate(2, 4, seed=12, displacement=2.0)
    rng = np.random.default_rng(5)
    args = {"vertex": t.vertex, "momenta": t.momenta, "ref": rng.normal(0, 0.1, (2, 3)),
            "tracks": t.tracks, "cov": t.cov, "weights": rng.uniform(0.5, 1, (2, 4)),
            "new_ref": t.vertex + rng.normal(0, 0.1, (2, 3))}
    s = sigmas(t.cov)
    a = rng.normal(size=t.cov.shape)
    dirs = {"vertex": rng.normal(0, 0.01, (2, 3)), "momenta": rng.normal(0, 1e-3, (2, 4, 3)),
            "ref": rng.normal(0, 0.01, (2, 3)), "tracks": rng.normal(size=(2, 4, 5)) * s,
            "cov": 0.05 * (a + np.swapaxes(a, -1, -2)) * s[..., :, None] * s[..., None, :],
            "weights": rng.normal(size=(2, 4)), "new_ref": rng.normal(0, 0.01, (2, 3))}
    return args, dirs


def closed_form_scalar(xp, a):
    """perigee, chi2 and extrapolate in one scalar, every argument used."""
    q = vf.perigee(a["vertex"], a["momenta"], a["ref"])
    c2 = vf.chi2(a["tracks"], a["cov"], a["vertex"], a["momenta"], a["weights"], ref=a["ref"])
    t2, c2v = vf.extrapolate(a["tracks"], a["cov"], a["new_ref"], ref=a["ref"])
    sq = vf.covariance_from_sigmas(xp.ones_like(q))
    return (xp.sum(q * q) + xp.sum(c2) + xp.sum(t2 * t2) + 1e3 * xp.sum(c2v)
            + 1e-6 * xp.sum(sq))


def closed_form_reference():
    import array_api_compat.numpy as xnp

    args, dirs = closed_form_problem()
    want = {}
    for k, d in dirs.items():
        def at(h, k=k, d=d):
            return closed_form_scalar(xnp, {**args, k: args[k] + h * d})

        h = 1e-3
        want[k] = (8 * (at(h / 2) - at(-h / 2)) - (at(h) - at(-h))) / (6 * h)
    return args, dirs, want


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_autodiff_through_perigee_chi2_extrapolate(framework):
    args, dirs, want = closed_form_reference()
    if framework == "jax":
        jax = pytest.importorskip("jax")
        x = {k: jax.numpy.asarray(v) for k, v in args.items()}
        g = jax.jit(jax.grad(lambda x: closed_form_scalar(jax.numpy, x)))(x)
        got = {k: np.asarray(v) for k, v in g.items()}
    else:
        torch = pytest.importorskip("torch")
        import array_api_compat.torch as xt

        x = {k: torch.asarray(v).requires_grad_() for k, v in args.items()}
        closed_form_scalar(xt, x).backward()
        got = {k: v.grad.numpy() for k, v in x.items()}
    for k, d in dirs.items():
        val = float(np.sum(got[k] * d))
        assert abs(val - want[k]) <= 1e-6 * abs(want[k]) + 1e-9, (k, val, want[k])


def test_public_rules_shapes_broadcasting_and_none():
    """Broadcast arguments get gradients of their own shape; ``None`` arguments get ``None``;
    a broadcast reference point moves the vertex one to one (without a constraint)."""
    t = toy.generate(3, 5, seed=2)
    ref = np.array([0.01, -0.02, 0.03])
    _, pullback = fit_vjp(t.tracks, t.cov, ref=ref, n_iter=N_ITER)
    g = pullback({"vertex": np.ones((3, 3)), "momenta": None})
    assert g.weights is None and g.constraint is None and g.seed is None
    assert g.tracks.shape == t.tracks.shape and g.cov.shape == t.cov.shape
    np.testing.assert_allclose(g.ref, [3.0, 3.0, 3.0], rtol=1e-12)
    np.testing.assert_allclose(g.cov, np.swapaxes(g.cov, -1, -2), rtol=0, atol=0)
    _, dot = fit_jvp(t.tracks, t.cov, ref=ref, n_iter=N_ITER, tangents={"ref": np.ones(3)})
    np.testing.assert_allclose(dot.vertex, np.ones((3, 3)), rtol=1e-12)
    assert np.all(dot.momenta == 0) and dot.converged is None

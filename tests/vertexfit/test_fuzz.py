"""Hypothesis fuzzing of the public fit: masks, weights, garbage, dtypes, extreme physics.

Every property runs twice: a bounded, derandomised run in the default suite (CI) and a
larger random run behind the ``slow`` marker (``pytest -m slow tests/vertexfit/test_fuzz.py``).
Each example is a small batch of jets with 4 track slots, 0-4 of them used, drawn from:

* vertices from the origin out to 300 mm, in any direction;
* tracks with theta from 1e-3 to pi - 1e-3, pT from 0.1 GeV to 2 TeV, either charge, spread
  around the jet axis from 1e-5 (nearly collinear) to 0.3 rad, correlated d0-phi and
  z0-theta errors, smeared with their covariance;
* weights of any scale: 0, subnormal, 1e-300 ... 1e300 (float32: its own range), exact
  zeros among them;
* masked slots holding garbage (NaN, +-inf, +-1e300, subnormals, a non-SPD covariance,
  negative or NaN weights).

The guarantees (docs/reliability.md): no NaN in any output or gradient; no inf unless the
exact value exceeds the dtype's range (vertex_cov ~ 1 / weight scale); garbage in masked
slots changes nothing; ``converged`` is True only where the fit really converged.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import vertexfit as vf

T = 4  # track slots per jet
B = 3  # jets per example
FIELDS = ("vertex", "vertex_cov", "momenta", "chi2", "track_chi2", "ndf")

# the CI run, and the larger one behind the slow marker
FAST, SLOW = 10, 300
SIZES = [pytest.param(FAST, id="ci"), pytest.param(SLOW, id="large", marks=pytest.mark.slow)]


def _settings(n):
    return settings(max_examples=n, deadline=None, derandomize=n == FAST, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------
GARBAGE = [math.nan, math.inf, -math.inf, 1e300, -1e300, 5e-324, 0.0]
WEIGHT_SCALES = {
    "float64": [0.0, 5e-324, 1e-310, 1e-300, 1e-40, 1e-20, 1e-6, 1.0, 1e6, 1e20, 1e300],
    "float32": [0.0, 1e-45, 1e-40, 1e-30, 1e-20, 1e-6, 1.0, 1e6, 1e20, 1e30],
}


@st.composite
def jet(draw, weight_scales=None):
    """One jet: a dict of NumPy float64 arrays (tracks, cov, weights, mask, vertex)."""
    n = draw(st.integers(0, T))
    distance = draw(st.sampled_from([0.0, 1e-3, 0.5, 5.0, 50.0, 300.0])
                    | st.floats(0.0, 300.0))
    axis_theta = draw(st.sampled_from([1e-3, 0.05, math.pi - 0.05, math.pi - 1e-3])
                      | st.floats(0.02, math.pi - 0.02))
    axis_phi = draw(st.floats(-math.pi, math.pi))
    spread = draw(st.sampled_from([1e-5, 1e-3, 0.05, 0.3]))
    corr = draw(st.floats(-0.9, 0.9))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    axis = np.array([math.sin(axis_theta) * math.cos(axis_phi),
                     math.sin(axis_theta) * math.sin(axis_phi), math.cos(axis_theta)])
    vertex = distance * axis
    phi = axis_phi + spread * rng.normal(size=T)
    theta = np.clip(axis_theta + spread * rng.normal(size=T), 1e-3, math.pi - 1e-3)
    lo, hi = draw(st.sampled_from([(0.1, 2000.0), (0.1, 0.5), (100.0, 2000.0)]))
    pt = np.exp(rng.uniform(math.log(lo), math.log(hi), T))
    rho = vf.curvature(rng.choice([-1.0, 1.0], T), pt)
    momenta = np.stack([phi, theta, rho], axis=-1)
    tracks = vf.perigee(vertex, momenta)
    sig = np.stack([0.01 + 0.1 / pt, 0.02 + 0.15 / pt, 1e-4 + 1e-3 / pt, 1e-4 + 1e-3 / pt,
                    np.abs(rho) * (0.01 + 5e-4 * pt)], axis=-1)
    C = np.broadcast_to(np.eye(5), (T, 5, 5)).copy()
    C[:, 0, 2] = C[:, 2, 0] = corr
    C[:, 1, 3] = C[:, 3, 1] = -corr
    cov = vf.covariance_from_sigmas(sig, C)
    noise = np.einsum("tij,tj->ti", np.linalg.cholesky(cov), rng.normal(size=(T, 5)))
    tracks = tracks + noise
    tracks[:, 3] = np.clip(tracks[:, 3], 5e-4, math.pi - 5e-4)
    mask = np.arange(T) < n
    scales = weight_scales or [1.0]
    w = draw(st.sampled_from(scales)) * rng.uniform(0.0, 1.0, T)
    w[rng.random(T) < 0.2] = 0.0
    # garbage in the masked slots
    tracks[~mask] = draw(st.sampled_from(GARBAGE))
    cov_garbage = draw(st.sampled_from([*GARBAGE, None]))
    cov[~mask] = -np.eye(5) if cov_garbage is None else cov_garbage  # None: not SPD
    w[~mask] = draw(st.sampled_from([math.nan, -1.0, math.inf, 0.0]))
    return dict(tracks=tracks, cov=cov, weights=w, mask=mask, vertex=vertex)


def batch(weight_scales=None):
    return st.lists(jet(weight_scales), min_size=B, max_size=B).map(
        lambda js: {k: np.stack([j[k] for j in js]) for k in js[0]})


def _clean(case):
    """The same case with zeros (and unit covariances) in the masked slots."""
    m = case["mask"]
    out = dict(case)
    out["tracks"] = np.where(m[..., None], case["tracks"], 0.0)
    out["cov"] = np.where(m[..., None, None], case["cov"], np.eye(5))
    out["weights"] = np.where(m, case["weights"], 0.0)
    return out


# --------------------------------------------------------------------------------------------
# running the fit on a backend
# --------------------------------------------------------------------------------------------
_JIT = {}


def run_fit(backend, case, dtype, *, n_iter=10, grad=False, scaled=False):
    """``(result fields as NumPy float64, gradients or None)`` of ``vf.fit`` on ``backend``.

    The gradients are those of a fixed random linear combination of every output w.r.t.
    tracks, cov and weights (JAX: under ``jit``; PyTorch: eager autograd). ``scaled``: the
    combination takes ``vertex_cov * s`` and ``chi2 / s`` with ``s`` each jet's largest weight
    (a constant), the outputs whose size does not depend on the weight scale, and leaves
    chi2 out (``chi2 / s`` overflows in its own backward pass for subnormal ``s``).
    """
    args = [case["tracks"], case["cov"], case["weights"]]
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        w = np.where(case["mask"], case["weights"], 0.0).astype(dtype)
    s = np.max(w, axis=-1) if scaled else np.ones(B)
    s = np.where(s > 0, s, 1.0).astype(dtype)
    cot = np.random.default_rng(0)
    cots = {f: cot.normal(size=(B,) + shape)
            for f, shape in (("vertex", (3,)), ("vertex_cov", (3, 3)), ("chi2", ()),
                             ("momenta", (T, 3)), ("track_chi2", (T,)))}
    if backend == "numpy":
        with np.errstate(over="ignore"):  # garbage 1e300 is inf in float32
            args = [a.astype(dtype) for a in args]
        r = vf.fit(*args, mask=case["mask"], n_iter=n_iter)
        return {f: np.asarray(getattr(r, f), np.float64) for f in FIELDS} | {
            "converged": np.asarray(r.converged)}, None
    if backend == "torch":
        import torch

        tdt = getattr(torch, dtype)
        ts = [torch.tensor(a, dtype=tdt, requires_grad=grad) for a in args]
        r = vf.fit(*ts, mask=torch.tensor(case["mask"]), n_iter=n_iter)
        out = {f: getattr(r, f).detach().double().numpy() for f in FIELDS}
        out["converged"] = r.converged.numpy()
        grads = None
        if grad:
            sc = torch.tensor(s)
            mult = {"vertex_cov": sc[:, None, None], "chi2": 0.0 if scaled else 1.0}
            loss = sum((getattr(r, f) * torch.tensor(c, dtype=tdt) * mult.get(f, 1.0)).sum()
                       for f, c in cots.items())
            grads = [g.double().numpy() for g in torch.autograd.grad(loss, ts)]
        return out, grads
    import jax
    import jax.numpy as jnp

    # one compilation per dtype and n_iter (values and gradients together): compiling is
    # most of the JAX cost here
    jdt = getattr(jnp, dtype)
    key = (dtype, n_iter)
    if key not in _JIT:
        def f(tr, cv, w, m, sc, sc_off):
            r = vf.fit(tr, cv, w, mask=m, n_iter=n_iter)
            mult = {"vertex_cov": sc[:, None, None], "chi2": 1.0 - sc_off}
            loss = sum((getattr(r, k) * jnp.asarray(c, dtype=jdt) * mult.get(k, 1.0)).sum()
                       for k, c in cots.items())
            return loss, r

        _JIT[key] = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))
    (_, r), g = _JIT[key](*[jnp.asarray(a, dtype=jdt) for a in args], jnp.asarray(case["mask"]),
                          jnp.asarray(s), jnp.asarray(float(scaled), dtype=jdt))
    out = {f: np.asarray(getattr(r, f), np.float64) for f in FIELDS}
    out["converged"] = np.asarray(r.converged)
    return out, [np.asarray(x, np.float64) for x in g] if grad else None


def _vertex_cov_can_be_finite(case, dtype):
    """vertex_cov scales as 1 / (weight scale): finite unless that exceeds the dtype."""
    w = np.where(case["mask"], case["weights"], 0.0).astype(dtype)
    return w.max(axis=-1) * float(np.finfo(dtype).max) > 1e12


def check_outputs(case, out, dtype):
    for f in FIELDS:
        assert not np.isnan(out[f]).any(), f"NaN in {f}"
    for f in ("vertex", "momenta", "track_chi2", "ndf"):
        assert np.isfinite(out[f]).all(), f"inf in {f}"
    finite_cov = _vertex_cov_can_be_finite(case, dtype)
    assert np.isfinite(out["vertex_cov"][finite_cov]).all(), "inf in vertex_cov"
    m = case["mask"]
    assert (out["momenta"][~m] == 0).all() and (out["track_chi2"][~m] == 0).all()
    # fewer than two tracks of positive weight: no vertex, never "converged"
    n_pos = ((case["weights"] > 0) & m).sum(-1)
    assert not out["converged"][n_pos < 2].any()


BACKENDS = ["numpy", "torch", "jax"]
DTYPES = ["float64", "float32"]


# --------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_garbage_changes_nothing_and_outputs_are_clean(backend, dtype, n):
    @_settings(n)
    @given(case=batch())
    def prop(case):
        out, _ = run_fit(backend, case, dtype)
        check_outputs(case, out, dtype)
        clean, _ = run_fit(backend, _clean(case), dtype)
        for f in FIELDS + ("converged",):
            np.testing.assert_array_equal(out[f], clean[f], err_msg=f)

    prop()


def _tiny_weights():
    """A jet whose weights are all subnormal: the example of issue 14.6."""
    rng = np.random.default_rng(6)
    pt = np.array([2.0, 5.0, 1.0, 3.0])
    mom = np.stack([0.1 + 0.02 * rng.normal(size=T), 1.2 + 0.02 * rng.normal(size=T),
                    vf.curvature(np.array([1.0, -1.0, 1.0, -1.0]), pt)], -1)
    tracks = vf.perigee(np.array([1.0, 0.5, 2.0]), mom)
    sig = np.stack([0.01 + 0.1 / pt, 0.02 + 0.15 / pt, 1e-4 + 1e-3 / pt, 1e-4 + 1e-3 / pt,
                    np.abs(mom[:, 2]) * 0.02], -1)
    cov = vf.covariance_from_sigmas(sig)
    w = np.array([1.0, 0.7, 0.4, 0.9])
    jets = {"tracks": np.stack([tracks] * B), "cov": np.stack([cov] * B),
            "mask": np.ones((B, T), bool), "vertex": np.zeros((B, 3)),
            "weights": np.stack([w * 1e-310, w * 1e-40, w * 1e-20])}
    return jets


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_any_weight_scale_gives_no_nan_and_the_same_vertex(backend, dtype, n):
    @_settings(n)
    @given(case=batch(WEIGHT_SCALES[dtype]))
    @example(case=_tiny_weights())
    def prop(case):
        out, _ = run_fit(backend, case, dtype)
        check_outputs(case, out, dtype)
        # the vertex is invariant under a common scale of a jet's weights
        w = np.where(case["mask"], case["weights"], 0.0)
        top = w.max(axis=-1, keepdims=True)
        unit = dict(case, weights=np.where(top > 0, w / np.where(top > 0, top, 1.0), 0.0))
        ref, _ = run_fit(backend, unit, dtype)
        ok = out["converged"] & ref["converged"]
        sig = np.sqrt(np.abs(np.diagonal(ref["vertex_cov"], axis1=-2, axis2=-1)))
        tol = (1e-6 if dtype == "float64" else 1e-2) * sig + 1e-5 * (
            np.abs(ref["vertex"]) + 1.0) * (dtype == "float32")
        assert (np.abs(out["vertex"] - ref["vertex"])[ok] <= tol[ok]).all()

    prop()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_converged_only_where_the_fit_converged(backend, dtype, n):
    @_settings(n)
    # (JAX: n_iter 10 only, each value is another compilation; n_iter=0 under jit is a unit
    # test in test_reliability_fit.py)
    @given(case=batch(), n_iter=st.sampled_from([10] if backend == "jax" else [0, 1, 3, 10]))
    @example(case=_tiny_weights() | {"weights": np.ones((B, T))},
             n_iter=10 if backend == "jax" else 0)
    def prop(case, n_iter):
        out, _ = run_fit(backend, case, dtype, n_iter=n_iter)
        check_outputs(case, out, dtype)
        if n_iter == 0:
            assert not out["converged"].any(), "no iteration, yet converged"
        # the truth: a long float64 fit of the same (rounded) inputs
        rounded = {k: (v.astype(dtype).astype(np.float64) if k != "mask" else v)
                   for k, v in case.items()}
        truth, _ = run_fit("numpy", rounded, "float64", n_iter=60)
        both = out["converged"] & truth["converged"]
        sig = np.sqrt(np.diagonal(truth["vertex_cov"], axis1=-2, axis2=-1))
        eps = float(np.finfo(dtype).eps)
        tol = 1e-2 * sig + 1e3 * eps * (np.abs(truth["vertex"]) + 1.0)
        assert (np.abs(out["vertex"] - truth["vertex"])[both] <= tol[both]).all()

    prop()


def _near_beam_axis():
    """Two tracks at theta ~ 5e-4 (found by this suite): NaN gradients in float32."""
    tracks = np.zeros((B, T, 5))
    tracks[:, :2] = [[-0.22174258507543543, 0.578420242907435, 2.903193297443331, 5.0e-4,
                      0.0021324403685156722],
                     [0.590618092511495, -0.018478924912786007, 2.9114750993778764,
                      5.9744117686262675e-04, -0.0014212285347179299]]
    cov = np.broadcast_to(np.eye(5), (B, T, 5, 5)).copy()
    for k, (s0, s1, s2, s4, c02, c13) in enumerate([
            (0.1341203557001007, 0.3072891672374692, 1.3412035570010067e-05,
             4.690894873262865e-10, 0.0011735531123758809, -0.0017763519887245291),
            (0.05911717718684949, 0.13668575229754357, 5.911717718684948e-06,
             2.03876410054406e-10, 0.000517275300384933, -0.000786550336156535)]):
        cov[:, k] = np.diag([s0, s1, s2, s2, s4])
        cov[:, k, 0, 2] = cov[:, k, 2, 0] = c02
        cov[:, k, 1, 3] = cov[:, k, 3, 1] = c13
    mask = np.zeros((B, T), bool)
    mask[:, :2] = True
    w = np.zeros((B, T))
    w[:, :2] = [0.7649546696103773, 0.7510051988661565]
    return {"tracks": tracks, "cov": cov, "mask": mask, "weights": w, "vertex": np.zeros((B, 3))}


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("backend, dtype", [
    ("torch", "float64"), ("torch", "float32"), ("jax", "float64"), ("jax", "float32")])
def test_gradients_have_no_nan_and_none_in_masked_slots(backend, dtype, n):
    @_settings(n)
    @given(case=batch())
    @example(case=_near_beam_axis())
    def prop(case):
        out, grads = run_fit(backend, case, dtype, grad=True)
        check_outputs(case, out, dtype)
        m = case["mask"]
        for name, g in zip(("tracks", "cov", "weights"), grads):
            assert not np.isnan(g).any(), f"NaN in d/d{name}"
            assert (g[~m] == 0).all(), f"gradient in masked slots of {name}"
            assert np.isfinite(g).all(), f"inf in d/d{name}"

    prop()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_gradients_for_any_weight_scale_have_no_nan(backend, dtype, n):
    @_settings(n)
    @given(case=batch(WEIGHT_SCALES[dtype]))
    @example(case=_tiny_weights())
    def prop(case):
        # vertex_cov ~ 1 / scale: its scale-free version enters the loss
        # (d/dweights ~ 1 / scale may exceed the dtype's range: inf there, never NaN)
        out, grads = run_fit(backend, case, dtype, grad=True, scaled=True)
        for f in FIELDS:
            assert not np.isnan(out[f]).any(), f"NaN in {f}"
        m = case["mask"]
        for name, g in zip(("tracks", "cov", "weights"), grads):
            assert not np.isnan(g).any(), f"NaN in d/d{name}"
            assert (g[~m] == 0).all(), f"gradient in masked slots of {name}"
            if name != "weights":
                assert np.isfinite(g).all(), f"inf in d/d{name}"

    prop()

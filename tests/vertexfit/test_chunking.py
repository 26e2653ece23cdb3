"""Performance plumbing that must not change a single number: NumPy threads over chunks of
jets, JAX ``lax.map`` over padded chunks, the JAX materialising barrier, and component reads
that transpose cheaply."""

from __future__ import annotations

import numpy as np
import pytest

import vertexfit as vf
from vertexfit import _batching, _speed, toy

FIELDS = ("vertex", "vertex_cov", "momenta", "chi2", "track_chi2", "ndf", "converged")


def _inputs(shape=(3, 7), T=6, seed=3):
    n = int(np.prod(shape))
    t = toy.generate(n, T, seed=seed, variable=True, min_tracks=1, fill=np.nan)
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.0, 1.0, t.mask.shape)
    tracks = t.tracks.reshape(shape + (T, 5))
    cov = t.cov.reshape(shape + (T, 5, 5))
    return (tracks, cov, w.reshape(shape + (T,)), t.mask.reshape(shape + (T,)))


@pytest.fixture
def small_numpy_chunks(monkeypatch):
    """NumPy chunks of 2 jets (6 tracks each), so that 21 jets make 12 chunks in 2 threads."""
    monkeypatch.setitem(_speed.CHUNK_ELEMENTS, "numpy", 12)
    monkeypatch.setenv("VERTEXFIT_NUM_THREADS", "2")


def _fit_with_threads(monkeypatch, threads, *args, **kw):
    monkeypatch.setenv("VERTEXFIT_NUM_THREADS", str(threads))
    return vf.fit(*args, **kw)


def test_numpy_threads_give_identical_results(small_numpy_chunks, monkeypatch, recwarn):
    tracks, cov, w, mask = _inputs()
    con = (np.array([0.1, -0.2, 0.3]), np.diag([0.5, 0.5, 2.0]))  # broadcast to the batch
    kw = dict(mask=mask, seed=np.array([0.2, 0.1, -0.3]), constraint=con,
              ref=np.array([0.01, 0.02, 0.0]))
    def whole(t, c, w, m, s, con, r):
        return vf.fit(t, c, w, mask=m, seed=s, constraint=con, ref=r)

    assert _batching.fit_in_chunks(whole, tracks, cov, w, mask, kw["seed"], con,
                                   kw["ref"]) is not None  # the threaded path does apply here
    a = _fit_with_threads(monkeypatch, 1, tracks, cov, w, **kw)
    b = _fit_with_threads(monkeypatch, 2, tracks, cov, w, **kw)
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    # NaN in masked slots: no warning escapes the worker threads either
    assert not [r for r in recwarn if issubclass(r.category, RuntimeWarning)]


def test_numpy_threads_report_the_first_bad_jet_of_the_whole_batch(small_numpy_chunks):
    tracks, cov, w, mask = _inputs()
    mask[...] = True
    tracks = np.where(np.isfinite(tracks), tracks, 0.1)
    cov = np.where(np.isfinite(cov), cov, 0.0) + 1e-3 * np.eye(5)
    tracks[2, 5, 1, 0] = np.nan  # NaN in the last chunk, negative weight in an earlier one
    w[1, 4, 0] = -1.0
    with pytest.raises(ValueError, match=r"tracks: NaN or inf .*\(2, 5\)"):
        vf.fit(tracks, cov, w)


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_thread_count_is_rejected(monkeypatch, value):
    monkeypatch.setenv("VERTEXFIT_NUM_THREADS", value)
    with pytest.raises(ValueError, match="VERTEXFIT_NUM_THREADS"):
        _speed.num_threads()


def _jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax


def test_jax_chunks_are_padded_and_give_identical_results(monkeypatch):
    """21 jets in chunks of 4 (one padded chunk): values and gradients equal the single-chunk
    fit; the padding jets contribute nothing."""
    jax = _jax()
    jnp = jax.numpy
    tracks, cov, w, mask = (jnp.asarray(a) for a in _inputs())

    def run(chunk_elements):
        monkeypatch.setitem(_speed.CHUNK_ELEMENTS, "jax", chunk_elements)

        def loss(w):
            r = vf.fit(tracks, cov, w, mask=mask)
            return jnp.sum(r.vertex ** 2) + jnp.sum(r.chi2), r

        (_, r), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(w)
        return r, np.asarray(g)

    a, ga = run(10**6)
    b, gb = run(4 * 6)  # under jit: lax.map of the whole fit over chunks
    c = vf.fit(tracks, cov, w, mask=mask)  # eager: validation on the whole batch, chunked core
    for name in FIELDS:
        for other in (b, c):
            np.testing.assert_allclose(np.asarray(getattr(a, name)),
                                       np.asarray(getattr(other, name)),
                                       rtol=1e-12, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(ga, gb, rtol=1e-10, atol=1e-14)
    assert np.all(gb[~np.asarray(mask)] == 0)
    # padding is invisible in the shapes, and extra batch dimensions survive chunking
    r = jax.jit(lambda t, v: vf.fit(t, v, mask=mask, seed=jnp.zeros(3)))(tracks, cov)
    assert r.vertex.shape == (3, 7, 3) and r.momenta.shape == (3, 7, 6, 3)
    np.testing.assert_allclose(np.asarray(r.vertex),
                               np.asarray(vf.fit(tracks, cov, mask=mask).vertex), rtol=1e-12)


def test_jax_barrier_is_a_differentiable_identity_that_xla_keeps():
    jax = _jax()
    jnp = jax.numpy
    x = jnp.asarray([-0.0, 1.5, -np.inf, np.nan, 3.0])
    y = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])

    def f(x, y):
        a, (b, c) = _speed.barrier(jnp, (x, (y, 7)))
        assert c == 7  # non-array leaves pass through untouched
        return a, b

    a, b = jax.jit(f)(x, y)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(x))  # NaN and -0.0 included
    assert np.signbit(np.asarray(a)[0])
    np.testing.assert_array_equal(np.asarray(b), np.asarray(y))
    # identity derivative in both modes, also under vmap
    g = jax.grad(lambda y: jnp.sum(f(x, y)[1] ** 2))(y)
    np.testing.assert_array_equal(np.asarray(g), 2 * np.asarray(y))
    _, t = jax.jvp(lambda y: f(x, y)[1], (y,), (jnp.ones_like(y),))
    np.testing.assert_array_equal(np.asarray(t), np.ones((2, 2)))
    v = jax.vmap(lambda y: f(x, y)[1])(y)
    np.testing.assert_array_equal(np.asarray(v), np.asarray(y))
    # the materialising loop survives XLA's simplification passes
    hlo = jax.jit(lambda y: _speed.barrier(jnp, y * 2.0) + 1.0).lower(y).compile().as_text()
    assert " while(" in hlo
    # a NaN first element (the loop then runs zero times), 0-d and empty arrays
    z = jnp.asarray([np.nan, -0.0, 2.0])
    s, e, n = jax.jit(lambda z: _speed.barrier(
        jnp, (z, jnp.sum(z[1:]), jnp.zeros((0, 3)))))(z)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(z))
    assert np.signbit(np.asarray(s)[1]) and float(e) == 2.0 and n.shape == (0, 3)


def test_jax_compiler_options_compile_the_fit_to_the_same_numbers():
    """The recommended XLA options are accepted by jax.jit and change nothing beyond rounding
    (forward and gradient); they are a fresh dict, empty off the CPU."""
    jax = _jax()
    jnp = jax.numpy
    opts = vf.jax_compiler_options()
    assert opts == ({"xla_cpu_use_fusion_emitters": False}
                    if jax.default_backend() == "cpu" else {})
    opts["mutated"] = 1
    assert "mutated" not in vf.jax_compiler_options()
    tracks, cov, w, mask = (jnp.asarray(a) for a in _inputs())

    def loss(w):
        r = vf.fit(tracks, cov, w, mask=mask)
        return jnp.sum(r.vertex ** 2) + jnp.sum(r.vertex_cov) + jnp.sum(r.chi2), r

    f = jax.value_and_grad(loss, has_aux=True)
    (_, a), ga = jax.jit(f)(w)
    (_, b), gb = jax.jit(lambda w: f(w), compiler_options=vf.jax_compiler_options())(w)
    for name in FIELDS:
        np.testing.assert_allclose(np.asarray(getattr(b, name)), np.asarray(getattr(a, name)),
                                   rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(np.asarray(gb), np.asarray(ga), rtol=1e-9, atol=1e-12)


def _primitives(jaxpr, name, out):
    """Output shapes of every ``name`` equation in ``jaxpr`` and its sub-jaxprs."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            out.append(tuple(eqn.outvars[0].aval.shape))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    _primitives(sub, name, out)
    return out


def test_jax_backward_reads_components_with_one_transposable_unstack():
    """The components of tracks, covariances and the packed planes are read with one
    ``unstack`` (transpose: one ``stack``). Indexing them one by one transposed to one
    full-size ``pad`` per component, 45 of them here, a quarter of the backward's time."""
    jax = _jax()
    jnp = jax.numpy
    t = toy.generate(4, 6, seed=1)
    con = (np.zeros((4, 3)), np.broadcast_to(np.diag([1e-2, 1e-2, 1.0]), (4, 3, 3)))

    def loss(tracks, cov, w, cpos, ccov):
        r = vf.fit(tracks, cov, w, constraint=(cpos, ccov))
        return jnp.sum(r.vertex ** 2) + jnp.sum(r.chi2) + jnp.sum(r.momenta ** 2)

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(
        t.tracks, t.cov, np.ones((4, 6)), *con)
    assert _primitives(jaxpr.jaxpr, "pad", []) == []
    assert _primitives(jaxpr.jaxpr, "unstack", [])  # the structure the check relies on


def test_jax_float64_kernels_match_libm_to_a_few_ulp():
    """sin/cos/cot/atan kernels that replace XLA:CPU's scalar float64 libm calls."""
    jax = _jax()
    jnp = jax.numpy
    rng = np.random.default_rng(5)
    special = [0.0, -0.0, 1e-300, np.pi / 2, np.pi, -np.pi, 3 * np.pi / 2, np.pi / 4, 1e-8]
    x = np.concatenate([rng.uniform(-7, 7, 50_000), rng.uniform(-1e4, 1e4, 5_000), special])

    def ulps(got, ref):
        return np.max(np.abs(np.asarray(got) - ref) / np.spacing(np.maximum(np.abs(ref),
                                                                            1e-300)))

    s, c = jax.jit(lambda x: _speed.sincos(jnp, x))(jnp.asarray(x))
    assert ulps(s, np.sin(x)) <= 4 and ulps(c, np.cos(x)) <= 4
    th = rng.uniform(1e-4, np.pi - 1e-4, 50_000)
    assert ulps(jax.jit(lambda t: _speed.cot(jnp, t))(jnp.asarray(th)), 1 / np.tan(th)) <= 6
    w = np.concatenate([rng.normal(0, 1, 20_000), rng.normal(0, 0.02, 20_000),
                        np.sign(rng.normal(size=20_000)) * 10 ** rng.uniform(-9, 9, 20_000),
                        [0.0, 1e300, -1e300, np.inf, -np.inf]])
    a = np.asarray(jax.jit(lambda w: _speed.atan(jnp, w))(jnp.asarray(w)))
    assert ulps(a, np.arctan(w)) <= 6
    assert np.signbit(np.asarray(_speed.atan(jnp, jnp.asarray(-0.0))))
    # float32 and the other backends keep their own functions
    assert not _speed._use_kernels(jnp, jnp.zeros(1, jnp.float32))
    assert not _speed._use_kernels(np, np.zeros(1))

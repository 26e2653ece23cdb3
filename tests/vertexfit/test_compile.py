"""The compiled PyTorch fit (``vertexfit.fit(..., compile=True)``) against the eager one.

The compiled units (one Gauss-Newton step, the implicit backward) run the same arithmetic
as the eager path; the fit converges, so rounding differences of the fused kernels stay at
the level of the last digits: compiled and eager agree to 1e-12 relative in float64 on
converged jets. The first test in a process compiles (Inductor's disk cache makes later
runs load it).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import vertexfit  # noqa: E402
from vertexfit import _speed  # noqa: E402

RTOL = 1e-12


@pytest.fixture(autouse=True)
def _compile_on(monkeypatch):
    monkeypatch.setenv("VERTEXFIT_COMPILE", "1")  # tests/conftest.py switches it off


def _jets(n, seed, dtype=torch.float64):
    toy = vertexfit.toy.generate(n, 12, seed=seed, variable=True, min_tracks=3)
    rng = np.random.default_rng(seed)
    t = torch.as_tensor(toy.tracks, dtype=dtype)
    c = torch.as_tensor(toy.cov, dtype=dtype)
    m = torch.as_tensor(toy.mask)
    w = torch.as_tensor(rng.uniform(0.2, 1.0, toy.mask.shape), dtype=dtype)
    # garbage in masked slots must stay harmless on the compiled path too
    t = torch.where(m[..., None], t, torch.full_like(t, 1e3))
    # keep the jets whose eager fit converged: elsewhere the last step still moves the
    # vertex and both paths are only as close as an unconverged iteration allows
    ok = vertexfit.fit(t, c, w, mask=m).converged
    return t[ok], c[ok], w[ok], m[ok]


def _close(a, b, rtol=RTOL):
    """Max |a - b| relative to the largest |a| of each jet (row)."""
    a, b = a.detach().double(), b.detach().double()
    scale = a.abs().reshape(a.shape[0], -1).amax(-1).clamp_min(1e-300)
    err = (a - b).abs().reshape(a.shape[0], -1).amax(-1) / scale
    assert float(err.max()) <= rtol, f"max relative difference {float(err.max()):.3e}"


@pytest.fixture(scope="module")
def jets():
    return _jets(60, seed=3)


def test_compiled_forward_matches_eager(jets):
    t, c, w, m = jets
    assert t.shape[0] > 40
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a compile failure must not hide
        fast = vertexfit.fit(t, c, w, mask=m, compile=True)
    ref = vertexfit.fit(t, c, w, mask=m)
    assert "fit step [helix]" in vertexfit.compile_status()["seconds"]
    for name in ("vertex", "vertex_cov", "momenta", "chi2", "track_chi2", "ndf"):
        _close(getattr(ref, name), getattr(fast, name))
    assert torch.equal(ref.converged, fast.converged)
    assert bool(fast.converged.all())


def test_compiled_gradients_match_eager(jets):
    t, c, w, m = jets

    def grads(compile):
        ts, cs, ws = (a.clone().requires_grad_(True) for a in (t, c, w))
        res = vertexfit.fit(ts, cs, ws, mask=m, compile=compile)
        loss = (res.vertex ** 2).sum() + res.chi2.sum() + res.vertex_cov.sum()
        loss.backward()
        return ts.grad, cs.grad, ws.grad

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fast = grads(True)
    # the implicit backward ran as its own compiled unit (a failure would have warned)
    assert "backward [helix]" in vertexfit.compile_status()["seconds"]
    for a, b in zip(grads(False), fast):
        _close(a, b)


def test_other_losses_and_inputs_reuse_the_compiled_backward(jets):
    # which outputs a loss uses (None cotangents), their strides (the cotangent of a sum is
    # an expanded tensor) and which inputs require grad must not compile the units again
    from torch._dynamo.utils import counters

    t, c, w, m = jets
    ws = w.clone().requires_grad_(True)
    vertexfit.fit(t, c, ws, mask=m, compile=True).vertex.sum().backward()  # compiled (or cached)
    before = counters["stats"]["unique_graphs"]
    assert before >= 2  # the counter counts compilations: the step's and the backward's
    for loss in (lambda r: r.vertex.sum(), lambda r: (r.momenta ** 2).sum() + r.chi2.sum(),
                 lambda r: r.vertex_cov[:, 0, 0].sum()):
        ts = t.clone().requires_grad_(True)
        loss(vertexfit.fit(ts, c, w, mask=m, compile=True)).backward()
        assert torch.isfinite(ts.grad).all()
    assert counters["stats"]["unique_graphs"] == before


def test_other_batch_sizes_reuse_the_compiled_step():
    # dynamic shapes: another batch size and track count, same compiled units
    t, c, w, m = _jets(9, seed=5)
    fast = vertexfit.fit(t, c, w, mask=m, compile=True)
    ref = vertexfit.fit(t, c, w, mask=m)
    _close(ref.vertex, fast.vertex)
    _close(ref.vertex_cov, fast.vertex_cov)


def test_double_backward_runs_eagerly_and_matches(jets):
    t, c, w, m = (a[:5] for a in jets)

    def hvp(compile):
        ws = w.clone().requires_grad_(True)
        v = vertexfit.fit(t, c, ws, mask=m, compile=compile).vertex
        (g,) = torch.autograd.grad(v.sum(), ws, create_graph=True)
        (h,) = torch.autograd.grad((g ** 2).sum(), ws)
        return g, h

    for a, b in zip(hvp(False), hvp(True)):
        _close(a, b)


def test_failed_compilation_warns_once_and_runs_eagerly(monkeypatch):
    t, c, w, m = _jets(6, seed=7)

    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("C++ compile error\nsecond line")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(_speed, "_UNITS", {})
    monkeypatch.setattr(_speed, "_FAILED", {})
    with pytest.warns(RuntimeWarning, match=r"torch.compile of the fit step \[helix\] failed "
                                            r"\(RuntimeError: C\+\+ compile error\); running"):
        fast = vertexfit.fit(t, c, w, mask=m, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the unit stays eager without a new warning
        vertexfit.fit(t, c, w, mask=m, compile=True)
    ref = vertexfit.fit(t, c, w, mask=m)
    assert torch.equal(ref.vertex, fast.vertex)


def test_compile_switched_off_by_the_environment(monkeypatch):
    t, c, w, m = _jets(6, seed=10)
    monkeypatch.setenv("VERTEXFIT_COMPILE", "0")
    monkeypatch.setattr(_speed, "_UNITS", {})
    monkeypatch.setattr(_speed, "_SECONDS", {})
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda *a: pytest.fail("compiled"))
    ref = vertexfit.fit(t, c, w, mask=m)
    assert torch.equal(ref.vertex, vertexfit.fit(t, c, w, mask=m, compile=True).vertex)
    assert vertexfit.compile_status()["seconds"] == {}


def test_compile_must_be_a_bool():
    t, c, w, m = _jets(2, seed=8)
    with pytest.raises(ValueError, match="compile must be True or False"):
        vertexfit.fit(t, c, w, mask=m, compile="yes")


@pytest.mark.slow
def test_compiled_float32_matches_eager():
    t, c, w, m = _jets(30, seed=9, dtype=torch.float32)
    fast = vertexfit.fit(t, c, w, mask=m, compile=True)
    ref = vertexfit.fit(t, c, w, mask=m)
    ok = ref.converged & fast.converged
    _close(ref.vertex[ok], fast.vertex[ok], rtol=1e-4)

"""No host synchronisation in the PyTorch fit loop and its backward (the CUDA hot path).

A host sync is any read of a tensor value into Python (``.item()``, ``bool(t)``, ``if t``,
``float(t)``): PyTorch implements all of them with the ``aten._local_scalar_dense`` op. On
CUDA each one stalls the host until the GPU queue drains. CI has no GPU, so these tests
record the op on CPU tensors (same dispatch path; fixture ``count_host_syncs``) while the
Gauss-Newton loop and the implicit backward run.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import vertexfit  # noqa: E402
from vertexfit import _fit, _validate  # noqa: E402


def _core_args(n=20, seed=2):
    toy = vertexfit.toy.generate(n, 10, seed=seed, variable=True, min_tracks=3)
    t, c = torch.as_tensor(toy.tracks), torch.as_tensor(toy.cov)
    m = torch.as_tensor(toy.mask)
    w = torch.rand(t.shape[:2], dtype=t.dtype, generator=torch.Generator().manual_seed(1))
    import array_api_compat.torch as xp

    _, prep = _validate.prepare(t, c, w, m, None, None, None, 10, "helix")
    return xp, prep.flat(xp)


def test_the_counter_sees_a_host_sync(count_host_syncs):
    with count_host_syncs() as mode:
        bool(torch.ones(3).sum() > 0)
    assert mode.syncs == 1


@pytest.mark.parametrize("compiled", [False, True])
def test_fit_loop_has_no_host_sync(count_host_syncs, compiled):
    # compiled: the packed-array loop around the compiled step (run eagerly here:
    # VERTEXFIT_COMPILE=0 in the tests)
    xp, args = _core_args()
    with count_host_syncs() as mode:
        out = _fit._core(xp, *args, n_iter=10, model="helix", compiled=compiled)
    assert mode.syncs == 0
    assert out[0].shape == (20, 3)


def test_implicit_backward_has_no_host_sync(count_host_syncs):
    from vertexfit._implicit import core_vjp

    xp, args = _core_args()
    tracks, cov, weights, _, cpos, ccov = args
    out = _fit._core(xp, *args, n_iter=10, model="helix")
    cot = (torch.ones_like(out[0]), torch.ones_like(out[1]), None, torch.ones_like(out[3]),
           None)
    with count_host_syncs() as mode:
        grads = core_vjp(xp, tracks, cov, weights, cpos, ccov, out[:3], cot, model="helix")
    assert mode.syncs == 0
    assert grads[2].shape == weights.shape

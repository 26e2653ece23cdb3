"""PyTorch adapter: the fit core as a ``torch.autograd.Function``.

``backward`` is :func:`core_vjp` and ``jvp`` is :func:`core_jvp` (both O(T) arrow solves at
the converged fit; nothing of the ``n_iter`` iterations is stored). ``setup_context`` and
``generate_vmap_rule = True`` make ``torch.func.vmap``, ``jacrev``, ``jacfwd`` and ``jvp``
work. The backward pass is itself written in differentiable torch operations on the inputs
and the saved outputs (which link back to this Function), so double backward and
``gradgradcheck`` work too. No global torch setting is touched.
"""

from __future__ import annotations

import functools

import array_api_compat.torch as xp
import torch

from . import _adjoint, _speed
from ._implicit import core_jvp, core_vjp

__all__ = ["fit_core"]

def fit_core(core, xp_, tracks, cov, weights, seed, cpos, ccov, *, n_iter, model,
             compiled=False):
    """``core(xp, tracks, ...)`` (the plain fit core, on torch tensors) with the implicit
    rule; ``compiled``: the core's step and the backward compiled (``vertexfit._speed``)."""
    del xp_  # always array_api_compat.torch here
    if torch.jit.is_tracing():
        # tracing for export (torch.onnx): no gradients needed, and the TorchScript tracer
        # wires the outputs of an autograd.Function to the wrong values
        return core(xp, tracks, cov, weights, seed, cpos, ccov, n_iter=n_iter, model=model)
    return _FitCore.apply(tracks, cov, weights, seed, cpos, ccov, n_iter, model, core,
                          compiled)


class _FitCore(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(tracks, cov, weights, seed, cpos, ccov, n_iter, model, core, compiled):
        extra = {"compiled": True} if compiled else {}
        return core(xp, tracks, cov, weights, seed, cpos, ccov, n_iter=n_iter, model=model,
                    **extra)

    @staticmethod
    def setup_context(ctx, inputs, output):
        tracks, cov, weights, seed, cpos, ccov, _n_iter, model, _core, compiled = inputs
        ctx.model = model
        ctx.compiled = compiled
        ctx.seed_shape = tuple(seed.shape)
        u, C, mom = output[0], output[1], output[2]
        ctx.mark_non_differentiable(output[5])
        ctx.set_materialize_grads(False)  # unused outputs arrive as None: skipped, not zeros
        ctx.save_for_backward(tracks, cov, weights, cpos, ccov, u, C, mom)
        ctx.save_for_forward(tracks, cov, weights, cpos, ccov, u, C, mom)

    @staticmethod
    def backward(ctx, u_bar, cov_bar, mom_bar, chi2_bar, tchi2_bar, _ok_bar):
        tracks, cov, weights, cpos, ccov, u, C, mom = ctx.saved_tensors
        if all(c is None for c in (u_bar, cov_bar, mom_bar, chi2_bar, tchi2_bar)):
            return (None,) * 10
        vjp = functools.partial(core_vjp, xp, model=ctx.model)
        cot = (u_bar, cov_bar, mom_bar, chi2_bar, tchi2_bar)
        if ctx.compiled:  # (eager where autograd records it: double backward)
            vjp = _speed.compiled(f"backward [{ctx.model}]", vjp)
            # zeros for the unused outputs: one compiled backward for every choice of
            # outputs a loss uses (a None would make Dynamo compile it again)
            like = (u, C, mom, u[:, 0], mom[..., 0])
            cot = tuple(torch.zeros_like(x) if c is None else c for c, x in zip(cot, like))
        grads = vjp(tracks, cov, weights, cpos, ccov, (u, C, mom), cot)
        tracks_bar, cov_bar_in, weights_bar, cpos_bar, ccov_bar = grads
        # the converged fit does not depend on its starting point
        seed_bar = tracks.new_zeros(ctx.seed_shape) if ctx.needs_input_grad[3] else None
        return (tracks_bar, cov_bar_in, weights_bar, seed_bar, cpos_bar, ccov_bar, None, None,
                None, None)

    @staticmethod
    def jvp(ctx, dq, dV, dw, _dseed, dcpos, dccov, _n_iter, _model, _core, _compiled):
        tracks, cov, weights, cpos, ccov, u, C, mom = ctx.saved_tensors
        if ccov is None:
            dcpos = dccov = None
        dots = core_jvp(xp, tracks, cov, weights, cpos, ccov, (u, C, mom),
                        (dq, dV, dw, dcpos, dccov), model=ctx.model)
        return (*dots, None)


_adjoint.register("torch", fit_core)

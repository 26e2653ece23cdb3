"""JAX adapter: the fit core as a ``jax.custom_jvp`` whose rule is :func:`core_jvp`.

Forward mode (``jax.jvp``, ``jax.jacfwd``) calls the rule directly. Reverse mode
(``jax.grad``, ``jax.vjp``, ``jax.jacrev``) comes from JAX linearising and transposing that
rule: :func:`core_jvp` is linear in the tangents, and everything it needs from the primal
point (the order-2 jets, the Schur factors) is computed once on the forward side, so the
transposed solve is the same O(T) arrow solve as :func:`core_vjp` and nothing of the
``n_iter`` iterations is stored. Higher orders work because the rule calls the
``custom_jvp`` function itself for its primal outputs. ``jax.jit`` and ``jax.vmap`` apply to
both the primal and the rule. No global JAX configuration is touched.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from . import _adjoint
from ._implicit import core_jvp

__all__ = ["fit_core"]


def fit_core(core, xp, tracks, cov, weights, seed, cpos, ccov, *, n_iter, model):
    """``core(xp, tracks, ...)`` (the plain fit core, on JAX arrays) with the implicit rule."""
    del xp  # always jax.numpy here
    return _fit_core(tracks, cov, weights, seed, cpos, ccov, n_iter, model, core)


@functools.partial(jax.custom_jvp, nondiff_argnums=(6, 7, 8))
def _fit_core(tracks, cov, weights, seed, cpos, ccov, n_iter, model, core):
    return core(jnp, tracks, cov, weights, seed, cpos, ccov, n_iter=n_iter, model=model)


def _tangent(t):
    # a symbolic zero (an input nobody differentiates) costs nothing in the rule
    return None if t is None or isinstance(t, SymbolicZero) else t


def _fit_core_jvp(n_iter, model, core, primals, tangents):
    tracks, cov, weights, seed, cpos, ccov = primals
    out = _fit_core(tracks, cov, weights, seed, cpos, ccov, n_iter, model, core)
    dq, dV, dw, _dseed, dcpos, dccov = (_tangent(t) for t in tangents)
    if ccov is None:
        dcpos = dccov = None
    dots = core_jvp(jnp, tracks, cov, weights, cpos, ccov, out, (dq, dV, dw, dcpos, dccov),
                    model=model)
    # the seed has no effect on the converged fit; `converged` is boolean (float0 tangent)
    ok_dot = np.zeros(out[5].shape, dtype=jax.dtypes.float0)
    return out, (*dots, ok_dot)


_fit_core.defjvp(_fit_core_jvp, symbolic_zeros=True)
_adjoint.register("jax", fit_core)

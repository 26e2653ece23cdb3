"""Array-namespace plumbing: the only place that knows about specific backends."""

from __future__ import annotations

import array_api_compat

__all__ = [
    "asarray_like",
    "backend_name",
    "can_inspect",
    "eps",
    "float_dtype",
    "is_lazy",
    "namespace",
]


def namespace(*arrays):
    """The array-API namespace shared by ``arrays`` (``None`` entries are skipped)."""
    return array_api_compat.array_namespace(*[a for a in arrays if a is not None])


def backend_name(xp) -> str:
    """``"numpy"``, ``"jax"``, ``"torch"`` or ``"other"`` (array-api-strict and friends)."""
    if array_api_compat.is_jax_namespace(xp):
        return "jax"
    if array_api_compat.is_torch_namespace(xp):
        return "torch"
    if array_api_compat.is_numpy_namespace(xp):
        return "numpy"
    return "other"


def is_lazy(x) -> bool:
    """True if ``x``'s values cannot be read (a JAX tracer under ``jit``, ...)."""
    return bool(array_api_compat.is_lazy_array(x))


def can_inspect(xp, flag) -> bool | None:
    """Read a boolean array scalar, or return ``None`` if its value is not available.

    ``None`` happens under ``jax.jit`` and inside ``torch.func.vmap``, where data-dependent
    Python control flow is impossible; callers then fall back to flagging results.
    """
    if is_lazy(flag):
        return None
    try:
        return bool(flag)
    except Exception:
        return None


def float_dtype(xp, *arrays):
    """The floating dtype to compute in: the promoted dtype of the floating inputs.

    Integer and boolean inputs do not take part; if no input is floating, float64.
    """
    dts = [a.dtype for a in arrays if a is not None and xp.isdtype(a.dtype, "real floating")]
    if not dts:
        return xp.float64
    return xp.result_type(*dts)


def asarray_like(xp, value, like, dtype=None):
    """``xp.asarray(value)`` on ``like``'s device with ``like``'s (or the given) dtype."""
    return xp.asarray(
        value, dtype=like.dtype if dtype is None else dtype, device=array_api_compat.device(like)
    )


def eps(xp, dtype) -> float:
    """Machine epsilon of ``dtype``."""
    return float(xp.finfo(dtype).eps)


def barrier(xp, tree):
    """Materialise the arrays of ``tree`` (nested lists/dicts/tuples) before further use.

    Identity on every backend but JAX. XLA:CPU re-computes ("duplicates") a cheap shared
    subgraph inside every fusion that consumes it; for the fit's per-track linear algebra
    that multiplied the compiled arithmetic ~5x. ``jax.lax.optimization_barrier`` does not
    prevent this on CPU (it is removed before fusion), so on JAX the arrays pass through a
    while loop whose trip count XLA cannot know (:func:`_materialise`): its carry is a real
    buffer, computed once. Values (and derivatives: identity JVP) are unchanged.
    """
    if backend_name(xp) != "jax":
        return tree
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(tree)
    idx = [i for i, a in enumerate(leaves)
           if isinstance(a, jax.Array) and xp.isdtype(a.dtype, "real floating")]
    if not idx:
        return tree
    out = _materialise()(*[leaves[i] for i in idx])
    for i, a in zip(idx, out):
        leaves[i] = a
    return jax.tree_util.tree_unflatten(treedef, leaves)


_MATERIALISE = []


def _materialise():
    """The JAX materialising identity (built on first use; JAX is imported lazily)."""
    if _MATERIALISE:
        return _MATERIALISE[0]
    import jax
    import jax.numpy as jnp

    @jax.custom_jvp
    def materialise(*arrays):
        # one element decides the trip count (1, or 0 if it is NaN) and the exact zero that
        # the body subtracts: x - 0.0 == x bit for bit (signed zeros, inf, NaN included)
        # and neither is a compile-time constant, so XLA keeps the loop and its buffers
        x0 = jnp.reshape(arrays[0], (-1,))[:1]
        ok = x0 == x0
        n = jnp.sum(ok.astype(jnp.int32))
        zero = jnp.sum(ok.astype(arrays[0].dtype)) * 0.0

        def body(state):
            i, z, *xs = state
            return (i + 1, z, *[x - z.astype(x.dtype) for x in xs])

        out = jax.lax.while_loop(lambda s: s[0] < n, body, (jnp.int32(0), zero, *arrays))
        return tuple(out[2:])

    @materialise.defjvp
    def _jvp(primals, tangents):  # identity: tangents pass through, linear and transposable
        return materialise(*primals), tuple(tangents)

    _MATERIALISE.append(materialise)
    return materialise


def fori_loop(xp, n: int, body, state):
    """``for i in range(n): state = body(i, state)``; ``jax.lax.fori_loop`` on JAX.

    On JAX a rolled loop keeps the compiled graph (and the compile time) independent of
    ``n``; elsewhere it is a plain Python loop over a static count.
    """
    if backend_name(xp) == "jax":
        import jax

        return jax.lax.fori_loop(0, n, body, state)
    for i in range(n):
        state = body(i, state)
    return state

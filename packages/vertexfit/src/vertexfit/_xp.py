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
    """Materialise ``tree`` (nested lists/dicts/tuples of arrays) before further use.

    Identity except on JAX, where it is ``jax.lax.optimization_barrier``: without it XLA
    re-fuses (recomputes) a shared per-track subgraph into every consumer fusion, which
    made the fit ~5x slower. Differentiable.
    """
    if backend_name(xp) != "jax":
        return tree
    import jax

    return jax.lax.optimization_barrier(tree)


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

"""Array-namespace plumbing: the only place that knows about specific backends."""

from __future__ import annotations

import functools
import math

import array_api_compat

__all__ = [
    "asarray_like",
    "atan",
    "backend_name",
    "barrier",
    "can_inspect",
    "cot",
    "eps",
    "float_dtype",
    "fori_loop",
    "is_lazy",
    "namespace",
    "sincos",
    "unstack",
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


def unstack(xp, a, axis=0):
    """The components of ``a`` along ``axis`` as a tuple of arrays.

    Prefer it to indexing the components one by one: under JAX autodiff its transpose is one
    ``stack``, where K separate indexings transpose to K full-size pads added one by one
    (O(K^2) memory traffic, a quarter of a backward pass before this). PyTorch gets
    ``torch.unbind`` (the compat shim iterates, which ``torch.func.vmap`` cannot batch).
    """
    if backend_name(xp) == "torch":
        return xp.unbind(a, dim=axis)
    return xp.unstack(a, axis=axis)


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


@functools.cache
def _materialise():
    """The JAX materialising identity (built on first use; JAX is imported lazily)."""
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

    return materialise


# --------------------------------------------------------------------------------------------
# elementary functions: XLA:CPU evaluates float64 sin/cos/tan/atan with scalar libm calls
# (~15-20 ns per element, measured: a fifth of the JAX fit's time). On JAX float64 they are
# replaced by short, vectorisable polynomial kernels accurate to a few ulp; every other
# backend and dtype uses its own functions.
# --------------------------------------------------------------------------------------------
_PIO2_HI = 1.5707963267341256  # pi/2 with 33 significant bits: k * _PIO2_HI is exact
_PIO2_LO = math.pi / 2 - _PIO2_HI  # exact: the rest of the float64 pi/2
_PIO2_LO2 = 6.123233995736766e-17  # pi/2 - float64(pi/2)
# Taylor coefficients of sin(r)/r - 1 and cos(r) - 1 in z = r^2, up to r^18: for
# |r| <= pi/4 the first omitted term is < 1e-19 relative
_SIN_C = [(-1) ** n / math.factorial(2 * n + 1) for n in range(1, 9)]
_COS_C = [(-1) ** n / math.factorial(2 * n) for n in range(1, 10)]
# atan(t)/t in u = t^2 for |t| <= tan(pi/16) = 0.199: omitted term < 1e-20 relative
_ATAN_C = [(-1) ** n / (2 * n + 1) for n in range(14)]


def _poly(coeffs, z):
    out = coeffs[-1]
    for c in reversed(coeffs[:-1]):
        out = out * z + c
    return out


def _use_kernels(xp, x) -> bool:
    return backend_name(xp) == "jax" and x.dtype == xp.float64


def sincos(xp, x):
    """``(sin x, cos x)``; on JAX float64 one shared range reduction and two polynomials.

    Accurate to ~2 ulp for |x| < 1e6 (Cody-Waite reduction by pi/2 in three parts).
    """
    if not _use_kernels(xp, x):
        return xp.sin(x), xp.cos(x)
    k = xp.round(x * (2.0 / math.pi))
    r = ((x - k * _PIO2_HI) - k * _PIO2_LO) - k * _PIO2_LO2
    z = r * r
    s = r + r * z * _poly(_SIN_C, z)
    c = 1.0 + z * _poly(_COS_C, z)
    q = k - 4.0 * xp.floor(k * 0.25)  # quadrant 0..3
    odd = (q == 1.0) | (q == 3.0)
    sin = xp.where(odd, c, s)
    cos = xp.where(odd, s, c)
    sin = xp.where(q >= 2.0, -sin, sin)
    cos = xp.where((q == 1.0) | (q == 2.0), -cos, cos)
    return sin, cos


def cot(xp, x):
    """``1 / tan(x)``."""
    if not _use_kernels(xp, x):
        return 1.0 / xp.tan(x)
    s, c = sincos(xp, x)
    return c / s


def atan(xp, x):
    """``atan(x)``; on JAX float64 ``atan(x) = sign(x) pi/2 - atan(1/x)`` for |x| > 1, two
    half-angle reductions ``t -> t / (1 + sqrt(1 + t^2))`` (to |t| <= tan(pi/16)) and a
    polynomial: accurate to a few ulp for every x, inf included."""
    if not _use_kernels(xp, x):
        return xp.atan(x)
    big = xp.abs(x) > 1.0
    t = xp.where(big, -1.0 / xp.where(big, x, 1.0), x)
    for _ in range(2):
        t = t / (1.0 + xp.sqrt(1.0 + t * t))
    core = 4.0 * t * _poly(_ATAN_C, t * t)
    return xp.where(big, xp.where(x > 0, math.pi / 2, -math.pi / 2) + core, core)


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

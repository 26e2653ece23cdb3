"""Array-namespace plumbing: which backend an array belongs to, dtypes, devices, NumPy copies.

Nothing here changes how fast anything runs; backend-specific speed helpers live in
:mod:`vertexfit._speed`.
"""

from __future__ import annotations

import contextlib

import array_api_compat
import numpy as np

__all__ = [
    "backend_name",
    "can_inspect",
    "device",
    "eps",
    "float_dtype",
    "is_lazy",
    "namespace",
    "quiet",
    "to_numpy",
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


def device(a):
    """The device of array ``a``."""
    return array_api_compat.device(a)


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


def eps(xp, dtype) -> float:
    """Machine epsilon of ``dtype``."""
    return float(xp.finfo(dtype).eps)


def unstack(xp, a, axis=0):
    """The components of ``a`` along ``axis`` as a tuple of arrays.

    Prefer it to indexing the components one by one: under JAX autodiff its transpose is one
    ``stack``, where K separate indexings transpose to K full-size pads added one by one
    (O(K^2) memory traffic). PyTorch gets ``torch.unbind`` (the compat shim iterates, which
    ``torch.func.vmap`` cannot batch).
    """
    if backend_name(xp) == "torch":
        return xp.unbind(a, dim=axis)
    return xp.unstack(a, axis=axis)


def to_numpy(a, dtype=None):
    """Any array (NumPy, JAX, PyTorch, array-api-strict) -> a NumPy array (a copy).

    ``None`` stays ``None``; ``dtype`` converts (default: keep the array's dtype).
    """
    if a is None:
        return None
    if array_api_compat.is_torch_array(a):
        a = a.detach().cpu().numpy()
    elif not isinstance(a, np.ndarray):
        try:
            a = np.from_dlpack(a)
        except (TypeError, AttributeError, BufferError, RuntimeError):
            a = np.asarray(a)
    return np.array(a, dtype=dtype)


def quiet(xp):
    """NumPy floating-point warnings off, for code whose masked-out lanes may hold inf/NaN
    (masks, not warnings, handle them); a no-op context on the other backends."""
    if backend_name(xp) in ("jax", "torch"):
        return contextlib.nullcontext()
    return np.errstate(divide="ignore", invalid="ignore", over="ignore")

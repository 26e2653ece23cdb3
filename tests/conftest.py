"""Shared fixtures: the same test runs on every array backend.

``backend`` gives float64 on NumPy, array-api-strict, JAX (x64 enabled here, in the tests
only; functions wrapped with ``jax.jit``) and PyTorch. ``backend32`` gives float32 on NumPy,
JAX and PyTorch. Tests convert NumPy inputs with ``backend.asarray`` and results back with
``backend.to_numpy``, and check namespace/dtype with ``backend.check``.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the compiled PyTorch fit (fit(compile=True), model.fit_compile, on by default) runs eagerly
# in the tests, subprocesses included: compiling costs minutes of CPU per process on a cold
# cache; tests/vertexfit/test_compile.py switches it on and checks it against eager
os.environ.setdefault("VERTEXFIT_COMPILE", "0")

if importlib.util.find_spec("jax") is not None:
    import jax

    jax.config.update("jax_enable_x64", True)  # tests only; the library never does this


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running, skipped by default (-m slow)")


class Backend:
    """One array backend and dtype, with helpers to move data in and out."""

    def __init__(self, name: str, dtype_name: str):
        self.name = name
        self.dtype_name = dtype_name
        if name == "numpy":
            import array_api_compat.numpy as xp
        elif name == "array_api_strict":
            import array_api_strict as xp
        elif name == "jax":
            import jax.numpy as xp
        elif name == "torch":
            import array_api_compat.torch as xp
        else:  # pragma: no cover
            raise ValueError(name)
        self.xp = xp
        self.dtype = getattr(xp, dtype_name)

    def __repr__(self):
        return f"{self.name}-{self.dtype_name}"

    @property
    def is_jax(self):
        return self.name == "jax"

    @property
    def is_torch(self):
        return self.name == "torch"

    def asarray(self, a, dtype=None):
        """NumPy array (or nested list) -> this backend; floats get this backend's dtype."""
        a = np.asarray(a)
        if dtype is None:
            if a.dtype == np.bool_:
                dtype = self.xp.bool
            elif np.issubdtype(a.dtype, np.integer):
                dtype = self.xp.int64
            else:
                dtype = self.dtype
        if self.name == "torch":
            import torch

            return torch.asarray(np.ascontiguousarray(a)).to(dtype)
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        if self.name == "torch":
            return a.detach().cpu().numpy()
        if self.name == "array_api_strict":
            return np.asarray(a.__dlpack__ and np.from_dlpack(a))
        return np.asarray(a)

    def jit(self, f, **kwargs):
        """``jax.jit`` on JAX (with ``static_argnames`` from kwargs), identity elsewhere."""
        if self.name == "jax":
            import jax

            return jax.jit(f, **kwargs)
        return f

    def check(self, a, shape=None):
        """Assert ``a`` is of this backend's namespace and dtype (and shape)."""
        import array_api_compat

        assert array_api_compat.array_namespace(a).__name__ == self.xp.__name__ or (
            self.name == "torch" and array_api_compat.is_torch_array(a)
        ), f"wrong namespace for {self}: {type(a)}"
        assert a.dtype == self.dtype, f"dtype {a.dtype} != {self.dtype}"
        if shape is not None:
            assert tuple(a.shape) == tuple(shape), f"shape {tuple(a.shape)} != {shape}"


def _available(name):
    mod = {"numpy": "numpy", "array_api_strict": "array_api_strict", "jax": "jax"}.get(name, name)
    return importlib.util.find_spec(mod) is not None


def _params(names, dtype_name):
    return [
        pytest.param(
            (n, dtype_name),
            id=f"{n}-{dtype_name}",
            marks=[] if _available(n) else [pytest.mark.skip(reason=f"{n} not installed")],
        )
        for n in names
    ]


@pytest.fixture(params=_params(["numpy", "array_api_strict", "jax", "torch"], "float64"))
def backend(request):
    return Backend(*request.param)


@pytest.fixture(params=_params(["numpy", "jax", "torch"], "float32"))
def backend32(request):
    return Backend(*request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(20231012)


@pytest.fixture
def count_host_syncs():
    """A context manager counting host synchronisations of PyTorch (``.item()``,
    ``bool(t)``, ``if t``...: all go through ``aten._local_scalar_dense``) in its block;
    ``mode.syncs`` after the block. Works on CPU tensors: the CUDA hot path, tested without
    a GPU."""
    torch = pytest.importorskip("torch")
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountSyncs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.syncs = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                self.syncs += 1
            return func(*args, **(kwargs or {}))

    return CountSyncs

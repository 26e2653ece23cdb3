"""How the fit is differentiated: the dispatch table the autodiff adapters register into.

``adjoint="implicit"`` (default) wraps the plain fit core in the backend's custom rule
(:mod:`vertexfit._jax`, :mod:`vertexfit._torch`: implicit differentiation at the converged
fit, O(T) per jet, independent of ``n_iter``); ``"unrolled"`` leaves the core as it is, so
that the framework differentiates through every iteration (a baseline: memory grows with
``n_iter``). Backends without autodiff (NumPy) run the plain core either way.

The adapters import this module to register; it loads them by name on first use, so that
neither JAX nor PyTorch is imported before an array of theirs arrives.
"""

from __future__ import annotations

import importlib

from ._xp import backend_name

__all__ = ["ADJOINTS", "check", "differentiable", "register"]

ADJOINTS = ("implicit", "unrolled")

# backend name -> rule(core, xp, tracks, cov, weights, seed, cpos, ccov, *, n_iter, model)
_RULES: dict = {}
_ADAPTERS = {"jax": "vertexfit._jax", "torch": "vertexfit._torch"}


def register(backend: str, rule) -> None:
    """Make ``rule`` the implicit derivative of the fit core on ``backend``."""
    _RULES[backend] = rule


def check(adjoint) -> None:
    """Raise a clear ``ValueError`` for an unknown ``adjoint``."""
    if adjoint not in ADJOINTS:
        raise ValueError(f"adjoint must be one of {ADJOINTS}, got {adjoint!r}")


def differentiable(xp, core, adjoint):
    """``core`` wrapped for ``adjoint`` on namespace ``xp`` (same signature as ``core``)."""
    if adjoint == "unrolled":
        return core
    name = backend_name(xp)
    if name in _ADAPTERS and name not in _RULES:
        try:
            importlib.import_module(_ADAPTERS[name])
        except ImportError:  # the framework's autodiff pieces are not available
            return core
    rule = _RULES.get(name)
    if rule is None:
        return core
    return lambda *args, **kw: rule(core, *args, **kw)

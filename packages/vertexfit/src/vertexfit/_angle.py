"""Azimuthal angles: the one wrapping convention of vertexfit, and residual differences."""

from __future__ import annotations

from . import _xp

__all__ = ["wrap_difference", "wrap_phi"]


def wrap_phi(phi):
    """Wrap azimuthal angles to (-pi, pi] (the convention of every phi in vertexfit).

    Args:
        phi: array of angles [rad] (NumPy, JAX, PyTorch or any array-API namespace).

    Returns:
        ``phi + 2 pi k`` in (-pi, pi], same shape, namespace and dtype; differentiable, with
        derivative one.
    """
    xp = _xp.namespace(phi)
    return xp.pi - xp.remainder(xp.pi - phi, 2.0 * xp.pi)


def wrap_difference(xp, a):
    """A phi difference moved by whole turns to the nearest of its equivalents, in
    [-pi, pi] (either end at odd multiples of pi): one rounding, several times cheaper than
    :func:`wrap_phi`, and exact (``a`` itself) for |a| < pi; for residuals, where +-pi are
    equivalent."""
    two_pi = 2.0 * xp.pi
    return a - two_pi * xp.round(a / two_pi)

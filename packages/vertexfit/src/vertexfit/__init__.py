"""vertexfit: batched, differentiable Billoir vertex fitting on NumPy, JAX and PyTorch.

Conventions (mm, GeV, rad, tesla; perigee ``(d0, z0, phi, theta, rho)``; d0 sign of
Billoir/Delphes) are documented in ``docs/conventions.md``.
"""

from ._fit import VertexFit, chi2, fit
from ._perigee import (
    DEFAULT_BZ,
    K_GEV_PER_T_MM,
    covariance_from_sigmas,
    curvature,
    extrapolate,
    from_acts,
    perigee,
    to_acts,
)

from . import reference, toy  # noqa: E402  (scipy is imported lazily)

__version__ = "0.1.0"

__all__ = [
    "VertexFit",
    "chi2",
    "fit",
    "DEFAULT_BZ",
    "K_GEV_PER_T_MM",
    "covariance_from_sigmas",
    "curvature",
    "extrapolate",
    "from_acts",
    "perigee",
    "reference",
    "toy",
    "to_acts",
]

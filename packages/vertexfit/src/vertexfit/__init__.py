"""vertexfit: batched, differentiable Billoir vertex fitting on NumPy, JAX and PyTorch.

Conventions (mm, GeV, rad, tesla; perigee ``(d0, z0, phi, theta, rho)``; d0 sign of
Billoir/Delphes) are documented in the repository's ``docs/conventions.md``; the module
map in its ``docs/layout.md``.
"""

from . import reference, resolution, toy
from ._angle import wrap_phi
from ._fit import VertexFit, chi2, fit
from ._implicit import FitGradients, fit_jvp, fit_vjp
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
from ._speed import compile_status, jax_compiler_options

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BZ",
    "FitGradients",
    "K_GEV_PER_T_MM",
    "VertexFit",
    "chi2",
    "compile_status",
    "covariance_from_sigmas",
    "curvature",
    "extrapolate",
    "fit",
    "fit_jvp",
    "fit_vjp",
    "from_acts",
    "jax_compiler_options",
    "perigee",
    "reference",
    "resolution",
    "to_acts",
    "toy",
    "wrap_phi",
]

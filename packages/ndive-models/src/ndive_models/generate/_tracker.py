"""Parametric ATLAS-like tracker: acceptance, efficiency and Gaussian smearing.

Numbers from docs/generation.md (the Delphes ATLAS card). The track model (exact helix,
``vertexfit.perigee``) and the resolution tables (Delphes ``trackResolutionATLAS.tcl``,
``vertexfit``'s single copy) live in vertexfit: no formula or table is repeated here.
All math in float64.
"""

from __future__ import annotations

import numpy as np
from vertexfit import (
    DEFAULT_BZ,
    K_GEV_PER_T_MM,
    covariance_from_sigmas,
    curvature,
    perigee,
    wrap_phi,
)

# The one copy of the Delphes ATLAS resolution tables (shared with vertexfit.toy).
from vertexfit.resolution import sigmas as resolution_sigmas

#: Track acceptance (truth level).
PT_MIN = 0.5  # GeV
ETA_MAX = 2.5
R_PROD_MAX = 300.0  # mm, production radius (inside the pixel/SCT volume)
Z_PROD_MAX = 1000.0  # mm


def efficiency(pt: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Track reconstruction efficiency (Delphes ATLAS card) for ``pt`` [GeV], ``eta``; shape (n,)."""
    central = np.abs(eta) <= 1.5
    high = np.where(central, 0.95, 0.85)
    low = np.where(central, 0.70, 0.60)
    return np.where(pt > 1.0, high, low)




def true_perigee(
    vertex: np.ndarray, momentum: np.ndarray, charge: np.ndarray, pv: np.ndarray, bz: float
) -> np.ndarray:
    """Unsmeared perigee parameters w.r.t. the primary vertex, from ``vertexfit.perigee``.

    Args:
        vertex: ``(n, 3)`` production vertices [mm].
        momentum: ``(n, 3)`` momenta ``(px, py, pz)`` at production [GeV].
        charge: ``(n,)`` charges [e].
        pv: ``(n, 3)`` primary vertex of each track's event [mm].
        bz: field [T].

    Returns:
        ``(n, 5)`` float64 ``(d0, z0, phi, theta, rho)``.
    """
    px, py, pz = momentum[:, 0], momentum[:, 1], momentum[:, 2]
    pt = np.hypot(px, py)
    mom = np.stack([np.arctan2(py, px), np.arctan2(pt, pz), curvature(charge, pt, bz)], axis=-1)
    # One track per production vertex: vertex (n, 3), momenta (n, T=1, 3), ref (n, 3).
    return perigee(vertex, mom[:, None, :], pv)[:, 0, :]


def measure(
    truth: np.ndarray,
    pt: np.ndarray,
    eta: np.ndarray,
    rng: np.random.Generator,
    bz: float = DEFAULT_BZ,
):
    """Smear true parameters ``(n, 5)`` with Gaussians of the tracker resolution.

    The resolutions are those of the true ``pt`` [GeV] and ``eta`` (as in Delphes); the
    covariance is diagonal, like the NDIVE paper's data.

    Returns:
        ``(measured (n, 5), cov (n, 5, 5))`` in float64; phi re-wrapped to (-pi, pi].
    """
    s = resolution_sigmas(pt, eta, bz)
    meas = truth + s * rng.standard_normal(truth.shape)
    meas[:, 2] = wrap_phi(meas[:, 2])
    return meas, covariance_from_sigmas(s)


def pt_from_rho(rho: np.ndarray, bz: float = DEFAULT_BZ) -> np.ndarray:
    """Transverse momentum [GeV] of a curvature ``rho`` [1/mm] (inverse of ``curvature``)."""
    return K_GEV_PER_T_MM * bz / np.abs(rho)

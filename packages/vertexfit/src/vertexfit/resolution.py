"""Track-parameter resolutions of an ATLAS-like tracker: the one copy of the tables.

Used by :mod:`vertexfit.toy` and by the ``ndive-models`` event generator.

The numbers are those of the Delphes ATLAS track-resolution card
(``cards/ATLAS_Run2/trackResolutionATLAS.tcl``), which the NDIVE paper's dataset used:

* sigma(d0), sigma(z0): functions of pT only (arXiv:1405.6569, fig. 15);
* sigma(phi), sigma(cot theta): 10 |eta| bins of 0.25 x 3 pT bins (<= 5, 5-15, > 15 GeV),
  read off the ATLAS ID TDR; sigma(theta) = sin^2(theta) sigma(cot theta);
* sigma(q/pT) / |q/pT| = 0.34e-3 sqrt(pT^2 + 44^2) for |eta| < 1.5, 0.41e-3 sqrt(pT^2 + 80^2)
  beyond (pT in GeV; about 1.5 % at low pT), hence sigma(rho) = that fraction times |rho|.

Bins are closed on the right as in the card (``pT in (lo, hi]``). Outside the tabulated
range the nearest bin is used (pT <= 0.5 GeV -> first bin, |eta| > 2.5 -> last bin) so the
function never returns zero. Pure NumPy: it is used by the generators, not by the fits.
"""

from __future__ import annotations

import numpy as np

from ._perigee import DEFAULT_BZ, K_GEV_PER_T_MM

__all__ = ["sigmas"]

# sigma(d0) [mm]: pT bins (0.5, 1], (1, 2], (2, 4], (4, 6], (6, 10], (10, 30], > 30 GeV
_D0_PT_EDGES = (1.0, 2.0, 4.0, 6.0, 10.0, 30.0)
_D0_SIGMA = (0.080, 0.045, 0.028, 0.020, 0.016, 0.014, 0.0115)
# sigma(z0) [mm]: pT bins (0.5, 1], (1, 2], (2, 4], (4, 6], (6, 15], (15, 30], > 30 GeV
_Z0_PT_EDGES = (1.0, 2.0, 4.0, 6.0, 15.0, 30.0)
_Z0_SIGMA = (0.140, 0.096, 0.075, 0.058, 0.055, 0.050, 0.047)

# |eta| bins of width 0.25 up to 2.5 (upper edges of the first nine) and pT <= 5, 5-15, > 15
_ETA_EDGES = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25)
_ANG_PT_EDGES = (5.0, 15.0)
# sigma(phi) [rad]; rows: pT bins, columns: |eta| bins
_PHI_SIGMA = (
    (1.5097e-3, 1.6255e-3, 1.7181e-3, 1.7876e-3, 2.1004e-3,
     2.2625e-3, 2.5869e-3, 2.9344e-3, 3.1429e-3, 3.7220e-3),
    (1.1006e-3, 1.1843e-3, 1.2486e-3, 1.2990e-3, 1.5234e-3,
     1.6395e-3, 1.8697e-3, 2.1136e-3, 2.2604e-3, 2.6736e-3),
    (1.4630e-4, 1.5498e-4, 1.5305e-4, 1.5884e-4, 1.7717e-4,
     1.8585e-4, 1.9646e-4, 1.9839e-4, 2.0129e-4, 2.2733e-4),
)
# sigma(cot theta) [1]
_COT_SIGMA = (
    (1.7536e-3, 1.8483e-3, 2.0853e-3, 2.4645e-3, 3.0332e-3,
     4.3602e-3, 6.3033e-3, 9.0995e-3, 1.3934e-2, 1.9479e-2),
    (1.4479e-3, 1.4957e-3, 1.6403e-3, 1.8900e-3, 2.2839e-3,
     3.2469e-3, 4.6910e-3, 6.7180e-3, 1.0294e-2, 1.4372e-2),
    (7.3460e-4, 6.7299e-4, 6.0190e-4, 5.4976e-4, 5.3555e-4,
     6.4929e-4, 9.2891e-4, 1.1611e-3, 1.8009e-3, 2.4550e-3),
)
# relative q/pT resolution: a sqrt(pT^2 + b^2) (pT in GeV), barrel |eta| < 1.5 / beyond
_QPT_BARREL = (0.34e-3, 44.0)
_QPT_ENDCAP = (0.41e-3, 80.0)
_BARREL_ETA = 1.5


def _bin(edges, x):
    """Index of the right-closed bin (e_{i-1}, e_i] holding x; values above the last edge go
    to the overflow bin ``len(edges)``."""
    return np.searchsorted(np.asarray(edges), x, side="left")


def sigmas(pt, eta, bz=DEFAULT_BZ):
    """Standard deviations of the perigee parameters of a track, ATLAS-like tracker.

    Args:
        pt: ``(...)`` transverse momentum [GeV] (> 0).
        eta: ``(...)`` pseudorapidity (broadcast against ``pt``).
        bz: solenoid field [T], which converts the q/pT resolution into one on rho.

    Returns:
        ``(..., 5)`` float64 NumPy array of sigma(d0, z0, phi, theta, rho)
        [mm, mm, rad, rad, 1/mm], in this package's parameter order; the diagonal of the
        covariance is its square (:func:`vertexfit.covariance_from_sigmas`).
    """
    pt, eta = np.broadcast_arrays(np.asarray(pt, dtype=np.float64),
                                  np.asarray(eta, dtype=np.float64))
    aeta = np.abs(eta)
    s_d0 = np.asarray(_D0_SIGMA)[_bin(_D0_PT_EDGES, pt)]
    s_z0 = np.asarray(_Z0_SIGMA)[_bin(_Z0_PT_EDGES, pt)]
    ie = _bin(_ETA_EDGES, aeta)
    ip = _bin(_ANG_PT_EDGES, pt)
    s_phi = np.asarray(_PHI_SIGMA)[ip, ie]
    s_cot = np.asarray(_COT_SIGMA)[ip, ie]
    theta = 2.0 * np.arctan(np.exp(-eta))
    s_theta = np.sin(theta) ** 2 * s_cot  # d(theta) = -sin^2(theta) d(cot theta)
    a = np.where(aeta < _BARREL_ETA, _QPT_BARREL[0], _QPT_ENDCAP[0])
    b = np.where(aeta < _BARREL_ETA, _QPT_BARREL[1], _QPT_ENDCAP[1])
    rel = a * np.sqrt(pt * pt + b * b)
    s_rho = rel * K_GEV_PER_T_MM * abs(bz) / pt  # sigma(rho) = rel * |rho|
    return np.stack([s_d0, s_z0, s_phi, s_theta, s_rho], axis=-1)

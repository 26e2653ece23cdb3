"""The ATLAS-named fields of a jet file, derived from the native ones.

Definitions follow ATLAS's training-dataset-dumper (BTagTrackIpAccessor and the custom track
getters of FlavorTagDiscriminants), in ATLAS units (MeV for energies) and signs (``btagIp_d0 =
-d0``). See the table in :mod:`ndive_models.data.schema` and docs/generation.md.
"""

from __future__ import annotations

import numpy as np

from . import schema


def _sign(x):
    # copysign(1, x) with 0 counted as +, as ``std::copysign`` of +0.0 in the ATLAS code
    return np.where(x >= 0, 1.0, -1.0)


def add_atlas_fields(jets: np.ndarray, tracks: np.ndarray) -> None:
    """Fill the :data:`~ndive_models.data.schema.ATLAS_JET_FIELDS` and
    :data:`~ndive_models.data.schema.ATLAS_TRACK_FIELDS` of ``jets`` ``(N,)`` and ``tracks``
    ``(N, T)`` in place from their native fields; padded slots (``valid = False``) get 0. A
    valid track with a zero variance or pT gets the formula's inf/NaN, as ATLAS would.

    The propagated uncertainties use the full covariance (the off-diagonal terms are zero in
    files from ``ndive generate``, whose covariance is diagonal).
    """
    jets["pt_btagJes"] = 1000.0 * jets["pt"].astype(np.float64)
    jets["eta_btagJes"] = jets["eta"]
    jets["absEta_btagJes"] = np.abs(jets["eta"])

    valid = tracks["valid"]
    t = {k: tracks[k].astype(np.float64) for k in ("d0", "z0", "theta", "rho", "pt", "deta",
                                                   "dphi")}
    c = {k: tracks[k].astype(np.float64) for k in schema.COV_FIELDS}
    sin, cos = np.sin(t["theta"]), np.cos(t["theta"])
    ip_d0 = -t["d0"]
    z0s = t["z0"] * sin
    with np.errstate(divide="ignore", invalid="ignore"):
        sd0 = np.sqrt(c["cov_d0_d0"])
        sz0s = np.sqrt(sin**2 * c["cov_z0_z0"] + (t["z0"] * cos) ** 2 * c["cov_theta_theta"]
                       + 2 * t["z0"] * sin * cos * c["cov_z0_theta"])
        # dphi = phi - phi_jet, deta = eta - eta_jet
        sd0_signed = np.abs(ip_d0) * _sign(np.sin(-t["dphi"]) * ip_d0)
        sz0_signed = np.abs(z0s) * _sign(-t["deta"] * z0s)
        # q/p = -rho sin(theta) / (K Bz) with K Bz = pt |rho|: no field needed
        qop = -np.sign(t["rho"]) * sin / (1000.0 * t["pt"])
        cot = cos / sin
        rel2 = (c["cov_rho_rho"] / t["rho"] ** 2 + cot**2 * c["cov_theta_theta"]
                + 2 * cot * c["cov_theta_rho"] / t["rho"])
        jet_pt = jets["pt"].astype(np.float64)[:, None]
        out = {
            "btagIp_d0": ip_d0,
            "d0Uncertainty": sd0,
            "z0SinTheta": z0s,
            "z0SinThetaUncertainty": sz0s,
            "lifetimeSignedD0": sd0_signed,
            "lifetimeSignedD0Significance": sd0_signed / sd0,
            "lifetimeSignedZ0SinTheta": sz0_signed,
            "lifetimeSignedZ0SinThetaSignificance": sz0_signed / sz0s,
            "qOverP": qop,
            "qOverPUncertainty": np.abs(qop) * np.sqrt(np.maximum(rel2, 0.0)),
            "phiUncertainty": np.sqrt(c["cov_phi_phi"]),
            "thetaUncertainty": np.sqrt(c["cov_theta_theta"]),
            "ptfrac": t["pt"] / jet_pt,
            "dr": np.hypot(t["deta"], t["dphi"]),
        }
    for name, value in out.items():
        tracks[name] = np.where(valid, value, 0.0)

"""The realistic-detector model of the generator: silicon layers, correlated covariances,
tracking efficiency and resolution against the production radius, fake tracks, soft leptons.

Everything here is used only when the matching :class:`GenerationConfig` option is on; the
clean (paper-like) sample never calls it. Numbers and their sources: docs/generation.md,
section "Realistic detector". All math in float64, vectorised over tracks.

**Covariance model.** A track is a least-squares fit to one space point per silicon layer it
crosses (barrel layers at the radii of :data:`LAYERS`), with multiple scattering
(Highland formula, ``13.6 MeV / p * sqrt(x/X0) (1 + 0.038 ln(x/X0))``) in every layer and in
the beam pipe. Linearised about the track (it moves along +x at the perigee), the transverse
measurements are ``u_k = -d0 + r_k phi + r_k^2 rho / 2`` (docs/conventions.md, the d0 sign) and the
longitudinal ones ``z_k = z0 - r_k theta / sin^2(theta)``; the scattering in layer j shifts
every later hit k by ``(r_k - r_j) alpha_j / sin(theta)`` (transverse) and
``(r_k - r_j) alpha_j / sin^2(theta)`` (z), correlating the hits. The parameter covariance
``(H^T C_hits^-1 H)^-1`` then has the d0-phi and z0-theta correlations of a real fit. Its
diagonal is scaled so that a track produced at the beam line has the Delphes ATLAS resolutions
(``vertexfit``'s tables): ``C = S C_model(r_prod) S`` with
``S = sigma_Delphes / sqrt(diag C_model(r_prod = 0))``. A track produced further out has no
hits (and no material) inside its production radius, so its impact-parameter resolution grows
as a real one does.
"""

from __future__ import annotations

import numpy as np
from vertexfit import wrap_phi

try:  # the public name once vertexfit exposes its resolution tables
    from vertexfit.resolution import sigmas as resolution_sigmas
except ImportError:  # pragma: no cover -- vertexfit before the tables went public
    from vertexfit._resolution import sigmas as resolution_sigmas

#: The one table of the silicon detector (ATLAS Run 3 barrel, docs/generation.md, Realistic detector):
#: (name, radius [mm], x/X0 at normal incidence, sigma r-phi [mm], sigma z [mm], silicon hits).
#: The beam pipe is material only; an SCT layer is a stereo pair: one space point, two hits.
LAYERS = (
    ("beam pipe", 23.5, 0.004, 0.0, 0.0, 0),
    ("IBL", 33.25, 0.015, 0.008, 0.040, 1),
    ("B-layer", 50.5, 0.025, 0.010, 0.115, 1),
    ("pixel L1", 88.5, 0.025, 0.010, 0.115, 1),
    ("pixel L2", 122.5, 0.025, 0.010, 0.115, 1),
    ("SCT 1", 299.0, 0.025, 0.017, 0.580, 2),
    ("SCT 2", 371.0, 0.025, 0.017, 0.580, 2),
    ("SCT 3", 443.0, 0.025, 0.017, 0.580, 2),
    ("SCT 4", 514.0, 0.025, 0.017, 0.580, 2),
)
_R = np.array([row[1] for row in LAYERS])
_X0 = np.array([row[2] for row in LAYERS])
_SIG_U = np.array([row[3] for row in LAYERS])
_SIG_Z = np.array([row[4] for row in LAYERS])
_HITS = np.array([row[5] for row in LAYERS])
_MEASURES = _HITS > 0
_PIXEL = _HITS == 1
#: Standard (inside-out) tracking needs a pixel hit: nothing produced beyond the last pixel
#: layer becomes a track (large-radius tracking, which FTAG inputs do not use, would).
R_PROD_MAX_STANDARD = float(_R[_PIXEL].max())
#: Efficiency factor against the number of pixel layers inside the production radius
#: (0: produced inside the IBL, ..., 3: between pixel L1 and L2). Seeds need pixel space
#: points, so each lost pixel layer costs efficiency (model values; ATLAS displaced-track
#: efficiency of standard tracking falls to a few 10% near 100 mm).
RADIAL_EFFICIENCY = (1.0, 0.90, 0.60, 0.30)
_NO_HIT_VARIANCE = 1e6  # mm^2: a hit inside the production radius carries no information


def silicon_hits(r_prod: np.ndarray) -> np.ndarray:
    """Silicon hits ``(n,)`` of barrel tracks produced at transverse radius ``r_prod`` [mm]."""
    return (_HITS[None, :] * (_R[None, :] > np.asarray(r_prod)[:, None])).sum(axis=1)


def radial_efficiency(r_prod: np.ndarray) -> np.ndarray:
    """Factor ``(n,)`` on the tracking efficiency for production radius ``r_prod`` [mm]."""
    r_prod = np.asarray(r_prod, dtype=np.float64)
    lost = (_R[_PIXEL][None, :] <= r_prod[:, None]).sum(axis=1)
    table = np.append(RADIAL_EFFICIENCY, 0.0)  # all pixel layers lost: no standard track
    return table[lost]


def _highland(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Plane scattering angle [rad] for momentum ``p`` [GeV] and thickness ``x`` [X0], beta=1."""
    return 0.0136 / p * np.sqrt(x) * (1.0 + 0.038 * np.log(x))


def model_covariance(pt, eta, r_prod) -> np.ndarray:
    """Unscaled covariance ``(n, 5, 5)`` of the least-squares detector model (module doc).

    ``pt`` [GeV], ``eta``, ``r_prod`` [mm] are ``(n,)``; parameter order (d0, z0, phi, theta,
    rho) [mm, mm, rad, rad, 1/mm].
    """
    pt, eta, r_prod = (np.asarray(a, dtype=np.float64) for a in (pt, eta, r_prod))
    sin_t = 1.0 / np.cosh(eta)  # sin(theta)
    p = pt * np.cosh(eta)
    outside = _R[None, :] > r_prod[:, None]  # (n, L): layers the particle crosses
    # scattering angle of each crossed layer (path length x/X0 / sin(theta) in a barrel layer)
    alpha = np.where(outside, _highland(p[:, None], _X0[None, :] / sin_t[:, None]), 0.0)
    r_hit = _R[_MEASURES]
    lever = np.maximum(r_hit[None, :, None] - _R[None, None, :], 0.0)  # (1, K, L)
    lever = lever * (r_hit[:, None] > _R[None, :])[None]
    ms = np.einsum("nkl,nml->nkm", lever * alpha[:, None, :], lever * alpha[:, None, :])
    has = outside[:, _MEASURES]
    out = np.zeros((len(pt), 5, 5))
    for idx, sig, rows, scale in (
        ((0, 2, 4), _SIG_U[_MEASURES], np.stack([-np.ones_like(r_hit), r_hit, 0.5 * r_hit**2], 1),
         1.0 / sin_t**2),
        ((1, 3), _SIG_Z[_MEASURES], None, 1.0 / sin_t**4),
    ):  # fmt: skip
        if rows is None:  # z0, theta: dz/dtheta = -r / sin^2(theta) depends on the track
            H = np.stack([np.ones((len(pt), len(r_hit))),
                          -r_hit[None, :] / sin_t[:, None] ** 2], axis=-1)  # fmt: skip
        else:
            H = np.broadcast_to(rows, (len(pt),) + rows.shape)
        var = np.where(has, sig[None, :] ** 2, _NO_HIT_VARIANCE)
        C_hits = ms * scale[:, None, None] + var[:, :, None] * np.eye(len(r_hit))
        fisher = np.einsum("nki,nkj->nij", H, np.linalg.solve(C_hits, H))
        cov = np.linalg.inv(fisher)
        out[:, np.array(idx)[:, None], np.array(idx)[None, :]] = cov
    return out


def covariance(pt, eta, r_prod, bz: float, *, correlated: bool) -> np.ndarray:
    """Track covariance ``(n, 5, 5)``: the model scaled to the Delphes resolutions at r = 0.

    ``correlated=False`` keeps only the diagonal (still growing with ``r_prod``).
    """
    pt, eta = np.asarray(pt, dtype=np.float64), np.asarray(eta, dtype=np.float64)
    prompt = model_covariance(pt, eta, np.zeros_like(pt))
    here = model_covariance(pt, eta, r_prod)
    scale = resolution_sigmas(pt, eta, bz) / np.sqrt(np.diagonal(prompt, axis1=1, axis2=2))
    cov = here * scale[:, :, None] * scale[:, None, :]
    if not correlated:
        cov = cov * np.eye(5)
    return cov


def smear(truth: np.ndarray, cov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``truth (n, 5)`` plus Gaussian noise of covariance ``cov (n, 5, 5)`` (phi not wrapped)."""
    chol = np.linalg.cholesky(cov)
    return truth + np.einsum("nij,nj->ni", chol, rng.standard_normal(truth.shape))


# --- fake tracks -----------------------------------------------------------------------------
#: Shape of the fake-track parameters (model values): pT from P(pT > x) = (0.5 GeV / x)^1.5
#: (fakes are soft), direction of a random real track of the event jittered by this much in
#: eta and phi (fakes come from hits of dense regions), d0 and z0 - z0(that track) Laplace
#: distributed with these scales [mm] (far wider than real tracks).
FAKE_PT_INDEX = 1.5
FAKE_DIRECTION_JITTER = 0.05
FAKE_D0_SCALE = 1.0
FAKE_Z0_SCALE = 2.0


def fake_tracks(event, eta, phi, z0, n_events: int, rate: float, pt_min: float, bz: float,
                rng: np.random.Generator):
    """Random-combination tracks: Poisson(``rate`` x real tracks) per event.

    Args:
        event, eta, phi, z0: ``(n,)`` the event's real reconstructed tracks (z0 in the frame
            in which the fakes are made).
        rate: expected fakes per real track.

    Returns:
        ``(event (m,), params (m, 5), pt (m,), eta (m,), charge (m,))``.
    """
    n_real = np.bincount(event, minlength=n_events)
    n_fake = rng.poisson(rate * n_real)
    n_fake[n_real == 0] = 0
    fev = np.repeat(np.arange(n_events), n_fake)
    start = np.concatenate([[0], np.cumsum(n_real)[:-1]])
    order = np.argsort(event, kind="stable")
    seed = order[start[fev] + (rng.random(len(fev)) * n_real[fev]).astype(np.int64)]
    f_eta = np.clip(eta[seed] + FAKE_DIRECTION_JITTER * rng.standard_normal(len(fev)),
                    -2.499, 2.499)  # fmt: skip
    f_phi = phi[seed] + FAKE_DIRECTION_JITTER * rng.standard_normal(len(fev))
    f_phi = wrap_phi(f_phi)
    f_pt = pt_min * (1.0 - rng.random(len(fev))) ** (-1.0 / FAKE_PT_INDEX)
    charge = np.where(rng.random(len(fev)) < 0.5, -1, 1)
    from vertexfit import curvature

    params = np.stack([
        rng.laplace(0.0, FAKE_D0_SCALE, len(fev)),
        z0[seed] + rng.laplace(0.0, FAKE_Z0_SCALE, len(fev)),
        f_phi,
        2.0 * np.arctan(np.exp(-f_eta)),
        curvature(charge, f_pt, bz),
    ], axis=-1)  # fmt: skip
    return fev, params, f_pt, f_eta, charge


# --- soft leptons ----------------------------------------------------------------------------
#: Reconstructed soft leptons in jets (model values, docs/generation.md, Realistic detector): minimum pT [GeV],
#: |eta| acceptance, efficiency below / above ``*_PT_PLATEAU``, relative pT resolution of the
#: lepton measurement (muon spectrometer combined with the ID / calorimeter cluster:
#: sigma/E = a/sqrt(E) (+) b), and the probability that a charged hadron is reconstructed as
#: such a lepton (punch-through and decays in flight / hadronic showers).
MUON = {"pt_min": 3.0, "eta_max": 2.5, "pt_plateau": 4.0, "eff": (0.80, 0.93),
        "resolution": (0.0, 0.03), "misid": 0.003}  # fmt: skip
ELECTRON = {"pt_min": 4.0, "eta_max": 2.47, "pt_plateau": 7.0, "eff": (0.55, 0.70),
            "resolution": (0.10, 0.007), "misid": 0.005}  # fmt: skip
_HADRONS = (211, 321, 2212)


def soft_leptons(pdgid, charge, pt, eta, rng: np.random.Generator):
    """Reconstructed lepton of each track: ``(leptonID (n,) int8, lepton_pt (n,) float64)``.

    ``leptonID`` is the signed PDG id of the reconstructed lepton (11 e-, -11 e+, 13 mu-,
    -13 mu+; 0 none); ``pdgid`` ``(n,)`` is the true particle (0 for fakes), ``charge`` its
    charge, ``pt`` [GeV] and ``eta`` the true kinematics. Muon identification is tried before
    electron identification.
    """
    apdg = np.abs(pdgid)
    lid = np.zeros(len(pt), dtype=np.int8)
    lpt = np.zeros(len(pt))
    hadron = np.isin(apdg, _HADRONS)
    for code, spec in ((13, MUON), (11, ELECTRON)):
        acc = (pt > spec["pt_min"]) & (np.abs(eta) < spec["eta_max"]) & (lid == 0)
        eff = np.where(pt > spec["pt_plateau"], spec["eff"][1], spec["eff"][0])
        prob = np.where(apdg == code, eff, np.where(hadron, spec["misid"], 0.0))
        hit = acc & (rng.random(len(pt)) < prob)
        a, b = spec["resolution"]
        rel = np.hypot(a / np.sqrt(np.maximum(pt * np.cosh(eta), 1e-9)), b)
        lid[hit] = (-code * np.sign(charge[hit])).astype(np.int8)
        lpt[hit] = pt[hit] * (1.0 + rel[hit] * rng.standard_normal(int(hit.sum())))
    return lid, np.abs(lpt)

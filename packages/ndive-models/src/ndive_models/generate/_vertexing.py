"""Primary-vertex reconstruction of the generator: seeds in z, adaptive ``vertexfit`` fits with
a beam-spot constraint, hard-scatter choice by the largest sum pT^2 (as in ATLAS).

Vectorised over the events of a batch: each step is one batched :func:`vertexfit.fit` over
(events x candidates). Tracks are given w.r.t. the nominal beam line (the origin).

1. **Seeds**: per event, the z0 of the tracks with |d0| < :data:`D0_MAX` are histogrammed
   with weights pT^2 in 0.1 mm bins and smoothed with a Gaussian of :data:`SEED_WIDTH`; the
   :data:`N_CANDIDATES` highest local maxima are the candidates (those below
   :data:`SEED_MIN_FRACTION` of the event's highest maximum cannot win and are dropped).
2. **Adaptive fit** of each candidate with the tracks within :data:`WINDOW` in z0:
   ``vertexfit.fit(..., weights=w, constraint=(beam spot centre, beam-spot covariance))``,
   then each track's weight becomes ``w = 1 / (1 + exp((chi2 - CHI2_CUT) / (2 T)))`` with its
   chi2 to the fitted vertex, annealing the temperature T through :data:`TEMPERATURES`
   (each a warm-started fit of :data:`N_ITER` Gauss-Newton iterations; one more fit with the
   final weights gives the vertex). Outliers, e.g. tracks of a b-hadron decay or of a nearby
   pileup vertex, are down-weighted.
3. **Choice**: the candidate with the largest sum pT^2 of its tracks with weight > 0.5.
"""

from __future__ import annotations

import numpy as np

D0_MAX = 4.0  # mm, tracks used for vertexing (w.r.t. the beam line)
SEED_BIN = 0.1  # mm
SEED_WIDTH = 0.3  # mm, Gaussian smoothing of the pT^2-weighted z0 histogram
SEED_RANGE = 400.0  # mm, |z0| covered by the seed histogram
N_CANDIDATES = 3
SEED_MIN_FRACTION = 0.05
WINDOW = 3.0  # mm, |z0 - z_seed| of the tracks given to a candidate's fit
CHI2_CUT = 9.0
TEMPERATURES = (16.0, 4.0, 1.0)
N_ITER = 3
MIN_CONSTRAINT_SIGMA = 1e-3  # mm: a beam spot of zero size is constrained to 1 um


def _seeds(event, z0, w, n_events):
    """``(n_events, N_CANDIDATES)`` seed z [mm] and validity (highest smoothed maxima)."""
    from scipy.ndimage import gaussian_filter1d

    nb = int(2 * SEED_RANGE / SEED_BIN)
    b = np.clip(((z0 + SEED_RANGE) / SEED_BIN).astype(np.int64), 0, nb - 1)
    h = np.bincount(event * nb + b, weights=w, minlength=n_events * nb).reshape(n_events, nb)
    h = gaussian_filter1d(h, SEED_WIDTH / SEED_BIN, axis=1, mode="constant")
    peak = np.zeros_like(h, dtype=bool)
    peak[:, 1:-1] = (h[:, 1:-1] >= h[:, :-2]) & (h[:, 1:-1] > h[:, 2:]) & (h[:, 1:-1] > 0)
    score = np.where(peak, h, -1.0)
    top = np.argsort(-score, axis=1, kind="stable")[:, :N_CANDIDATES]
    value = np.take_along_axis(score, top, axis=1)
    ok = (value > 0) & (value >= SEED_MIN_FRACTION * value[:, :1])
    return (top + 0.5) * SEED_BIN - SEED_RANGE, ok


def reconstruct(event, params, cov, pt, n_events: int, beamspot_sigma, hard_scatter=None):
    """Reconstructed primary vertex of each event.

    Args:
        event: ``(n,)`` event index of each track (0..n_events-1).
        params: ``(n, 5)`` perigee parameters w.r.t. the origin (the nominal beam line).
        cov: ``(n, 5, 5)`` their covariance.
        pt: ``(n,)`` measured pT [GeV].
        beamspot_sigma: ``(sigma_x, sigma_y, sigma_z)`` [mm] of the beam spot (centred at 0).
        hard_scatter: ``(n,)`` bool, tracks of the hard-scatter interaction (for the
            ``is_hard_scatter`` flag only; default all).

    Returns:
        dict of ``vertex (E, 3)``, ``cov (E, 3, 3)`` [mm, mm^2], ``n_tracks (E,)`` (weight
        > 0.5), ``is_hard_scatter (E,)`` (more than half of the chosen vertex's sum pT^2 comes
        from hard-scatter tracks).
    """
    import vertexfit

    hard_scatter = np.ones(len(event), bool) if hard_scatter is None else hard_scatter
    bs_cov = np.diag(np.maximum(np.asarray(beamspot_sigma, float), MIN_CONSTRAINT_SIGMA) ** 2)
    use = np.flatnonzero(np.abs(params[:, 0]) < D0_MAX)
    ev, z0, w2 = event[use], params[use, 1], pt[use] ** 2
    seed_z, seed_ok = _seeds(ev, z0, w2, n_events)
    K = N_CANDIDATES
    # (track, candidate) pairs within the window, padded per candidate
    cand = np.repeat(ev * K, K) + np.tile(np.arange(K), len(ev))
    trk = np.repeat(np.arange(len(ev)), K)
    near = (np.abs(z0[trk] - seed_z.reshape(-1)[cand]) < WINDOW) & seed_ok.reshape(-1)[cand]
    # only the candidates that can win are fitted: a compact batch of B of them
    fitted = np.flatnonzero(seed_ok.reshape(-1))
    compact = np.full(n_events * K, -1)
    compact[fitted] = np.arange(len(fitted))
    B = max(len(fitted), 1)
    cand, trk = compact[cand[near]], trk[near]
    order = np.argsort(cand, kind="stable")
    cand, trk = cand[order], trk[order]
    count = np.bincount(cand, minlength=B)
    T = max(int(count.max()) if len(count) else 0, 1)
    slot = np.arange(len(cand)) - (np.cumsum(count) - count)[cand]
    tracks = np.tile(np.array([0.0, 0.0, 0.0, np.pi / 2, 0.0]), (B, T, 1))
    tcov = np.tile(np.eye(5), (B, T, 1, 1))
    mask = np.zeros((B, T), bool)
    tracks[cand, slot] = params[use[trk]]
    tcov[cand, slot] = cov[use[trk]]
    mask[cand, slot] = True
    weight = mask.astype(np.float64)
    vtx = np.zeros((B, 3))
    vtx[: len(fitted), 2] = seed_z.reshape(-1)[fitted]
    constraint = (np.zeros((B, 3)), np.broadcast_to(bs_cov, (B, 3, 3)).copy())
    for t in TEMPERATURES:
        fit = vertexfit.fit(tracks, tcov, weight, mask=mask, seed=vtx, n_iter=N_ITER,
                            constraint=constraint)  # fmt: skip
        vtx = fit.vertex
        arg = np.clip((fit.track_chi2 - CHI2_CUT) / (2.0 * t), -50.0, 50.0)
        weight = np.where(mask, 1.0 / (1.0 + np.exp(arg)), 0.0)
    final = vertexfit.fit(tracks, tcov, weight, mask=mask, seed=vtx, n_iter=N_ITER,
                          constraint=constraint)  # fmt: skip
    assigned = mask & (weight > 0.5)
    pt2 = np.zeros((B, T))
    pt2[cand, slot] = w2[trk]
    hs = np.zeros((B, T), bool)
    hs[cand, slot] = hard_scatter[use[trk]]
    sum_pt2 = np.full(n_events * K, -1.0)
    sum_pt2[fitted] = np.where(assigned, pt2, 0.0).sum(axis=1)[: len(fitted)]
    sum_pt2 = sum_pt2.reshape(n_events, K)
    best = compact[np.arange(n_events) * K + np.argmax(sum_pt2, axis=1)]
    found = sum_pt2.max(axis=1) >= 0
    best = np.maximum(best, 0)
    vertex = np.where(found[:, None], final.vertex[best], 0.0)
    vcov = np.where(found[:, None, None], final.vertex_cov[best], bs_cov)
    hs_pt2 = np.where(assigned & hs, pt2, 0.0).sum(axis=1)[best]
    return {
        "vertex": vertex,
        "cov": vcov,
        "n_tracks": np.where(found, assigned[best].sum(axis=1), 0),
        "is_hard_scatter": found & (hs_pt2 > 0.5 * np.maximum(sum_pt2.max(axis=1), 1e-300)),
    }

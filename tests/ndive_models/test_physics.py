"""Physics of the generated ttbar sample (the expected numbers: docs/generation.md, Validation)."""

from __future__ import annotations

import numpy as np
import pytest

import vertexfit
from ndive_models.data.schema import FLAVOURS, ORIGIN, TRACK_PARAMS, track_cov
from ndive_models.data.validation import pulls


@pytest.mark.parametrize("param", TRACK_PARAMS)
def test_primary_pulls_are_unit_gaussian(summary, param):
    assert abs(summary["pull_width"][param] - 1.0) < 0.05, summary["pull_width"]
    assert abs(summary["pull_mean"][param]) < 0.05, summary["pull_mean"]


def test_pull_shape_is_gaussian(sample):
    """The core, not only the width: 68.3% of pulls within 1 sigma (no hidden rescaling)."""
    _, tracks = sample
    flat = tracks[tracks["valid"]]
    p = pulls(flat[flat["ftagTruthOriginLabel"] == ORIGIN["Primary"]])
    within = np.mean(np.abs(p) < 1.0, axis=0)
    np.testing.assert_allclose(within, 0.6827, atol=0.02)


def test_d0_significance_by_origin(summary):
    f = summary["frac_d0sig_gt3"]
    assert f["FromB"] > 0.5, f
    assert f["FromBC"] > 0.5, f
    assert f["Primary"] < 0.01, f
    assert 0.15 < f["FromC"] < 0.7, f
    assert summary["n_origin"]["FromB"] > 300 and summary["n_origin"]["Primary"] > 3000


def test_lifetime_sign_is_positive_for_heavy_flavour(sample):
    """Displaced b-decay tracks lie on the jet side of the PV: significant ones are mostly +."""
    _, tracks = sample
    flat = tracks[tracks["valid"]]
    sig = flat["d0_significance"][flat["ftagTruthOriginLabel"] == ORIGIN["FromB"]]
    assert np.mean(sig[np.abs(sig) > 3] > 0) > 0.8
    zsig = flat["z0_significance"][flat["ftagTruthOriginLabel"] == ORIGIN["FromB"]]
    assert np.mean(zsig[np.abs(zsig) > 3] > 0) > 0.7


def test_track_multiplicity_and_flavours(summary):
    t = summary["tracks_per_jet"]
    assert t["bjets"] > t["ujets"] + 0.5, t
    assert 4.0 < t["ujets"] < 8.0, t
    fr = summary["flavour_fractions"]
    assert 0.25 < fr["bjets"] < 0.40 and 0.07 < fr["cjets"] < 0.17, fr


def test_b_hadron_decay_length(sample, summary):
    assert 2.0 < summary["median_L3D"]["bjets"] < 10.0, summary["median_L3D"]
    assert summary["median_L3D"]["cjets"] < summary["median_L3D"]["bjets"]
    jets, _ = sample
    light = jets["flavour_label"] == FLAVOURS.index("ujets")
    assert np.all(jets["L3D"][light] == 0) and np.all(jets["hadron_pdgid"][light] == 0)
    b = jets["flavour_label"] == 0
    pid = np.abs(jets["hadron_pdgid"][b]) % 10000
    assert np.all(((pid // 100) % 10 == 5) | ((pid // 1000) % 10 == 5)), (
        "b-jet without b hadron"
    )
    assert np.all(jets["hadron_pt"][b] > 5.0)


def test_track_layout(sample):
    jets, tracks = sample
    valid = tracks["valid"]
    n = valid.sum(axis=1)
    np.testing.assert_array_equal(n, jets["n_tracks"])
    assert np.all(jets["n_tracks_all"] >= jets["n_tracks"])
    # valid first, padding zero, decreasing pT
    assert np.all(valid == (np.arange(valid.shape[1]) < n[:, None]))
    assert np.all(tracks["pt"][~valid] == 0)
    pt = np.where(valid, tracks["pt"], -1.0)
    assert np.all(np.diff(pt, axis=1) <= 0)
    flat = tracks[valid]
    assert np.all(flat["pt"] > 0.3) and np.all(np.abs(flat["eta"]) < 2.6)
    assert np.all(np.hypot(flat["deta"], flat["dphi"]) < 0.4)
    assert np.all(np.abs(flat["phi"]) <= np.pi)


def test_impact_parameter_sign_convention(sample):
    """d0 of stiff displaced tracks matches the straight-line form (docs/conventions.md).

    An independent check of the stored truth (PCA = PV + d0 (sin phi, -cos phi)).
    """
    jets, tracks = sample
    pv = np.stack([jets["pv_x"], jets["pv_y"]], -1)[:, None, :]
    v = np.stack([tracks["truth_vertex_x"], tracks["truth_vertex_y"]], -1) - pv
    sel = (
        tracks["valid"]
        & (np.abs(tracks["true_rho"]) < 1e-4)
        & (np.hypot(*v.T).T > 0.05)
    )
    x, y, phi = v[..., 0][sel], v[..., 1][sel], tracks["true_phi"][sel]
    line = x * np.sin(phi) - y * np.cos(phi)
    assert sel.sum() > 100
    r = np.hypot(x, y)
    # curvature changes d0 by about rho r^2 / 2 over a transverse flight r
    diff = np.abs(tracks["true_d0"][sel] - line)
    assert np.all(diff <= 1e-4 + 1e-4 * r * r), diff.max()
    assert np.mean(np.abs(line) > 0.01) > 0.3  # the check is not trivially 0 == 0


def test_truth_vertex_index(sample):
    _, tracks = sample
    flat = tracks[tracks["valid"]]
    vi = flat["ftagTruthVertexIndex"]
    primary = flat["ftagTruthOriginLabel"] == ORIGIN["Primary"]
    assert np.all(vi[primary] == 0)
    hf = np.isin(flat["ftagTruthOriginLabel"], [ORIGIN["FromB"], ORIGIN["FromBC"]])
    assert np.all(vi[hf] > 0)


def _secondary_vertices(jets, tracks, min_tracks=2):
    """Tracks grouped by (jet, ftagTruthVertexIndex > 0) with >= min_tracks members."""
    groups = []
    for j in np.flatnonzero(jets["flavour_label"] == 0):
        t = tracks[j][tracks["valid"][j]]
        for k in np.unique(t["ftagTruthVertexIndex"]):
            members = t[t["ftagTruthVertexIndex"] == k]
            if k > 0 and len(members) >= min_tracks:
                groups.append((j, members))
    return groups


def test_vertex_fit_of_true_secondary_vertices_has_unit_pulls(sample):
    """Siblings from one true decay vertex, fitted with vertexfit.fit, give pulls of width ~1."""
    jets, tracks = sample
    groups = _secondary_vertices(jets, tracks)
    assert len(groups) > 200
    T = max(len(m) for _, m in groups)
    n = len(groups)
    q = np.zeros((n, T, 5))
    cov = np.tile(np.eye(5), (n, T, 1, 1))
    mask = np.zeros((n, T), dtype=bool)
    true_v = np.zeros((n, 3))
    ref = np.zeros((n, 3))
    for i, (j, m) in enumerate(groups):
        k = len(m)
        q[i, :k] = np.stack([m[p] for p in TRACK_PARAMS], -1)
        cov[i, :k] = track_cov(m)
        mask[i, :k] = True
        true_v[i] = [
            m["truth_vertex_x"][0],
            m["truth_vertex_y"][0],
            m["truth_vertex_z"][0],
        ]
        ref[i] = [jets["pv_x"][j], jets["pv_y"][j], jets["pv_z"][j]]
    res = vertexfit.fit(q, cov, mask=mask, ref=ref)
    ok = np.asarray(res.converged)
    assert ok.mean() > 0.95
    err = np.sqrt(np.diagonal(np.asarray(res.vertex_cov), axis1=-2, axis2=-1))
    pull = ((np.asarray(res.vertex) - true_v) / err)[ok]
    robust = 1.4826 * np.median(np.abs(pull - np.median(pull, axis=0)), axis=0)
    np.testing.assert_allclose(robust, 1.0, atol=0.15)
    np.testing.assert_allclose(np.median(pull, axis=0), 0.0, atol=0.15)

"""The realistic-detector options of the generator (issue 13): beam spot, pileup, reconstructed
PV, fakes, radial tracking, correlated covariances, soft leptons, presets, bad input.

The detector model and the PV reconstruction are tested on synthetic tracks (fast, no
Pythia); one tiny Pythia file per preset checks the whole chain.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

import vertexfit
from ndive_models import cli
from ndive_models.data import read_attrs, read_jets, schema
from ndive_models.data.schema import ORIGIN, TRACK_PARAMS, reference_pv
from ndive_models.data.validation import pulls
from ndive_models.generate import GenerationConfig, _detector, _vertexing, generate
from ndive_models.generate._event import Particles, reorient
from ndive_models.generate._pipeline import PRESETS, needed_events

BZ = vertexfit.DEFAULT_BZ


def _tracks_from(vertex, n, rng, pt_scale=3.0, eta_max=2.4):
    """``n`` tracks per vertex: truth (V, n, 5) w.r.t. the origin, pt, eta (V, n)."""
    V = len(vertex)
    pt = 0.6 + rng.exponential(pt_scale, (V, n))
    eta = rng.uniform(-eta_max, eta_max, (V, n))
    phi = rng.uniform(-np.pi, np.pi, (V, n))
    q = np.where(rng.random((V, n)) < 0.5, -1.0, 1.0)
    mom = np.stack([phi, 2 * np.arctan(np.exp(-eta)), vertexfit.curvature(q, pt, BZ)], -1)
    return vertexfit.perigee(vertex, mom, np.zeros_like(vertex)), pt, eta


# --- detector model -------------------------------------------------------------------------
def test_model_covariance_reproduces_the_resolution_table_for_prompt_tracks():
    sigmas = _detector.resolution_sigmas  # vertexfit's one copy of the Delphes tables
    pt = np.array([0.7, 1.5, 3.0, 8.0, 40.0, 2.0])
    eta = np.array([0.1, -0.8, 1.3, 2.0, 0.0, -2.3])
    cov = _detector.covariance(pt, eta, np.zeros(6), BZ, correlated=True)
    np.testing.assert_allclose(np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), sigmas(pt, eta, BZ),
                               rtol=1e-12)  # fmt: skip
    s = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    corr = cov / s[:, :, None] / s[:, None, :]
    # a fit to hits outside the beam pipe: d0 and phi (z0 and theta) strongly correlated
    assert np.all(corr[:, 0, 2] > 0.5) and np.all(np.abs(corr[:, 1, 3]) > 0.5), corr
    assert np.allclose(corr[:, 0, 1], 0.0) and np.allclose(corr[:, 2, 3], 0.0)
    np.testing.assert_array_less(0.0, np.linalg.eigvalsh(cov))
    diag = _detector.covariance(pt, eta, np.zeros(6), BZ, correlated=False)
    np.testing.assert_array_equal(diag, cov * np.eye(5))


def test_resolution_and_efficiency_degrade_with_production_radius():
    r = np.array([0.0, 10.0, 40.0, 70.0, 110.0, 130.0])
    n = len(r)
    cov = _detector.covariance(np.full(n, 3.0), np.zeros(n), r, BZ, correlated=True)
    s_d0, s_z0 = np.sqrt(cov[:, 0, 0]), np.sqrt(cov[:, 1, 1])
    assert s_d0[1] == s_d0[0]  # inside the beam pipe nothing changes
    assert np.all(np.diff(s_d0[1:5]) > 0) and np.all(np.diff(s_z0[1:5]) > 0), (s_d0, s_z0)
    assert s_d0[4] > 3 * s_d0[0]
    eff = _detector.radial_efficiency(r)
    np.testing.assert_array_equal(eff, [1.0, 1.0, 0.9, 0.6, 0.3, 0.0])
    assert _detector.R_PROD_MAX_STANDARD == max(row[1] for row in _detector.LAYERS
                                                if row[5] == 1)  # fmt: skip
    np.testing.assert_array_equal(_detector.silicon_hits(np.array([0.0, 40.0, 130.0])),
                                  [12, 11, 8])  # fmt: skip


def test_smearing_follows_the_full_covariance():
    """Track pulls 1.00 +- 0.03 and the full chi2 has 5 degrees of freedom (correlations used)."""
    rng = np.random.default_rng(1)
    n = 40000
    pt = 0.6 + rng.exponential(4.0, n)
    eta = rng.uniform(-2.5, 2.5, n)
    r = rng.uniform(0, 120, n)
    cov = _detector.covariance(pt, eta, r, BZ, correlated=True)
    truth = np.zeros((n, 5))
    meas = _detector.smear(truth, cov, rng)
    pull = meas / np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    np.testing.assert_allclose(pull.std(axis=0), 1.0, atol=0.03)
    chi2 = np.einsum("ni,ni->n", meas, np.linalg.solve(cov, meas[..., None])[..., 0])
    assert abs(chi2.mean() - 5.0) < 0.1, chi2.mean()
    assert abs(np.corrcoef(meas[:, 0], meas[:, 2])[0, 1]) > 0.5


def test_vertexfit_pulls_on_truth_selected_vertices_are_one():
    """Tracks of one displaced vertex, correlated covariance and radial resolution, fitted with
    vertexfit: vertex pulls 1.00 +- 0.03."""
    rng = np.random.default_rng(2)
    V, T = 5000, 3
    vertex = np.c_[rng.normal(0, 5, (V, 2)), rng.normal(0, 30, V)]
    truth, pt, eta = _tracks_from(vertex, T, rng, pt_scale=4.0)
    r = np.repeat(np.hypot(vertex[:, 0], vertex[:, 1]), T)
    cov = _detector.covariance(pt.ravel(), eta.ravel(), r, BZ, correlated=True)
    meas = _detector.smear(truth.reshape(-1, 5), cov, rng).reshape(V, T, 5)
    fit = vertexfit.fit(meas, cov.reshape(V, T, 5, 5), seed=vertex + rng.normal(0, 0.05, (V, 3)))
    assert fit.converged.mean() > 0.99
    ok = fit.converged
    pull = (fit.vertex - vertex)[ok] / np.sqrt(np.diagonal(fit.vertex_cov, axis1=1, axis2=2))[ok]
    np.testing.assert_allclose(pull.std(axis=0), 1.0, atol=0.03)
    np.testing.assert_allclose(pull.mean(axis=0), 0.0, atol=0.05)


# --- primary-vertex reconstruction ------------------------------------------------------------
def _synthetic_events(rng, n_events=150, n_pileup=8, beamspot=(0.012, 0.012, 35.0)):
    """Hard scatter (40 tracks + 4 from a b decay 3 mm away) and soft pileup vertices."""
    bs = np.asarray(beamspot)
    hs = bs * rng.standard_normal((n_events, 3))
    pu = bs * rng.standard_normal((n_events, n_pileup, 3))
    parts = []
    t_hs, pt_hs, eta_hs = _tracks_from(hs, 40, rng)
    parts.append((t_hs, pt_hs, eta_hs, np.ones_like(pt_hs, bool)))
    b_dec = hs + np.array([2.0, 2.0, 1.0])
    parts.append((*_tracks_from(b_dec, 4, rng, pt_scale=5.0), np.ones((n_events, 4), bool)))
    t_pu, pt_pu, eta_pu = _tracks_from(pu.reshape(-1, 3), 8, rng, pt_scale=0.4)
    shape = (n_events, n_pileup * 8)
    parts.append((t_pu.reshape(shape + (5,)), pt_pu.reshape(shape), eta_pu.reshape(shape),
                  np.zeros(shape, bool)))  # fmt: skip
    truth = np.concatenate([p[0] for p in parts], axis=1)
    pt = np.concatenate([p[1] for p in parts], axis=1)
    eta = np.concatenate([p[2] for p in parts], axis=1)
    is_hs = np.concatenate([p[3] for p in parts], axis=1)
    event = np.repeat(np.arange(n_events), truth.shape[1])
    cov = _detector.covariance(pt.ravel(), eta.ravel(), np.zeros(pt.size), BZ, correlated=True)
    meas = _detector.smear(truth.reshape(-1, 5), cov, rng)
    return event, meas, cov, pt.ravel(), is_hs.ravel(), hs


def test_primary_vertex_is_found_and_its_pulls_match_the_fit_covariance():
    rng = np.random.default_rng(3)
    beamspot = (0.012, 0.012, 35.0)
    event, meas, cov, pt, is_hs, hs = _synthetic_events(rng, beamspot=beamspot)
    out = _vertexing.reconstruct(event, meas, cov, pt, len(hs), beamspot, hard_scatter=is_hs)
    assert out["is_hard_scatter"].mean() > 0.95
    ok = out["is_hard_scatter"]
    res = out["vertex"][ok] - hs[ok]
    sig = np.sqrt(np.diagonal(out["cov"], axis1=1, axis2=2))[ok]
    assert np.all(np.abs(res[:, 2]) < 0.2)
    pull = res / sig
    assert np.all(np.abs(pull.std(axis=0) - 1.0) < 0.15), pull.std(axis=0)
    # the displaced b-decay tracks are down-weighted: about the 40 hard-scatter tracks remain
    assert 30 <= np.median(out["n_tracks"]) <= 44, np.median(out["n_tracks"])


def test_hard_scatter_is_chosen_by_sum_pt2_not_by_track_count():
    """A pileup vertex with more but softer tracks loses against the hard scatter."""
    rng = np.random.default_rng(4)
    n = 40
    hs = np.c_[np.zeros((n, 2)), rng.normal(0, 20, n)]
    pu = hs + np.array([0.0, 0.0, 10.0])
    t1, pt1, eta1 = _tracks_from(hs, 10, rng, pt_scale=10.0)
    t2, pt2, eta2 = _tracks_from(pu, 30, rng, pt_scale=0.1)
    truth = np.concatenate([t1, t2], 1).reshape(-1, 5)
    pt, eta = np.concatenate([pt1, pt2], 1).ravel(), np.concatenate([eta1, eta2], 1).ravel()
    is_hs = np.concatenate([np.ones((n, 10), bool), np.zeros((n, 30), bool)], 1).ravel()
    cov = _detector.covariance(pt, eta, np.zeros(len(pt)), BZ, correlated=False)
    meas = _detector.smear(truth, cov, rng)
    out = _vertexing.reconstruct(np.repeat(np.arange(n), 40), meas, cov, pt, n,
                                 (0.012, 0.012, 35.0), hard_scatter=is_hs)  # fmt: skip
    assert out["is_hard_scatter"].all()
    assert np.all(np.abs(out["vertex"][:, 2] - hs[:, 2]) < 0.2)


# --- fakes and leptons ------------------------------------------------------------------------
def test_fake_tracks_rate_and_shape():
    rng = np.random.default_rng(5)
    n_events, per = 200, 50
    event = np.repeat(np.arange(n_events), per)
    eta = rng.uniform(-2.4, 2.4, event.size)
    phi = rng.uniform(-np.pi, np.pi, event.size)
    z0 = rng.normal(0, 35, event.size)
    fev, par, pt, feta, q = _detector.fake_tracks(event, eta, phi, z0, n_events, 0.01, 0.5, BZ,
                                                  rng)  # fmt: skip
    assert abs(len(fev) / event.size - 0.01) < 0.003
    assert np.all(pt > 0.5) and np.all(np.abs(feta) < 2.5) and set(np.unique(q)) <= {-1, 1}
    np.testing.assert_allclose(vertexfit.curvature(q, pt, BZ), par[:, 4])
    assert np.std(par[:, 0]) > 0.5  # far wider than any real track's d0 resolution


def test_soft_lepton_efficiency_and_flags():
    rng = np.random.default_rng(6)
    n = 20000
    pdg = np.r_[np.full(n, 13), np.full(n, -11), np.full(n, 211)]
    charge = np.r_[np.full(n, -1), np.full(n, 1), np.full(n, 1)]
    pt = np.full(3 * n, 10.0)
    lid, lpt = _detector.soft_leptons(pdg, charge, pt, np.zeros(3 * n), rng)
    assert abs(np.mean(lid[:n] == 13) - _detector.MUON["eff"][1]) < 0.01
    assert abs(np.mean(lid[n:2 * n] == -11) - _detector.ELECTRON["eff"][1]) < 0.01
    misid = np.mean(lid[2 * n:] != 0)
    assert 0 < misid < 0.02
    assert np.all(lpt[lid == 0] == 0)
    assert abs(np.std(lpt[:n][lid[:n] == 13] / 10 - 1) - 0.03) < 0.005
    low, _ = _detector.soft_leptons(pdg[:n], charge[:n], np.full(n, 2.0), np.zeros(n), rng)
    assert not low.any()  # below the muon threshold


# --- options ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        ({"pileup": -1.0}, "pileup"),
        ({"pileup": float("nan")}, "pileup"),
        ({"fake_rate": 1.5}, "fake_rate"),
        ({"fake_rate": -0.1}, "fake_rate"),
        ({"beamspot": (0.01, -1.0, 35.0)}, "beamspot"),
        ({"beamspot": (0.01, 35.0)}, "beamspot"),
        ({"covariance": "full"}, "covariance"),
        ({"preset": "run4"}, "preset"),
        ({"pileup": 5.0, "pileup_pool": -3}, "pileup_pool"),
        ({"pileup": 5.0, "pileup_pool": 2.5}, "pileup_pool"),
        ({"pileup_pool": 100}, "needs pileup"),
        ({"only": "u"}, "only must be one of b, c, light"),
    ],
)
def test_bad_detector_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(n_jets=10, **options)


def test_presets():
    with pytest.raises(ValueError, match="unknown preset"):
        GenerationConfig.from_preset("hl-lhc", n_jets=1)
    clean = GenerationConfig.from_preset("clean", n_jets=5)
    assert clean == GenerationConfig(n_jets=5)
    run3 = GenerationConfig.from_preset("run3", n_jets=5, pileup=20.0)
    assert run3.pileup == 20.0 and run3.reco_pv and run3.covariance == "correlated"
    assert run3.preset == "run3" and run3.beamspot == PRESETS["run3"]["beamspot"]


def test_cli_rejects_bad_input_before_generating(tmp_path, capsys):
    out = tmp_path / "x.h5"
    for args in (["--pileup", "-1"], ["--fake-rate", "2"], ["--preset", "run3", "--pileup", "-5"]):
        assert cli.main(["generate", "--jets", "5", "--out", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error" in err, err
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "--jets", "5", "--out", str(out), "--preset", "nope"])
    assert exc.value.code == 2
    assert not out.exists() and not list(tmp_path.iterdir())


# --- whole chain on tiny Pythia files ---------------------------------------------------------
#: sha256 of the jets and tracks fields of the start commit's (dc4190e) clean file
#: GenerationConfig(n_jets=100, seed=11, workers=1, batch_events=20) (pythia8mc 8.317.2).
CLEAN_FINGERPRINT = "8f07135682310cba06337df37c9d9be46dcd1604f5d2a6eaac1975b56a5b8bbd"
#: The jet and track fields of the start commit (schema 1: ``cov`` a (5, 5) sub-array).
_START_FIELDS = (
    ("pt", "eta", "phi", "mass", "HadronConeExclTruthLabelID", "flavour_label", "n_tracks",
     "n_tracks_all", "eventNumber", "hf_vertex_x", "hf_vertex_y", "hf_vertex_z", "Lxy", "L3D",
     "hadron_pt", "hadron_pdgid", "pv_x", "pv_y", "pv_z"),
    ("valid", "d0", "z0", "phi", "theta", "rho", "cov", "true_d0", "true_z0", "true_phi",
     "true_theta", "true_rho", "charge", "pt", "eta", "deta", "dphi", "d0_significance",
     "z0_significance", "ftagTruthOriginLabel", "ftagTruthVertexIndex", "truth_vertex_x",
     "truth_vertex_y", "truth_vertex_z"),
)


def test_clean_preset_is_unchanged(generate_extra, tmp_path):
    from importlib import metadata

    if metadata.version("pythia8mc") != "8.317.2":
        pytest.skip("the fingerprint was taken with pythia8mc 8.317.2")
    path = generate(GenerationConfig(n_jets=100, seed=11, workers=1, batch_events=20),
                    tmp_path / "c.h5", progress=False).path  # fmt: skip
    jets, tracks = read_jets(path)
    h = hashlib.sha256()
    for a, names in ((jets, _START_FIELDS[0]), (tracks, _START_FIELDS[1])):
        for name in sorted(names):
            h.update(name.encode())
            value = schema.track_cov(a) if name == "cov" else a[name]
            h.update(np.ascontiguousarray(value).tobytes())
    assert h.hexdigest() == CLEAN_FINGERPRINT
    # the new fields of a clean file: the reference PV is the true one, nothing else is on
    np.testing.assert_array_equal(reference_pv(jets)[:, 2], jets["pv_z"])
    assert not jets["n_pileup"].any() and not tracks["leptonID"].any()


@pytest.fixture(scope="module")
def run3_files(tmp_path_factory):
    for mod in ("pythia8mc", "fastjet", "awkward"):
        pytest.importorskip(mod)
    d = tmp_path_factory.mktemp("run3")
    cfg = GenerationConfig.from_preset("run3", n_jets=40, seed=5, workers=1, batch_events=10,
                                       pileup=10.0, fake_rate=0.05)  # fmt: skip
    return [generate(cfg, d / f"r{i}.h5", progress=False).path for i in range(2)], cfg


def test_run3_same_seed_same_file(run3_files):
    (a, b), _ = run3_files
    ja, ta = read_jets(a)
    jb, tb = read_jets(b)
    assert ja.tobytes() == jb.tobytes() and ta.tobytes() == tb.tobytes()
    assert read_attrs(a)["generator_settings"] == read_attrs(b)["generator_settings"]


def test_run3_file_labels_and_fields(run3_files):
    (path, _), cfg = run3_files
    jets, tracks = read_jets(path)
    flat = tracks[tracks["valid"]]
    for name in flat.dtype.names:
        if flat[name].dtype.kind == "f":
            assert np.isfinite(flat[name]).all(), name
    for name in jets.dtype.names:
        if jets[name].dtype.kind == "f":
            assert np.isfinite(jets[name]).all(), name
    origin = flat["ftagTruthOriginLabel"]
    assert (origin == ORIGIN["Pileup"]).any() and (origin == ORIGIN["Fake"]).any()
    # pileup and fake tracks never share the hard scatter's PV index
    assert np.all(flat["ftagTruthVertexIndex"][origin <= ORIGIN["Fake"]] > 0)
    # pileup tracks sit at their own vertices, away from the hard scatter
    pu = flat[origin == ORIGIN["Pileup"]]
    assert np.all(pu["truth_vertex_z"] != 0)
    # the FTAG selection w.r.t. the reconstructed PV
    assert np.all(np.abs(flat["d0"]) < 3.5)
    assert np.all(np.abs(flat["z0"] * np.sin(flat["theta"])) < 5.0)
    # beam spot: the true PV moves; the reconstructed one is close to it
    assert jets["pv_z"].std() > 1.0
    res = reference_pv(jets) - np.c_[jets["pv_x"], jets["pv_y"], jets["pv_z"]]
    assert np.median(np.abs(res[:, 2])) < 0.05 and np.all(jets["reco_pv_sigma_z"] > 0)
    assert jets["n_pileup"].mean() == pytest.approx(cfg.pileup, rel=0.5)
    # correlated covariance stored; track pulls after the extrapolation to the reconstructed PV
    assert np.abs(schema.track_cov(flat)[:, 0, 2]).max() > 0
    p = pulls(flat[origin == ORIGIN["Primary"]])
    assert np.all(np.abs(p.std(axis=0) - 1.0) < 0.15), dict(zip(TRACK_PARAMS, p.std(axis=0)))
    # leptons only on tracks, flags are signed lepton ids
    assert set(np.unique(flat["leptonID"])) <= {-13, -11, 0, 11, 13}
    assert np.all((flat["lepton_pt"] > 0) == (flat["leptonID"] != 0))
    # options recorded
    attrs = read_attrs(path)
    opts = attrs["generator_settings"]["options"]
    assert opts["preset"] == "run3" and opts["pileup"] == 10.0 and opts["reco_pv"]
    assert "pileup_pythia" in attrs["generator_settings"]


def test_needed_events_are_exactly_those_generate_writes_from():
    """The events given pileup are those holding a jet of the first ``remaining[g]`` of each
    quota group, in batch order, the rule by which ``generate`` takes jets."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        n_events = int(rng.integers(1, 30))
        jet_event = np.sort(rng.integers(0, n_events, int(rng.integers(0, 80))))
        group = rng.integers(0, 3, len(jet_event))
        remaining = rng.integers(-1, 8, 3)
        need = needed_events(group, jet_event, n_events, remaining)
        taken = np.concatenate([np.flatnonzero(group == g)[: max(r, 0)]
                                for g, r in enumerate(remaining)]).astype(int)  # fmt: skip
        expected = np.zeros(n_events, bool)
        expected[jet_event[taken]] = True
        np.testing.assert_array_equal(need, expected)
    # full quotas: no event is needed, whatever its jets
    assert not needed_events(np.zeros(4, int), np.arange(4), 4, np.array([0])).any()


@pytest.fixture(scope="module")
def balanced_run3(tmp_path_factory):
    """A balanced run3 file twice, and once with pileup simulated for every event (as
    before the events were chosen first)."""
    from ndive_models.generate import _pipeline

    for mod in ("pythia8mc", "fastjet", "awkward"):
        pytest.importorskip(mod)
    d = tmp_path_factory.mktemp("balanced")
    cfg = GenerationConfig.from_preset("run3", n_jets=30, seed=5, workers=1, batch_events=10,
                                       pileup=10.0, balance=True)  # fmt: skip
    runs = [generate(cfg, d / f"r{i}.h5", progress=False) for i in range(2)]
    every_event = _pipeline._InProcess
    try:
        _pipeline._InProcess = lambda cfg, remaining=None: every_event(cfg, None)
        runs.append(generate(cfg, d / "all.h5", progress=False))
    finally:
        _pipeline._InProcess = every_event
    return runs, cfg


def test_balanced_run3_simulates_pileup_only_for_written_events(balanced_run3):
    (a, b, full), cfg = balanced_run3
    ja, ta = read_jets(a.path)
    jb, tb = read_jets(b.path)
    jf, tf = read_jets(full.path)
    # deterministic
    assert ja.tobytes() == jb.tobytes() and ta.tobytes() == tb.tobytes()
    # the same hard-scatter jets, per-flavour counts and events as with pileup everywhere
    assert a.n_per_flavour == full.n_per_flavour == {"bjets": 10, "cjets": 10, "ujets": 10}
    assert a.n_events == full.n_events
    for name in ("eventNumber", "pt", "eta", "phi", "flavour_label", "hadron_pt", "Lxy"):
        np.testing.assert_array_equal(ja[name], jf[name], err_msg=name)
    # far fewer minimum-bias events simulated, and the file says how many
    assert a.n_pileup_events < 0.8 * full.n_pileup_events
    assert read_attrs(a.path)["n_pileup_events"] == a.n_pileup_events
    assert full.n_pileup_events == read_attrs(full.path)["n_pileup_events"]
    # the written events still carry Poisson(mu) pileup, overlaid as before
    for jets, tracks in ((ja, ta), (jf, tf)):
        events = np.unique(jets["eventNumber"], return_index=True)[1]
        assert jets["n_pileup"][events].mean() == pytest.approx(cfg.pileup, abs=3.0)
        assert 0.01 < _pileup_share(tracks) < 0.3
    assert _pileup_share(ta) == pytest.approx(_pileup_share(tf), abs=0.05)


def _pileup_share(tracks):
    """Fraction of the stored tracks that come from pileup."""
    return np.mean(tracks[tracks["valid"]]["ftagTruthOriginLabel"] == ORIGIN["Pileup"])


def test_pileup_pool_is_opt_in_and_reuses_its_events(balanced_run3, tmp_path):
    """``pileup_pool``: the interactions come from a fixed set of minimum-bias events."""
    (a, _, _), cfg = balanced_run3
    pooled = dataclasses.replace(cfg, pileup_pool=40)
    r = generate(pooled, tmp_path / "pool.h5", progress=False)
    jets, tracks = read_jets(r.path)
    attrs = read_attrs(r.path)
    assert GenerationConfig(n_jets=1).pileup_pool == 0 and "pool" not in str(
        read_attrs(a.path)["generator_settings"]["pileup"])  # fmt: skip
    assert r.n_pileup_events == attrs["n_pileup_events"] == 40
    assert "pool of 40" in attrs["generator_settings"]["pileup"]
    assert "mirrored in z" in attrs["generator_settings"]["pileup"]
    assert attrs["generator_settings"]["options"]["pileup_pool"] == 40
    # same hard-scatter jets, Poisson(mu) interactions, a pileup share like without the pool
    ja, ta = read_jets(a.path)
    np.testing.assert_array_equal(jets["eventNumber"], ja["eventNumber"])
    events = np.unique(jets["eventNumber"], return_index=True)[1]
    assert jets["n_pileup"][events].mean() == pytest.approx(cfg.pileup, abs=3.0)
    assert _pileup_share(tracks) == pytest.approx(_pileup_share(ta), abs=0.05)
    assert _pileup_share(tracks) > 0.01


def test_only_writes_the_light_jets_a_balanced_run_would(balanced_run3, tmp_path):
    """``only="light"``: the first light jets of the same event sequence, nothing else, and
    pileup only for their events (fewer than the balanced run, which also waits for c)."""
    (a, _, _), cfg = balanced_run3
    light_cfg = dataclasses.replace(cfg, balance=False, only="light", n_jets=10)
    r = generate(light_cfg, tmp_path / "light.h5", progress=False)
    jets, _ = read_jets(r.path)
    ja, _ = read_jets(a.path)
    assert r.n_per_flavour == {"bjets": 0, "cjets": 0, "ujets": 10}
    light = ja[ja["flavour_label"] == 2]
    for name in ("eventNumber", "pt", "eta", "phi", "HadronConeExclTruthLabelID"):
        np.testing.assert_array_equal(jets[name], light[name], err_msg=name)
    assert r.n_pileup_events < a.n_pileup_events
    events = np.unique(jets["eventNumber"], return_index=True)[1]
    assert jets["n_pileup"][events].min() > 0
    assert read_attrs(r.path)["generator_settings"]["options"]["only"] == "light"


def test_reorient_turns_each_pooled_interaction_as_a_whole():
    """A pooled interaction drawn again is turned about the beam axis and half the time
    mirrored in z: pT, |pz|, E, the transverse production radius and every opening angle
    within an event are kept; the azimuths of the draws differ."""
    rng = np.random.default_rng(3)
    n_ev, per = 400, 5
    event = np.repeat(np.arange(n_ev), per)
    one = rng.normal(size=(per, 4)), rng.normal(size=(per, 3))  # the same interaction 400 x
    p, v = np.tile(one[0], (n_ev, 1)), np.tile(one[1], (n_ev, 1))
    parts = Particles(event=event, pdgid=np.zeros(n_ev * per, int), status=event,
                      mother=event, daughter=event, p=p.copy(), vprod=v.copy(),
                      start=np.arange(n_ev) * per)  # fmt: skip
    reorient(parts, rng)
    np.testing.assert_allclose(np.hypot(*parts.p[:, :2].T), np.hypot(*p[:, :2].T))
    np.testing.assert_allclose(np.abs(parts.p[:, 2:]), np.abs(p[:, 2:]))
    np.testing.assert_allclose(np.hypot(*parts.vprod[:, :2].T), np.hypot(*v[:, :2].T))
    # one rotation and one mirror per event: the cross product with the event's first
    # particle (and the sign of pz times its first pz) is the same in every draw
    first = np.repeat(np.arange(n_ev) * per, per)
    cross = parts.p[:, 0] * parts.p[first, 1] - parts.p[:, 1] * parts.p[first, 0]
    np.testing.assert_allclose(cross, np.tile(cross[:per], n_ev), atol=1e-12)
    flips = np.sign(parts.p[:, 2] * parts.vprod[:, 2]) == np.sign(p[:, 2] * v[:, 2])
    assert flips.all()
    phi = np.arctan2(parts.p[first[::per], 1], parts.p[first[::per], 0])
    assert np.histogram(phi, 4, (-np.pi, np.pi))[0].min() > 70  # uniform azimuth
    assert 0.4 < np.mean(np.sign(parts.p[::per, 2]) == np.sign(p[0, 2])) < 0.6


@pytest.mark.slow
def test_run3_pulls_on_a_larger_file(generate_extra, tmp_path):
    """Real Pythia tracks of the realistic detector (pileup 5): track pulls 1.00 +- 0.03 after
    the extrapolation to the reconstructed PV; vertexfit on truth-selected secondary vertices
    and the reconstructed PV against their fit errors."""
    cfg = GenerationConfig.from_preset("run3", n_jets=1500, seed=8, workers=1, pileup=5.0)
    jets, tracks = read_jets(generate(cfg, tmp_path / "r.h5", progress=False).path)
    flat = tracks[tracks["valid"]]
    p = pulls(flat[flat["ftagTruthOriginLabel"] == ORIGIN["Primary"]])
    np.testing.assert_allclose(p.std(axis=0), 1.0, atol=0.03)
    # truth-selected secondary vertices of the hard scatter, w.r.t. the reconstructed PV
    hf = (tracks["ftagTruthOriginLabel"] >= ORIGIN["FromB"]) & tracks["valid"]
    groups = []
    for j in range(len(jets)):
        t = tracks[j][hf[j]]
        for k in np.unique(t["ftagTruthVertexIndex"]):
            m = t[t["ftagTruthVertexIndex"] == k]
            if k > 0 and len(m) >= 2:
                groups.append((j, m))
    n, T = len(groups), max(len(m) for _, m in groups)
    q, cov = np.zeros((n, T, 5)), np.tile(np.eye(5), (n, T, 1, 1))
    mask, true_v = np.zeros((n, T), bool), np.zeros((n, 3))
    for i, (_, m) in enumerate(groups):
        q[i, : len(m)] = np.stack([m[x] for x in TRACK_PARAMS], -1)
        cov[i, : len(m)] = schema.track_cov(m)
        mask[i, : len(m)] = True
        true_v[i] = [m["truth_vertex_" + c][0] for c in "xyz"]
    ref = reference_pv(jets)[[j for j, _ in groups]]
    fit = vertexfit.fit(q, cov, mask=mask, ref=ref)
    ok = fit.converged
    pull = ((fit.vertex - true_v) / np.sqrt(np.diagonal(fit.vertex_cov, axis1=1, axis2=2)))[ok]
    robust = 1.4826 * np.median(np.abs(pull - np.median(pull, axis=0)), axis=0)
    np.testing.assert_allclose(robust, 1.0, atol=0.1)
    # the reconstructed PV against its fit error (core), hard scatter found
    _, first = np.unique(jets["eventNumber"], return_index=True)
    ev = jets[first]
    assert ev["reco_pv_is_hs"].mean() > 0.95
    res = np.stack([ev["reco_pv_" + c] - ev["pv_" + c] for c in "xyz"], -1)
    sig = np.stack([ev["reco_pv_sigma_" + c] for c in "xyz"], -1)
    pv_pull = (res / sig)[ev["reco_pv_is_hs"]]
    np.testing.assert_allclose(1.4826 * np.median(np.abs(pv_pull), axis=0), 1.0, atol=0.2)

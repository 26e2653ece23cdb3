"""Evaluation: metrics against hand-computed values, and ``ndive evaluate`` end to end."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from ndive_models import _metrics


def test_discriminant_by_hand():
    d = _metrics.discriminant([0.5, 0.0], [0.25, 0.5], [0.25, 0.5], f_c=0.2)
    assert d[0] == pytest.approx(math.log(0.5 / (0.2 * 0.25 + 0.8 * 0.25)))
    assert np.isfinite(d[1]) and d[1] < -60  # p_b = 0: large negative, not -inf


def test_rejection_hand_computed_points():
    b = [1.0, 2.0, 3.0, 4.0, 5.0]
    light = [0.5, 1.5, 2.5, 3.5, 6.0, 0.0, 0.0, 0.0]
    c = [2.0, 4.5]
    disc = np.array(b + light + c)
    labels = np.array([0] * 5 + [2] * 8 + [1] * 2)
    # eff 0.6: cut = 40% quantile of b = 2 + 0.6 * (3 - 2) = 2.6; light above: 3.5, 6 -> 2/8
    r = _metrics.rejection(disc, labels, 0.6)
    assert r["cut"] == pytest.approx(2.6)
    assert (r["n_pass"], r["n_bkg"]) == (2, 8)
    assert r["rejection"] == pytest.approx(4.0)
    e = math.sqrt(0.25 * 0.75 / 8)
    assert r["bkg_eff_err"] == pytest.approx(e)
    assert r["rejection_err"] == pytest.approx(e / 0.25**2)
    # c background at eff 0.6: 4.5 > 2.6, 2.0 is not -> rejection 2
    assert _metrics.rejection(disc, labels, 0.6, background=1)["rejection"] == pytest.approx(2)
    # eff 0.2: cut = 80% quantile = 4 + 0.2 = 4.2; light above: 6 -> 8; c above: 4.5 -> 2
    curve = _metrics.roc_curve(disc, labels, [0.2, 0.6])
    assert curve.tolist() == pytest.approx([8.0, 4.0])
    assert _metrics.roc_curve(disc, labels, [0.2], background=1).tolist() == [2.0]
    # nothing passes: infinite rejection, never NaN
    hi = _metrics.rejection(np.array([1.0, 2.0, 0.0]), np.array([0, 0, 2]), 0.5)
    assert hi["rejection"] == math.inf and hi["n_pass"] == 0
    with pytest.raises(ValueError, match="efficiency"):
        _metrics.rejection(disc, labels, 1.0)
    with pytest.raises(ValueError, match="background"):
        _metrics.rejection(disc[:5], labels[:5], 0.5)


def test_track_selection_by_hand():
    w = np.array([[0.9, 0.5, 0.2, 0.0], [0.1, 0.04, 0.3, 0.7]])
    valid = np.array([[True, True, True, False], [True, True, True, False]])
    truth = np.array([[True, False, True, True], [True, False, False, False]])
    sel = _metrics.selected_tracks(w, valid)
    # jet 0: max 0.9 -> > 0.45: tracks 0, 1; jet 1: max over valid 0.3 -> > 0.15: track 2
    assert sel.tolist() == [[True, True, False, False], [False, False, True, False]]
    n_true, n_sel, n_both = _metrics.selection_counts(sel, truth, valid)
    assert n_true.tolist() == [2, 1] and n_sel.tolist() == [2, 1] and n_both.tolist() == [1, 0]
    binned = _metrics.binned_selection(np.array([30.0, 70.0]), np.array([20, 50, 100.0]),
                                       n_true, n_sel, n_both)
    assert binned["eff"] == [0.5, 0.0] and binned["pur"] == [0.5, 0.0]
    assert binned["eff_err"][0] == pytest.approx(math.sqrt(0.25 / 2))


def test_evaluate_end_to_end(sample_path, tmp_path):
    from ndive_models.cli import main
    from ndive_models.train import TrainConfig, train

    cks = []
    for name, seed in (("baseline", 1), ("baseline", 2), ("ftag_ndive", 1)):
        out = tmp_path / f"{name}{seed}"
        train(TrainConfig.from_dict(dict(
            train=str(sample_path), out=str(out), epochs=1, batch_size=50, max_jets=150,
            max_val_jets=50, lr=1e-3, seed=seed, progress=False, device="cpu",
            model=dict(name=name, dim=8))))
        cks.append(str(out / "best.pt"))
    ev = tmp_path / "eval"
    rc = main(["evaluate", *cks, "--test", str(sample_path), "--out", str(ev),
               "--max-jets", "300"])
    assert rc == 0
    m = json.loads((ev / "metrics.json").read_text())
    assert m["n_test_jets"] == 300
    base = m["models"]["baseline"]
    assert base["n_checkpoints"] == 2 and len(base["rejection_per_checkpoint"]) == 2
    r70 = base["rejection"]["light"]["0.70"]
    assert r70["n_seeds"] == 2 and r70["mean"] >= 1.0 and r70["std_over_seeds"] is not None
    ft = m["models"]["ftag_ndive"]
    for fl in ("b", "c"):
        assert 0.0 <= ft["track_selection"][fl]["efficiency"] <= 1.0
    assert set(m["vertex_references"]) == {"all tracks", "perfect selection"}
    perfect = m["vertex_references"]["perfect selection"]["residual"]["sigma68"]
    every = m["vertex_references"]["all tracks"]["residual"]["sigma68"]
    assert perfect[0] < every[0]  # truth selection fits the HF vertex better
    for png in ("roc_light.png", "roc_c.png", "track_selection.png", "vertex_residuals.png"):
        assert (ev / png).stat().st_size > 10_000
    from ndive_models.data import read_jets

    test_jets, test_tracks = read_jets(sample_path, 0, 300)
    with h5py.File(ev / "predictions" / "ftag_ndive_0.h5") as f:
        jets, tracks = f["jets"][:], f["tracks"][:]
        assert list(f["jets"].attrs["flavour_label"]) == ["bjets", "cjets", "ujets"]
    p = jets["ftag_ndive_pb"] + jets["ftag_ndive_pc"] + jets["ftag_ndive_pu"]
    assert jets.dtype["ftag_ndive_pb"] == np.float32 and np.allclose(p, 1.0, atol=1e-6)
    np.testing.assert_allclose(jets["pt"], 1000 * test_jets["pt"], rtol=1e-6)  # MeV
    for k in ("eventNumber", "HadronConeExclTruthLabelID", "eta"):
        np.testing.assert_array_equal(jets[k], test_jets[k])
    assert np.isfinite(jets["ftag_ndive_vertex_x"]).all() and jets["ftag_ndive_fit_ok"].any()
    np.testing.assert_array_equal(tracks["valid"], test_tracks["valid"])
    assert np.all(tracks["ftag_ndive_track_weight"][~tracks["valid"]] == 0)
    assert not list(ev.rglob("*.partial"))


def test_predictions_read_by_ftag_agree_with_metrics(sample_path, tmp_path):
    """A predictions file read with ftag's H5Reader (with a cut): ftag's rejection equals
    the project's, and the tagger's ``_pb/_pc/_pu`` are the model's probabilities."""
    ftag = pytest.importorskip("ftag")
    from ftag import Cuts
    from ftag.hdf5 import H5Reader

    from ndive_models.evaluate import _write_predictions

    rng = np.random.default_rng(1)
    from ndive_models.data import read_jets

    jets, tracks = read_jets(sample_path, 0, 1000)
    fl = jets["flavour_label"]
    logits = rng.normal(size=(len(fl), 3)) + 2.0 * (fl[:, None] == np.arange(3))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = {"p_b": p[:, 0], "p_c": p[:, 1], "p_u": p[:, 2]}
    path = tmp_path / "toy.h5"
    _write_predictions(path, "toy", pred, jets, tracks["valid"], 0.05)
    data = H5Reader(path, batch_size=300, shuffle=False).load(
        {"jets": ["toy_pb", "toy_pc", "toy_pu", "HadronConeExclTruthLabelID", "pt"]},
        cuts=Cuts.from_list(["pt > 25e3"]))["jets"]
    sel = jets["pt"] > 25
    assert len(data) == sel.sum() < len(jets)
    np.testing.assert_allclose(data["toy_pb"], p[sel, 0], rtol=1e-6)
    disc = _metrics.discriminant(data["toy_pb"], data["toy_pc"], data["toy_pu"], 0.05)
    label = np.select([data["HadronConeExclTruthLabelID"] == 5,
                       data["HadronConeExclTruthLabelID"] == 4], [0, 1], 2)
    for eff in (0.6, 0.7, 0.77):
        ours = _metrics.rejection(disc, label, eff)["rejection"]
        theirs = ftag.utils.calculate_rejection(disc[label == 0], disc[label == 2], eff)
        assert ours == pytest.approx(theirs, rel=1e-12) and ours > 1


@pytest.mark.parametrize("top, log", [(1.3, False), (5.0, True)])
def test_ratio_panel_scale_and_plain_tick_labels(top, log):
    """Ratio panels: linear for ratios near 1, log only past a factor 3, and their tick
    labels plain numbers (never 1.2 x 10^0)."""
    from ndive_models import _plots

    plt = _plots._plt()
    fig, rax = plt.subplots()
    rax.plot([0.5, 0.9], [0.9, top])
    _plots.ratio_scale(rax)
    fig.canvas.draw()
    assert (rax.get_yscale() == "log") is log
    labels = [t.get_text() for t in rax.get_yticklabels() + rax.get_yticklabels(minor=True)]
    assert any(labels) and not any("10^" in x or "times" in x or "e−" in x for x in labels)
    plt.close(fig)


def test_roc_band_is_the_error_of_the_seed_mean(tmp_path):
    """The ROC band: binomial error of the mean rejection (1/R of N background jets pass,
    k seeds) and the seeds' standard error in quadrature; a point where no jet passes is
    left out of the mean, and the plot is drawn with it."""
    from ndive_models import _plots

    one, err = _plots.mean_rejection_band([[100.0, 10.0]], 10_000)
    binom = np.array([100.0, 10.0]) * np.sqrt((1 - 1 / one) * one / 10_000)
    assert one.tolist() == [100.0, 10.0] and err == pytest.approx(binom)
    two, err2 = _plots.mean_rejection_band([[90.0, np.inf], [110.0, 10.0]], 10_000)
    assert two.tolist() == [100.0, 10.0]
    se = np.std([90.0, 110.0], ddof=1) / np.sqrt(2)
    assert err2[0] == pytest.approx(np.hypot(se, binom[0] / np.sqrt(2)))
    assert err2[1] == pytest.approx(binom[1])  # one finite seed: no seed term
    curves = {"a": np.array([[90.0, np.inf], [110.0, 10.0]]), "b": np.array([[50.0, 5.0]])}
    _plots.roc([0.6, 0.7], curves, "b", "light", tmp_path / "roc.png",
               n_bkg={"a": 10_000, "b": 10_000})
    assert (tmp_path / "roc.png").stat().st_size > 0

"""The FTAG family as options of one model: DIPS, GN2, GN3, pT regression, NDIVE as a block;
GLS and Lion against hand-computed values; the extended truth of the generator."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ndive_models.data import feature_stats, index_batch, load_batch
from ndive_models.models import ModelConfig, build_model, combine, total_loss

CONFIG_DIR = Path(__import__("ndive_models").__file__).parent / "configs"
SHIPPED = ("dips", "gn2", "gn3", "gn2_regression", "gn2_ndive", "gn3_ndive")
#: Tiny sizes for the shipped configs (everything else as shipped).
TINY = dict(dim=8, layers=1, heads=2, ndive_dim=8, ndive_heads=2)


def shipped_model_config(config: str, **over) -> ModelConfig:
    import yaml

    d = yaml.safe_load((CONFIG_DIR / f"{config}.yaml").read_text())["model"]
    d.update(TINY)
    if d.get("registers"):
        d["registers"] = 2
    d.update(over)
    return ModelConfig.from_dict(d)


def _with_muons(batch: dict, seed: int = 3) -> dict:
    """The batch with soft-muon fields: about a third of the heavy-flavour tracks above
    4 GeV flagged as muons (as a file with soft leptons would have them)."""
    g = torch.Generator().manual_seed(seed)
    T = batch["valid"].shape[1]
    pt = 0.299792458e-3 * 2.0 / batch["params"][..., 4].abs().clamp_min(1e-9)
    hf = batch["truth_weight"] > 0
    mu = batch["valid"] & hf & (pt > 4.0) & (torch.rand(pt.shape, generator=g) < 0.35)
    sign = torch.where(batch["params"][..., 4] > 0, 13, -13)
    return {**batch, "lepton_id": torch.where(mu, sign, 0).long(),
            "lepton_pt": torch.where(mu, pt * 0.97, torch.zeros(())).float().reshape(-1, T)}


@pytest.fixture(scope="module")
def data(sample_path):
    batch, bz = load_batch(sample_path, 0, 400)
    return _with_muons(batch), bz, feature_stats(batch, bz)


def _model(data, cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg, data[2], data[1])


def _cfgs():
    out = [(n, shipped_model_config(n)) for n in SHIPPED]
    out.append(("dips_weighted", shipped_model_config("dips", pooling="weighted_sum")))
    out.append(("dips_ndive", shipped_model_config("dips", name="ftag_ndive")))
    out.append(("gn3_manual_attention", shipped_model_config("gn3", attention="manual")))
    return out


CFGS = _cfgs()
IDS = [n for n, _ in CFGS]


def test_shipped_configs_load_and_differ_as_documented():
    import yaml

    from ndive_models.train import TrainConfig

    cfgs = {n: TrainConfig.from_dict(yaml.safe_load((CONFIG_DIR / f"{n}.yaml").read_text()))
            for n in SHIPPED}
    gn2, gn3, dips = cfgs["gn2"].model, cfgs["gn3"].model, cfgs["dips"].model
    assert (gn2.layers, gn2.dim, gn2.activation, gn2.classes, gn2.attention) == \
        (4, 256, "relu", 4, "sdpa")
    assert (gn2.max_tracks, gn2.d0_max, gn2.loss_balance, cfgs["gn2"].optimizer) == \
        (40, 3.5, "fixed", "adamw")
    assert (gn3.dim, gn3.activation, gn3.feed_forward, gn3.registers, gn3.classes) == \
        (512, "silu", "glu", 8, 6)
    assert (gn3.loss_balance, cfgs["gn3"].optimizer, gn3.inputs) == \
        ("gls", "lion", ["tracks", "muons"])
    assert (dips.backbone, dips.pooling) == ("dips", "sum")
    assert "regression" in cfgs["gn2_regression"].model.tasks
    assert cfgs["gn2_ndive"].model.name == cfgs["gn3_ndive"].model.name == "ftag_ndive"


@pytest.mark.parametrize("name,cfg", CFGS, ids=IDS)
def test_shapes_and_a_jet_without_tracks_stays_finite(data, name, cfg):
    batch = index_batch(data[0], slice(0, 10))
    batch["valid"][0] = False  # jet 0: no track at all
    batch["valid"][1, 1:] = False  # jet 1: one track
    model = _model(data, cfg)
    out = model(batch)
    B, T = batch["valid"].shape
    assert out["flavour_logits"].shape == (B, cfg.classes)
    assert ("origin_logits" in out) == ("origin" in cfg.tasks)
    assert ("pt_regressed" in out) == ("regression" in cfg.tasks)
    if "origin" in cfg.tasks:
        assert out["origin_logits"].shape == (B, T, 8)
    if "pair" in cfg.tasks:
        assert out["pair_logits"].shape == (B, T, T)
    if "regression" in cfg.tasks:
        assert out["pt_log_ratio"].shape == out["pt_regressed"].shape == (B,)
    for k, v in out.items():
        assert torch.isfinite(v.float()).all(), f"{name}: {k}"
    terms = model.loss_terms(out, batch)
    assert set(cfg.tasks) <= set(terms)
    assert ("loss", *terms) == cfg.loss_names()
    loss = total_loss(terms, balance=cfg.loss_balance)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def _pad(batch, extra):
    """The same jets with ``extra`` more slots holding garbage (NaN in the track fields, and
    soft-muon flags that the masks must ignore)."""
    from test_models import _pad as pad_garbage

    out = pad_garbage(batch, extra)
    if "lepton_id" in out:
        out["lepton_id"][:, batch["valid"].shape[1]:] = 13
    return out


def _permute(batch, seed=5):
    """Each jet's track slots in a random order (valid tracks shuffled among themselves and
    with the padding); returns the batch and the per-jet permutation (B, T)."""
    B, T = batch["valid"].shape
    g = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(T, generator=g) for _ in range(B)])
    out = {}
    for k, v in batch.items():
        if v.ndim >= 2 and v.shape[1] == T:
            idx = perm.reshape((B, T) + (1,) * (v.ndim - 2)).expand_as(v)
            out[k] = torch.gather(v, 1, idx)
        else:
            out[k] = v
    return out, perm


def _compare_jet_outputs(a, b, name):
    for k in ("flavour_logits", "pt_log_ratio", "vertex"):
        if k in a:
            torch.testing.assert_close(b[k], a[k], rtol=2e-4, atol=2e-5, msg=f"{name}: {k}")


@pytest.mark.parametrize("name,cfg", CFGS, ids=IDS)
def test_outputs_do_not_depend_on_padding(data, name, cfg):
    batch = index_batch(data[0], slice(0, 30))
    model = _model(data, cfg).eval()
    with torch.no_grad():
        a, b = model(batch), model(_pad(batch, 5))
    _compare_jet_outputs(a, b, name)
    valid, T = batch["valid"], batch["valid"].shape[1]
    if "origin_logits" in a:
        torch.testing.assert_close(b["origin_logits"][:, :T][valid], a["origin_logits"][valid],
                                   rtol=2e-4, atol=2e-5)
    for v in b.values():
        assert torch.isfinite(v.float()).all()


@pytest.mark.parametrize("name,cfg", CFGS, ids=IDS)
def test_outputs_do_not_depend_on_track_order(data, name, cfg):
    """Permutation invariance of the jet outputs and equivariance of the track outputs (a
    slot-based max_tracks cut selects by position, so it is switched off here)."""
    cfg = ModelConfig.from_dict({**cfg.to_dict(), "max_tracks": 0})
    batch = index_batch(data[0], slice(0, 30))
    model = _model(data, cfg).eval()
    pb, perm = _permute(batch)
    with torch.no_grad():
        a, b = model(batch), model(pb)
    _compare_jet_outputs(a, b, name)
    if "origin_logits" in a:
        ao = torch.gather(a["origin_logits"], 1, perm[..., None].expand(-1, -1, 8))
        m = pb["valid"]
        torch.testing.assert_close(b["origin_logits"][m], ao[m], rtol=2e-4, atol=2e-5)
    if "pair_logits" in a:
        ap = a["pair_logits"][torch.arange(perm.shape[0])[:, None, None], perm[:, :, None],
                              perm[:, None, :]]
        m = pb["valid"][:, :, None] & pb["valid"][:, None, :]
        torch.testing.assert_close(b["pair_logits"][m], ap[m], rtol=2e-4, atol=2e-5)


def test_dips_is_a_sum_over_tracks(data):
    """DIPS with sum pooling: the jet vector of a jet is the sum of its tracks' embeddings,
    so a jet split in two halves pools to the sum of the halves' vectors."""
    cfg = shipped_model_config("dips")
    model = _model(data, cfg).eval()
    batch = index_batch(data[0], slice(0, 20))
    first = batch["valid"] & (batch["valid"].cumsum(1) <= 2)
    halves = [{**batch, "valid": first}, {**batch, "valid": batch["valid"] & ~first}]
    pooled = []
    with torch.no_grad():
        for b in [batch, *halves]:
            inputs = model.inputs(b, b["params"], b["cov"])
            tok = model.encoder(inputs)
            pooled.append(model.heads.pool(tok["tracks"], b["valid"]))
    torch.testing.assert_close(pooled[0], pooled[1] + pooled[2], rtol=1e-5, atol=1e-5)
    assert pooled[2].abs().sum() > 0


def test_options_change_the_network(data):
    """Each option builds something different (not silently ignored)."""
    base = shipped_model_config("gn2", d0_max=0.0, max_tracks=0)
    batch = index_batch(data[0], slice(0, 16))
    ref = _model(data, base).eval()(batch)["flavour_logits"]
    for over in (dict(activation="silu"), dict(feed_forward="glu"), dict(registers=2),
                 dict(pooling="weighted_sum"), dict(backbone="dips"), dict(d0_max=0.05),
                 dict(max_tracks=2), dict(inputs=["tracks", "muons"])):
        cfg = ModelConfig.from_dict({**base.to_dict(), **over})
        out = _model(data, cfg).eval()(batch)["flavour_logits"]
        assert not torch.allclose(out, ref, atol=1e-6), over


def test_sdpa_attention_equals_the_written_out_softmax(data):
    cfg = shipped_model_config("gn3", inputs=["tracks"])
    batch = index_batch(data[0], slice(0, 16))
    batch["valid"][0] = False
    a = _model(data, cfg).eval()(batch)
    b = _model(data, ModelConfig.from_dict({**cfg.to_dict(), "attention": "manual"})).eval()(
        batch)
    torch.testing.assert_close(a["flavour_logits"], b["flavour_logits"], rtol=1e-5, atol=1e-6)


def test_track_cuts_act_like_removing_the_tracks(data):
    """max_tracks / d0_max give the same jet outputs as a batch without the cut tracks."""
    cfg = shipped_model_config("gn2", max_tracks=4, d0_max=0.5)
    batch = index_batch(data[0], slice(0, 30))
    slot = torch.arange(batch["valid"].shape[1])
    keep = batch["valid"] & (slot < 4) & (batch["params"][..., 0].abs() < 0.5)
    model = _model(data, cfg).eval()
    plain = _model(data, ModelConfig.from_dict({**cfg.to_dict(), "max_tracks": 0,
                                                "d0_max": 0.0})).eval()
    torch.testing.assert_close(model(batch)["flavour_logits"],
                               plain({**batch, "valid": keep})["flavour_logits"])


def test_soft_muons_are_used_and_required(data):
    cfg = shipped_model_config("gn3")
    batch = index_batch(data[0], slice(0, 40))
    assert (batch["lepton_id"] != 0).any()
    model = _model(data, cfg).eval()
    with torch.no_grad():
        a = model(batch)["flavour_logits"]
        b = model({**batch, "lepton_id": torch.zeros_like(batch["lepton_id"])})["flavour_logits"]
    has_mu = (batch["lepton_id"] != 0).any(1)
    assert not torch.allclose(a[has_mu], b[has_mu], atol=1e-6)
    torch.testing.assert_close(a[~has_mu], b[~has_mu])
    plain = {k: v for k, v in batch.items() if k not in ("lepton_id", "lepton_pt")}
    with pytest.raises(ValueError, match="leptonID"):
        model(plain)


def test_soft_muons_from_a_file_with_lepton_fields(sample_path, tmp_path):
    """A small file with the soft-lepton track fields (leptonID, lepton_pt) loads into the
    muon input; the muon tokens' extra features are the muon pT and its ratio to the track's."""
    import h5py

    from ndive_models.data import read_jets

    jets, tracks = read_jets(sample_path, 0, 50)
    extra = [f for f in (("leptonID", "i1"), ("lepton_pt", "f4")) if f[0] not in tracks.dtype.names]
    dt = np.dtype(tracks.dtype.descr + extra)
    t2 = np.zeros(tracks.shape, dt)
    for k in tracks.dtype.names:
        t2[k] = tracks[k]
    mu = tracks["valid"] & (tracks["pt"] > 5) & np.isin(tracks["ftagTruthOriginLabel"], (3, 4))
    t2["leptonID"] = np.where(mu, np.where(tracks["charge"] > 0, -13, 13), 0)
    t2["lepton_pt"] = np.where(mu, tracks["pt"], 0.0)
    path = tmp_path / "muons.h5"
    with h5py.File(sample_path) as src, h5py.File(path, "w") as f:
        f.create_dataset("jets", data=jets)
        f.create_dataset("tracks", data=t2)
        for k, v in src.attrs.items():
            f.attrs[k] = v
    batch, bz = load_batch(path)
    assert torch.equal(batch["lepton_id"] != 0, torch.from_numpy(mu))
    model = build_model(shipped_model_config("gn3"), feature_stats(batch, bz), bz)
    inputs = model.inputs(batch, batch["params"], batch["cov"])
    f_mu, v_mu = inputs["muons"]
    assert torch.equal(v_mu, torch.from_numpy(mu))
    # log(muon pT / 5 GeV) and muon pT / track pT (= 1 here, up to float rounding)
    torch.testing.assert_close(f_mu[v_mu][:, -2], torch.log(torch.from_numpy(tracks["pt"][mu]) / 5))
    torch.testing.assert_close(f_mu[v_mu][:, -1], torch.ones(int(mu.sum())), rtol=1e-3, atol=1e-3)
    assert torch.isfinite(model(batch)["flavour_logits"]).all()


def test_class_labels_map_the_generator_truth(data):
    from ndive_models.models import class_labels

    batch = data[0]
    six, four, three = (class_labels(batch, c) for c in (6, 4, 3))
    assert torch.equal(three, batch["flavour"])
    assert torch.equal(four[six < 2], six[six < 2])
    assert torch.equal(four[six == 5], torch.full_like(four[six == 5], 3))
    assert (four[(six >= 2) & (six <= 4)] == 2).all()
    assert torch.equal(six < 2, three < 2) and torch.equal(six[six < 2], three[three < 2])
    with pytest.raises(ValueError, match="jet_class"):
        class_labels({"flavour": batch["flavour"]}, 4)


def test_bad_options_name_the_key():
    for key, value in (("backbone", "lstm"), ("activation", "tanh"), ("classes", 5),
                       ("tasks", ["origin"]), ("inputs", ["muons"]), ("loss_balance", "max"),
                       ("attention", "flash"), ("pooling", "max"), ("registers", -1)):
        with pytest.raises(ValueError, match=key):
            ModelConfig.from_dict({key: value})


# ------------------------------------------------------------------------------------------
# GLS and Lion, hand-computed
# ------------------------------------------------------------------------------------------
def test_gls_is_the_geometric_mean_with_its_gradient():
    """L_a = 4/2 = 2, L_b = 16/2 = 8: G = sqrt(2 * 8) = 4; dG/ds_a = G/(2 L_a)/n_a = 0.5,
    dG/ds_b = G/(2 L_b)/n_b = 0.125. A task absent from the batch (count 0) is left out."""
    sa = torch.tensor(4.0, requires_grad=True)
    sb = torch.tensor(16.0, requires_grad=True)
    sc = torch.tensor(0.0, requires_grad=True)
    two, zero = torch.tensor(2.0), torch.tensor(0.0)
    terms = {"a": (sa, two, 1.0), "b": (sb, two, 0.3), "c": (sc, zero, 1.0)}
    g = total_loss(terms, balance="gls")
    assert float(g.detach()) == pytest.approx(4.0, rel=1e-12)
    g.backward()
    assert float(sa.grad) == pytest.approx(0.5) and float(sb.grad) == pytest.approx(0.125)
    assert float(sc.grad) == 0.0
    fixed = total_loss({"a": (sa, two, 1.0), "b": (sb, two, 0.3)})
    assert float(fixed) == pytest.approx(2 + 0.3 * 8)
    assert combine({"a": 2.0, "b": 8.0, "c": 0.0}, {}, "gls",
                   {"a": True, "b": True, "c": False}) == pytest.approx(4.0)
    assert combine({"a": 2.0, "b": 8.0}, {"a": 1.0, "b": 0.3}) == pytest.approx(4.4)


def test_gls_global_means_give_the_global_gradient():
    """Two 'processes' each with half the sums: GLS factors from the global means make the
    summed per-process losses equal the single-process loss and gradient."""
    s = torch.tensor([1.0, 3.0, 10.0, 6.0], requires_grad=True)
    n = torch.tensor(2.0)
    single = total_loss({"a": (s[0] + s[1], 2 * n, 1.0), "b": (s[2] + s[3], 2 * n, 1.0)},
                        balance="gls")
    (g1,) = torch.autograd.grad(single, s)
    means = {"a": (s[0] + s[1]).detach() / (2 * n), "b": (s[2] + s[3]).detach() / (2 * n)}
    counts = {"a": 2 * n, "b": 2 * n}
    parts = [total_loss({"a": (s[i], n, 1.0), "b": (s[2 + i], n, 1.0)}, counts, "gls", means)
             for i in (0, 1)]
    (g2,) = torch.autograd.grad(parts[0] + parts[1], s)
    assert float(parts[0] + parts[1]) == pytest.approx(float(single))
    torch.testing.assert_close(g2, g1)


def test_lion_matches_hand_computed_updates():
    """Lion, lr 0.1, betas (0.9, 0.99): c = 0.9 m + 0.1 g, w <- w (1 - lr wd) - lr sign(c),
    m <- 0.99 m + 0.01 g.

    step 1 (m = 0, g = (0.5, -0.1), wd 0.5): w = (1, -2) * 0.95 - 0.1 (1, -1) = (0.85, -1.8);
        m = (0.005, -0.001)
    step 2 (g = (-0.2, -0.3)): c = (0.0045 - 0.02, -0.0009 - 0.03) < 0 in both
        -> w = (0.85, -1.8) * 0.95 + 0.1 = (0.9075, -1.61)
    """
    from ndive_models._optim import make_optimizer

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = make_optimizer("lion", [w], lr=0.1, weight_decay=0.5)
    for g, expect in (([0.5, -0.1], [0.85, -1.8]), ([-0.2, -0.3], [0.9075, -1.61])):
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        torch.testing.assert_close(w.detach(), torch.tensor(expect, dtype=torch.float64))
    torch.testing.assert_close(opt.state[w]["exp_avg"],
                               torch.tensor([0.99 * 0.005 - 0.002, -0.99 * 0.001 - 0.003],
                                            dtype=torch.float64))
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer("sgd", [w], lr=0.1)


# ------------------------------------------------------------------------------------------
# generator truth: labels and the regression target
# ------------------------------------------------------------------------------------------
def test_extended_truth_of_generated_jets(sample):
    jets, _ = sample
    cls, fl, parton = jets["jet_class"], jets["flavour_label"], jets["PartonTruthLabelID"]
    assert np.array_equal(cls == 0, fl == 0) and np.array_equal(cls == 1, fl == 1)
    assert set(np.unique(cls)) <= set(range(6)) and (cls == 5).sum() > 0
    assert set(np.unique(parton)) <= {0, 1, 2, 3, 4, 5, 21}
    assert (parton[cls == 3] == 3).all() and (parton[cls == 4] == 21).all()
    assert not np.isin(parton[cls == 2], (3, 21)).any()
    # b jets mostly come with a b parton, gluon jets are common in ttbar (ISR)
    assert (parton[fl == 0] == 5).mean() > 0.8 and (cls == 4).sum() > 0.1 * (fl == 2).sum()


def test_regression_target_sanity(sample):
    """Adding neutrinos and muons inside the cone never lowers the pT; semileptonic b decays
    (and tau decays) make it rise far more often for b and tau jets than for light jets."""
    jets, _ = sample
    pt, true, cls = jets["pt"], jets["pt_truth_nu_mu"], jets["jet_class"]
    assert np.all(np.isfinite(true)) and np.all(true >= pt * (1 - 1e-5))
    raised = true > 1.02 * pt
    light = np.isin(cls, (2, 3, 4))
    assert raised[light].mean() < 0.05
    assert raised[cls == 0].mean() > 3 * raised[light].mean()
    assert np.median(pt[cls == 5] / true[cls == 5]) < 0.95


def test_regression_head_learns_the_target(data):
    """A few AdamW steps on the regression loss alone lower it."""
    cfg = shipped_model_config("gn2_regression", tasks=["flavour", "regression"],
                               loss_flavour=0.0, d0_max=0.0, max_tracks=0)
    batch = index_batch(data[0], slice(0, 200))
    model = _model(data, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        t = model.loss_terms(model(batch), batch)
        losses.append(float(t["regression"][0] / t["regression"][1]))
        opt.zero_grad()
        total_loss(t).backward()
        opt.step()
    assert losses[-1] < 0.7 * losses[0]


# ------------------------------------------------------------------------------------------
# training and evaluation of several family members together
# ------------------------------------------------------------------------------------------
def test_pt_response_by_hand():
    from ndive_models.evaluate import pt_response

    true = np.full(100, 50.0)
    pt = 50.0 * np.linspace(0.5, 1.5, 100)  # response uniform in [0.5, 1.5]
    r = pt_response(pt, true, np.array([40.0, 60.0, 80.0]))
    assert r["n_jets"] == [100, 0]
    assert r["median_response"][0] == pytest.approx(1.0)
    assert r["resolution"][0] == pytest.approx(0.5 * (0.84 - 0.16) * 1.0, rel=1e-2)
    assert math.isnan(r["median_response"][1])


def test_train_and_compare_family_members(sample_path, tmp_path):
    """DIPS, GN2 with regression (4 classes) and GN3 (6 classes, Lion, GLS) train one epoch
    from their shipped configs and are compared by one ``ndive evaluate``."""
    import json

    from ndive_models.cli import main as cli_main

    runs = {"dips": [], "gn2_regression": [], "gn3": ["--set", "model.inputs=[tracks]"]}
    cks = []
    for cfg, extra in runs.items():
        out = tmp_path / cfg
        rc = cli_main(["train", "--config", str(CONFIG_DIR / f"{cfg}.yaml"), "--train",
                       str(sample_path), "--out", str(out), "--epochs", "1", "--max-jets",
                       "300", "--no-progress", "--device", "cpu", "--set", "model.dim=8",
                       "--set", "model.heads=2", "--set", "model.layers=1", *extra])
        assert rc == 0, cfg
        hist = json.loads((out / "history.json").read_text())
        assert math.isfinite(hist[-1]["val"]["loss"])
        cks.append(str(out / "last.pt"))
    ev = tmp_path / "eval"
    rc = cli_main(["evaluate", *cks, "--test", str(sample_path), "--out", str(ev),
                   "--max-jets", "500", "--reference", "GN2 + regression"])
    assert rc == 0
    m = json.loads((ev / "metrics.json").read_text())
    assert set(m["models"]) == {"DIPS", "GN2 + regression", "GN3"}
    for mm in m["models"].values():
        assert mm["rejection"]["light"]["0.70"]["mean"] > 0
    reg = m["models"]["GN2 + regression"]["regression"]
    assert sum(reg["regressed"]["n_jets"]) == sum(reg["uncalibrated"]["n_jets"]) > 0
    for name in ("roc_light.png", "roc_c.png", "pt_response.png"):
        assert (ev / name).stat().st_size > 1000
    assert sorted(p.name for p in (ev / "predictions").iterdir()) == \
        ["DIPS_0.h5", "GN2_regression_0.h5", "GN3_0.h5"]


def test_family_study_parses_and_a_small_study_runs(sample_path, tmp_path):
    """The shipped family study resolves to its six models; a two-model study in the same
    format on the session sample (placed as both files, so nothing is generated) writes a
    report with a row per label, and a rerun resumes instead of retraining."""
    import json
    import shutil

    import h5py
    import yaml

    from ndive_models.cli import main as cli_main
    from ndive_models.paper import load_study, study_runs

    runs = study_runs(load_study("studies/family_cpu"), tmp_path / "t.h5", tmp_path)
    labels = {c.model.label: (c.model.name, c.model.backbone) for _, c in runs}
    assert labels == {"DIPS": ("baseline", "dips"), "DIPS + NDIVE": ("ftag_ndive", "dips"),
                      "GN2-small": ("baseline", "transformer"),
                      "GN2-small + NDIVE": ("ftag_ndive", "transformer"),
                      "GN3-small": ("baseline", "transformer"),
                      "GN3-small + NDIVE": ("ftag_ndive", "transformer")}

    with h5py.File(sample_path) as f:
        n, seed = int(f.attrs["n_jets"]), int(f.attrs["seed"])
    work = tmp_path / "work"
    work.mkdir()
    for name in ("train.h5", "test.h5"):
        shutil.copy(sample_path, work / name)
    study = {"title": "tiny family", "reference": "tiny GN2",
             "data": {"train": {"jets": n, "seed": seed}, "test": {"jets": n, "seed": seed},
                      "workers": 2, "generate": {"balance": False}},  # the sample's options
             "seeds": 1, "training": {"epochs": 1, "max_jets": 200, "device": "cpu"},
             "runs": [{"name": "dips", "config": "dips",
                       "set": {"model.dim": 8, "model.label": "tiny DIPS"}},
                      {"name": "gn2", "config": "gn2",
                       "set": {"model.dim": 8, "model.layers": 1, "model.heads": 2,
                               "model.label": "tiny GN2"}}],
             "jobs": 1, "threads": 1, "workdir": str(work), "report": str(tmp_path / "rep")}
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump(study))
    assert cli_main(["paper", "--study", str(cfg)]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert text.startswith("# tiny family")
    assert "| tiny DIPS | 1 | 70% |" in text and "| tiny GN2 | 1 | 70% |" in text
    assert "### Ratio to tiny GN2" in text
    m = json.loads((tmp_path / "rep" / "dips_s1" / "metrics.json").read_text())
    assert set(m["rejection"]) == {"light", "c"}
    mtime = (work / "runs" / "gn2_s1" / "last.pt").stat().st_mtime_ns
    assert cli_main(["paper", "--study", str(cfg)]) == 0
    assert (work / "runs" / "gn2_s1" / "last.pt").stat().st_mtime_ns == mtime


def _old_names(state: dict) -> dict:
    """Today's state dict with the parameter names (and the concatenated first pair layer)
    of checkpoints written before the family options."""
    import re

    out = {}
    for k, v in state.items():
        if ".pair.second." in k or ".pair.first.bias" in k:
            continue
        if ".pair.first.weight" in k:
            base = k.replace(".first.weight", "")
            out[base + ".0.weight"] = torch.cat([v, state[base + ".second.weight"]], 1)
            out[base + ".0.bias"] = state[base + ".first.bias"]
            continue
        k = re.sub(r"embed\.tracks\.", "embed.", k)
        k = k.replace(".ff.inp.", ".ff.0.").replace(".ff.out.", ".ff.2.")
        out[k.replace(".pair.out.", ".pair.2.")] = v
    return out


def test_checkpoints_from_before_the_options_still_load(data):
    """Old parameter names load into today's modules with the same outputs; the old pair
    head (an MLP on the concatenation [x_i, x_j]) equals the split one."""
    from ndive_models.train import upgrade_state_dict

    batch = index_batch(data[0], slice(0, 20))
    cfg = ModelConfig(name="ftag_ndive", dim=8, heads=2)
    model = _model(data, cfg).eval()
    old = _old_names(model.state_dict())
    assert "heads.pair.0.weight" in old and "encoder.embed.0.weight" in old
    fresh = _model(data, cfg, seed=7).eval()
    fresh.load_state_dict(upgrade_state_dict(old))
    with torch.no_grad():
        a, b = model(batch), fresh(batch)
        for k in a:
            assert torch.equal(a[k], b[k]), k
        x = torch.randn(3, 5, 16)
        w0, b0 = old["heads.pair.0.weight"], old["heads.pair.0.bias"]
        cat = torch.cat([x[:, :, None].expand(-1, -1, 5, -1), x[:, None].expand(-1, 5, -1, -1)],
                        -1)
        by_hand = torch.nn.functional.silu(cat @ w0.T + b0) @ old["heads.pair.2.weight"].T \
            + old["heads.pair.2.bias"]
        torch.testing.assert_close(fresh.heads.pair(x), by_hand[..., 0])
    assert upgrade_state_dict(model.state_dict()) is not None


def test_files_without_the_new_truth_fields_still_load(sample_path, tmp_path):
    import h5py

    from ndive_models.data import read_jets
    from ndive_models.models import class_labels

    jets, tracks = read_jets(sample_path, 0, 30)
    keep = [n for n in jets.dtype.names if n not in ("jet_class", "PartonTruthLabelID",
                                                     "pt_truth_nu_mu")]
    path = tmp_path / "old.h5"
    with h5py.File(sample_path) as src, h5py.File(path, "w") as f:
        f.create_dataset("jets", data=np.asarray(jets[keep].tolist(),
                                                 dtype=[(n, jets.dtype[n]) for n in keep]))
        f.create_dataset("tracks", data=tracks)
        for k, v in src.attrs.items():
            f.attrs[k] = v
    batch, _ = load_batch(path)
    assert "jet_class" not in batch and "pt_truth" not in batch
    labels = torch.from_numpy(np.ascontiguousarray(jets["flavour_label"])).long()
    assert torch.equal(class_labels(batch, 3), labels)
    with pytest.raises(ValueError, match="jet_class"):
        class_labels(batch, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name,cfg", CFGS, ids=IDS)
def test_on_cuda_as_on_cpu(data, name, cfg):
    """Every option runs on CUDA (SDPA's CUDA kernels included) and gives the CPU's jet
    outputs up to float32 rounding."""
    from ndive_models.data import to_device

    batch = index_batch(data[0], slice(0, 30))
    model = _model(data, cfg).eval()
    with torch.no_grad():
        a = model(batch)
        b = model.to("cuda")(to_device(batch, "cuda"))
    for k in ("flavour_logits", "pt_log_ratio"):
        if k in a:
            torch.testing.assert_close(b[k].cpu(), a[k], rtol=1e-3, atol=1e-4)
    loss = total_loss(model.train().loss_terms(model(to_device(batch, "cuda")),
                                               to_device(batch, "cuda")),
                      balance=cfg.loss_balance)
    loss.backward()
    assert torch.isfinite(loss)


def test_schema_1_files_have_the_new_truth_fields_as_not_available(sample_path, tmp_path):
    """A schema 1 file (written before the fields existed) reads, and converts, with -1 in
    them; the loader then offers no jet_class / pt_truth."""
    import shutil

    from test_io import _as_v1

    from ndive_models.data import read_jets
    from ndive_models.data._io import convert

    jets, tracks = read_jets(sample_path, 0, 40)
    path = tmp_path / "v1.h5"
    shutil.copy(sample_path, path)
    _as_v1(path, jets, tracks)
    for p in (path, convert(path, tmp_path / "v2.h5", progress=False)):
        j, _ = read_jets(p)
        assert (j["jet_class"] == -1).all() and (j["pt_truth_nu_mu"] == -1).all()
        batch, _ = load_batch(p)
        assert "jet_class" not in batch and "pt_truth" not in batch
        labels = torch.from_numpy(np.ascontiguousarray(jets["flavour_label"])).long()
        assert torch.equal(batch["flavour"], labels)

"""Models: shapes, padding invariance, NaN safety, gradients through the fit, learning."""

from __future__ import annotations

import math

import pytest
import torch

from ndive_models.data import feature_stats, index_batch, load_batch
from ndive_models.models import ModelConfig, build_model, total_loss

TINY = dict(dim=8, layers=1, heads=2)
ALL_MODELS = [
    ("baseline", "predicted"),
    ("ndive", "predicted"),
    ("ndive", "truth"),
    ("ndive", "all"),
    ("ftag_ndive", "predicted"),
    ("ftag_ndive", "truth"),
]


@pytest.fixture(scope="module")
def data(sample_path):
    batch, bz = load_batch(sample_path, 0, 600)
    return batch, bz, feature_stats(batch, bz)


def _model(data, name, weights="predicted", seed=0, **kw):
    _batch, bz, stats = data
    torch.manual_seed(seed)
    return build_model(ModelConfig(name=name, weights=weights, **{**TINY, **kw}), stats, bz)


def _pad(batch, extra, garbage=True):
    """The same jets with ``extra`` more track slots holding garbage (NaN in the tracks)."""
    B, T = batch["valid"].shape
    g = torch.Generator().manual_seed(1)
    out = {}
    for k, v in batch.items():
        if v.ndim >= 2 and v.shape[1] == T:
            shape = (B, extra) + tuple(v.shape[2:])
            if v.dtype == torch.bool:
                pad = torch.zeros(shape, dtype=torch.bool)
            elif v.dtype.is_floating_point:
                pad = torch.randn(shape, generator=g, dtype=v.dtype) * 7.0
                if garbage and k in ("params", "cov"):
                    pad[..., 0] = math.nan
            else:
                pad = torch.randint(0, 5, shape, generator=g, dtype=v.dtype)
            out[k] = torch.cat([v, pad], 1)
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("name,weights", ALL_MODELS)
def test_padding_invariance(data, name, weights):
    """Every output at valid positions is unchanged by extra padded slots with garbage."""
    batch = index_batch(data[0], slice(0, 40))
    model = _model(data, name, weights).eval()
    with torch.no_grad():
        a = model(batch)
        b = model(_pad(batch, 6))
    valid = batch["valid"]
    T = valid.shape[1]
    assert set(a) == set(b)
    for k in a:
        x, y = a[k], b[k]
        if k in ("origin_logits", "weights", "track_chi2"):
            x, y = x[valid], y[:, :T][valid]
        elif k == "pair_logits":
            m = valid[:, :, None] & valid[:, None, :]
            x, y = x[m], y[:, :T, :T][m]
        assert torch.isfinite(y.float()).all(), k
        if x.dtype == torch.bool:
            assert torch.equal(x, y), k
        else:
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6, msg=f"{name}: {k}")
    if "weights" in b:  # padded slots get weight exactly 0
        assert torch.all(b["weights"][:, T:] == 0)


@pytest.mark.parametrize("name", ["baseline", "ndive", "ftag_ndive"])
def test_shapes_and_empty_jets_stay_finite(data, name):
    batch = index_batch(data[0], slice(0, 12))
    # jet 0: no track at all, jet 1: a single track
    batch["valid"][0] = False
    batch["valid"][1, 1:] = False
    model = _model(data, name)
    out = model(batch)
    B, T = batch["valid"].shape
    expect = {"flavour_logits": (B, 3), "origin_logits": (B, T, 8), "pair_logits": (B, T, T),
              "weights": (B, T), "vertex": (B, 3), "vertex_cov": (B, 3, 3), "fit_ok": (B,)}
    for k, v in out.items():
        if k in expect:
            assert tuple(v.shape) == expect[k], k
        assert torch.isfinite(v.float()).all(), k
    if "fit_ok" in out:
        assert not out["fit_ok"][0] and not out["fit_ok"][1]
    loss = total_loss(model.loss_terms(out, batch))
    loss.backward()
    assert torch.isfinite(loss)
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_weight_predictor_gradient_through_fit(data):
    """d loss / d (weight-head bias) is non-zero and matches a central finite difference.

    The loss is restricted to b/c jets whose fit converged: there the implicit gradient of
    the fit (vertexfit's PyTorch adapter) is the derivative of the forward map.
    """
    batch = index_batch(data[0], slice(0, 60))
    batch = {k: (v.double() if v.dtype == torch.float32 else v) for k, v in batch.items()}
    model = _model(data, "ndive", fit_iter=30).double()
    bias = model.weight_head[-1].bias
    with torch.no_grad():
        sel = model(batch)["fit_converged"] & (batch["flavour"] < 2)
    assert sel.sum() >= 10

    def loss():
        out = model(batch)
        return (out["vertex"] - batch["hf_vertex"]).abs().mean(-1)[sel].sum()

    loss().backward()
    g = bias.grad.item()
    assert g != 0.0 and math.isfinite(g)
    # the fit is the only path from the weight predictor to the loss
    assert model.encoder.embed["tracks"][0].weight.grad.abs().sum() > 0
    h = 1e-5
    with torch.no_grad():
        bias += h
        up = loss().item()
        bias -= 2 * h
        down = loss().item()
        bias += h
    fd = (up - down) / (2 * h)
    assert g == pytest.approx(fd, rel=2e-3)


@pytest.mark.parametrize("name", ["baseline", "ndive", "ftag_ndive"])
def test_training_steps_lower_the_loss(data, name):
    batch = index_batch(data[0], slice(0, 100))
    model = _model(data, name, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        L = total_loss(model.loss_terms(model(batch), batch))
        opt.zero_grad()
        L.backward()
        opt.step()
        losses.append(L.item())
    assert losses[-1] < 0.97 * losses[0], losses


def test_truth_weights_give_better_vertices_than_all_tracks(data):
    """Perfect selection fits the true HF vertex better than all tracks (b/c jets)."""
    batch = index_batch(data[0], slice(0, 300))
    errs = {}
    for weights in ("truth", "all"):
        m = _model(data, "ndive", weights)
        with torch.no_grad():
            out = m(batch)
        s, n = m.loss_terms(out, batch)["ndive"][:2]
        assert n > 20
        errs[weights] = (s / n).item()
    assert errs["truth"] < errs["all"], errs


def test_finite_grad_drops_only_the_broken_jet():
    from ndive_models.models import finite_grad

    x = torch.ones(3, 2, requires_grad=True)
    scale = torch.tensor([[1.0, 2.0], [math.nan, 1.0], [3.0, math.inf]])
    (finite_grad(x) * scale).sum().backward()
    assert x.grad.tolist() == [[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]


def test_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="model name"):
        ModelConfig(name="gn3")
    with pytest.raises(ValueError, match="weights"):
        ModelConfig(weights="oracle")
    with pytest.raises(ValueError, match="unknown model options"):
        ModelConfig.from_dict({"dimm": 3})


def test_finite_grad_has_no_host_sync(count_host_syncs):
    # a Python `if` on a CUDA value would stall every training step (issue 12)
    from ndive_models.models import finite_grad

    x = torch.ones(4, 3, requires_grad=True)
    scale = torch.tensor([[1.0], [float("nan")], [1.0], [1.0]])
    y = (finite_grad(x) * scale).sum()
    with count_host_syncs() as mode:
        y.backward()
    assert mode.syncs == 0
    assert torch.equal(x.grad[1], torch.zeros(3))


@pytest.mark.parametrize("kw", [{}, {"inputs": ["tracks", "muons"]}, {"backbone": "dips"}])
def test_ftag_ndive_encodes_both_views_in_one_call_as_in_two(data, kw):
    """FtagNdive runs its backbone once on the PV view and the NDIVE-vertex view stacked along
    the jets; each jet's embedding equals the one of a call on its view alone."""
    batch, _, _ = data
    b = index_batch(batch, slice(0, 40))
    if "muons" in kw.get("inputs", []) and "lepton_id" not in b:
        pytest.skip("sample without soft-lepton fields")
    model = _model(data, "ftag_ndive", **kw).eval()
    B = b["params"].shape[0]
    pos = torch.randn((2, B) + tuple(b["params"].shape[1:2]) + (3,),
                      generator=torch.Generator().manual_seed(3))
    params2 = b["params"] + 0.01 * torch.randn(b["params"].shape)
    with torch.no_grad():
        one = [model.inputs(b, p, b["cov"], x) for p, x in ((b["params"], pos[0]),
                                                             (params2, pos[1]))]
        both = model.inputs(b, torch.cat([b["params"], params2]), torch.cat([b["cov"]] * 2),
                            torch.cat([pos[0], pos[1]]))
        e_both = model.encoder(both)
        for view, inp in enumerate(one):
            for k, (f, v) in inp.items():
                assert torch.equal(both[k][0][view * B:(view + 1) * B], f)
                assert torch.equal(both[k][1][view * B:(view + 1) * B], v)
            e = model.encoder(inp)
            for k in e:
                torch.testing.assert_close(e_both[k][view * B:(view + 1) * B], e[k],
                                           rtol=1e-5, atol=1e-6)

"""The heavier ATLAS tools (``nox -s interop``; marker ``interop``, skipped by default): salt
reads a generated file, puma reads predictions and draws the ROC and discriminant plots."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.interop

TRACK_VARS = ["btagIp_d0", "z0SinTheta", "dphi", "deta", "qOverP",
              "lifetimeSignedD0Significance", "lifetimeSignedZ0SinThetaSignificance",
              "phiUncertainty", "thetaUncertainty", "qOverPUncertainty", "ptfrac", "dr"]


def test_salt_dataset_reads_a_generated_file(sample_path, sample, tmp_path):
    """salt's ``SaltDataset``: jet and track inputs in ATLAS names, the padding mask from
    ``valid``, and the labels ``flavour_label`` / ``ftagTruthOriginLabel``."""
    pytest.importorskip("salt", reason="needs salt-ml (nox -s interop)")
    from salt.data.datasets import SaltDataset

    jets, tracks = sample
    variables = {"jets": ["pt_btagJes", "absEta_btagJes"], "tracks": TRACK_VARS}
    ds = SaltDataset(sample_path, norm_dict=tmp_path / "unused.yaml", variables=variables,
                     stage="test", labels={"jets": ["flavour_label"],
                                           "tracks": ["ftagTruthOriginLabel"]})
    assert len(ds) == len(jets)
    inputs, pad_masks, labels = ds[slice(100, 400)]
    assert inputs["tracks"].shape == (300, tracks.shape[1], len(TRACK_VARS))
    np.testing.assert_array_equal(pad_masks["tracks"].numpy(), ~tracks["valid"][100:400])
    np.testing.assert_array_equal(inputs["jets"][:, 0].numpy(), jets["pt_btagJes"][100:400])
    i = TRACK_VARS.index("qOverP")
    np.testing.assert_array_equal(inputs["tracks"][..., i].numpy(), tracks["qOverP"][100:400])
    np.testing.assert_array_equal(labels["jets"]["flavour_label"].numpy(),
                                  jets["flavour_label"][100:400])
    np.testing.assert_array_equal(labels["tracks"]["ftagTruthOriginLabel"].numpy(),
                                  tracks["ftagTruthOriginLabel"][100:400])


def test_puma_reads_predictions_and_draws(sample_path, tmp_path):
    """puma's Results loads a predictions file and draws the ROC and discriminant plots."""
    pytest.importorskip("puma")
    from ndive_models._puma import puma_plots
    from ndive_models.data import read_jets
    from ndive_models.evaluate import _write_predictions

    jets, tracks = read_jets(sample_path, 0, 1000)
    fl = jets["flavour_label"]
    rng = np.random.default_rng(2)
    files = {}
    for name, sep in (("good", 2.0), ("bad", 0.5)):
        logits = rng.normal(size=(len(fl), 3)) + sep * (fl[:, None] == np.arange(3))
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        files[name] = tmp_path / f"{name}.h5"
        _write_predictions(files[name], name, {"p_b": p[:, 0], "p_c": p[:, 1], "p_u": p[:, 2]},
                           jets, tracks["valid"], 0.05)
    pngs = puma_plots(files, tmp_path / "puma", f_c=0.05, reference="bad", display={})
    names = [p.name for p in pngs]
    assert any("roc" in n for n in names) and any("disc" in n for n in names), names
    assert all(p.stat().st_size > 10_000 for p in pngs)

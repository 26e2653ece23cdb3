"""The files as the ATLAS flavour-tagging tools read them: atlas-ftag-tools (``ftag``).

``ftag`` is a test dependency (noxfile TEST_DEPS); puma and salt are checked in the nox
session ``interop`` (tests marked ``interop``).
"""

from __future__ import annotations

import numpy as np
import pytest

ftag = pytest.importorskip("ftag", reason="needs atlas-ftag-tools (pip install atlas-ftag-tools)")
from ftag import Cuts  # noqa: E402
from ftag.hdf5 import H5Reader  # noqa: E402

from ndive_models import _metrics  # noqa: E402
from ndive_models.data import schema  # noqa: E402

CUTS = ["pt_btagJes > 30e3", "absEta_btagJes < 2.0"]


def _selected(jets):
    return (jets["pt_btagJes"] > 30e3) & (jets["absEta_btagJes"] < 2.0)


def test_h5reader_reads_jets_and_tracks_with_cuts(sample_path, sample):
    """Every field of both datasets, batched, with cuts on the ATLAS-named jet fields."""
    jets, tracks = sample
    reader = H5Reader(sample_path, batch_size=300, shuffle=False)
    data = reader.load({"jets": list(schema.JET_DTYPE.names),
                        "tracks": list(schema.TRACK_DTYPE.names)}, cuts=Cuts.from_list(CUTS))
    sel = _selected(jets)
    assert 0 < sel.sum() < len(jets)
    np.testing.assert_array_equal(data["jets"], jets[sel])
    np.testing.assert_array_equal(data["tracks"], tracks[sel])
    assert list(reader.readers[0].get_attr("flavour_label", "jets")) == list(schema.FLAVOURS)


def test_h5reader_half_precision_flushes_the_curvature_covariance(sample_path):
    """What docs/generation.md warns about, through the tool that does it: ``precision="half"``
    turns every track's ``cov_rho_rho`` into 0 (and keeps ``cov_d0_d0``)."""
    reader = H5Reader(sample_path, batch_size=500, shuffle=False, precision="half")
    t = reader.load({"jets": ["pt_btagJes"],
                     "tracks": ["valid", "cov_rho_rho", "cov_d0_d0"]})["tracks"]
    assert t.dtype["cov_rho_rho"] == np.float16
    t = t[t["valid"]]
    assert t.size > 1000
    assert np.all(t["cov_rho_rho"] == 0) and np.all(t["cov_d0_d0"] > 0)


def test_calculate_rejection_agrees_with_the_project_metrics(sample_path):
    """ftag's rejection and ours on the same discriminant (the largest lifetime-signed d0
    significance of a jet: a simple impact-parameter tagger) read through H5Reader."""
    reader = H5Reader(sample_path, batch_size=500, shuffle=False)
    data = reader.load({"jets": ["HadronConeExclTruthLabelID", "flavour_label"],
                        "tracks": ["valid", "lifetimeSignedD0Significance"]})
    t, j = data["tracks"], data["jets"]
    disc = np.where(t["valid"], t["lifetimeSignedD0Significance"], -99.0).max(axis=1)
    disc = disc + 1e-6 * np.arange(len(disc)) / len(disc)  # no ties at the cut
    label = j["flavour_label"]
    np.testing.assert_array_equal(label, np.select(
        [j["HadronConeExclTruthLabelID"] == 5, j["HadronConeExclTruthLabelID"] == 4], [0, 1], 2))
    effs = [0.6, 0.7, 0.77]
    theirs = ftag.utils.calculate_rejection(disc[label == 0], disc[label == 2], effs)
    ours = [_metrics.rejection(disc, label, e)["rejection"] for e in effs]
    assert np.all(np.isfinite(ours)) and ours[0] > ours[-1] > 1
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    c_theirs = ftag.utils.calculate_rejection(disc[label == 0], disc[label == 1], 0.7)
    c_ours = _metrics.rejection(disc, label, 0.7, background=1)["rejection"]
    assert c_ours == pytest.approx(c_theirs, rel=1e-12)

"""The HDF5 layout: schema, checked reader, atomic writer."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ndive_models.data import (
    JetWriter,
    SchemaError,
    convert,
    partial_path,
    read_attrs,
    read_jets,
    schema,
)


def _write(path, n=3, max_tracks=4):
    jets = np.zeros(n, schema.JET_DTYPE)
    jets["pt"] = np.arange(n) + 20.0
    tracks = np.zeros((n, max_tracks), schema.TRACK_DTYPE)
    tracks["valid"][:, 0] = True
    first = tracks[:, 0]
    first["theta"], first["rho"], first["pt"], first["d0"] = 1.0, -6e-4, 1.0, 0.01
    for name in schema.COV_FIELDS[::-1]:  # the diagonal ones last: the same pattern for all
        first[name] = 1e-4 if name.split("_")[1] == name.split("_")[2] else 0.0
    tracks[:, 0] = first
    with JetWriter(
        path,
        max_tracks,
        {
            "seed": 1,
            "generator_settings": {"a": 1},
            "package_versions": {},
            "bz_tesla": 2.0,
        },
    ) as w:
        w.append(jets, tracks)
    return jets, tracks


def test_schema_fields_and_dtypes():
    names = schema.JET_DTYPE.names
    for f in (
        "pt",
        "HadronConeExclTruthLabelID",
        "flavour_label",
        "n_tracks_all",
        "L3D",
        "hf_vertex_x",
        "pv_z",
        "eventNumber",
        "hadron_pdgid",
    ):
        assert f in names
    assert schema.JET_DTYPE["eventNumber"] == np.int64
    # scalars only: H5Reader and salt walk dtype.descr as (name, type) pairs
    for dtype in (schema.JET_DTYPE, schema.TRACK_DTYPE):
        assert all(len(d) == 2 for d in dtype.descr), dtype.descr
    assert len(schema.COV_FIELDS) == 15 and schema.COV_FIELDS[4] == "cov_d0_rho"
    assert all(schema.TRACK_DTYPE[c] == np.float32 for c in schema.COV_FIELDS)
    assert schema.TRACK_DTYPE["valid"] == np.bool_
    assert schema.TRACK_DTYPE["ftagTruthOriginLabel"] == np.int8
    assert schema.FLAVOURS == ("bjets", "cjets", "ujets")
    assert (
        schema.ORIGIN_LABELS[schema.ORIGIN["FromBC"]]
        == "FromBC"
        == schema.ORIGIN_LABELS[4]
    )


def test_round_trip_and_attributes(tmp_path):
    path = tmp_path / "a.h5"
    jets, tracks = _write(path)
    assert not partial_path(path).exists()
    j, t = read_jets(path)
    np.testing.assert_array_equal(j, jets)
    np.testing.assert_array_equal(t, tracks)
    attrs = read_attrs(path)
    assert attrs["complete"] is True or attrs["complete"] == 1
    assert attrs["generator_settings"] == {"a": 1}
    assert (
        "sin(phi)" in attrs["d0_sign"]
        and "K = 0.299792458e-3" in attrs["rho_definition"]
    )


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "b.h5"
    with pytest.raises(RuntimeError), JetWriter(path, 4) as w:
        w.append(np.zeros(2, schema.JET_DTYPE), np.zeros((2, 4), schema.TRACK_DTYPE))
        raise RuntimeError("interrupted")
    assert not path.exists() and not partial_path(path).exists()


def test_stale_partial_is_overwritten_and_refused(tmp_path):
    path = tmp_path / "c.h5"
    w = JetWriter(path, 4)  # a killed run: the partial file stays, never renamed
    w.append(np.zeros(2, schema.JET_DTYPE), np.zeros((2, 4), schema.TRACK_DTYPE))
    w._file.close()
    with pytest.raises(SchemaError, match="not marked complete"):
        read_jets(partial_path(path))
    _write(path)  # re-running starts cleanly
    assert path.exists() and not partial_path(path).exists()


def test_reader_names_missing_and_mistyped_fields(tmp_path):
    path = tmp_path / "bad.h5"
    _write(path)
    jd = [(n, schema.JET_DTYPE[n]) for n in schema.JET_DTYPE.names if n != "L3D"]
    jd = [(n, np.float64) if n == "pt" else (n, d) for n, d in jd]
    with h5py.File(path, "r+") as f:
        del f["jets"]
        f["jets"] = np.zeros(3, dtype=jd)
        del f.attrs["seed"]
    with pytest.raises(SchemaError) as info:
        read_jets(path)
    msg = str(info.value)
    assert "'L3D'" in msg and "missing" in msg
    assert "'pt'" in msg and "float64" in msg
    assert "'seed'" in msg


def test_writer_rejects_wrong_dtype(tmp_path):
    with JetWriter(tmp_path / "d.h5", 4) as w, pytest.raises(TypeError):
        w.append(np.zeros(2, [("pt", "f4")]), np.zeros((2, 4), schema.TRACK_DTYPE))


def test_docs_list_every_field_with_its_unit():
    """docs/generation.md prints the schema's tables (field, dtype, unit, meaning, ATLAS)."""
    from pathlib import Path

    doc = Path(__file__).parents[2] / "docs" / "generation.md"
    if not doc.exists():
        pytest.skip("docs/generation.md is not in this checkout")
    text = doc.read_text()
    for fields in (schema.JET_FIELDS + schema.ATLAS_JET_FIELDS,
                   schema.TRACK_FIELDS + schema.ATLAS_TRACK_FIELDS):
        table = schema.markdown_table(fields)
        assert table in text, "docs/generation.md: the table differs from this one:\n" + table


def _as_v1(path, jets, tracks):
    """Rewrite ``path`` in the schema 1.0 layout (a (5, 5) ``cov``, no ATLAS fields)."""
    from ndive_models.data._io import _V1_JET_DTYPE, _V1_TRACK_DTYPE

    j1 = np.zeros(jets.shape, _V1_JET_DTYPE)
    t1 = np.zeros(tracks.shape, _V1_TRACK_DTYPE)
    for new, old in ((jets, j1), (tracks, t1)):
        for name in old.dtype.names:
            if name != "cov":
                old[name] = new[name]
    t1["cov"] = schema.track_cov(tracks)
    with h5py.File(path, "r+") as f:
        del f["jets"], f["tracks"]
        f["jets"], f["tracks"] = j1, t1
        f.attrs["schema_version"] = "1.0"


def test_schema_1_files_are_read_and_converted(tmp_path):
    path = tmp_path / "old.h5"
    jets, tracks = _write(path)
    _as_v1(path, jets, tracks)
    with pytest.raises(ValueError, match="too many values"):  # what H5Reader trips over
        [name for name, _ in h5py.File(path)["tracks"].dtype.descr]
    j, t = read_jets(path)  # converted in memory
    expected = jets.copy()
    for name, missing in schema.OPTIONAL_FIELDS.items():  # not in schema 1: "not available"
        expected[name] = missing
    np.testing.assert_array_equal(j, expected)
    np.testing.assert_array_equal(t, tracks)

    new = tmp_path / "new.h5"
    convert(path, new, progress=False)
    with h5py.File(new) as f:
        assert f.attrs["schema_version"] == schema.SCHEMA_VERSION
        assert "old.h5 (schema 1.0)" in f.attrs["converted_from"]
        assert list(f["jets"].attrs["flavour_label"]) == list(schema.FLAVOURS)
        np.testing.assert_array_equal(f["tracks"][:], tracks)
    assert read_attrs(new)["generator_settings"] == {"a": 1}
    with pytest.raises(SchemaError, match="already schema 2"):
        convert(new, tmp_path / "again.h5", progress=False)
    convert(path, path, progress=False)  # in place, atomically
    assert read_attrs(path)["schema_version"] == schema.SCHEMA_VERSION


def test_newer_schema_says_to_update(tmp_path):
    path = tmp_path / "future.h5"
    _write(path)
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = "9.0"
    with pytest.raises(SchemaError, match=r"newer than this ndive-models.*update ndive-models"):
        read_jets(path)


def test_atlas_fields_follow_the_atlas_definitions(sample):
    """The ATLAS-named fields against their definitions, on generated jets."""
    jets, tracks = sample
    v = tracks["valid"]
    t = tracks[v]
    jet_of = np.broadcast_to(np.arange(len(jets))[:, None], v.shape)[v]
    np.testing.assert_allclose(jets["pt_btagJes"], 1000 * jets["pt"], rtol=1e-6)
    np.testing.assert_array_equal(jets["absEta_btagJes"], np.abs(jets["eta"]))
    np.testing.assert_array_equal(t["btagIp_d0"], -t["d0"])
    # the lifetime sign of the native significance is the ATLAS one (PCA on the jet side: +)
    np.testing.assert_allclose(t["lifetimeSignedD0Significance"], t["d0_significance"],
                               rtol=1e-5, atol=1e-6)
    assert np.all(np.sign(t["lifetimeSignedZ0SinThetaSignificance"])
                  == np.sign(t["z0_significance"]))
    # q/p: sign of the true charge for well-measured tracks, |p| = pt cosh(eta) in MeV
    p_mev = 1000 * t["pt"] * np.cosh(t["eta"])
    np.testing.assert_allclose(np.abs(t["qOverP"]), 1 / p_mev, rtol=1e-4)
    good = np.abs(t["rho"]) > 5 * np.sqrt(t["cov_rho_rho"])
    assert np.mean(np.sign(t["qOverP"][good]) == t["charge"][good]) == 1.0
    # sigma(q/p)/|q/p| = sigma(rho)/|rho| for a diagonal covariance at theta = pi/2 (eta = 0)
    rel = t["qOverPUncertainty"] / np.abs(t["qOverP"])
    central = np.abs(t["eta"]) < 0.05
    np.testing.assert_allclose(rel[central], (np.sqrt(t["cov_rho_rho"]) / np.abs(t["rho"]))[
        central], rtol=2e-3)
    np.testing.assert_allclose(t["ptfrac"], t["pt"] / jets["pt"][jet_of], rtol=1e-6)
    np.testing.assert_allclose(t["dr"], np.hypot(t["deta"], t["dphi"]), rtol=1e-6)
    assert np.all(t["dr"] < 0.45)  # associated within dR < 0.4 of the axis (measured values)
    # padding is zero in every field
    pad = tracks[~v]
    assert all(np.all(pad[name] == 0) for name in schema.TRACK_DTYPE.names)


def test_float16_flushes_the_curvature_covariance(sample):
    """Why the fit inputs stay float32 (docs/generation.md): in float16 the curvature
    variance underflows to zero for every track, the d0 variance survives."""
    _, tracks = sample
    t = tracks[tracks["valid"]]
    assert np.all(t["cov_rho_rho"] > 0)
    assert np.all(t["cov_rho_rho"].astype(np.float16) == 0)
    assert np.all(t["cov_d0_d0"].astype(np.float16) > 0)

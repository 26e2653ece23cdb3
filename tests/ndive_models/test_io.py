"""The HDF5 layout: schema, checked reader, atomic writer."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ndive_models.data import (
    JetWriter,
    SchemaError,
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
    assert schema.TRACK_DTYPE["cov"].shape == (5, 5)
    assert schema.TRACK_DTYPE["cov"].base == np.float32
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
    """docs/generation.md documents the layout: every field, with the schema's unit."""
    from pathlib import Path

    doc = Path(__file__).parents[2] / "docs" / "generation.md"
    if not doc.exists():
        pytest.skip("docs/generation.md is not in this checkout")
    rows = {}
    for line in doc.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`"):
            rows.setdefault(cells[0].strip("`"), []).append(cells[2])
    for name, _, _, unit, _ in schema.JET_FIELDS + schema.TRACK_FIELDS:
        assert name in rows, f"docs/generation.md does not list field {name!r}"
        assert unit in rows[name], f"docs/generation.md: unit of {name!r} is not {unit!r}"

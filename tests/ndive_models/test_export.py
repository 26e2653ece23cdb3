"""``ndive export``: checkpoints to ONNX, checked against ONNX Runtime on generated jets."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _checkpoint(sample_path, tmp_path_factory, name):
    from ndive_models.train import TrainConfig, train

    out = tmp_path_factory.mktemp(name)
    train(TrainConfig.from_dict(dict(
        train=str(sample_path), out=str(out), epochs=1, batch_size=50, max_jets=200,
        max_val_jets=50, lr=1e-3, seed=1, progress=False, device="cpu",
        model=dict(name=name, dim=8))))
    return out / "best.pt"


@pytest.fixture(scope="module")
def baseline_ckpt(sample_path, tmp_path_factory):
    return _checkpoint(sample_path, tmp_path_factory, "baseline")


def test_export_baseline_cli(baseline_ckpt, sample_path, tmp_path, capsys):
    from ndive_models.cli import main

    out = tmp_path / "baseline.onnx"
    rc = main(["export", str(baseline_ckpt), "--out", str(out), "--data", str(sample_path),
               "--jets", "300"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "baseline.onnx.json").read_text())
    assert report["dynamic_axes"] == ["jets", "tracks"] and report["nodes"] > 50
    full, fewer = report["check"]
    assert (full["jets"], full["tracks"], fewer["tracks"]) == (300, 15, 12)
    for check in report["check"]:
        assert check["probs"]["max_abs_diff"] < 1e-5
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    norm = json.loads(meta["normalisation"])
    assert len(norm["mean"]) == len(norm["std"]) == len(norm["features"])
    assert json.loads(meta["config"])["model"]["name"] == "baseline"
    assert [i.name for i in proto.graph.input] == ["track_params", "track_cov",
                                                   "track_valid", "jet"]
    assert not list(tmp_path.glob("*.partial"))


def test_export_cli_errors(baseline_ckpt, tmp_path, capsys):
    from ndive_models.cli import main

    rc = main(["export", str(baseline_ckpt), "--out", str(tmp_path / "x.onnx"),
               "--data", str(tmp_path / "missing.h5")])
    assert rc == 2
    assert "missing.h5" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ndive", "ftag_ndive"])
def test_export_models_with_the_fit(name, sample_path, tmp_path_factory, tmp_path):
    """The float32 fit in ONNX Runtime agrees with PyTorch's float32 fit to the level that
    float32 agrees with float64 (ill-conditioned fits amplify rounding either way)."""
    from ndive_models.export import export_report

    ckpt = _checkpoint(sample_path, tmp_path_factory, name)
    report = export_report(ckpt, tmp_path / f"{name}.onnx", sample_path, jets=500)
    assert report["dynamic_axes"] == ["jets", "tracks"]
    for check in report["check"]:
        assert check["track_weights"]["max_abs_diff"] < 1e-5
        assert check["fit_ok"]["differing_fraction"] <= 0.01
        ref = check["pytorch_float32_vs_float64"]["vertex"]["q99_abs_diff"]
        assert check["vertex"]["q99_abs_diff"] <= 2 * ref + 1e-3
        if name == "ftag_ndive":
            assert check["probs"]["q99_abs_diff"] < 1e-4
    assert np.isfinite(report["export_seconds"])

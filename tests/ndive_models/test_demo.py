"""The main job (`python -m ndive_models.demo`) on a tiny configuration."""

from __future__ import annotations

import json

import pytest

from ndive_models import demo


def test_demo_tiny(sample_path, tmp_path, capsys):
    """The whole demo on the session's 2,000-jet sample (generation is tested below)."""
    pytest.importorskip("jax")
    out = tmp_path / "demo"
    rc = demo.main(["--out", str(out), "--input", str(sample_path), "--grad-jets", "40",
                    "--reference-jets", "10", "--no-train"])
    assert rc == 0
    printed = capsys.readouterr().out
    report = out / "report.md"
    assert str(report.resolve()) in printed
    text = report.read_text()
    for heading in ("## Classic fit", "## Differentiable fit", "## Training"):
        assert heading in text
    s = json.loads((out / "summary.json").read_text())
    assert s["jets"] == 2000 and 400 < s["b_jets"] < 1000
    fromb = s["classic"]["b decay vertex (truth)"]
    assert fromb["jets"] >= 10 and fromb["converged"] > 0.8
    # robust pull widths of the b-hadron decay vertex: ~1 (loose: a few dozen vertices)
    assert all(0.5 < w < 2.0 for w in fromb["pull_width"])
    # tracks from one point: no 5-sigma tail (the FromB label has one, from strange decays)
    assert max(fromb["pull_tail"]) < 0.02
    # all tracks include primary tracks: the vertex is further from the truth
    assert s["classic"]["all tracks"]["median_dist_um"] > fromb["median_dist_um"]
    steps = s["gradient_step"]
    assert set(steps) == {"JAX (jit, float64)", "PyTorch (float64)"}
    for st in steps.values():
        assert st["mean_after_mm"] < st["mean_before_mm"]
        assert st["fraction_closer"] > 0.5
    pytest.importorskip("matplotlib")
    assert (out / "classic_fit.png").stat().st_size > 1000
    assert (out / "gradient_step.png").stat().st_size > 1000


def test_demo_training_tiny(sample_path, tmp_path):
    """The training part: a few batches of both models, evaluated (on the training file)."""
    pytest.importorskip("ndive_models.train")
    out = tmp_path / "demo"
    rc = demo.main(["--out", str(out), "--input", str(sample_path), "--no-jax", "--no-torch",
                    "--reference-jets", "0", "--train-jets", "200", "--epochs", "1",
                    "--dim", "8", "--test-jets", "300", "--no-plots"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    for name in ("baseline", "ftag_ndive"):
        t = s["training"][name]
        assert t["val_loss"] > 0 and t["jets_per_s"] > 0
        assert t["light_rejection_70"] >= 1.0 and t["c_rejection_70"] >= 1.0
    assert (out / "train" / "ftag_ndive" / "best.pt").exists()
    assert "| FTAG+NDIVE |" in (out / "report.md").read_text()


def test_demo_generates_its_sample(generate_extra, tmp_path, capsys):
    args = demo.build_parser().parse_args(["--out", str(tmp_path), "--jets", "30",
                                           "--workers", "1", "--seed", "2"])
    rep = demo.Report(tmp_path)
    path = demo._section_data(args, rep)
    jets, _ = demo.read_jets(path)
    assert len(jets) == 30 and path.parent == tmp_path
    assert "30 jets from" in capsys.readouterr().out


def test_demo_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--out", "--jets", "--seed", "--input", "--no-train"):
        assert opt in text


def test_jax_step_uses_float64_without_changing_the_global_jax_config():
    jax = pytest.importorskip("jax")
    import numpy as np

    from ndive_models.demo import BJets, jax_step
    from vertexfit import toy

    t = toy.generate(6, 5, seed=3)
    n = t.mask.shape
    bj = BJets(t.tracks, t.cov, t.mask, np.zeros(n, int), np.zeros((6, 3)), t.vertex,
               np.zeros(n))
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        out = jax_step(bj, lr=0.1)
        assert jax.config.jax_enable_x64 is False  # the demo's x64 is scoped, not global
    finally:
        jax.config.update("jax_enable_x64", before)
    assert out["grad"].dtype == np.float64 and np.all(np.isfinite(out["before"]))
    assert out["before"].dtype == np.float64

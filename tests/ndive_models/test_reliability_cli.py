"""Every CLI error path: one clear line naming the file, field or option, a non-zero exit and
no traceback (``ndive --debug`` shows it). Issue 14 points 3, 4 and 8 (CLI parts)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from ndive_models import cli
from ndive_models.data import SchemaError, partial_path, read_jets


def _run(capsys, *argv):
    """``(exit status, the stderr line)``; asserts it is one line without a traceback."""
    rc = cli.main([*map(str, argv)])
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip() and "it/s" not in ln]
    assert len(lines) == 1, err
    return rc, lines[0]


@pytest.fixture(scope="module")
def checkpoint(sample_path, tmp_path_factory):
    """A tiny trained baseline checkpoint."""
    from ndive_models.train import TrainConfig, train

    out = tmp_path_factory.mktemp("ck") / "run"
    train(TrainConfig.from_dict(dict(
        train=str(sample_path), out=str(out), epochs=1, batch_size=50, max_jets=100,
        max_val_jets=50, lr=1e-3, seed=1, progress=False, device="cpu",
        model=dict(name="baseline", dim=8))))
    return out / "best.pt"


def _copy(sample_path, tmp_path, name="copy.h5"):
    dst = tmp_path / name
    shutil.copy(sample_path, dst)
    return dst


# ---------------------------------------------------------------- 14.3 corrupt files
def _corrupt(path):
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(3)
    for pos in rng.integers(0, min(len(data), 4096), 64):  # the superblock and headers
        data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_corrupt, _truncate])
def test_damaged_files_give_one_line_naming_the_file(sample_path, checkpoint, tmp_path,
                                                     capsys, damage):
    bad = _copy(sample_path, tmp_path)
    damage(bad)
    for argv in (["validate-data", bad],
                 ["train", "--train", bad, "--out", tmp_path / "r", "--epochs", "1",
                  "--no-progress", "--device", "cpu"],
                 ["evaluate", checkpoint, "--test", bad, "--out", tmp_path / "e"]):
        rc, line = _run(capsys, *argv)
        assert rc == 2 and str(bad) in line, line


def test_partial_file_of_a_killed_run_is_refused_in_one_line(sample_path, tmp_path, capsys):
    final = tmp_path / "run.h5"
    part = partial_path(final)
    shutil.copy(sample_path, part)
    _truncate(part)  # kill -9 mid-write: metadata never flushed
    rc, line = _run(capsys, "validate-data", part)
    assert rc == 2 and str(part) in line and "partial" in line


def test_checkpoint_errors(sample_path, checkpoint, tmp_path, capsys):
    # of another model: the weights do not fit
    ck = torch.load(checkpoint, weights_only=False)
    ck["config"]["model"]["dim"] = 16
    wrong = tmp_path / "wrong.pt"
    torch.save(ck, wrong)
    rc, line = _run(capsys, "evaluate", wrong, "--test", sample_path, "--out", tmp_path / "e")
    assert rc == 2 and str(wrong) in line and "do not fit" in line
    # truncated
    cut = tmp_path / "cut.pt"
    cut.write_bytes(checkpoint.read_bytes()[:1000])
    rc, line = _run(capsys, "evaluate", cut, "--test", sample_path, "--out", tmp_path / "e")
    assert rc == 2 and str(cut) in line and "not a readable checkpoint" in line


def _train_argv(sample_path, tmp_path, *extra):
    return ["train", "--train", sample_path, "--out", tmp_path / "run", "--epochs", "1",
            "--max-jets", "100", "--batch-size", "50", "--no-progress", *extra]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu(sample_path, tmp_path, capsys):
    rc, line = _run(capsys, *_train_argv(sample_path, tmp_path, "--device", "cuda"))
    assert rc == 2 and "--device" in line and "CUDA is not available" in line


def test_config_errors_name_the_key_or_file(sample_path, tmp_path, capsys):
    rc, line = _run(capsys, *_train_argv(sample_path, tmp_path, "--set", "model.dim=abc"))
    assert rc == 2 and "model.dim: expected int" in line and "'abc'" in line
    rc, line = _run(capsys, *_train_argv(sample_path, tmp_path, "--set", "lr=fast"))
    assert rc == 2 and "lr: expected float" in line
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  name: baseline\n dim: [8\n")
    rc, line = _run(capsys, *_train_argv(sample_path, tmp_path, "--config", broken))
    assert rc == 2 and str(broken) in line and "invalid YAML at line" in line


def test_debug_shows_the_traceback(sample_path, tmp_path):
    with pytest.raises(ValueError, match=r"model.dim"):
        cli.main(["--debug", *map(str, _train_argv(sample_path, tmp_path, "--set",
                                                   "model.dim=abc"))])


# ---------------------------------------------------------------- 14.4 invalid values
@pytest.mark.parametrize("field, value, message", [
    ("d0", np.nan, "tracks field 'd0' is NaN or inf"),
    ("cov_d0_d0", -1.0, "tracks field 'cov_d0_d0' (a variance) is not positive"),
])
def test_invalid_values_are_rejected_with_field_and_jet(sample_path, tmp_path, capsys,
                                                        field, value, message):
    bad = _copy(sample_path, tmp_path)
    with h5py.File(bad, "r+") as f:
        tracks = f["tracks"][...]
        j = int(np.flatnonzero(tracks["valid"][:, 0])[57])
        tracks[field][j, 0] = value
        f["tracks"][...] = tracks
    with pytest.raises(SchemaError, match=f"jet {j}, track 0"):
        read_jets(bad)
    with pytest.raises(SchemaError, match=f"jet {j}, track 0"):
        read_jets(bad, j - 7, j + 3)  # the index in the file, not in the slice
    for argv in (["validate-data", bad],
                 _train_argv(bad, tmp_path, "--model", "ftag_ndive")):
        rc, line = _run(capsys, *argv)
        assert rc == 2 and message in line and f"jet {j}" in line and str(bad) in line, line


# ---------------------------------------------------------------- 14.8 options
def test_resume_refuses_changed_options(sample_path, tmp_path, capsys):
    assert cli.main([*map(str, _train_argv(sample_path, tmp_path, "--lr", "0.001"))]) == 0
    capsys.readouterr()
    rc, line = _run(capsys, *_train_argv(sample_path, tmp_path, "--resume", "--lr", "0.5",
                                         "--epochs", "2"))
    assert rc == 2 and "--resume" in line and "lr: 0.001 -> 0.5" in line
    # epochs may change (continue a run further)
    assert cli.main([*map(str, _train_argv(sample_path, tmp_path, "--resume", "--lr", "0.001",
                                           "--epochs", "2"))]) == 0
    # a new run into the same directory must be asked for
    capsys.readouterr()
    rc, line = _run(capsys, *_train_argv(sample_path, tmp_path))
    assert rc == 2 and "--overwrite" in line and "--resume" in line


@pytest.mark.parametrize("extra, message", [
    (("--max-jets", "-5"), "--max-jets"),
    (("--fc", "2"), "--fc"),
    (("--reference", "nosuchlabel"), "reference 'nosuchlabel'"),
])
def test_evaluate_refuses_bad_options(sample_path, checkpoint, tmp_path, capsys, extra,
                                      message):
    rc, line = _run(capsys, "evaluate", checkpoint, "--test", sample_path, "--out",
                    tmp_path / "e", *extra)
    assert rc == 2 and message in line
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_evaluate_asks_before_replacing_results(sample_path, checkpoint, tmp_path, capsys):
    out = tmp_path / "e"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    rc, line = _run(capsys, "evaluate", checkpoint, "--test", sample_path, "--out", out)
    assert rc == 2 and "--overwrite" in line


def test_generate_checks_the_output_before_generating(tmp_path, capsys, monkeypatch):
    import ndive_models.generate as gen

    def never(*a, **k):
        raise AssertionError("generated although the output is unusable")

    monkeypatch.setattr(gen, "generate", never)
    rc, line = _run(capsys, "generate", "--jets", "10", "--out", tmp_path)
    assert rc == 2 and str(tmp_path) in line and "directory" in line
    existing = tmp_path / "old.h5"
    existing.write_bytes(b"precious")
    rc, line = _run(capsys, "generate", "--jets", "10", "--out", existing)
    assert rc == 2 and "--overwrite" in line
    assert existing.read_bytes() == b"precious"

"""The ndive CLI: help, missing extra, determinism, balance, interruption, validate, convert."""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ndive_models import cli
from ndive_models.data import partial_path, read_attrs, read_jets, schema
from ndive_models.generate import INSTALL_HINT, GenerationConfig, generate


def test_help_lists_generate_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    out = capsys.readouterr().out
    for opt in (
        "--jets",
        "--out",
        "--seed",
        "--workers",
        "--balance",
        "--max-tracks",
        "--no-mpi",
        "--hadronic-w",
    ):
        assert opt in out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "validate-data" in capsys.readouterr().out


def test_missing_extra_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "pythia8mc", None)  # import fails
    rc = cli.main(["generate", "--jets", "10", "--out", str(tmp_path / "x.h5")])
    err = capsys.readouterr().err
    assert rc == 2
    assert INSTALL_HINT == "pip install 'ndive-models[generate]'"
    assert INSTALL_HINT in err
    assert not (tmp_path / "x.h5").exists()


def test_bad_options_are_clear_errors(tmp_path, capsys):
    rc = cli.main(["generate", "--jets", "0", "--out", str(tmp_path / "x.h5")])
    assert rc == 2 and "n_jets" in capsys.readouterr().err


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_file_other_seed_other_file(generate_extra, tmp_path):
    # small batches so that both workers' batches interleave in a 200-jet file
    cfg = GenerationConfig(n_jets=200, seed=11, workers=2, batch_events=10)
    a = generate(cfg, tmp_path / "a.h5", progress=False).path
    b = generate(cfg, tmp_path / "b.h5", progress=False).path
    assert _sha(a) == _sha(b)
    c = generate(
        GenerationConfig(n_jets=200, seed=12, workers=1, batch_events=10),
        tmp_path / "c.h5",
        progress=False,
    ).path
    ja, jc = read_jets(a)[0], read_jets(c)[0]
    assert not np.array_equal(ja["pt"], jc["pt"])
    # events of worker 1 (event numbers 10..19, 30..39, ...) are in the file
    assert np.any((ja["eventNumber"] // 10) % 2 == 1)
    attrs = read_attrs(a)
    assert (
        attrs["seed"] == 11 and attrs["generator_settings"]["options"]["workers"] == 2
    )
    assert "pythia8mc" in attrs["package_versions"]


def test_balance_gives_equal_flavours(generate_extra, tmp_path):
    cfg = GenerationConfig(n_jets=301, seed=3, workers=2, balance=True, max_tracks=8)
    res = generate(cfg, tmp_path / "bal.h5", progress=False)
    jets, tracks = read_jets(res.path)
    assert np.bincount(jets["flavour_label"], minlength=3).tolist() == [101, 100, 100]
    assert tracks.shape == (301, 8)
    assert (
        np.all(jets["n_tracks_all"] >= jets["n_tracks"]) and jets["n_tracks"].max() <= 8
    )
    assert np.any(jets["n_tracks_all"] > 8)  # the cut really dropped tracks


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_leaves_no_complete_looking_file(generate_extra, tmp_path, sig):
    """kill (SIGTERM) or Ctrl-C (SIGINT) mid-run: non-zero exit, no file, no partial file."""
    out = tmp_path / "big.h5"
    cmd = [
        sys.executable,
        "-m",
        "ndive_models.cli",
        "generate",
        "--jets",
        "1000000",
        "--out",
        str(out),
        "--workers",
        "2",
        "--no-progress",
    ]
    proc = _popen(cmd)
    try:
        for _ in range(600):  # wait until data are being written
            if partial_path(out).exists():
                break
            time.sleep(0.1)
        assert partial_path(out).exists()
        time.sleep(1.0)  # jets are being generated and written
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, proc.stderr.read().decode()
    assert not out.exists() and not partial_path(out).exists()


def _popen(cmd, ctrl_c="default"):
    """Start ``cmd`` as from a terminal: Ctrl-C (SIGINT) at its default disposition, even
    when the test run itself was started as a background job (which ignores SIGINT)."""
    disposition = signal.SIG_DFL if ctrl_c == "default" else signal.SIG_IGN
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, disposition))


def _generate_cli(out, ctrl_c="default"):
    cmd = [sys.executable, "-m", "ndive_models.cli", "generate", "--jets", "1000000",
           "--out", str(out), "--workers", "2", "--no-progress"]  # fmt: skip
    return _popen(cmd, ctrl_c)


def test_ignored_ctrl_c_stays_ignored(generate_extra, tmp_path):
    """Started with SIGINT ignored (``cmd &`` in a script, nohup), Ctrl-C does not stop the
    run; SIGTERM still does, cleanly."""
    out = tmp_path / "big.h5"
    proc = _generate_cli(out, ctrl_c="ignored")
    try:
        for _ in range(600):
            if partial_path(out).exists():
                break
            time.sleep(0.1)
        assert partial_path(out).exists()
        proc.send_signal(signal.SIGINT)
        time.sleep(2.0)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read().decode()
    assert not out.exists() and not partial_path(out).exists()


@pytest.mark.parametrize("moment", ["starting", "twice-while-workers-start"])
def test_ctrl_c_at_other_moments_exits_promptly(generate_extra, tmp_path, moment):
    """Ctrl-C during imports, or twice in a row (the second lands in the cleanup of the first)."""
    out = tmp_path / "big.h5"
    proc = _generate_cli(out)
    try:
        if moment == "starting":
            time.sleep(0.5)  # imports, parser; before any worker exists
            proc.send_signal(signal.SIGINT)
        else:
            for _ in range(600):
                if partial_path(out).exists():
                    break
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        proc.wait(timeout=30)
        assert time.monotonic() - t0 < 15.0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode()
    # -SIGINT: the signal came before Python installed its handler (nothing to clean up then)
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "not installed" not in err
    assert not out.exists() and not partial_path(out).exists()


def test_swallowed_ctrl_c_is_raised_again(terminal_ctrl_c, monkeypatch, capsys):
    """A library that swallows the KeyboardInterrupt (e.g. in a __del__) cannot keep it running."""
    monkeypatch.setattr(cli, "RERAISE_AFTER_S", 0.3)
    caught = []

    def run(args):
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20.0:  # "generation" that goes on and on
            try:
                if not caught:
                    signal.raise_signal(signal.SIGINT)  # Ctrl-C
                time.sleep(0.01)
            except KeyboardInterrupt:
                caught.append(time.monotonic() - t0)
                if len(caught) == 1:
                    continue  # swallowed
                raise
        return 0

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: argparse.Namespace(_run=run))
    old = signal.getsignal(signal.SIGINT)
    assert cli.main([]) == 130
    assert len(caught) == 2 and caught[1] < 5.0
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is old


def test_validate_data_cli_prints_summary_and_plots(sample_path, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rc = cli.main(
        [
            "validate-data",
            str(sample_path),
            "--plots",
            str(tmp_path / "p"),
            "--json",
            str(tmp_path / "s.json"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "primary-track pulls" in out and "FromB" in out and "median" in out
    pngs = sorted(p.name for p in (tmp_path / "p").glob("*.png"))
    assert pngs == sorted(
        [
            "pulls_primary.png",
            "d0_significance_by_origin.png",
            "flavour_fractions.png",
            "tracks_per_jet.png",
            "decay_length.png",
            "vertex_multiplicity.png",
            # the realistic-detector plots a clean file has (no pileup, no reconstructed PV)
            "z0_significance_by_origin.png",
            "track_origins.png",
            "efficiency_vs_radius.png",
        ]
    )
    assert "tracking efficiency in jets" in out and "reconstructed PV" not in out
    assert all(os.path.getsize(tmp_path / "p" / p) > 5000 for p in pngs)


def test_validate_data_rejects_non_jet_file(tmp_path, capsys):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["jets"] = np.zeros(3)
    assert cli.main(["validate-data", str(tmp_path / "x.h5")]) == 2
    assert "tracks" in capsys.readouterr().err


def test_worker_failure_is_a_clear_cli_error(monkeypatch, tmp_path, capsys):
    import ndive_models.generate as gen

    def failing(cfg, out, progress=True):
        raise gen.WorkerError("generator worker 1 (pid 123) died: killed by signal SIGKILL")

    monkeypatch.setattr(gen, "generate", failing)
    rc = cli.main(["generate", "--jets", "10", "--out", str(tmp_path / "x.h5")])
    assert rc == 1
    assert "error: generator worker 1 (pid 123) died" in capsys.readouterr().err


def test_convert_cli_errors_are_one_line(sample_path, tmp_path, capsys):
    assert cli.main(["convert", str(sample_path), str(tmp_path / "y.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"already schema {schema.SCHEMA_VERSION}: nothing to convert" in err
    assert not (tmp_path / "y.h5").exists()
    assert cli.main(["convert", str(tmp_path / "missing.h5"), str(tmp_path / "z.h5")]) == 2
    assert "missing.h5" in capsys.readouterr().err

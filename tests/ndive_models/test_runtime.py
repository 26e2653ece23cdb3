"""Threads and the compiled-fit switch of the commands (issue 12)."""

from __future__ import annotations

import pytest
import torch

from ndive_models import _runtime, cli


def test_set_threads_default_one_and_zero_keeps_pytorch_choice():
    before = torch.get_num_threads()
    try:
        assert _runtime.set_threads(None) == _runtime.DEFAULT_THREADS == 1
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert _runtime.set_threads(0) == 2  # untouched
        with pytest.raises(ValueError, match="threads must be a non-negative integer"):
            _runtime.set_threads(-1)
    finally:
        torch.set_num_threads(before)


def test_train_flags_set_threads_and_compile():
    from ndive_models._cmd_train import config_from_args

    parser = cli.build_parser()
    args = parser.parse_args(["train", "--config", "ftag_ndive", "--train", "x.h5",
                              "--threads", "3", "--no-compile"])
    cfg = config_from_args(args)
    assert cfg.threads == 3 and cfg.model.fit_compile is False
    cfg = config_from_args(parser.parse_args(["train", "--config", "ftag_ndive",
                                              "--train", "x.h5"]))
    assert cfg.threads == 1 and cfg.model.fit_compile is True  # the defaults


def test_fit_compile_must_be_a_bool():
    from ndive_models.models import ModelConfig

    with pytest.raises(ValueError, match="fit_compile must be true or false"):
        ModelConfig(name="ndive", fit_compile="yes")


def test_compile_report_is_one_line(monkeypatch, capsys):
    import vertexfit

    monkeypatch.setattr(vertexfit, "compile_status", lambda: {
        "seconds": {}, "failed": {"fit step [helix]": "CppCompileError: gcc died"}})
    line = _runtime.compile_report("[ndive]")
    err = capsys.readouterr().err
    assert err == line + "\n" and err.count("\n") == 1
    assert "failed" in line and "gcc died" in line and "running eagerly" in line
    monkeypatch.setattr(vertexfit, "compile_status", lambda: {
        "seconds": {"fit step [helix]": 40.0, "backward [helix]": 30.0}, "failed": {}})
    line = _runtime.compile_report("[ndive]", 75.5)
    assert "compiled" in line and "first step 75.5 s" in line
    monkeypatch.setattr(vertexfit, "compile_status", lambda: {"seconds": {}, "failed": {}})
    assert _runtime.compile_report("[ndive]") is None


def test_the_demo_compiles_only_when_asked():
    # its trainings are shorter than the compilation of the fit would take
    parser = cli.build_parser()
    assert parser.parse_args(["demo"]).compile is False
    assert parser.parse_args(["demo", "--compile"]).compile is True

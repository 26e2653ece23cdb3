"""Training: NovoGrad by hand, configs, checkpoints, bit-for-bit resume, early stop, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ndive_models._optim import NovoGrad
from ndive_models.train import TrainConfig, learning_rate, load_checkpoint, load_config, train


def test_novograd_matches_hand_computed_updates():
    """Two steps of NovoGrad (b1 0.9, b2 0.5, wd 0.1) against numbers worked out by hand."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    opt = NovoGrad([w], lr=0.1, betas=(0.9, 0.5), eps=0.0, weight_decay=0.1)
    # step 1: g = (3, 4), |g|^2 = 25, v = 25, u = g/5 + 0.1 w = (0.6+0.1, 0.8+0.2) = (0.7, 1.0)
    # m = u, w = w - 0.1 m = (0.93, 1.9)
    w.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    opt.step()
    assert w.detach().tolist() == pytest.approx([0.93, 1.9], abs=1e-15)
    # step 2: g = (0, 2), |g|^2 = 4, v = 0.5*25 + 0.5*4 = 14.5,
    # u = (0, 2/sqrt(14.5)) + 0.1 (0.93, 1.9); m = 0.9 (0.7, 1.0) + u; w -= 0.1 m
    w.grad = torch.tensor([0.0, 2.0], dtype=torch.float64)
    opt.step()
    u = [0.093, 2 / math.sqrt(14.5) + 0.19]
    m = [0.63 + u[0], 0.9 + u[1]]
    assert w.detach().tolist() == pytest.approx([0.93 - 0.1 * m[0], 1.9 - 0.1 * m[1]],
                                                abs=1e-15)
    st = opt.state[w]
    assert st["v"].item() == pytest.approx(14.5) and st["step"] == 2


def test_novograd_grad_averaging_and_layerwise_norm():
    a = torch.nn.Parameter(torch.tensor([1.0]))
    b = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    opt = NovoGrad([a, b], lr=1.0, betas=(0.5, 0.0), eps=0.0, grad_averaging=True)
    a.grad, b.grad = torch.tensor([2.0]), torch.tensor([3.0, 4.0])
    opt.step()  # first step: m = g / |g| per tensor
    assert a.item() == pytest.approx(0.0)
    assert b.detach().tolist() == pytest.approx([1 - 0.6, 1 - 0.8])
    a.grad, b.grad = torch.tensor([1.0]), torch.tensor([0.0, 1.0])
    opt.step()  # m = 0.5 m + 0.5 g/|g|
    assert a.item() == pytest.approx(0.0 - (0.5 * 1.0 + 0.5 * 1.0))
    assert b.detach().tolist() == pytest.approx([0.4 - 0.5 * 0.6, 0.2 - (0.5 * 0.8 + 0.5)])
    with pytest.raises(ValueError):
        NovoGrad([a], lr=-1.0)


def test_config_file_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("train: x.h5\nepochs: 3\nmodel:\n  name: ndive\n  dim: 16\n")
    cfg = load_config(tmp_path / "c.yaml", {"model.dim": 8, "lr": 0.01})
    assert (cfg.train, cfg.epochs, cfg.lr, cfg.model.name, cfg.model.dim) == \
        ("x.h5", 3, 0.01, "ndive", 8)
    (tmp_path / "c.toml").write_text('train = "y.h5"\n[model]\nname = "ftag_ndive"\n')
    cfg = load_config(tmp_path / "c.toml")
    assert cfg.model.name == "ftag_ndive" and cfg.model.heads == 1
    with pytest.raises(ValueError, match="unknown training options"):
        load_config(None, {"epoch": 3})


def _cfg(sample_path, out, **kw):
    d = dict(train=str(sample_path), out=str(out), epochs=2, batch_size=40, max_jets=160,
             max_val_jets=80, optimizer="novograd", lr=1e-3, seed=7, progress=False,
             device="cpu", model=dict(name="baseline", dim=8, heads=2))
    d.update(kw)
    return TrainConfig.from_dict(d)


def test_resume_is_bit_for_bit(sample_path, tmp_path):
    full = train(_cfg(sample_path, tmp_path / "full", epochs=3))
    train(_cfg(sample_path, tmp_path / "split", epochs=1))
    resumed = train(_cfg(sample_path, tmp_path / "split", epochs=3), resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["m"], sb["m"]) and torch.equal(sa["v"], sb["v"])
    assert [h["val"]["loss"] for h in full["history"]] == \
        [h["val"]["loss"] for h in resumed["history"]]
    assert full["history"][-1]["val"]["loss"] < full["history"][0]["val"]["loss"]
    # checkpoints load back into a working model; no partial files are left behind
    model, ck = load_checkpoint(tmp_path / "full" / "best.pt")
    assert ck["config"]["model"]["dim"] == 8 and model.cfg.dim == 8
    assert not list((tmp_path / "full").glob("*.partial"))
    hist = json.loads((tmp_path / "full" / "history.json").read_text())
    assert len(hist) == 3
    # the per-step log of the resumed run is the uninterrupted run's, row for row
    steps = (tmp_path / "full" / "steps.csv").read_text()
    assert steps == (tmp_path / "split" / "steps.csv").read_text()
    rows = [r.split(",") for r in steps.splitlines()]
    assert rows[0] == ["epoch", "step", "global_step", "loss", "lr"]
    assert len(rows) == 1 + 3 * 4  # 160 jets / batch 40 = 4 steps per epoch
    assert [int(r[2]) for r in rows[1:]] == list(range(12))
    assert all(float(r[4]) == 1e-3 for r in rows[1:])
    epoch1 = [float(r[3]) for r in rows[1:5]]
    assert np.mean(epoch1) == pytest.approx(full["history"][0]["train_loss"], rel=1e-12)


def test_learning_rate_schedules():
    cos = TrainConfig.from_dict(dict(lr=2e-3, epochs=10, lr_schedule="cosine",
                                     warmup_epochs=0.5))
    per_epoch = 40
    rates = [learning_rate(cos, s, per_epoch) for s in range(10 * per_epoch)]
    # linear warm-up over 20 steps to the peak, then cosine down to ~0 at the last step
    assert rates[0] == pytest.approx(2e-3 / 20) and rates[19] == pytest.approx(2e-3)
    assert rates[20] == pytest.approx(2e-3)
    assert rates[20 + 190] == pytest.approx(1e-3)  # half-way through the 380 decay steps
    assert np.all(np.diff(rates[20:]) <= 0)
    assert rates[-1] < 1e-7
    const = TrainConfig.from_dict(dict(lr=2e-3, epochs=10))
    assert {learning_rate(const, s, per_epoch) for s in range(400)} == {2e-3}
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig.from_dict(dict(lr_schedule="linear"))
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig.from_dict(dict(warmup_epochs=-1))


def test_cosine_schedule_resumes_on_its_curve(sample_path, tmp_path, monkeypatch):
    """An interrupted cosine training resumed from last.pt ends bit for bit where the
    uninterrupted one ends, with the per-step rates of the schedule in steps.csv; the
    schedule's length cannot change on resume."""
    import ndive_models.train as tr

    kw = dict(epochs=3, lr_schedule="cosine", warmup_epochs=0.5)
    train(_cfg(sample_path, tmp_path / "full", **kw))
    real, calls = tr.validate, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # (1: the monitor's check on 2 jets, 2: epoch 1) epoch 2 dies
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tr, "validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(sample_path, tmp_path / "split", **kw))
    monkeypatch.setattr(tr, "validate", real)
    with pytest.raises(ValueError, match="epochs: 3 -> 4"):
        train(_cfg(sample_path, tmp_path / "split", **{**kw, "epochs": 4}), resume=True)
    train(_cfg(sample_path, tmp_path / "split", **kw), resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    rows = [r.split(",") for r in (tmp_path / "split" / "steps.csv").read_text().splitlines()]
    cfg = _cfg(sample_path, tmp_path, **kw)
    assert [float(r[4]) for r in rows[1:]] == [learning_rate(cfg, s, 4) for s in range(12)]
    assert float(rows[-1][4]) < 0.05 * cfg.lr


def test_resume_accepts_a_checkpoint_older_than_an_option(sample_path, tmp_path):
    """A checkpoint written before an option existed resumes (it ran with the default)."""
    train(_cfg(sample_path, tmp_path / "old", epochs=1))
    last = tmp_path / "old" / "last.pt"
    ck = torch.load(last, weights_only=False)
    del ck["config"]["lr_schedule"], ck["config"]["warmup_epochs"]
    torch.save(ck, last)
    res = train(_cfg(sample_path, tmp_path / "old", epochs=2), resume=True)
    assert [h["epoch"] for h in res["history"]] == [1, 2]
    with pytest.raises(ValueError, match="lr_schedule: 'constant' -> 'cosine'"):
        train(_cfg(sample_path, tmp_path / "old", epochs=3, lr_schedule="cosine"),
              resume=True)


def test_monitor_picks_the_best_epoch_and_may_change_on_resume(sample_path, tmp_path):
    """``monitor`` chooses the validation quantity behind best.pt and early stopping; a
    resumed run may switch to another one when the best epoch it implies was kept."""
    res = train(_cfg(sample_path, tmp_path / "f", epochs=3, monitor="flavour"))
    flav = [h["val"]["flavour"] for h in res["history"]]
    assert res["best_epoch"] == 1 + int(np.argmin(flav)) and res["best_val"] == min(flav)
    with pytest.raises(ValueError, match=r"monitor: model 'baseline' has no validation loss "
                                         r"'bogus'; it has.*'flavour'"):
        train(_cfg(sample_path, tmp_path / "b", epochs=1, monitor="bogus"))
    assert not (tmp_path / "b" / "last.pt").exists()  # named before any epoch ran
    from ndive_models.models import ModelConfig

    with pytest.raises(ValueError, match="model 'ndive' has no validation loss 'flavour'"):
        TrainConfig(monitor="flavour", model=ModelConfig(name="ndive"))
    assert TrainConfig(monitor="ndive", model=ModelConfig(name="ndive")).monitor == "ndive"

    train(_cfg(sample_path, tmp_path / "r", epochs=2))  # monitor: the total loss
    last = tmp_path / "r" / "last.pt"
    ck = torch.load(last, weights_only=False)
    # a history in which the flavour term was best at epoch 1, whose weights are gone
    edited = {**ck, "history": [{**h, "val": {**h["val"], "flavour": 0.1 * h["epoch"]}}
                                for h in ck["history"]]}
    torch.save(edited, last)
    with pytest.raises(ValueError, match=r"best epoch of .* is 1, whose weights were not kept"):
        train(_cfg(sample_path, tmp_path / "r", epochs=3, monitor="flavour"), resume=True)
    # ... and one in which it was best at the last epoch: best.pt is rewritten from last.pt
    worse = {**ck, "best_epoch": 1,
             "history": [{**h, "val": {**h["val"], "flavour": 1.0 / h["epoch"]}}
                         for h in ck["history"]]}
    torch.save(worse, last)
    res = train(_cfg(sample_path, tmp_path / "r", epochs=3, monitor="flavour"), resume=True)
    best = torch.load(tmp_path / "r" / "best.pt", weights_only=False)
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3]
    assert best["config"]["monitor"] == "flavour"
    assert best["best_epoch"] in (2, 3) and best["best_epoch"] == res["best_epoch"]
    if best["best_epoch"] == 2:  # epoch 3 did not improve: best.pt holds epoch 2's weights
        for k in ck["model"]:
            assert torch.equal(best["model"][k], ck["model"][k]), k


def test_resume_without_best_pt_keeps_what_it_can(sample_path, tmp_path, capsys):
    """Resumed without best.pt: a best last epoch is written again from last.pt; a lost
    earlier best epoch is said, and the best epoch is chosen again from the last one on."""
    train(_cfg(sample_path, tmp_path / "r", epochs=2))
    last, best = tmp_path / "r" / "last.pt", tmp_path / "r" / "best.pt"
    ck = torch.load(last, weights_only=False)
    best.unlink()
    torch.save({**ck, "best_epoch": 2, "bad_epochs": 0}, last)
    train(_cfg(sample_path, tmp_path / "r", epochs=2), resume=True)  # nothing left to train
    b = torch.load(best, weights_only=False)
    assert b["best_epoch"] == 2 and b.get("best_kept_from", 1) == 1
    for k in ck["model"]:
        assert torch.equal(b["model"][k], ck["model"][k]), k
    assert "lost" not in capsys.readouterr().err
    best.unlink()
    # best at epoch 1, whose weights are gone with best.pt
    torch.save({**ck, "best_epoch": 1, "best_val": -1.0, "bad_epochs": 1}, last)
    res = train(_cfg(sample_path, tmp_path / "r", epochs=3), resume=True)
    assert "weights of the best epoch 1 are lost" in capsys.readouterr().err
    b = torch.load(best, weights_only=False)
    assert res["best_epoch"] in (2, 3) and b["best_epoch"] == res["best_epoch"]
    assert b["best_kept_from"] == 2
    assert torch.load(last, weights_only=False)["best_kept_from"] == 2
    val = {h["epoch"]: h["val"]["loss"] for h in res["history"]}
    assert res["best_val"] == min(val[2], val[3])  # not the lost epoch's -1


def test_checkpoints_count_the_training_cpu(sample_path, tmp_path):
    """Every checkpoint carries the CPU seconds of the training so far (train_cpu.json
    too); a resumed run continues the count; the study runner takes it when its own record
    of finished processes is smaller (a process killed with its runner leaves none)."""
    from ndive_models import paper

    train(_cfg(sample_path, tmp_path / "c", epochs=1))
    one = json.loads((tmp_path / "c" / "train_cpu.json").read_text())
    assert one["epoch"] == 1 and one["cpu_s"] > 0
    assert torch.load(tmp_path / "c" / "last.pt", weights_only=False)["cpu_s"] == one["cpu_s"]
    train(_cfg(sample_path, tmp_path / "c", epochs=2), resume=True)
    two = json.loads((tmp_path / "c" / "train_cpu.json").read_text())
    assert two["epoch"] == 2 and two["cpu_s"] > one["cpu_s"]
    rec = tmp_path / "c" / "cpu.json"
    rec.write_text(json.dumps({"train": {"cpu_s": 0.5 * two["cpu_s"], "wall_s": 1.0,
                                         "invocations": 1}}))
    paper._count_killed_cpu(tmp_path / "c")
    assert json.loads(rec.read_text())["train"]["cpu_s"] == two["cpu_s"]
    rec.write_text(json.dumps({"train": {"cpu_s": 2 * two["cpu_s"], "wall_s": 1.0,
                                         "invocations": 1}}))
    paper._count_killed_cpu(tmp_path / "c")  # the larger count stays
    assert json.loads(rec.read_text())["train"]["cpu_s"] == 2 * two["cpu_s"]
    assert two["from_epoch"] == 1 and "from_epoch" not in json.loads(rec.read_text())["train"]


def test_checkpoint_without_cpu_record_counts_from_the_resumed_epoch(sample_path, tmp_path):
    """A checkpoint from before CPU records (no ``cpu_s``): the resumed run counts from
    the next epoch, says so in train_cpu.json and every later checkpoint, and the study
    runner's cpu.json and cost table mark the count as partial."""
    from ndive_models import _study_report, paper

    train(_cfg(sample_path, tmp_path / "c", epochs=1))
    last = tmp_path / "c" / "last.pt"
    ck = torch.load(last, weights_only=False)
    del ck["cpu_s"], ck["cpu_from_epoch"]
    torch.save(ck, last)
    train(_cfg(sample_path, tmp_path / "c", epochs=2), resume=True)
    two = json.loads((tmp_path / "c" / "train_cpu.json").read_text())
    assert two["from_epoch"] == 2 and two["cpu_s"] > 0
    train(_cfg(sample_path, tmp_path / "c", epochs=3), resume=True)
    three = json.loads((tmp_path / "c" / "train_cpu.json").read_text())
    assert three["from_epoch"] == 2 and three["cpu_s"] > two["cpu_s"]
    rec = tmp_path / "c" / "cpu.json"
    rec.write_text(json.dumps({"train": {"cpu_s": three["cpu_s"], "wall_s": 1.0,
                                         "invocations": 1}}))
    paper._count_killed_cpu(tmp_path / "c")
    d = json.loads(rec.read_text())
    assert d["train"]["from_epoch"] == 2
    assert not _study_report._cpu_complete({"_cpu": d})
    assert _study_report._cpu_complete({"_cpu": {"train": {"cpu_s": 1.0}}})
    assert _study_report._cpu_complete({"_cpu": None})


def test_run_logs_config_and_provenance(sample_path, tmp_path, monkeypatch):
    """config.yaml repeats the run; versions and git revision in the run directory and the
    checkpoint; TensorBoard gets every step when installed (here a stand-in writer)."""
    import yaml

    from ndive_models import _runlog
    from ndive_models.train import load_config

    calls = []

    class Writer:
        def __init__(self, log_dir):
            calls.append(("init", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    monkeypatch.setattr(_runlog, "_summary_writer", Writer)
    out = tmp_path / "run"
    cfg = _cfg(sample_path, out, epochs=1)
    train(cfg)
    assert yaml.safe_load((out / "config.yaml").read_text()) == cfg.to_dict()
    assert load_config(out / "config.yaml") == cfg
    prov = json.loads((out / "provenance.json").read_text())
    ck = torch.load(out / "last.pt", weights_only=False)
    assert ck["provenance"] == prov
    assert prov["package_versions"]["torch"] == torch.__version__
    rev = _runlog.git_revision()
    assert prov["git_revision"] == rev
    if rev is not None:  # a git checkout: the revision is a commit hash
        assert len(rev.split("+")[0]) == 40
    steps = [c for c in calls if c[0] == "loss/step"]
    assert [c[2] for c in steps] == [0, 1, 2, 3] and calls[-1] == ("close",)
    assert any(c[0] == "loss/val_epoch" for c in calls)


def test_split_is_random_disjoint_and_fixed():
    from ndive_models.train import split_indices

    tr, va = split_indices(1000, 0.1, 0)
    assert len(va) == 100 and len(tr) == 900
    assert len(set(tr.tolist()) | set(va.tolist())) == 1000
    assert va.max() > 900 and va.min() < 100  # not the file's tail
    assert torch.equal(split_indices(1000, 0.1, 0)[1], va)
    assert not torch.equal(split_indices(1000, 0.1, 1)[1], va)


def test_early_stopping(sample_path, tmp_path):
    # lr 0: the validation loss never improves after the first epoch
    res = train(_cfg(sample_path, tmp_path / "es", epochs=6, patience=2, optimizer="adamw",
                     lr=0.0, max_jets=80))
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3]
    assert torch.load(tmp_path / "es" / "last.pt", weights_only=False)["stopped_early"]


def test_untrainable_reference_is_evaluated_not_trained(sample_path, tmp_path):
    res = train(_cfg(sample_path, tmp_path / "truth",
                     model=dict(name="ndive", weights="truth", dim=8)))
    assert res["history"][0]["epoch"] == 0 and math.isfinite(res["best_val"])
    assert (tmp_path / "truth" / "best.pt").exists()


def test_cli_train_errors_clearly(tmp_path, capsys):
    from ndive_models.cli import main

    rc = main(["train", "--train", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "o"),
               "--no-progress"])
    assert rc == 2
    assert "missing.h5" in capsys.readouterr().err


def test_ddp_two_processes_equal_single_process(sample_path, tmp_path):
    """torchrun with 2 gloo CPU processes gives the single-process result (same global batches;
    losses divided by global counts)."""
    args = ["--train", str(sample_path), "--model", "ftag_ndive", "--epochs", "1",
            "--batch-size", "40", "--max-jets", "120", "--seed", "3", "--lr", "1e-3",
            "--device", "cpu", "--no-progress", "--set", "model.dim=8", "--set",
            "max_val_jets=40", "--set", "model.heads=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", "2", "-m", "ndive_models.train", *args, "--out",
                    str(tmp_path / "ddp")], check=True, env=env, timeout=600,
                   capture_output=True)
    single = train(_cfg(sample_path, tmp_path / "one", epochs=1, max_jets=120, seed=3,
                        max_val_jets=40,
                        model=dict(name="ftag_ndive", dim=8, heads=2)))
    a = torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "one" / "last.pt", weights_only=False)
    for k, va in a["model"].items():
        torch.testing.assert_close(va, b["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    # the parameters actually moved from their initial values
    init = _init_state(sample_path)
    assert sum(not torch.equal(a["model"][k], init[k]) for k in init) > 10
    assert a["history"][0]["train_loss"] == pytest.approx(single["history"][0]["train_loss"],
                                                          rel=1e-5)


def _init_state(sample_path):
    """State dict of the initial FTAG+NDIVE model of the DDP test (same seed, same stats)."""
    from ndive_models.data import feature_stats, index_batch, load_batch
    from ndive_models.models import ModelConfig, build_model
    from ndive_models.train import split_indices

    batch, bz = load_batch(sample_path)
    train_idx, _ = split_indices(batch["valid"].shape[0], 0.1)
    stats = feature_stats(index_batch(batch, train_idx[:120]), bz)
    torch.manual_seed(3)
    return build_model(ModelConfig(name="ftag_ndive", dim=8, heads=2), stats, bz).state_dict()

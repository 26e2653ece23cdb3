"""Shipped configs, the paper study, one CLI for every command, no import cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ndive_models import cli, configs
from ndive_models.models import MODEL_NAMES, MODELS, ModelConfig
from ndive_models.train import TrainConfig, load_config

MODEL_CONFIGS = ("baseline", "ndive", "ftag_ndive")
PACKAGE = Path(cli.__file__).resolve().parent


def test_shipped_configs_are_listed_and_found():
    names = configs.available()
    for name in (*MODEL_CONFIGS, "paper/default", "paper/cpu_15k", "paper/cpu_27k",
                 "paper/full"):
        assert name in names
        assert configs.find(name) == configs.DIRECTORY / f"{name}.yaml"
    with pytest.raises(FileNotFoundError, match="shipped: baseline"):
        configs.find("no_such_model")


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_config_is_the_paper_default(name):
    """``--config NAME`` gives the same training as ``--model NAME`` (the paper's settings
    are the dataclass defaults) apart from the output directory."""
    cfg = load_config(name)
    assert cfg.model.name == name and cfg.out == f"runs/{name}"
    assert cfg.to_dict() == {**TrainConfig(model=ModelConfig(name=name)).to_dict(),
                             "out": f"runs/{name}"}


def test_registry_matches_config_names():
    assert set(MODELS) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_config_builds_and_runs(sample_path, name):
    import torch

    from ndive_models.data import feature_stats, load_batch
    from ndive_models.models import build_model, total_loss

    batch, bz = load_batch(sample_path, 0, 64)
    cfg = load_config(name, {"model.dim": 8})
    torch.manual_seed(0)
    model = build_model(cfg.model, feature_stats(batch, bz), bz)
    out = model(batch)
    terms = model.loss_terms(out, batch)
    assert ("loss", *terms) == cfg.model.loss_names()  # what `monitor` may name
    loss = total_loss(terms)
    assert loss.ndim == 0 and torch.isfinite(loss) and float(loss.detach()) > 0
    expected = {"baseline": {"flavour_logits"}, "ndive": {"vertex", "weights"},
                "ftag_ndive": {"flavour_logits", "vertex"}}[name]
    assert expected <= set(out)


def test_train_cli_accepts_a_shipped_config_name(tmp_path, capsys):
    rc = cli.main(["train", "--config", "ndive", "--train", str(tmp_path / "missing.h5"),
                   "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "missing.h5" in err and "config" not in err.split(":", 2)[-1][:20]


@pytest.mark.parametrize("command,options", [
    ("paper", ("--study", "--jets", "--test-jets", "--max-train-jets", "--epochs", "--seeds",
               "--batch-size", "--lr", "--optimizer", "--patience", "--dim", "--device",
               "--jobs", "--threads", "--workers", "--skip-references", "--workdir",
               "--report")),
    ("demo", ("--out", "--jets", "--seed", "--workers", "--input", "--grad-jets",
              "--reference-jets", "--lr", "--test-input", "--test-jets", "--epochs",
              "--train-jets", "--dim", "--train-lr", "--no-jax", "--no-torch", "--no-train",
              "--no-plots")),
])
def test_subcommand_help_lists_the_options(capsys, command, options):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: ndive {command}")
    for opt in options:
        assert opt in text
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert f"    {command} " in capsys.readouterr().out


@pytest.mark.parametrize("module", ["paper", "demo", "train"])
def test_python_m_aliases_run_the_subcommand(module):
    res = subprocess.run([sys.executable, "-m", f"ndive_models.{module}", "--help"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: ndive {module}")


def _old_paper_runs(seeds: int, skip_references: bool = False):
    """The runs ``paper.py`` hard-coded before the study config: (name, train argv)."""
    runs = [(f"ftag_ndive_s{s}", ["--model", "ftag_ndive", "--seed", str(s)])
            for s in range(1, seeds + 1)]
    runs.append(("ftag_ndive_truth_s1", ["--model", "ftag_ndive", "--weights", "truth",
                                         "--seed", "1"]))
    runs.append(("ndive_s1", ["--model", "ndive", "--seed", "1"]))
    runs += [(f"baseline_s{s}", ["--model", "baseline", "--seed", str(s)])
             for s in range(1, seeds + 1)]
    if skip_references:
        runs = [r for r in runs if not r[0].startswith(("ftag_ndive_truth", "ndive_"))]
    return runs


def _old_train_config(argv_extra, tmp, name, *, epochs=5, batch=100, lr=1e-3,
                      optimizer="novograd", patience=3, device="auto", dim=32, max_jets=None):
    import argparse

    from ndive_models._cmd_train import add_arguments, config_from_args

    cmd = ["--train", str(tmp / "train.h5"), "--out", str(tmp / "runs" / name), "--epochs",
           str(epochs), "--batch-size", str(batch), "--lr", str(lr), "--optimizer", optimizer,
           "--patience", str(patience), "--device", device, "--no-progress", "--set",
           f"model.dim={dim}", *argv_extra]
    if max_jets:
        cmd += ["--max-jets", str(max_jets)]
    p = argparse.ArgumentParser()
    add_arguments(p)
    return config_from_args(p.parse_args(cmd))


@pytest.mark.parametrize("seeds,skip", [(2, False), (3, True), (1, False)])
def test_default_study_gives_the_runs_paper_py_hard_coded(tmp_path, seeds, skip):
    from ndive_models.paper import load_study, study_runs

    study = load_study("paper/default", {"seeds": seeds})
    assert study["data"]["train"] == {"jets": 30000, "seed": 101}
    assert study["data"]["test"] == {"jets": 12000, "seed": 202}
    runs = study_runs(study, tmp_path / "train.h5", tmp_path, skip_references=skip)
    old = _old_paper_runs(seeds, skip)
    assert [n for n, _ in runs] == [n for n, _ in old]
    for (name, cfg), (_, argv) in zip(runs, old):
        assert cfg.to_dict() == _old_train_config(argv, tmp_path, name).to_dict(), name


def test_paper_options_override_the_study(tmp_path):
    import argparse

    from ndive_models._cmd_paper import add_arguments, study_from_args
    from ndive_models.paper import study_runs

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--study", "paper/cpu_15k", "--epochs", "7", "--dim", "16",
                         "--jets", "900", "--workdir", str(tmp_path), "--lr", "0.01"])
    study = study_from_args(args)
    assert study["data"]["train"]["jets"] == 900 and study["workdir"] == str(tmp_path)
    runs = study_runs(study, tmp_path / "train.h5", tmp_path)
    argv = {n: a for n, a in _old_paper_runs(2)}
    for name, cfg in runs:
        old = _old_train_config(argv[name], tmp_path, name, epochs=7, dim=16, lr=0.01,
                                max_jets=15000)
        assert cfg.to_dict() == old.to_dict()


def test_shipped_studies_parse(tmp_path):
    from ndive_models.paper import load_study, study_runs

    for name in (n for n in configs.available() if n.startswith("paper/")):
        runs = study_runs(load_study(name), tmp_path / "t.h5", tmp_path)
        assert {c.model.name for _, c in runs} == set(MODEL_CONFIGS), name


def test_bad_study_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "study.yaml"
    bad.write_text(configs.find("paper/default").read_text() + "epochz: 3\n")
    rc = cli.main(["paper", "--study", str(bad), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 2 and "epochz" in err and str(bad) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "w").exists()
    rc = cli.main(["paper", "--study", "paper/nope"])
    assert rc == 2 and "paper/default" in capsys.readouterr().err


def _imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that the file imports anywhere (module level or in functions),
    except under ``if __name__ == "__main__":`` (the ``python -m`` aliases)."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    here = parts if path.name == "__init__.py" else parts[:-1]
    skip = set()
    for node in tree.body:
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and getattr(node.test.left, "id", None) == "__name__"):
            skip |= {id(n) for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [f"{mod}.{a.name}" for a in node.names]
            out |= {mod, *names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m == package or m.startswith(package + ".")}


def test_no_import_cycles_in_ndive_models():
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
             .removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {i for i in _imports(p, "ndive_models") if i in files and i != m}
             for m, p in files.items()}
    # a package's __init__ runs before any of its submodules: an edge to a submodule is an
    # edge to its package too (unless the importer is inside that package: then it is
    # already being imported)
    for m in list(graph):
        ancestors = {".".join(m.split(".")[:k]) for k in range(1, m.count(".") + 1)}
        graph[m] |= {".".join(t.split(".")[:k]) for t in graph[m]
                     for k in range(1, t.count(".") + 1)} & set(files)
        graph[m] -= ancestors | {m}
    assert "ndive_models._cmd_train" not in graph["ndive_models.train"]
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles


def test_building_the_cli_imports_nothing_heavy():
    """``ndive --help`` stays fast: the subcommand modules import their work lazily."""
    code = ("import sys; from ndive_models import cli; cli.build_parser(); "
            "print([m for m in ('torch', 'numpy', 'h5py', 'vertexfit', 'yaml') "
            "if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert res.stdout.strip() == "[]"


def test_exponent_written_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 reads `lr: 1e-4` as the text '1e-4': a float field takes it as the number;
    text that is no number is still refused, naming the key."""
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-4\nwarmup_epochs: 5E-1\nmodel: {name: ndive, max_displacement: 2e2}\n")
    cfg = load_config(path)
    assert cfg.lr == 1e-4 and cfg.warmup_epochs == 0.5 and cfg.model.max_displacement == 200.0
    path.write_text("lr: 1e-4x\n")
    with pytest.raises(ValueError, match="lr: expected float, got '1e-4x'"):
        load_config(path)
    path.write_text("model: {dim: 1e2}\n")  # an int field takes no float text
    with pytest.raises(ValueError, match=r"model\.dim: expected int"):
        load_config(path)

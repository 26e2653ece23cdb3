"""Model comparisons from a study config: ``ndive study --config study_family.yaml``.

A study YAML names the data (balanced training and test files: jets, seeds), the training
settings every model shares (``train``: :class:`~ndive_models.train.TrainConfig` keys), and
the models: ``{label: {config: <train config file>, set: {dotted key: value}}}``. Steps, each
skipped when its output exists (an interrupted study continues where it stopped):

1. generate the two files (reused when they exist with the same size and seed);
2. train every model as a ``python -m ndive_models.train`` process (``jobs`` at a time,
   ``threads`` torch threads each), resuming from its ``last.pt``;
3. evaluate all best checkpoints on the test file together (:func:`~ndive_models.evaluate.
   evaluate`: one ROC per background with ratio panels to ``reference``);
4. write ``report.md``, ``metrics.json``, ``trainings.json`` and the plots into ``report``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["load_study", "run_study"]

CONFIG_DIR = Path(__file__).parent / "configs"
_KEYS = {"train_jets", "test_jets", "train_seed", "test_seed", "workers", "jobs", "threads",
         "reference", "workdir", "report", "train", "models"}


def _resolve(path, base: Path | None = None) -> Path:
    """A config file: the path itself, relative to ``base``, or a shipped config's name."""
    from .train import shipped_config

    for cand in (Path(path), (base / path) if base else None, shipped_config(path)):
        if cand is not None and Path(cand).is_file():
            return Path(cand)
    raise FileNotFoundError(f"config {path!r} not found (nor among the shipped configs in "
                            f"{CONFIG_DIR})")


def load_study(path) -> dict:
    """The study config at ``path`` (or a shipped one by name), checked, with defaults."""
    import yaml

    p = _resolve(path)
    d = yaml.safe_load(p.read_text()) or {}
    unknown = set(d) - _KEYS
    if unknown:
        raise ValueError(f"{p}: unknown study keys {sorted(unknown)}; known: {sorted(_KEYS)}")
    if not d.get("models"):
        raise ValueError(f"{p}: no models listed (key 'models')")
    study = {"train_jets": 9000, "test_jets": 4500, "train_seed": 301, "test_seed": 302,
             "workers": 2, "jobs": 1, "threads": 1, "workdir": "runs/study",
             "report": "docs/results/study", "train": {}, **d}
    for label, m in study["models"].items():
        if not isinstance(m, dict) or "config" not in m:
            raise ValueError(f"{p}: model {label!r} needs a 'config' (train config file)")
        bad = set(m) - {"config", "set"}
        if bad:
            raise ValueError(f"{p}: model {label!r}: unknown keys {sorted(bad)}")
        m["config"] = str(_resolve(m["config"], p.parent))
    study.setdefault("reference", next(iter(study["models"])))
    return study


def _train_one(label: str, m: dict, study: dict, train_file: Path, work: Path) -> dict:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
    out, log = work / "runs" / safe, work / "logs" / f"{safe}.log"
    sets = {**{f"{k}": v for k, v in study["train"].items()}, **(m.get("set") or {}),
            "model.label": label}
    cmd = [sys.executable, "-m", "ndive_models.train", "--config", m["config"], "--train",
           str(train_file), "--out", str(out), "--no-progress"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    if (out / "last.pt").exists():
        cmd.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": str(study["threads"])}
    t0 = time.perf_counter()
    with open(log, "a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                            check=False).returncode
    if rc != 0:
        raise RuntimeError(f"training {label!r} failed (exit {rc}); see {log}")
    print(f"trained {label} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"label": label, "config": Path(m["config"]).name, "set": m.get("set") or {},
            "history": json.loads((out / "history.json").read_text()),
            "best": str(out / "best.pt")}


def _n_params(path) -> int:
    import torch

    ck = torch.load(path, map_location="cpu", weights_only=False)
    return int(sum(v.numel() for k, v in ck["model"].items() if v.is_floating_point()
                   and not k.endswith(("mean", "std", "pos_scale"))))


def write_report(metrics: dict, trainings: list, study: dict, report: Path, scale: dict) -> str:
    """``report.md``: settings, rejections at 70 % (and 77 %) b-efficiency, training
    summary and plots. Returns the text."""
    M = metrics["models"]
    ref = study["reference"]
    lines = ["# FTAG family comparison", "", "## Settings", ""]
    lines += [f"- {k}: {v}" for k, v in scale.items()]
    lines += ["", f"## Rejections (f_c = {metrics['f_c']}; test jets {metrics['n_per_flavour']})",
              "", ("| model | light rej. @70% | c rej. @70% | light rej. @77% | c rej. @77% | "
                   f"light @70% / {ref} |"), "|---|---|---|---|---|---|"]
    r70 = {k: M[k]["rejection"]["light"]["0.70"]["mean"] for k in M if "rejection" in M[k]}
    for label, m in M.items():
        if "rejection" not in m:
            continue
        cells = []
        for wp in ("0.70", "0.77"):
            for bkg in ("light", "c"):
                r = m["rejection"][bkg][wp]
                cells.append(f"{r['mean']:.3g} ± {r['binomial_err_of_mean']:.2g}")
        ratio = r70[label] / r70[ref] if ref in r70 and r70[ref] > 0 else float("nan")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | "
                     f"{ratio:.2f} |")
    lines += ["", "## Trainings", "", ("| model | config | parameters | epochs | best epoch | "
              "best val loss | train jets/s |"), "|---|---|---|---|---|---|---|"]
    for t in trainings:
        h = [e for e in t["history"] if "val" in e]
        best = min(h, key=lambda e: e["val"]["loss"])
        jps = [e["jets_per_s"] for e in h if "jets_per_s" in e]
        lines.append(f"| {t['label']} | {t['config']} {t['set'] or ''} | {t['params']:,} | "
                     f"{len(h)} | {best['epoch']} | {best['val']['loss']:.4f} | "
                     f"{sum(jps) / max(len(jps), 1):.0f} |")
    lines += ["", ("The validation loss of a GLS model is the geometric mean of its task "
                   "losses, not comparable with the fixed-weight sums."), ""]
    lines += ["## Plots", "", "![light rejection](roc_light.png)", "",
              "![c rejection](roc_c.png)", ""]
    if (report / "track_selection.png").exists():
        lines += ["![track selection](track_selection.png)", ""]
    text = "\n".join(lines)
    (report / "report.md").write_text(text)
    return text


def run_study(config, *, workdir=None, report=None, only=None) -> int:
    """Run the study ``config`` (see the module docstring); returns the exit status."""
    from .evaluate import evaluate
    from .paper import _generate

    study = load_study(config)
    if only:
        missing = set(only) - set(study["models"])
        if missing:
            raise ValueError(f"--only: no model {sorted(missing)} in the study; models: "
                             f"{list(study['models'])}")
        study["models"] = {k: v for k, v in study["models"].items() if k in only}
        if study["reference"] not in study["models"]:
            study["reference"] = next(iter(study["models"]))
    work = Path(workdir or study["workdir"])
    rep = Path(report or study["report"])
    (work / "logs").mkdir(parents=True, exist_ok=True)
    train_file, test_file = work / "train.h5", work / "test.h5"
    t0 = time.perf_counter()
    gen_s = _generate(train_file, study["train_jets"], study["train_seed"], study["workers"])
    gen_s += _generate(test_file, study["test_jets"], study["test_seed"], study["workers"])
    with ThreadPoolExecutor(max(1, int(study["jobs"]))) as pool:
        futures = [pool.submit(_train_one, label, m, study, train_file, work)
                   for label, m in study["models"].items()]
        trainings = [f.result() for f in futures]
    for t in trainings:
        t["params"] = _n_params(t["best"])
    rep.mkdir(parents=True, exist_ok=True)
    t_ev = time.perf_counter()
    metrics = evaluate([t["best"] for t in trainings], test_file, work / "eval",
                       reference=study["reference"])
    t_ev = time.perf_counter() - t_ev
    for f in ("metrics.json", "roc_light.png", "roc_c.png", "track_selection.png"):
        if (work / "eval" / f).exists():
            shutil.copy(work / "eval" / f, rep / f)
    import torch

    scale = {
        "machine": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else
                    f"CPU only ({os.cpu_count()} cores, shared), {study['threads']} torch "
                    f"thread(s) per training, {study['jobs']} trainings at a time"),
        "training file": f"{study['train_jets']} balanced ttbar jets (seed "
                         f"{study['train_seed']}), 10% split off for validation",
        "test file": f"{study['test_jets']} balanced jets (seed {study['test_seed']}), "
                     "used only for the evaluation",
        "shared training settings": json.dumps(study["train"]),
        "generation [s]": f"{gen_s:.0f}", "evaluation [s]": f"{t_ev:.0f}",
        "wall time of this invocation [s]": f"{time.perf_counter() - t0:.0f}",
    }
    (rep / "trainings.json").write_text(json.dumps(
        [{k: v for k, v in t.items() if k != "best"} for t in trainings], indent=1))
    print(write_report(metrics, trainings, study, rep, scale))
    return 0

"""Reproduce the NDIVE paper's comparison: ``ndive paper`` (``nox -s paper``;
``python -m ndive_models.paper`` is the same command).

The study is a YAML file (``--study``, default the shipped ``paper/default``; see
``ndive_models/configs/paper/``): data sizes and seeds, training settings, and the runs, each
a shipped model config (``ftag_ndive``...) with overrides and its training seeds. Command-line
options override the study's keys. Steps (each skipped when its output already exists, so an
interrupted run continues):

1. generate a balanced training file and a balanced test file (different seeds);
2. train every run for its seeds (by default the GN2-like baseline and FTAG+NDIVE for
   ``seeds`` seeds each, NDIVE alone, and FTAG+NDIVE with perfect track selection (truth
   weights) as a reference); each training is a ``python -m ndive_models.train`` process
   (``jobs`` at a time) with its resolved config written to ``<workdir>/configs/``, resumed
   from its ``last.pt`` if interrupted; the validation set is split off the training file
   and picks the best epoch (early stopping); the test file is used only for the final
   evaluation;
3. evaluate all checkpoints on the test file (``ndive evaluate``);
4. write ``report.md`` with the plots and ``metrics.json`` into ``report``, comparing with
   the paper's numbers (``docs/paper.md``).
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

__all__ = ["PAPER", "StudyError", "load_study", "main", "run_study", "study_runs", "write_report"]

#: The paper's numbers (read off its figures; f_c = 0.05; 60k test jets per flavour).
PAPER = {
    "baseline": {"light": {"0.70": 93, "0.60": 236}, "c": {"0.70": 4.3, "0.60": 6.9}},
    "ftag_ndive": {"light": {"0.70": 117, "0.60": 334}, "c": {"0.70": 4.8, "0.60": 8.3}},
    "ftag_ndive_truth": {"light": {"0.70": 435}, "c": {"0.70": 7.6}},
    "track_selection_efficiency": {"b": 0.52, "c": 0.57},
    "gain_at_70": {"light": 1.27, "c": 1.13},
}


def _generate(path: Path, n: int, seed: int, workers: int) -> float:
    from .data import read_attrs

    if path.exists():
        a = read_attrs(path)
        if int(a.get("n_jets", -1)) == n and int(a.get("seed", -1)) == seed:
            print(f"reusing {path} ({n} jets, seed {seed})", flush=True)
            return 0.0
        raise ValueError(f"{path} exists with other settings (n_jets {a.get('n_jets')}, "
                         f"seed {a.get('seed')}); remove it or choose another workdir")
    from .generate import GenerationConfig, generate

    t0 = time.perf_counter()
    generate(GenerationConfig(n_jets=n, seed=seed, workers=workers, balance=True), path,
             progress=False)
    return time.perf_counter() - t0


class StudyError(ValueError):
    """A study file is not a valid study (the message names the file and the key)."""


#: Keys of a study file (see ``configs/paper/default.yaml``).
STUDY_KEYS = ("data", "seeds", "training", "runs", "jobs", "threads", "workdir", "report")
RUN_KEYS = ("name", "config", "set", "seeds", "reference")


def load_study(study="paper/default", overrides: dict | None = None) -> dict:
    """The study file ``study`` (a path or a shipped config name) with ``overrides``
    ({dotted key: value}) applied, checked.

    Raises:
        StudyError: an unknown or missing key, or a run without ``name`` or ``config``.
        FileNotFoundError: no such file or shipped study.
    """
    import yaml

    from .configs import find, set_key

    path = find(study)
    where = f"study {path}"
    d = yaml.safe_load(path.read_text()) or {}
    if not isinstance(d, dict):
        raise StudyError(f"{where}: expected a mapping of study keys")
    for k, v in (overrides or {}).items():
        set_key(d, k, v)
    unknown = set(d) - set(STUDY_KEYS)
    if unknown:
        raise StudyError(f"{where}: unknown keys {sorted(unknown)}; known: {list(STUDY_KEYS)}")
    missing = [k for k in STUDY_KEYS if k not in d]
    if missing:
        raise StudyError(f"{where}: missing keys {missing}")
    for part in ("train", "test"):
        if not (isinstance(d["data"], dict) and isinstance(d["data"].get(part), dict)
                and {"jets", "seed"} <= set(d["data"][part])):
            raise StudyError(f"{where}: data.{part} needs 'jets' and 'seed'")
    if not isinstance(d["seeds"], int) or d["seeds"] < 1:
        raise StudyError(f"{where}: seeds must be a positive integer, got {d['seeds']!r}")
    if not isinstance(d["training"], dict) or not isinstance(d["runs"], list):
        raise StudyError(f"{where}: 'training' must be a mapping and 'runs' a list")
    for k, run in enumerate(d["runs"]):
        ok = isinstance(run, dict) and {"name", "config"} <= set(run) <= set(RUN_KEYS)
        if not ok:
            raise StudyError(f"{where}: run {k} must be a mapping with 'name' and 'config' "
                             f"(keys {list(RUN_KEYS)}), got {run!r}")
    d["source"] = str(path)
    return d


def study_runs(study: dict, train_file, workdir, *, skip_references: bool = False) -> list:
    """The trainings of a study: ``[(run name, TrainConfig), ...]`` in the study's order.

    A run's config is its model config file, then the study's ``training`` keys, then the
    run's ``set`` keys, then the seed, training file and output directory
    (``<workdir>/runs/<name>_s<seed>``).
    """
    from .configs import find
    from .train import load_config

    shared = {}

    def flatten(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                flatten(v, f"{prefix}{k}.")
            else:
                shared[f"{prefix}{k}"] = v

    flatten(study["training"])
    runs = []
    for run in study["runs"]:
        if skip_references and run.get("reference"):
            continue
        seeds = run.get("seeds") or range(1, study["seeds"] + 1)
        for seed in seeds:
            name = f"{run['name']}_s{seed}"
            over = {**shared, **(run.get("set") or {}), "seed": seed, "train": str(train_file),
                    "out": str(Path(workdir) / "runs" / name), "progress": False}
            runs.append((name, load_config(find(run["config"]), over)))
    return runs


def _train_one(name, cfg, threads: int, workdir: Path) -> dict:
    import yaml

    from ._files import atomic_write

    out = Path(cfg.out)
    log = workdir / "logs" / f"{name}.log"
    config = workdir / "configs" / f"{name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(config, lambda tmp: tmp.write_text(yaml.safe_dump(cfg.to_dict(),
                                                                   sort_keys=False)))
    cmd = [sys.executable, "-m", "ndive_models.train", "--config", str(config),
           "--threads", str(threads)]
    if (out / "last.pt").exists():
        cmd.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(log, "a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                            check=False).returncode
    dt = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"training {name} failed (exit {rc}); see {log}")
    hist = json.loads((out / "history.json").read_text())
    print(f"trained {name} in {dt:.0f} s", flush=True)
    return {"name": name, "seconds": dt, "history": hist, "best": str(out / "best.pt")}


def _fmt(r) -> str:
    if r is None:
        return "-"
    return f"{r:.3g}"


def _rej_cell(m, bkg, wp):
    r = m["rejection"][bkg][wp]
    s = f"{r['mean']:.3g}"
    if r["std_over_seeds"] is not None:
        s += f" ± {r['std_over_seeds']:.2g} (seeds)"
    s += f" ± {r['binomial_err_of_mean']:.2g} (stat)"
    return s


def write_report(metrics: dict, trainings: list[dict], report: Path, scale: dict) -> str:
    """Markdown report comparing ``metrics`` (from :func:`ndive_models.evaluate.evaluate`)
    with :data:`PAPER`; returns the text (also written to ``report/report.md``)."""
    import numpy as np

    M = metrics["models"]
    lines = ["# NDIVE paper reproduction: baseline vs FTAG+NDIVE", ""]
    lines += ["## Scale and settings", ""]
    lines += [f"- {k}: {v}" for k, v in scale.items()]
    lines += ["", ("The paper trained on 500k jets (180k validation, 180k test), batch 100, "
              "NovoGrad lr 1e-4 with early stopping, 5 trainings per model. Numbers here come "
              "from the scale above and are **not** expected to match the paper's absolute "
              "rejections; the question is whether the *relative* gain appears."), ""]
    lines += [("## Rejections at fixed b-jet efficiency (f_c = "
              f"{metrics['f_c']}, test jets: {metrics['n_per_flavour']})"), ""]
    lines += ["| model | WP | light rejection | paper | c rejection | paper |",
              "|---|---|---|---|---|---|"]
    for label in ("baseline", "ftag_ndive", "ftag_ndive_truth"):
        if label not in M or "rejection" not in M[label]:
            continue
        for wp in ("0.60", "0.70", "0.77", "0.85"):
            p = PAPER.get(label, {})
            lines.append(f"| {M[label]['display']} | {float(wp):.0%} | "
                         f"{_rej_cell(M[label], 'light', wp)} | "
                         f"{_fmt(p.get('light', {}).get(wp))} | {_rej_cell(M[label], 'c', wp)}"
                         f" | {_fmt(p.get('c', {}).get(wp))} |")
    lines.append("")
    verdict = []
    if "baseline" in M and "ftag_ndive" in M:
        lines += ["## FTAG+NDIVE / baseline at 70% b-efficiency", "",
                  ("| background | per-seed ratios (seed k vs seed k) | ratio of means | "
                  "seed spread (1 sd of the ratio) | paper |"), "|---|---|---|---|---|"]
        for bkg in ("light", "c"):
            a = [s[bkg]["0.70"]["rejection"] for s in M["ftag_ndive"]["rejection_per_checkpoint"]]
            b = [s[bkg]["0.70"]["rejection"] for s in M["baseline"]["rejection_per_checkpoint"]]
            per = [x / y for x, y in zip(a, b)]
            ratio = float(np.mean(a) / np.mean(b))
            # spread of the ratio from the seed-to-seed spread of both models
            sa = np.std(a, ddof=1) / np.mean(a) if len(a) > 1 else float("nan")
            sb = np.std(b, ddof=1) / np.mean(b) if len(b) > 1 else float("nan")
            spread = ratio * float(np.hypot(sa, sb))
            lines.append(f"| {bkg} | {', '.join(f'{r:.3f}' for r in per)} | {ratio:.3f} | "
                         f"{spread:.3f} | {PAPER['gain_at_70'][bkg]} |")
            seen = ratio - 1.0 > spread if np.isfinite(spread) else ratio > 1.0
            goal = ratio >= PAPER["gain_at_70"][bkg]
            verdict.append(f"- {bkg}: ratio {ratio:.3f}; above 1 beyond the seed spread: "
                           f"{'yes' if seen else 'no'}; reaches the paper's factor "
                           f"{PAPER['gain_at_70'][bkg]}: {'yes' if goal else 'no'}.")
        lines += ["", *verdict, ""]
    for label in ("ftag_ndive", "ndive"):
        if label in M and "track_selection" in M[label]:
            ts = M[label]["track_selection"]
            pe = PAPER["track_selection_efficiency"]
            lines += [f"## Track selection of {M[label]['display']} (weight > 0.5 x jet max)", "",
                      "| jets | efficiency | paper | purity |", "|---|---|---|---|",
                      (f"| b | {ts['b']['efficiency']:.3f} | {pe['b']} | "
                      f"{ts['b']['purity']:.3f} |"),
                      (f"| c | {ts['c']['efficiency']:.3f} | {pe['c']} | "
                      f"{ts['c']['purity']:.3f} |"), ""]
    lines += ["## Vertex resolution (b- and c-jets; residual = fitted - true HF decay vertex)",
              "", "| fit | jets used | fit usable | sigma68 x, y, z [mm] | pull sigma68 x, y, z |",
              "|---|---|---|---|---|"]
    vq = {M[k]["display"]: M[k]["vertex"] for k in M if "vertex" in M[k]}
    vq.update(metrics.get("vertex_references", {}))
    for name, v in vq.items():
        if v.get("residual") is None:
            continue
        r, p = v["residual"]["sigma68"], v["pull"]["sigma68"]
        lines.append(f"| {name} | {v['n_jets_used']} | {v['fit_ok_fraction']:.3f} | "
                     f"{', '.join(f'{x:.3f}' for x in r)} | "
                     f"{', '.join(f'{x:.2f}' for x in p)} |")
    lines += ["", "## Training", "", ("| run | epochs | best epoch | best val loss | "
              "train jets/s | training time [s] |"), "|---|---|---|---|---|---|"]
    for t in trainings:
        h = [e for e in t["history"] if "val" in e]
        best = min(h, key=lambda e: e["val"]["loss"]) if h else None
        jps = [e["jets_per_s"] for e in h if "jets_per_s" in e]
        lines.append(f"| {t['name']} | {len(h)} | {best['epoch'] if best else '-'} | "
                     f"{best['val']['loss']:.4f} | {np.mean(jps) if jps else 0:.0f} | "
                     f"{sum(e.get('seconds', 0.0) for e in h):.0f} |")
    lines += ["", "## Plots", "", "![light rejection](roc_light.png)", "",
              "![c rejection](roc_c.png)", "", "![track selection](track_selection.png)", "",
              "![vertex residuals](vertex_residuals.png)", ""]
    text = "\n".join(lines)
    (report / "report.md").write_text(text)
    return text


def main(argv=None) -> int:
    """``ndive paper`` with the options ``argv`` (default: ``sys.argv[1:]``)."""
    from .cli import main as cli_main

    return cli_main(["paper", *(sys.argv[1:] if argv is None else argv)])


def run_study(study: dict, *, skip_references: bool = False) -> int:
    """Run a study (from :func:`load_study`): data, trainings, evaluation, report.

    Returns 0; raises ``RuntimeError`` when a training fails (its log is named).
    """
    from .evaluate import evaluate

    data = study["data"]
    work = Path(study["workdir"])
    (work / "logs").mkdir(parents=True, exist_ok=True)
    train_file, test_file = work / "train.h5", work / "test.h5"
    runs = study_runs(study, train_file, work, skip_references=skip_references)
    t0 = time.perf_counter()
    gen_s = _generate(train_file, data["train"]["jets"], data["train"]["seed"], data["workers"])
    gen_s += _generate(test_file, data["test"]["jets"], data["test"]["seed"], data["workers"])
    with ThreadPoolExecutor(max(1, study["jobs"])) as pool:
        futures = [pool.submit(_train_one, n, cfg, study["threads"], work) for n, cfg in runs]
        trainings = [f.result() for f in futures]
    report = Path(study["report"])
    report.mkdir(parents=True, exist_ok=True)
    ev = work / "eval"
    t_ev = time.perf_counter()
    metrics = evaluate([t["best"] for t in trainings], test_file, ev)
    t_ev = time.perf_counter() - t_ev
    for f in ("metrics.json", "roc_light.png", "roc_c.png", "track_selection.png",
              "vertex_residuals.png"):
        if (ev / f).exists():
            shutil.copy(ev / f, report / f)
    import torch

    cfg = runs[0][1]
    val = f"{cfg.val_fraction:.0%} split off for validation"
    scale = {
        "study": study["source"],
        "machine": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else
                    f"CPU only ({os.cpu_count()} cores, shared), torch threads per training "
                    f"{study['threads']}, {study['jobs']} trainings at a time"),
        "training file": f"{data['train']['jets']} balanced ttbar jets (seed "
                         f"{data['train']['seed']}); {val}"
                         + (f", at most {cfg.max_jets} used for training"
                            if cfg.max_jets else ""),
        "test file": f"{data['test']['jets']} balanced jets (seed {data['test']['seed']}), "
                     "used only for evaluation",
        "epochs (max) / patience": f"{cfg.epochs} / {cfg.patience}",
        "seeds per model": study["seeds"],
        "batch / optimiser / lr": f"{cfg.batch_size} / {cfg.optimizer} / {cfg.lr}",
        "model dim / layers / heads": f"{cfg.model.dim} / {cfg.model.layers} / "
                                      f"{cfg.model.heads}",
        "generation [s]": f"{gen_s:.0f}",
        "evaluation [s]": f"{t_ev:.0f}",
        "wall time of this invocation [s]": f"{time.perf_counter() - t0:.0f}",
    }
    (report / "trainings.json").write_text(json.dumps(
        [{k: v for k, v in t.items() if k != "best"} for t in trainings], indent=1))
    text = write_report(metrics, trainings, report, scale)
    print(text)
    return 0


if __name__ == "__main__":  # python -m ndive_models.paper
    from ndive_models.cli import run_as_program

    sys.exit(run_as_program(["paper", *sys.argv[1:]]))

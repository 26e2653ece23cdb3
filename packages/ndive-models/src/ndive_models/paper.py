"""Reproduce the NDIVE paper's comparison: ``ndive paper`` (``nox -s paper``;
``python -m ndive_models.paper`` is the same command). See docs/paper.md.

The study is a YAML file (``--study``, default the shipped ``paper/default``; see
``ndive_models/configs/paper/``): data, conditions, training settings and the runs, each a
shipped model config (``ftag_ndive``...) with overrides and its training seeds. Command-line
options override the study's keys.

The runner is idempotent and resumable; a study may be stopped at any moment (Ctrl-C, kill,
end of a session) and continued later, on this machine or on a fresh clone:

1. **data**: the training and test samples of every condition are lists of *shards*, each
   one ``ndive generate --balance`` file of a given size, seed and options
   (``<data.dir>/<condition>/shard_s<seed>.h5``). An existing shard is reused after its
   stored generator options are checked; a missing one is regenerated (the same seed and
   options give an identical file): training shards first, test shards when a training
   is evaluated; runners on one data directory share the shards to make (a lock file per
   shard). Data files are never committed.
2. **trainings**: one ``python -m ndive_models.train`` process per training (``jobs`` at a
   time, ``threads`` torch threads each), output in ``<workdir>/<condition>/runs/<name>``;
   an interrupted training resumes from its ``last.pt``, which the runner mirrors to
   ``<report>/<condition>/<name>/partial/`` while it trains: committed, it lets a fresh
   machine resume the training too.
3. **results**: as soon as a training has finished, its best checkpoint is evaluated on the
   condition's test shards and its small outputs are written to
   ``<report>/<condition>/<name>/``: ``metrics.json`` (rejections with binomial errors and
   bootstrap replicates, ROC points, track selection, vertex residuals), ``history.json``,
   ``config.yaml`` and ``best.pt`` (weights only, tens of kB). These are meant to be
   committed: a training whose ``metrics.json`` exists is never retrained, even when the
   workdir is empty.
4. **report**: ``<report>/report.md`` and its plots are written from the committed results
   alone (no data or predictions needed), whatever subset has finished.

``ndive paper --plan`` prints what is done, what remains and the estimated CPU hours.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ._metrics import ratio_uncertainty

__all__ = ["PAPER", "StudyError", "Training", "load_study", "main", "plan",
           "ratio_uncertainty", "run_study", "study_runs", "study_trainings", "write_report"]

#: The paper's numbers (read off its figures; f_c = 0.05; 60k test jets per flavour).
PAPER = {
    "baseline": {"light": {"0.70": 93, "0.60": 236}, "c": {"0.70": 4.3, "0.60": 6.9}},
    "ftag_ndive": {"light": {"0.70": 117, "0.60": 334}, "c": {"0.70": 4.8, "0.60": 8.3}},
    "ftag_ndive_truth": {"light": {"0.70": 435}, "c": {"0.70": 7.6}},
    "track_selection_efficiency": {"b": 0.52, "c": 0.57},
    "gain_at_70": {"light": 1.27, "c": 1.13},
}


class StudyError(ValueError):
    """A study file is not a valid study (the message names the file and the key)."""


#: Keys of a study file (see ``configs/paper/default.yaml`` and ``paper/study.yaml``).
STUDY_KEYS = ("data", "seeds", "training", "runs", "jobs", "threads", "workdir", "report")
#: Optional keys: ``conditions`` ({name: {generate: {...}, note: text}}; default one
#: unnamed condition), the report's ``title`` and the run every other is compared with,
#: ``reference`` (default ``baseline``), and the training ``order``: ``runs`` (default:
#: every seed of a run, then the next run) or ``seeds`` (seed 1 of every run that takes the
#: study's ``seeds``, then seed 2 of each, ...; runs with their own ``seeds`` list after them,
#: so a study stopped at any point has as many seeds of each compared model); and the
#: ``moonshot`` of the report's answer: ``{ratio: 1.5, conditions: [realistic]}`` (the light
#: rejection ratio at 70% to the reference that a run which is no reference should reach,
#: in the named conditions: every condition without ``conditions``; no moonshot line without
#: the key).
OPTIONAL_STUDY_KEYS = ("conditions", "title", "reference", "order", "moonshot")
ORDERS = ("runs", "seeds")
RUN_KEYS = ("name", "config", "set", "seeds", "reference", "versus")


def shard_groups(spec: dict) -> list[dict]:
    """The groups ``[{first, count, jets[, generate]}, ...]`` of a ``shards`` sample: one
    mapping or a list of them (e.g. balanced shards plus light-only ones for a test set)."""
    sh = spec["shards"]
    return list(sh) if isinstance(sh, list) else [sh]


def _check_sample(d: dict, part: str, where: str) -> None:
    s = d["data"].get(part) if isinstance(d["data"], dict) else None
    if isinstance(s, dict) and "shards" in s:
        groups = s["shards"] if isinstance(s["shards"], list) else [s["shards"]]
        seeds: set = set()
        for sh in groups:
            ok = (isinstance(sh, dict) and {"first", "count", "jets"} <= set(sh)
                  <= {"first", "count", "jets", "generate"}
                  and all(isinstance(sh[k], int) and sh[k] >= (0 if k == "first" else 1)
                          for k in ("first", "count", "jets"))
                  and isinstance(sh.get("generate", {}), dict))
            if not ok:
                raise StudyError(f"{where}: data.{part}.shards needs integer 'first' (seed of "
                                 "the first shard), 'count' and 'jets' (per shard), and may "
                                 f"have 'generate: {{...}}' (options), got {sh!r}")
            mine = set(range(sh["first"], sh["first"] + sh["count"]))
            if mine & seeds:
                raise StudyError(f"{where}: data.{part}.shards: the seeds of {sh!r} overlap "
                                 "another group's (each seed is one file)")
            seeds |= mine
        if not groups:
            raise StudyError(f"{where}: data.{part}.shards is an empty list")
    elif not (isinstance(s, dict) and {"jets", "seed"} <= set(s)):
        raise StudyError(f"{where}: data.{part} needs 'jets' and 'seed' (one file) or "
                         "'shards: {first, count, jets}' (or a list of such groups)")


def _check_seeds(n, what: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise StudyError(f"{what} must be a positive integer, got {n!r}")


def _check_moonshot(m, conds: list, where: str) -> None:
    if m is None:
        return
    ratio = m.get("ratio") if isinstance(m, dict) else None
    named = m.get("conditions", conds) if isinstance(m, dict) else None
    ok = (isinstance(m, dict) and set(m) <= {"ratio", "conditions"}
          and isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and ratio > 0
          and isinstance(named, list) and all(c in conds for c in named))
    if not ok:
        raise StudyError(f"{where}: moonshot must be {{ratio: <positive number>, conditions: "
                         f"[<conditions of the study: {conds}>] (optional)}}, got {m!r}")


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
    unknown = set(d) - set(STUDY_KEYS) - set(OPTIONAL_STUDY_KEYS)
    if unknown:
        raise StudyError(f"{where}: unknown keys {sorted(unknown)}; known: "
                         f"{list(STUDY_KEYS + OPTIONAL_STUDY_KEYS)}")
    missing = [k for k in STUDY_KEYS if k not in d]
    if missing:
        raise StudyError(f"{where}: missing keys {missing}")
    for part in ("train", "test"):
        _check_sample(d, part, where)
    conds = d.get("conditions")
    if conds is not None and not (isinstance(conds, dict) and conds and all(
            isinstance(c, dict) and set(c) <= {"generate", "note", "test", "seeds"}
            for c in conds.values())):
        raise StudyError(f"{where}: conditions must map names to {{generate: {{...}}, "
                         f"note: ..., test: (optional, as data.test), seeds: (optional, "
                         f"as seeds)}}, got {conds!r}")
    for name, c in (conds or {}).items():
        if "test" in c:
            _check_sample({"data": {"test": c["test"]}}, "test",
                          f"{where}: conditions.{name}")
        if "seeds" in c:
            _check_seeds(c["seeds"], f"{where}: conditions.{name}.seeds")
    _check_moonshot(d.get("moonshot"), list(conds or {}), where)
    if d.get("order", "runs") not in ORDERS:
        raise StudyError(f"{where}: order must be one of {ORDERS}, got {d['order']!r}")
    _check_seeds(d["seeds"], f"{where}: seeds")
    if not isinstance(d["training"], dict) or not isinstance(d["runs"], list):
        raise StudyError(f"{where}: 'training' must be a mapping and 'runs' a list")
    for k, run in enumerate(d["runs"]):
        ok = isinstance(run, dict) and {"name", "config"} <= set(run) <= set(RUN_KEYS)
        if not ok:
            raise StudyError(f"{where}: run {k} must be a mapping with 'name' and 'config' "
                             f"(keys {list(RUN_KEYS)}), got {run!r}")
    names = [run["name"] for run in d["runs"]]
    for run in d["runs"]:  # versus: one name or a list; a list from here on
        v = run.get("versus", [])
        run["versus"] = [v] if isinstance(v, str) else v
        if not isinstance(v, (str, list)) or not all(
                isinstance(x, str) and x in names and x != run["name"]
                for x in run["versus"]):
            raise StudyError(f"{where}: run {run['name']}: versus must name another run of "
                             f"the study, or list such runs ({names}), got {v!r}")
    d["source"] = str(path)
    return d


def study_runs(study: dict, train_file, workdir, *, skip_references: bool = False,
               condition: str | None = None) -> list:
    """The trainings of a study: ``[(run name, TrainConfig), ...]`` in the study's order
    (its ``order`` key: run by run, or seed by seed). The runs without their own ``seeds``
    train the study's ``seeds``, or the ``condition``'s own ``seeds`` where it has them.

    A run's config is its model config file, then the study's ``training`` keys, then the
    run's ``set`` keys, then the seed, training file (or list of shards) and output
    directory (``<workdir>/runs/<name>_s<seed>``).
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
    shared.setdefault("threads", study["threads"])
    train = ([str(f) for f in train_file] if isinstance(train_file, (list, tuple))
             else str(train_file))
    n_seeds = ((study.get("conditions") or {}).get(condition) or {}).get("seeds",
                                                                          study["seeds"])
    runs = []
    for r, run in enumerate(study["runs"]):
        if skip_references and run.get("reference"):
            continue
        seeds = run.get("seeds") or range(1, n_seeds + 1)
        for k, seed in enumerate(seeds):
            name = f"{run['name']}_s{seed}"
            over = {**shared, **(run.get("set") or {}), "seed": seed, "train": train,
                    "out": str(Path(workdir) / "runs" / name), "progress": False}
            by_seed = k if not run.get("seeds") else math.inf
            key = (by_seed, r, k) if study.get("order") == "seeds" else (r, k)
            try:
                cfg = load_config(find(run["config"]), over)
            except ValueError as err:  # name the run: the study's settings apply to all
                raise ValueError(f"run {run['name']} (seed {seed}): {err}") from None
            runs.append((key, name, cfg))
    return [(name, cfg) for _, name, cfg in sorted(runs, key=lambda x: x[0])]


# --------------------------------------------------------------------------------------------
# data: shards
# --------------------------------------------------------------------------------------------
def conditions(study: dict) -> dict:
    """``{name: generator options}`` of the study's conditions (``{"": {}}`` when the study
    names none: one condition, files directly under the data directory)."""
    conds = study.get("conditions")
    if not conds:
        return {"": {}}
    return {name: dict(c.get("generate") or {}) for name, c in conds.items()}


def data_dir(study: dict, condition: str) -> Path:
    """Where the condition's shards live: ``<data.dir>/<condition>`` (``data.dir`` default:
    ``<workdir>/data``, or ``<workdir>`` for a study without conditions)."""
    root = study["data"].get("dir")
    if root is None:
        root = Path(study["workdir"]) / ("data" if study.get("conditions") else "")
    return Path(root) / condition


def smoke_study(study: dict, jets: int = 1500) -> dict:
    """A pre-flight of ``study`` (``ndive paper --smoke``): every run once (its first seed),
    one epoch on ``jets`` training jets (``jets // 5`` validate) of each condition's first
    training shard, evaluated on its first test shard, under ``<workdir>/smoke`` (report in
    ``<workdir>/smoke/report``). The shards are the study's own (reused; only the first of
    each is generated when missing); the study's trainings and results are not touched.
    A setting that fails (a monitor a model lacks, a condition the pipeline cannot read)
    then fails in minutes, not hours into the study; its numbers mean nothing."""
    import copy

    s = copy.deepcopy(study)
    s["data"]["dir"] = str(data_dir(study, ""))  # the study's shards, whatever the workdir
    samples = [s["data"]["train"], s["data"]["test"]]
    samples += [c["test"] for c in (s.get("conditions") or {}).values() if "test" in c]
    for spec in samples:
        if "shards" in spec:
            spec["shards"] = {**shard_groups(spec)[0], "count": 1}
    s["training"] = {**s["training"], "epochs": 1, "max_jets": jets,
                     "max_val_jets": max(1, jets // 5)}
    s["seeds"] = 1
    for c in (s.get("conditions") or {}).values():
        c.pop("seeds", None)
    for run in s["runs"]:
        if run.get("seeds"):
            run["seeds"] = list(run["seeds"])[:1]
    work = Path(study["workdir"]) / "smoke"
    s["workdir"], s["report"] = str(work), str(work / "report")
    s["title"] = f"Smoke test of {_shown(study['source'])} (1 epoch, {jets} jets: no result)"
    return s


def shards(study: dict, condition: str, part: str) -> list[tuple[Path, dict]]:
    """``[(path, generator options), ...]`` of the ``part`` ("train" or "test") sample.

    A ``shards: {first, count, jets}`` sample is ``count`` files ``shard_s<seed>.h5`` with
    seeds ``first, first + 1, ...`` (a list of such groups: their files in order); a
    ``{jets, seed}`` sample is one file ``<part>.h5``. Options: ``n_jets``, ``seed``,
    ``workers`` (``data.workers``, default 1: part of the event sequence), ``balance: true``,
    then ``data.generate``, the condition's ``generate`` keys (e.g. ``preset: run3``) and
    the group's own ``generate`` (e.g. ``only: light``). A condition's own ``test`` (same form as
    ``data.test``) replaces ``data.test`` for it.
    """
    d = study["data"]
    spec = d[part]
    if part == "test" and condition:  # a condition may size its own test sample
        spec = (study.get("conditions") or {}).get(condition, {}).get("test", spec)
    common = {"workers": d.get("workers", 1), "balance": True, **(d.get("generate") or {}),
              **conditions(study)[condition]}
    where = data_dir(study, condition)
    if "shards" in spec:
        return [(where / f"shard_s{seed}.h5",
                 {**common, **(sh.get("generate") or {}), "n_jets": sh["jets"], "seed": seed})
                for sh in shard_groups(spec)
                for seed in range(sh["first"], sh["first"] + sh["count"])]
    return [(where / f"{part}.h5", {**common, "n_jets": spec["jets"], "seed": spec["seed"]})]


class PresetUnavailable(ValueError):
    """The condition's generator preset is not in this version of ndive-models."""


def generation_config(options: dict):
    """The :class:`~ndive_models.generate.GenerationConfig` of a shard's options.

    Raises:
        PresetUnavailable: ``preset`` is set but this generator has no presets (or not
            that one).
    """
    from .generate import GenerationConfig

    options = dict(options)
    preset = options.pop("preset", None)
    if preset is None:
        return GenerationConfig(**options)
    if not hasattr(GenerationConfig, "from_preset"):
        raise PresetUnavailable(
            f"generator preset {preset!r} is not available in this version of ndive-models "
            "(the realistic detector, issue 13, is not merged yet); leave the condition out "
            "with --conditions")
    try:
        return GenerationConfig.from_preset(preset, **options)
    except ValueError as err:
        raise PresetUnavailable(f"generator preset {preset!r}: {err}") from None


def _shard_mismatch(path: Path, cfg) -> str | None:
    """None if the existing file ``path`` was generated with ``cfg``, else why not.

    Options the file does not record (written by an older generator) count as equal when
    ``cfg`` has them at their default, i.e. the behaviour the older generator had.
    """
    from dataclasses import asdict, fields

    from .data import read_attrs

    try:
        a = read_attrs(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a mismatch
        return f"unreadable ({err})"
    stored = (a.get("generator_settings") or {}).get("options") or {}
    want = asdict(cfg)
    defaults = {f.name: f.default for f in fields(cfg)}
    for k, v in want.items():
        if k in stored:
            if stored[k] != v and not (isinstance(v, (list, tuple)) and list(stored[k]) == list(v)):
                return f"{k} is {stored[k]!r}, the study wants {v!r}"
        elif v != defaults.get(k):
            return f"it does not record {k} (the study wants {v!r})"
    if int(a.get("n_jets", -1)) != cfg.n_jets:
        return f"{a.get('n_jets')} jets, the study wants {cfg.n_jets}"
    return None


_SHARD_CPU_TAG = "ndive paper: generation CPU seconds"


def _shard_cpu_s(path: Path) -> float | None:
    """The CPU seconds ``path`` took to generate, from the line the runner adds to its
    log (None when the log does not have it)."""
    log = path.with_suffix(".log")
    if not log.exists():
        return None
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith(_SHARD_CPU_TAG):
            return float(line.split()[-1])
    return None


def _generate_shard(path: Path, options: dict) -> float:
    """Generate one shard in a subprocess (its own Pythia; interrupting leaves no file).
    Returns the CPU seconds it took."""
    code = ("import json, sys; from ndive_models.paper import generation_config; "
            "from ndive_models.generate import generate; "
            "generate(generation_config(json.loads(sys.argv[1])), sys.argv[2], progress=False)")
    log = path.with_suffix(".log")
    with open(log, "a") as f:
        rc, cpu = _run_child([sys.executable, "-c", code, json.dumps(options), str(path)], f,
                             threads=1)
        if rc == 0:  # the plan's cost estimate of the shards still missing reads it
            f.write(f"{_SHARD_CPU_TAG} {cpu:.1f}\n")
    if rc != 0:
        raise RuntimeError(f"generating {path} failed (exit {rc}); see {log}")
    print(f"generated {path} ({cpu / 60:.0f} CPU min)", flush=True)
    return cpu


#: The committed record of what each generated shard cost: ``<report>/<condition>/`` this
#: file, ``{shard file name: {"jets": n, "cpu_s": s}}``. A fresh machine's plan prices the
#: shards it must make again from it (the same seed and options make the same file).
GENERATION_RECORD = "generation.json"
_record_lock = threading.Lock()


def _record_path(study: dict, condition: str) -> Path:
    return Path(study["report"]) / condition / GENERATION_RECORD


def generation_record(study: dict, condition: str) -> dict:
    """``{shard name: {"jets", "cpu_s"}}`` from the condition's :data:`GENERATION_RECORD`
    (empty when there is none)."""
    path = _record_path(study, condition)
    return json.loads(path.read_text()) if path.exists() else {}


def _record_generation(study: dict, condition: str, path: Path, n_jets: int,
                       cpu: float) -> None:
    from ._files import atomic_write

    rec = _record_path(study, condition)
    with _record_lock:  # shards finish in parallel threads
        rec.parent.mkdir(parents=True, exist_ok=True)
        d = generation_record(study, condition)
        d[path.name] = {"jets": n_jets, "cpu_s": round(cpu, 1)}
        text = json.dumps(dict(sorted(d.items())), indent=1)
        atomic_write(rec, lambda tmp: tmp.write_text(text))


def ensure_data(study: dict, condition: str, jobs: int = 1, *, wait: float = 0.0,
                parts: tuple = ("train", "test")) -> list[str]:
    """Check the condition's shards of ``parts``, generate the missing ones (``jobs`` at a
    time).

    Several processes may call it on the same data directory at once: a shard is made by
    one of them (a lock file ``<shard>.genlock`` beside it), the others make the rest and
    then wait for it. With ``wait`` > 0, missing shards are not generated but waited for
    (polling every ``wait`` seconds): another process is generating them.

    Each generated shard's CPU seconds are added to :data:`GENERATION_RECORD`.

    Returns the messages of what was done. Raises ``ValueError`` when an existing file was
    made with other options (it is never overwritten) and :class:`PresetUnavailable`.
    """
    todo, msgs = [], []
    for part in parts:
        for path, opt in shards(study, condition, part):
            cfg = generation_config(opt)
            if wait > 0 and not path.exists():
                print(f"{time.strftime('%H:%M:%S')} waiting for {path}", flush=True)
                while not path.exists():
                    time.sleep(wait)
            if path.exists():
                why = _shard_mismatch(path, cfg)
                if why:
                    raise ValueError(f"{path} exists but {why}; move it away or point "
                                     "data.dir elsewhere")
            else:
                todo.append((path, opt))
    if todo:
        msgs.append(f"generating {len(todo)} missing {'/'.join(parts)} shard(s) of "
                    f"condition {condition or '(default)'}")
        print(msgs[-1], flush=True)
        def make(path, opt, block=False):
            """Make the shard unless another process (or job) is on it; returns whether
            it is left to that one (``block``: wait for it, then make it if it did not)."""
            import fcntl

            with open(path.with_suffix(".genlock"), "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
                except BlockingIOError:
                    return True
                if not path.exists():  # else its maker finished while we were waiting
                    cpu = _generate_shard(path, opt)
                    _record_generation(study, condition, path, opt["n_jets"], cpu)
            return False

        for d in {path.parent for path, _ in todo}:  # a fresh machine has none
            d.mkdir(parents=True, exist_ok=True)
        # several runners (or jobs) on one data directory share the work: each makes the
        # shards nobody else is on, then waits for the others' (the lock of a maker that
        # died is released, and the shard is made by whoever waits for it)
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            theirs = [a for a, left in zip(todo, pool.map(lambda a: make(*a), todo))
                      if left]
            if theirs:
                print(f"{time.strftime('%H:%M:%S')} waiting for {len(theirs)} shard(s) "
                      "another process is making", flush=True)
            list(pool.map(lambda a: make(*a, block=True), theirs))
        for path, opt in theirs:
            why = _shard_mismatch(path, generation_config(opt))
            if why:
                raise ValueError(f"{path} was made by another process but {why}; move it "
                                 "away or point data.dir elsewhere")
    return msgs


# --------------------------------------------------------------------------------------------
# trainings
# --------------------------------------------------------------------------------------------
#: Config keys that do not change what a training computes (paths, output, speed options).
_CONFIG_IGNORED = {"train", "val", "out", "progress", "threads", "model.fit_compile", "device"}


@dataclass
class Training:
    """One training of a study: ``run_s<seed>`` in one condition.

    Attributes:
        condition: condition name ("" without conditions). name: ``<run>_s<seed>``.
        run: the run's name. reference: the run is marked ``reference``.
        cfg: its :class:`~ndive_models.train.TrainConfig` (train = the condition's training
            shards, out = :attr:`out`).
        out: ``<workdir>/<condition>/runs/<name>`` (checkpoints; not committed).
        result: ``<report>/<condition>/<name>`` (the committed small outputs).
            While it trains, ``<result>/partial/`` mirrors its ``last.pt`` and records
            (:data:`PARTIAL_FILES`), so that a fresh machine resumes it from the commit.
        tests: names of the condition's test shards (results on other test files are
            evaluated again, from the committed checkpoint).
    """

    condition: str
    name: str
    run: str
    reference: bool
    cfg: object
    out: Path
    result: Path
    tests: tuple = ()

    @property
    def key(self) -> str:
        return f"{self.condition}/{self.name}" if self.condition else self.name

    @property
    def partial(self) -> Path:
        """``<result>/partial``: the committed copy of an unfinished training."""
        return self.result / "partial"

    def config_differences(self, path: Path | None = None) -> list[str]:
        """Keys whose value in the committed ``config.yaml`` (or in the ``config.yaml`` at
        ``path``) differs from the study's (paths, progress bar and speed options aside): a
        training was made with other settings than the study now asks for."""
        import yaml

        from .train import with_defaults

        p = path or self.result / "config.yaml"
        if not p.exists():
            return []
        old, new = with_defaults(yaml.safe_load(p.read_text())), self.cfg.to_dict()
        diff = []

        def walk(a, b, prefix=""):
            for k in sorted(set(a) | set(b)):
                if prefix + k in _CONFIG_IGNORED:
                    continue
                x, y = a.get(k), b.get(k)
                if isinstance(x, dict) and isinstance(y, dict):
                    walk(x, y, f"{prefix}{k}.")
                elif prefix + k == "monitor" and _same_best_epoch(p.parent, x, y):
                    continue  # another monitor that picks the same checkpoint
                elif x != y:
                    diff.append(f"{prefix}{k}: {x!r} -> {y!r}")

        walk(old, new)
        return diff

    def trained_in(self) -> Path | None:
        """Where ``t``'s finished, not yet evaluated training is: the workdir, else its
        committed copy :attr:`partial` (a training finished with ``--train-only`` on another
        machine); None when it has not finished."""
        for d in (self.out, self.partial):
            if (d / "finished.json").exists() and (d / "best.pt").exists():
                return d
        return None

    def status(self) -> str:
        """``done`` (results written), ``stale`` (results written, on other test files than
        the study's: to evaluate again), ``trained`` (finished, not yet evaluated),
        ``partial`` (a ``last.pt`` to resume from, in the workdir or committed under
        :attr:`partial`) or ``todo``."""
        if (self.result / "metrics.json").exists():
            done_on = json.loads((self.result / "metrics.json").read_text()).get("test_files")
            return "stale" if self.tests and done_on != list(self.tests) else "done"
        if self.trained_in() is not None:
            return "trained"
        if (self.out / "last.pt").exists() or (self.partial / "last.pt").exists():
            return "partial"
        return "todo"


def _same_best_epoch(run_dir: Path, a: str, b: str) -> bool:
    """Whether the validation quantities ``a`` and ``b`` pick the same best epoch in the
    ``history.json`` of ``run_dir`` (then a changed ``monitor`` changes nothing)."""
    from .train import best_entry

    path = run_dir / "history.json"
    if not path.exists():
        return False
    hist = json.loads(path.read_text())
    if not all(a in h["val"] and b in h["val"] for h in hist if "val" in h):
        return False
    best = [best_entry(hist, q) for q in (a, b)]
    return best[0] is not None and best[0]["epoch"] == best[1]["epoch"]


def study_trainings(study: dict, *, only_conditions=None, skip_references: bool = False,
                    only_runs=None) -> list[Training]:
    """Every training of the study, condition by condition, in the study's run order.
    ``only_runs``: names of runs (all their seeds) or of trainings (``<run>_s<seed>``)."""
    out = []
    for cond in conditions(study):
        if only_conditions and cond not in only_conditions:
            continue
        work = Path(study["workdir"]) / cond
        train = [str(p) for p, _ in shards(study, cond, "train")]
        tests = tuple(p.name for p, _ in shards(study, cond, "test"))
        runs = {r["name"]: r for r in study["runs"]}
        for name, cfg in study_runs(study, train, work, skip_references=skip_references,
                                    condition=cond):
            run = name.rsplit("_s", 1)[0]
            if only_runs and run not in only_runs and name not in only_runs:
                continue
            out.append(Training(cond, name, run, bool(runs[run].get("reference")), cfg,
                                Path(cfg.out), Path(study["report"]) / cond / name, tests))
    return out


def _run_child(cmd, log, threads: int, cwd=None, every=None) -> tuple[int, float]:
    """Run ``cmd`` with ``threads`` BLAS/OpenMP/torch threads; returns (exit status, CPU
    seconds of the child, user + system, from ``wait4``). ``every``: ``(seconds, callback)``
    called at that interval while the child runs."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads)}
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        if every is None:
            _, status, ru = os.wait4(p.pid, 0)
        else:
            next_call = time.monotonic() + every[0]
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() >= next_call:
                    every[1]()
                    next_call = time.monotonic() + every[0]
                time.sleep(min(2.0, every[0]))
    except BaseException:
        p.terminate()
        p.wait()
        raise
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru.ru_utime + ru.ru_stime


def _count_killed_cpu(out: Path) -> None:
    """Raise the training CPU seconds of ``<out>/cpu.json`` (summed over the processes the
    runner saw finish) to the count the checkpoints carry (``train_cpu.json``, written by
    the training at every epoch), when that is larger: a training process killed with its
    runner (the end of a session) leaves no exit record, but its finished epochs are in
    the checkpoint."""
    from ._files import atomic_write

    ck, rec = out / "train_cpu.json", out / "cpu.json"
    if not (ck.exists() and rec.exists()):
        return
    d = json.loads(rec.read_text())
    c = json.loads(ck.read_text())
    if "train" not in d:
        return
    changed = False
    if c["cpu_s"] > d["train"]["cpu_s"]:
        d["train"]["cpu_s"], d["train"]["from_checkpoints"] = c["cpu_s"], True
        changed = True
    if c.get("from_epoch", 1) > 1 and d["train"].get("from_epoch") != c["from_epoch"]:
        # epochs before it ran before CPU records: the count is a lower bound
        d["train"]["from_epoch"] = c["from_epoch"]
        changed = True
    if changed:
        atomic_write(rec, lambda tmp: tmp.write_text(json.dumps(d, indent=1)))


def _add_cpu(path: Path, key: str, seconds: float, wall: float) -> dict:
    from ._files import atomic_write

    d = json.loads(path.read_text()) if path.exists() else {}
    e = d.setdefault(key, {"cpu_s": 0.0, "wall_s": 0.0, "invocations": 0})
    e["cpu_s"] += seconds
    e["wall_s"] += wall
    e["invocations"] += 1
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(d, indent=1)))
    return d


#: What ``<result>/partial/`` holds of an unfinished training (``last.pt`` written last).
PARTIAL_FILES = ("config.yaml", "history.json", "train_cpu.json", "cpu.json", "best.pt",
                 "last.pt")
#: Seconds between two looks at a running training's ``last.pt`` (written once an epoch).
PARTIAL_EVERY = 60.0


def _mirror_partial(t: Training) -> None:
    """Copy ``t``'s newest ``last.pt`` and records to :attr:`Training.partial` (each file
    atomically, ``last.pt`` last), when the workdir's is newer than the copy."""
    from ._files import atomic_write

    src, dst = t.out / "last.pt", t.partial / "last.pt"
    if not src.exists() or (dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime):
        return
    t.partial.mkdir(parents=True, exist_ok=True)
    for name in PARTIAL_FILES:
        if (t.out / name).exists():
            atomic_write(t.partial / name, lambda tmp, n=name: shutil.copy2(t.out / n, tmp))


def _restore_partial(t: Training) -> bool:
    """Copy a committed unfinished training (:attr:`Training.partial`) into an empty
    workdir, so that it resumes there; returns whether it did. One made with other settings
    than the study's is left alone (it is retrained from the start)."""
    if (t.out / "last.pt").exists() or not (t.partial / "last.pt").exists():
        return False
    diff = t.config_differences(t.partial / "config.yaml")
    if diff:
        print(f"note: {t.key}: the committed unfinished training in {t.partial} has other "
              f"settings than the study's ({'; '.join(diff)}); training from the start",
              file=sys.stderr, flush=True)
        return False
    t.out.mkdir(parents=True, exist_ok=True)
    for name in PARTIAL_FILES:  # last.pt last: its presence marks the copy complete
        if (t.partial / name).exists():
            shutil.copy2(t.partial / name, t.out / name)
    print(f"{time.strftime('%H:%M:%S')} {t.key}: resuming the committed unfinished training "
          f"({t.partial})", flush=True)
    return True


def _train(t: Training, threads: int) -> None:
    """Train (or resume) ``t``; writes ``<out>/finished.json`` when it has finished."""
    import yaml

    from ._files import atomic_write

    t.out.mkdir(parents=True, exist_ok=True)
    _restore_partial(t)
    config = t.out / "config.yaml"
    atomic_write(config, lambda tmp: tmp.write_text(yaml.safe_dump(t.cfg.to_dict(),
                                                                   sort_keys=False)))
    cmd = [sys.executable, "-m", "ndive_models.train", "--config", str(config),
           "--threads", str(threads)]
    if (t.out / "last.pt").exists():
        cmd.append("--resume")
    print(f"{time.strftime('%H:%M:%S')} training {t.key}"
          f"{' (resumed)' if '--resume' in cmd else ''}", flush=True)
    t0 = time.perf_counter()
    with open(t.out / "train.log", "a") as f:
        rc, cpu = _run_child(cmd, f, threads, every=(PARTIAL_EVERY, lambda: _mirror_partial(t)))
    _add_cpu(t.out / "cpu.json", "train", cpu, time.perf_counter() - t0)
    _count_killed_cpu(t.out)
    _mirror_partial(t)
    if rc != 0:
        raise RuntimeError(f"training {t.key} failed (exit {rc}); see {t.out / 'train.log'}")
    text = json.dumps({"finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    atomic_write(t.out / "finished.json", lambda tmp: tmp.write_text(text))
    # the committed copy too: a fresh machine evaluates it without the training shards
    t.partial.mkdir(parents=True, exist_ok=True)
    for name in ("cpu.json", "finished.json"):
        atomic_write(t.partial / name, lambda tmp, n=name: shutil.copy2(t.out / n, tmp))


def _finish(t: Training, test_files: list[str], threads: int) -> None:
    """Evaluate ``t``'s best checkpoint on the test shards (a subprocess) and write its
    results directory; a ``stale`` training is evaluated again from its committed
    checkpoint (no workdir needed), its history and configuration kept."""
    t0 = time.perf_counter()
    again = t.status() == "stale"
    t.out.mkdir(parents=True, exist_ok=True)
    if again:
        args = ["reevaluate_training(sys.argv[1], sys.argv[2:])", str(t.result)]
    else:
        src = t.trained_in()
        if src == t.partial and (src / "cpu.json").exists():  # its training's CPU record
            shutil.copy(src / "cpu.json", t.out / "cpu.json")
        args = ["finish_training(sys.argv[1], sys.argv[2], sys.argv[3:])", str(src),
                str(t.result)]
    code = ("import sys; from ndive_models.paper import finish_training, "
            f"reevaluate_training; {args[0]}")
    if again:
        print(f"{time.strftime('%H:%M:%S')} evaluating {t.key} again: its results are on "
              f"other test files than the study's", flush=True)
    with open(t.out / "eval.log", "a") as f:
        rc, cpu = _run_child([sys.executable, "-c", code, *args[1:], *test_files], f,
                             threads)
    record = t.result / "cpu.json" if again else t.out / "cpu.json"
    _add_cpu(record, "evaluate", cpu, time.perf_counter() - t0)
    if rc != 0:
        raise RuntimeError(f"evaluating {t.key} failed (exit {rc}); see {t.out / 'eval.log'}")
    if not again:  # the CPU record is part of the results (the report's cost table)
        shutil.copy(t.out / "cpu.json", t.result / "cpu.json")
        shutil.rmtree(t.partial, ignore_errors=True)  # the finished results replace it
    print(f"{time.strftime('%H:%M:%S')} finished {t.key}: results in {t.result}", flush=True)


def _lock(t: Training):
    """An exclusive lock on ``<out>/lock`` (released when the holder exits, however it
    exits), or None when another process holds it."""
    import fcntl

    t.out.mkdir(parents=True, exist_ok=True)
    f = open(t.out / "lock", "a")  # noqa: SIM115 - held until the training is done
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _running(t: Training) -> bool:
    """Another process (a runner) holds ``t``'s lock right now."""
    if not (t.out / "lock").exists():
        return False
    f = _lock(t)
    if f is None:
        return True
    f.close()
    return False


def _one(t: Training, test_files: list[str], threads: int, before_eval=None,
         evaluate: bool = True):
    """Train/resume, evaluate and publish one training; returns ``(key, error or None)``.
    A training another runner is working on (its lock is held) is left to it.
    ``before_eval``: called before the evaluation (it makes the test shards).
    ``evaluate=False``: train only (a finished training stays in :attr:`Training.partial`,
    to commit and evaluate later, on any machine)."""
    lock = _lock(t)
    if lock is None:
        print(f"{time.strftime('%H:%M:%S')} {t.key}: another runner is on it; skipped",
              flush=True)
        return t.key, None
    try:
        diff = (t.config_differences(t.trained_in() / "config.yaml")
                if t.status() == "trained" else [])
        if diff:
            raise ValueError(f"{t.key}: {t.out} finished with other settings than the "
                             f"study's ({'; '.join(diff)}); move it away to train it again")
        if t.status() in ("todo", "partial"):
            _train(t, threads)
        if evaluate and t.status() in ("trained", "stale"):
            if before_eval is not None:
                before_eval()
            _finish(t, test_files, threads)
        return t.key, None
    except Exception as err:  # noqa: BLE001 - one failed training must not stop the others
        print(f"{time.strftime('%H:%M:%S')} {err}", file=sys.stderr, flush=True)
        return t.key, str(err)
    finally:
        lock.close()
# --------------------------------------------------------------------------------------------
# per-training results
# --------------------------------------------------------------------------------------------
#: Bootstrap replicates of the test set per training, and their seed: the same seed and
#: test set give the same replicates for every training, so ratios can be formed per
#: replicate (the two models of a ratio see the same resampled jets).
N_BOOTSTRAP = 200
BOOTSTRAP_SEED = 17
#: b-efficiencies of the stored ROC points.
ROC_EFFS = tuple(round(0.5 + 0.01 * k, 2) for k in range(46))
_RES_BINS, _PULL_BINS = (-5.0, 5.0, 100), (-8.0, 8.0, 80)


def bootstrap_rejections(disc, labels, effs, n_boot: int = N_BOOTSTRAP,
                         seed: int = BOOTSTRAP_SEED) -> dict:
    """Rejections at ``effs`` on ``n_boot`` bootstrap replicates of the jets (resampled
    with replacement, ``numpy.random.default_rng(seed)``): ``{"light": (n_boot, len(effs)),
    "c": ...}`` (``inf`` where no background jet passes)."""
    import numpy as np

    from ._metrics import roc_curve

    rng = np.random.default_rng(seed)
    disc, labels = np.asarray(disc), np.asarray(labels)
    out = {"light": np.empty((n_boot, len(effs))), "c": np.empty((n_boot, len(effs)))}
    for b in range(n_boot):
        idx = rng.integers(0, len(disc), len(disc))
        d, lab = disc[idx], labels[idx]
        for bkg, code in (("light", 2), ("c", 1)):
            out[bkg][b] = roc_curve(d, lab, effs, background=code)
    return out


#: The test-file fields :func:`training_metrics` reads (besides the predictions).
METRIC_FIELDS = ("flavour", "valid", "origin", "hf_vertex", "jet")


def training_metrics(pred: dict, batch: dict, f_c: float = 0.05,
                     wps=None, n_boot: int = N_BOOTSTRAP) -> dict:
    """The committed metrics of one training from its test-set predictions (see
    :func:`ndive_models.evaluate.predict`): rejections at ``wps`` with binomial errors and
    bootstrap replicates, ROC points at :data:`ROC_EFFS`, and for models with a fit the
    track selection, the fit-usable fractions and the vertex residuals and pulls
    (summaries and histograms). ``batch`` needs the fields :data:`METRIC_FIELDS`."""
    import numpy as np

    from . import _metrics
    from .evaluate import SELECTION_EDGES, _rejections, _track_selection, _vertex_quality

    wps = tuple(wps or _metrics.WORKING_POINTS)
    labels = batch["flavour"].numpy()
    m = {"n_test_jets": len(labels),
         "n_per_flavour": {n: int((labels == i).sum()) for i, n in
                           enumerate(("b", "c", "light"))},
         "f_c": f_c, "working_points": list(wps)}
    if "p_b" in pred:
        m["rejection"] = _rejections(pred, labels, f_c, wps)
        d = _metrics.discriminant(pred["p_b"], pred["p_c"], pred["p_u"], f_c)
        boot = bootstrap_rejections(d, labels, wps, n_boot)
        m["bootstrap"] = {"n": n_boot, "seed": BOOTSTRAP_SEED,
                          **{bkg: {f"{wp:.2f}": [round(float(x), 4) for x in a[:, k]]
                                   for k, wp in enumerate(wps)} for bkg, a in boot.items()}}
        m["roc"] = {"effs": list(ROC_EFFS),
                    **{bkg: [float(x) for x in _metrics.roc_curve(d, labels, ROC_EFFS,
                                                                   background=code)]
                       for bkg, code in (("light", 2), ("c", 1))}}
    if "vertex" in pred:
        m["fit_ok_fraction"] = {n: float(pred["fit_ok"][labels == i].mean())
                                for i, n in enumerate(("b", "c", "light"))}
        m["track_selection"] = _track_selection(pred, batch, SELECTION_EDGES)
        m["vertex"], res, pull = _vertex_quality(pred, batch)
        m["vertex"]["hist"] = {
            "residual_bins": list(_RES_BINS), "pull_bins": list(_PULL_BINS),
            "residual": [np.histogram(np.clip(res[:, k], *_RES_BINS[:2]),
                                      np.linspace(*_RES_BINS[:2], _RES_BINS[2] + 1))[0]
                         .tolist() for k in range(3)],
            "pull": [np.histogram(np.clip(pull[:, k], *_PULL_BINS[:2]),
                                  np.linspace(*_PULL_BINS[:2], _PULL_BINS[2] + 1))[0]
                     .tolist() for k in range(3)]}
    return m


def _evaluate(checkpoint: Path, test_files) -> tuple[dict, dict]:
    """(metrics of ``checkpoint`` on ``test_files``, the checkpoint)."""
    import numpy as np
    import torch

    from .data.loader import load_batch
    from .evaluate import predict
    from .train import load_checkpoint

    model, ck = load_checkpoint(checkpoint)
    t0 = time.process_time()
    # one shard at a time, keeping the predictions and the few fields the metrics read:
    # the whole test set of a study (millions of jets) need not fit in memory
    preds, kept = [], []
    for f in test_files:
        batch, _ = load_batch([f])
        preds.append(predict(model, batch))
        kept.append({k: batch[k] for k in METRIC_FIELDS if k in batch})
    pred = {k: np.concatenate([p[k] for p in preds]) for k in preds[0]}
    batch = {k: torch.cat([b[k] for b in kept]) for k in kept[0]}
    m = training_metrics(pred, batch)
    m.update(test_files=[Path(f).name for f in test_files], best_epoch=ck["best_epoch"],
             best_val=ck["best_val"], n_train=ck.get("n_train"),
             eval_cpu_s=time.process_time() - t0)
    return m, ck


def _write_metrics(result: Path, m: dict) -> None:
    from ._files import atomic_write

    text = json.dumps(m, indent=None, separators=(",", ":"), allow_nan=True)
    atomic_write(result / "metrics.json", lambda tmp: tmp.write_text(text))


def reevaluate_training(result, test_files) -> dict:
    """Evaluate the committed ``<result>/best.pt`` on ``test_files`` and rewrite
    ``<result>/metrics.json`` (a finished training whose study's test set has changed)."""
    m, _ = _evaluate(Path(result) / "best.pt", test_files)
    _write_metrics(Path(result), m)
    return m


def finish_training(out, result, test_files) -> dict:
    """Evaluate ``<out>/best.pt`` on ``test_files`` and write the committed results to
    ``result``: ``config.yaml``, ``history.json``, ``best.pt`` (weights and what
    :func:`~ndive_models.train.load_checkpoint` needs, no optimiser state) and, last,
    ``metrics.json`` (its presence marks the training done). Returns the metrics."""
    import torch

    from ._files import atomic_write

    out, result = Path(out), Path(result)
    m, ck = _evaluate(out / "best.pt", test_files)
    result.mkdir(parents=True, exist_ok=True)
    slim = {k: ck[k] for k in ("format", "config", "bz", "stats", "model", "epoch",
                               "best_val", "best_epoch", "best_kept_from", "n_train")
            if k in ck}
    atomic_write(result / "best.pt", lambda tmp: torch.save(slim, tmp))
    for name in ("config.yaml", "history.json"):
        atomic_write(result / name, lambda tmp, n=name: shutil.copy(out / n, tmp))
    _write_metrics(result, m)
    return m


# --------------------------------------------------------------------------------------------
# plan
# --------------------------------------------------------------------------------------------
#: Training throughput [jets per CPU second, one thread, validation included] assumed until a
#: training of the model has finished: the study's first clean baseline (20 epochs of 306k
#: jets in 996 CPU s), NDIVE and FTAG+NDIVE scaled by their step-time ratios to the baseline
#: in benchmarks/bench_training.py with the compiled fit (0.63 and 0.26).
DEFAULT_JETS_PER_S = {"baseline": 6000.0, "ndive": 3800.0, "ftag_ndive": 1550.0}
#: Generation speed [jets per CPU second, one worker] assumed until a shard of the condition
#: has been generated by the runner (balanced ttbar jets, the clean generator: the study's
#: 20k-jet shards took 1-2 CPU minutes each; pileup makes it ~10x slower).
GENERATION_JETS_PER_S = 200.0


def _history(t: Training) -> list:
    for p in (t.result / "history.json", t.out / "history.json", t.partial / "history.json"):
        if p.exists():
            return [e for e in json.loads(p.read_text()) if "jets_per_s" in e]
    return []


def _cpu_record(t: Training) -> dict:
    """``t``'s ``cpu.json`` (``{"train"|"evaluate": {"cpu_s", ...}}``; empty if none)."""
    for p in (t.result / "cpu.json", t.out / "cpu.json", t.partial / "cpu.json"):
        if p.exists():
            return json.loads(p.read_text())
    return {}


def _cpu_counts(t: Training) -> tuple[float, float, int]:
    """``(training CPU s, all CPU s, first epoch counted)`` of ``t`` so far. Training: the
    larger of the runner's record and the checkpoints' count (a running training, or one
    killed with its runner, is only in the latter); all: training plus evaluation; the
    first epoch counted is 1 unless the training resumed from a checkpoint written before
    CPU records."""
    rec = _cpu_record(t)
    ck = t.out / "train_cpu.json"
    ck = ck if ck.exists() else t.partial / "train_cpu.json"
    counted = json.loads(ck.read_text()) if ck.exists() else {}
    train = rec.get("train", {})
    train_s = max(train.get("cpu_s", 0.0), counted.get("cpu_s", 0.0))
    other_s = sum(e["cpu_s"] for k, e in rec.items() if k != "train")
    return (train_s, train_s + other_s,
            max(train.get("from_epoch", 1), counted.get("from_epoch", 1)))


def _n_jets(t: Training, study: dict) -> tuple[int, int]:
    """(training jets, validation jets) of ``t``."""
    n = sum(o["n_jets"] for _, o in shards(study, t.condition, "train"))
    n_val = max(1, round(t.cfg.val_fraction * n))
    return min(n - n_val, t.cfg.max_jets or n), min(n_val, t.cfg.max_val_jets or n_val)


def plan(study: dict, trainings: list[Training]) -> tuple[str, float]:
    """What is done and what remains: ``(text, remaining CPU hours)``. Remaining hours
    assume every training runs to its epoch limit (early stopping can only shorten it), at
    the median CPU throughput of the finished trainings of the same model (else
    :data:`DEFAULT_JETS_PER_S`), plus the missing shards at the median speed of the
    condition's shards on disk (the CPU seconds the runner adds to their logs) and of its
    :data:`GENERATION_RECORD` (else :data:`GENERATION_JETS_PER_S`); a missing shard that the
    record names is priced at its recorded CPU seconds."""
    import numpy as np

    rates: dict[str, list] = {}
    counts = {t.key: _cpu_counts(t) for t in trainings}
    for t in trainings:
        (cpu, _, from_epoch), epochs = counts[t.key], len(_history(t))
        # a partial CPU count would price the model's epochs too low
        if (t.status() in ("done", "trained", "stale") and cpu > 0 and epochs
                and from_epoch == 1):
            n_tr, n_val = _n_jets(t, study)
            rates.setdefault(t.cfg.model.name, []).append(epochs * (n_tr + n_val / 3.0) / cpu)
    lines = [("| condition | training | status | epochs done / max | CPU h spent | "
              "CPU h left (at most) |"), "|---|---|---|---|---|---|"]
    left_total = spent_total = 0.0
    any_low = False
    for t in trainings:
        st = t.status()
        done_ep = len(_history(t))
        n_tr, n_val = _n_jets(t, study)
        r = rates.get(t.cfg.model.name) or [DEFAULT_JETS_PER_S.get(t.cfg.model.name, 400.0)]
        rate = float(np.median(r))
        per_epoch = (n_tr + n_val / 3.0) / rate  # validation: forward only, ~1/3 of a step
        left = 0.0 if st in ("done", "trained", "stale") else (t.cfg.epochs - done_ep) * per_epoch
        left += 0.0 if st == "done" else (n_tr + n_val) / 20 / rate  # the final evaluation
        _, spent, from_epoch = counts[t.key]
        left_total += left
        spent_total += spent
        if st in ("todo", "partial", "trained") and _running(t):
            st += ", running"
        diff = t.config_differences() if st == "done" else []
        if diff:
            st += f" (with other settings: {'; '.join(diff)})"
        low = "≥ " if from_epoch > 1 else ""  # earlier epochs not counted
        any_low = any_low or bool(low)
        lines.append(f"| {t.condition or '-'} | {t.name} | {st} | {done_ep} / {t.cfg.epochs}"
                     f" | {low}{spent / 3600:.2f} | {left / 3600:.1f} |")
    gen_left, missing, gen_rates = 0.0, [], []
    gen_spent, n_measured, n_on_disk = 0.0, 0, 0
    for cond in dict.fromkeys(t.condition for t in trainings):
        todo, measured, known = [], [], 0.0
        record = generation_record(study, cond)
        for part in ("train", "test"):
            for p, o in shards(study, cond, part):
                on_disk = p.exists()
                logged = _shard_cpu_s(p) if on_disk else None
                n_on_disk += on_disk
                # the committed record keeps the cost of shards made on another machine
                cpu = logged or record.get(p.name, {}).get("cpu_s")
                if cpu:
                    gen_spent += cpu
                    n_measured += 1
                    measured.append(o["n_jets"] / cpu)
                if on_disk:
                    continue
                missing.append(o["n_jets"])
                if cpu:
                    known += cpu
                else:
                    todo.append(o["n_jets"])
        gen_left += known
        if not todo:  # nothing left to price at a rate in this condition
            continue
        rate = float(np.median(measured)) if measured else GENERATION_JETS_PER_S
        gen_rates.append(f"{cond or 'data'} {rate:.0f}"
                         + ("" if measured else " (assumed: none measured yet)"))
        gen_left += sum(todo) / rate
    speeds = (f" (jets per CPU second: {', '.join(gen_rates)}; measured on the shards on "
              f"disk and in {GENERATION_RECORD})") if gen_rates else ""
    lines += ["", (f"Trainings: {sum(t.status() == 'done' for t in trainings)} done, "
              f"{sum(t.status() in ('trained', 'stale') for t in trainings)} to evaluate, "
              f"{sum(t.status() == 'partial' for t in trainings)} partial, "
              f"{sum(t.status() == 'todo' for t in trainings)} to start. "
              f"CPU hours spent {'≥ ' if any_low else ''}{spent_total / 3600:.1f} on "
              f"trainings and {gen_spent / 3600:.1f} on generating the {n_measured} "
              f"shards whose generation was timed ({n_on_disk} on disk here); left at most "
              f"{left_total / 3600:.1f} for trainings and {gen_left / 3600:.1f} for "
              f"{len(missing)} missing shard(s){speeds}.")]
    return "\n".join(lines), (left_total + gen_left) / 3600


# --------------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------------
def run_study(study: dict, *, skip_references: bool = False, only_conditions=None,
              only_runs=None, plan_only: bool = False, report_only: bool = False,
              wait_data: float = 0.0, train_only: bool = False) -> int:
    """Run a study (from :func:`load_study`): data, trainings, per-training results,
    report; everything already done is skipped. ``wait_data`` > 0: wait for missing shards
    (generated by another process) instead of generating them, polling at that interval [s].
    ``train_only``: train, evaluate nothing and make no test shard; a finished training
    stays in its committed ``partial/`` (with ``finished.json``), and a later run on any
    machine evaluates it without the training shards.

    Returns 0, or 1 when a training or a condition failed (the others still ran; the
    messages name the logs).
    """
    every = study_trainings(study, skip_references=skip_references)
    todo = study_trainings(study, only_conditions=only_conditions,
                           skip_references=skip_references, only_runs=only_runs)
    known = set(conditions(study))
    for c in only_conditions or ():
        if c not in known:
            raise ValueError(f"--conditions: no condition {c!r} in the study "
                             f"(it has {sorted(known)})")
    if only_runs:  # references too: --skip-references may leave them out of `every`
        ts = study_trainings(study)
        runs, names = {t.run for t in ts}, {t.name for t in ts}
        bad = [r for r in only_runs if r not in runs and r not in names]
        if bad:
            raise ValueError(f"--runs: no run or training {bad[0]!r} in the study (its runs: "
                             f"{sorted(runs)}, each as <run>_s<seed>)")
    if plan_only:
        print(plan(study, todo)[0])
        return 0
    failures = []
    if not report_only:
        jobs, threads = max(1, int(study["jobs"])), int(study["threads"])
        for cond in dict.fromkeys(t.condition for t in todo):
            for t in todo:
                if t.condition == cond and t.status() == "done" and t.config_differences():
                    print(f"note: {t.key} is done with other settings than the study's "
                          f"({'; '.join(t.config_differences())}); it is kept, not retrained: "
                          f"remove {t.result} to retrain it", file=sys.stderr)
            left = ("todo", "partial") if train_only else ("todo", "partial", "trained",
                                                            "stale")
            ts = [t for t in todo if t.condition == cond and t.status() in left]
            if not ts:
                continue
            test = [str(p) for p, _ in shards(study, cond, "test")]
            test_ready = threading.Event()
            # training shards first: the trainings start while the test shards are made by
            # the trainings that need them, each one at a time (the other jobs train on).
            # When every training left only needs evaluating (a test set enlarged, results
            # committed from another machine), no training shard is needed: the test
            # shards are made `jobs` at a time.
            evaluations_only = all(t.status() in ("trained", "stale") for t in ts)
            try:
                if evaluations_only:
                    ensure_data(study, cond, jobs, wait=wait_data, parts=("test",))
                    test_ready.set()
                else:
                    ensure_data(study, cond, jobs, wait=wait_data, parts=("train",))
            except (PresetUnavailable, ValueError, RuntimeError) as err:
                print(f"condition {cond or '(default)'}: {err}", file=sys.stderr, flush=True)
                failures.append((cond, str(err)))
                continue

            def make_test(cond=cond, ready=test_ready):
                # every job that reaches an evaluation makes test shards nobody else is on
                # (no core idles while another makes them); later evaluations find them ready
                if not ready.is_set():
                    ensure_data(study, cond, 1, wait=wait_data, parts=("test",))
                    ready.set()

            with ThreadPoolExecutor(jobs) as pool:
                failures += [r for r in pool.map(
                    lambda t, test=test, mk=make_test: _one(t, test, threads, mk,
                                                            evaluate=not train_only), ts)
                    if r[1] is not None]
    write_report(study, every)
    print(plan(study, every)[0])
    for key, err in failures:
        print(f"failed: {key}: {err}", file=sys.stderr)
    return 1 if failures else 0
# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
def write_report(study: dict, trainings: list[Training]) -> str:
    """Write ``<report>/report.md`` (and its plots) from the finished trainings' results;
    returns the text."""
    from . import _study_report

    return _study_report.write({**study, "shown": _shown(study["source"])}, trainings, PAPER,
                               plan(study, trainings)[0])


def _shown(path) -> str:
    """A study file as the report names it: shipped ones by their name."""
    from .configs import DIRECTORY

    p = Path(path).resolve()
    if DIRECTORY in p.parents:
        return f"{p.relative_to(DIRECTORY).with_suffix('').as_posix()} (shipped)"
    return str(path)


def main(argv=None) -> int:
    """``ndive paper`` with the options ``argv`` (default: ``sys.argv[1:]``)."""
    from .cli import main as cli_main

    return cli_main(["paper", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # python -m ndive_models.paper
    from ndive_models.cli import run_as_program

    sys.exit(run_as_program(["paper", *sys.argv[1:]]))

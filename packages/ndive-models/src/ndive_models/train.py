"""Train a model: ``ndive train`` (one process) or ``torchrun --nproc-per-node K -m
ndive_models.train`` (data parallel, DDP).

Configuration: a YAML or TOML file whose top-level keys are :class:`TrainConfig` fields and
whose ``model`` table holds :class:`~ndive_models.models.ModelConfig` fields (the shipped
``baseline``, ``ndive`` and ``ftag_ndive`` configs can be named instead of a path); command-line
flags and ``--set key=value`` (e.g. ``--set model.dim=64``) override it.

Each epoch: a pass over the shuffled training jets, validation, and an atomic checkpoint
``<out>/last.pt`` (``best.pt`` when the validation loss improves). ``--resume`` continues
from ``last.pt`` and reproduces the uninterrupted run bit for bit (the data order depends only
on ``seed`` and the epoch; the checkpoint holds model, optimiser, RNG and history). Training
stops early after ``patience`` epochs without improvement. Run logs (:mod:`ndive_models._runlog`)
go next to the checkpoints: ``config.yaml`` (the resolved configuration), ``provenance.json``
(package versions, git revision; also in each checkpoint), ``steps.csv`` (loss and learning
rate of every step) and, with TensorBoard installed, ``tensorboard/``.

Data parallel: every process holds the data, a :class:`~torch.utils.data.DistributedSampler`
gives process ``r`` the indices ``perm[r::K]`` of the epoch's permutation ``perm``, so global
batch ``k`` is the same jets as in single-process training; losses are divided by counts
summed over processes, so K processes compute the single-process gradient.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch

from . import _runlog
from ._files import atomic_write
from ._runtime import compile_report, quiet_compile_warnings, set_threads
from .models import ModelConfig, build_model, combine, total_loss
from .models.config import check_types

__all__ = ["TrainConfig", "learning_rate", "load_checkpoint", "load_config", "main", "split_indices",
           "train"]

CHECKPOINT_FORMAT = "ndive-models-checkpoint-1"
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Training settings (file keys and ``--set`` names).

    Attributes:
        train: training file, or a list of files (shards, concatenated in order).
            val: validation file (default: a random ``val_fraction`` of the training
            file, drawn with ``split_seed``, the same for every model and seed).
            max_jets / max_val_jets: use at most this many training / validation jets (a
            random subset: generated files are not shuffled; a balanced file ends with the
            jets of its rarest flavour).
        out: output directory (checkpoints, ``history.json`` and the run logs).
        epochs, batch_size: paper: batch 100. optimizer: ``novograd`` (paper), ``adamw``
            (GN2) or ``lion`` (GN3).
        lr: learning rate (paper: 1e-4 with NovoGrad); the peak rate of a schedule.
            weight_decay.
        lr_schedule: ``constant`` (the paper's) or ``cosine``: after the warm-up the rate
            falls as ``lr (1 + cos(pi x)) / 2``, ``x`` going from 0 to 1 over the remaining
            steps of ``epochs``, so the last steps move the weights little and where a
            training ends depends less on the noise of its last batches (with a constant
            rate the validation loss of a training jumps by 0.01-0.05 from epoch to epoch;
            docs/training.md). Set per step: a resumed run continues the same curve.
        warmup_epochs: the rate rises linearly from ``lr / n`` to ``lr`` over the first
            ``n`` steps, ``n`` = this many epochs (fractions allowed; 0: none).
        seed: initialisation and data order. patience: early-stopping patience (epochs).
        monitor: the validation quantity that picks ``best.pt`` and stops early: ``loss``
            (the total, the paper's) or one loss term, e.g. ``flavour``, which is comparable
            between models whose auxiliary terms differ (FTAG+NDIVE's vertex term); one of
            ``model.loss_names()``, checked when the config is made (NDIVE alone has no
            ``flavour``). A resumed run may change it when the best epoch it implies is one
            whose weights were kept.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``...
        progress: show a progress bar.
        threads: PyTorch intra-op threads of this process (``torch.set_num_threads``);
            default 1: at batch 100 the operations are too small for more threads to pay,
            and on a shared machine extra threads only compete (two trainings with
            PyTorch's default threads on 2 busy cores ran 6x slower than with one each;
            docs/training.md). 0 keeps PyTorch's choice (all cores).
        model: :class:`ModelConfig`.
    """

    train: str | list = ""
    val: str | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    max_jets: int | None = None
    max_val_jets: int | None = None
    out: str = "runs/model"
    epochs: int = 10
    batch_size: int = 100
    optimizer: str = "novograd"
    lr: float = 1e-4
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    seed: int = 1
    patience: int = 5
    monitor: str = "loss"
    device: str = "auto"
    progress: bool = True
    threads: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}; known: "
                             f"{sorted(known)}")
        model = d.pop("model", {}) or {}
        if not isinstance(model, (ModelConfig, dict)):
            raise ValueError(f"model: expected a table of model options, got {model!r}")  # noqa: TRY004 (config errors are ValueErrors)
        if not isinstance(model, ModelConfig):
            model = ModelConfig.from_dict(model)
        return cls(**check_types(cls, d), model=model)

    def __post_init__(self):  # every construction, from a file or in code (replace())
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got "
                             f"{self.lr_schedule!r}")
        if not self.lr >= 0 or not self.warmup_epochs >= 0:
            raise ValueError(f"lr and warmup_epochs must be >= 0, got lr={self.lr}, "
                             f"warmup_epochs={self.warmup_epochs}")
        if isinstance(self.model, ModelConfig) and self.monitor not in self.model.loss_names():
            raise ValueError(f"monitor: model {self.model.name!r} has no validation loss "
                             f"{self.monitor!r}; it has {list(self.model.loss_names())}")

    def to_dict(self) -> dict:
        return asdict(self)


def _read_file(path) -> dict:
    from .configs import find

    path = find(path)
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"config {path}: invalid TOML: {err}") from None
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            d = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"config {path}: invalid YAML{where}: {problem}") from None
    else:
        raise ValueError(f"config {path}: use a .yaml, .yml or .toml file")
    if not isinstance(d, dict):
        raise ValueError(f"config {path}: expected a table of options at the top level")  # noqa: TRY004
    return d


def load_config(path=None, overrides: dict | None = None) -> TrainConfig:
    """Config file (YAML/TOML, optional; a path or the name of a shipped config such as
    ``ftag_ndive``, see :mod:`ndive_models.configs`) with ``overrides`` ({dotted key: value})
    applied."""
    from .configs import set_key

    d = _read_file(path) if path else {}
    for k, v in (overrides or {}).items():
        set_key(d, k, v)
    return TrainConfig.from_dict(d)


# --------------------------------------------------------------------------------------------
# distributed helpers
# --------------------------------------------------------------------------------------------
def _dist_info():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _maybe_init_distributed(device_kind: str) -> bool:
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        return True
    return False


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
    return t


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} (--device / config key 'device'): not a device; "
                         "use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} (--device / config key 'device'): CUDA is not "
                             "available on this machine (torch.cuda.is_available() is False)")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    return dev


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def upgrade_state_dict(state: dict) -> dict:
    """Parameters saved before the FTAG-family options, renamed to today's modules (same
    function): ``encoder.embed.N`` -> ``encoder.embed.tracks.N``, the feed-forward's
    ``ff.0`` / ``ff.2`` -> ``ff.inp`` / ``ff.out``, and the pair head's first layer on
    ``[x_i, x_j]`` split into ``pair.first`` (x_i columns, bias) and ``pair.second``."""
    import re

    if not any(re.search(r"(^|\.)heads\.pair\.0\.weight$|encoder\.embed\.0\.", k)
               for k in state):
        return state
    out = {}
    for k, v in state.items():
        k2 = re.sub(r"encoder\.embed\.(\d)", r"encoder.embed.tracks.\1", k)
        k2 = re.sub(r"\.ff\.0\.", ".ff.inp.", k2)
        k2 = re.sub(r"\.ff\.2\.", ".ff.out.", k2)
        m = re.match(r"(.*heads\.pair)\.(\d)\.(weight|bias)$", k2)
        if m and m.group(2) == "0":
            if m.group(3) == "weight":
                d = v.shape[1] // 2
                out[m.group(1) + ".first.weight"] = v[:, :d].clone()
                out[m.group(1) + ".second.weight"] = v[:, d:].clone()
            else:
                out[m.group(1) + ".first.bias"] = v
            continue
        if m:
            k2 = f"{m.group(1)}.out.{m.group(3)}"
        out[k2] = v
    return out


def load_checkpoint(path, device="cpu"):
    """Load a checkpoint written by :func:`train`.

    Returns:
        ``(model, checkpoint_dict)``: the model (eval mode, on ``device``) and the raw dict
        (``config``, ``epoch``, ``history``, ``best_val``...).
    """
    ck = _read_checkpoint(path, device)
    mcfg = ModelConfig.from_dict(ck["config"]["model"])
    model = build_model(mcfg, ck["stats"], ck["bz"]).to(device)
    try:
        model.load_state_dict(upgrade_state_dict(ck["model"]))
    except RuntimeError as err:
        raise ValueError(f"{path}: its weights do not fit the model it names "
                         f"({mcfg.name}, dim {mcfg.dim}): {str(err).splitlines()[0]}") from None
    model.eval()
    return model, ck


def _read_checkpoint(path, device="cpu") -> dict:
    """The dict of a checkpoint file; ValueError naming the file if it is none."""
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        ck = torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, ValueError, OSError, EOFError, AttributeError, ImportError,
            pickle.UnpicklingError) as err:  # truncated zip, pickle garbage, another file kind
        raise ValueError(f"{path}: not a readable checkpoint (truncated or not a .pt file: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__})"
                         ) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an ndive-models checkpoint")
    return ck


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def _loss_with_global_counts(model, out, batch, world: int):
    terms = model.loss_terms(out, batch)
    balance = model.cfg.loss_balance
    if world == 1:
        return total_loss(terms, balance=balance), terms
    names = list(terms)
    counts = _all_reduce(torch.stack([terms[k][1].detach() for k in names]))
    means = None
    if balance == "gls":  # GLS weights from the global task means
        sums = _all_reduce(torch.stack([terms[k][0].detach().double() for k in names]))
        means = dict(zip(names, sums / counts.double().clamp_min(1.0)))
    loss = total_loss(terms, dict(zip(names, counts)), balance, means)
    return loss * world, terms


def _check_finite(loss, epoch, step):
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite training loss ({loss.item()}) at epoch {epoch}, step {step}: "
            "an input or a parameter is NaN/inf"
        )


def _check_finite_grads(model, epoch, step):
    bad = [n for n, p in model.named_parameters()
           if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    if bad:
        raise FloatingPointError(f"non-finite gradient at epoch {epoch}, step {step} in "
                                 f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")


@torch.no_grad()
def validate(model, data: dict, batch_size: int, device) -> dict:
    """Loss terms summed over a whole data set: ``{"loss": total, name: mean...}``."""
    from .data.loader import index_batch, to_device

    model.eval()
    n = data["valid"].shape[0]
    sums, counts, weights = {}, {}, {}
    for s in range(0, n, batch_size):
        b = to_device(index_batch(data, slice(s, s + batch_size)), device)
        terms = model.loss_terms(model(b), b)
        for k, (sm, ct, w) in terms.items():
            sums[k] = sums.get(k, 0.0) + float(sm)
            counts[k] = counts.get(k, 0.0) + float(ct)
            weights[k] = w
    res = {k: sums[k] / max(counts[k], 1.0) for k in sums}
    res["loss"] = combine(res, weights, model.cfg.loss_balance,
                          {k: counts[k] > 0 for k in sums})
    model.train()
    return res


def split_indices(n: int, val_fraction: float, split_seed: int = 0):
    """``(train_idx, val_idx)``: a seeded random split of ``n`` jets (LongTensors, each in
    the random order in which ``max_jets`` / ``max_val_jets`` truncate them)."""
    n_val = max(1, round(val_fraction * n))
    if n - n_val < 1:
        raise ValueError(f"{n} jets are too few to split off validation")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return perm[n_val:], perm[:n_val]


#: Options a resumed run may change: they do not alter what was trained so far.
RESUME_MAY_CHANGE = ("epochs", "patience", "progress", "device")


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (compile
    workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _monitored(v: dict, key: str) -> float:
    if key not in v:
        raise ValueError(f"monitor: the validation has no {key!r}; it has {sorted(v)}")
    return v[key]


def best_entry(history: list, key: str) -> dict | None:
    """The entry of a training ``history`` with the lowest validation ``key`` (the epoch
    that ``monitor: key`` keeps in ``best.pt``), or None when no epoch was validated."""
    hist = [h for h in history if "val" in h]
    return min(hist, key=lambda h: _monitored(h["val"], key)) if hist else None


def _remonitor(cfg: TrainConfig, ck: dict, out: Path, rank: int) -> tuple[float, int, int]:
    """``(best value, best epoch, epochs since)`` of a resumed run under a new ``monitor``,
    from its history. The new best epoch must be the one in ``best.pt`` or the last one
    (then ``best.pt`` is rewritten from ``last.pt``): other weights were not kept."""
    best = best_entry(ck["history"], cfg.monitor)
    if best is None:
        return math.inf, 0, 0
    if best["epoch"] not in (ck["best_epoch"], ck["epoch"]):
        raise ValueError(
            f"--resume: with monitor {cfg.monitor!r} the best epoch of {out} is "
            f"{best['epoch']}, whose weights were not kept (best.pt holds epoch "
            f"{ck['best_epoch']}, last.pt epoch {ck['epoch']}): train into a new --out")
    value, bad = _monitored(best["val"], cfg.monitor), ck["epoch"] - best["epoch"]
    if rank == 0:  # best.pt states the new choice (and holds the last weights if they won)
        state = dict(ck) if best["epoch"] == ck["epoch"] else _read_checkpoint(out / "best.pt")
        state.update(config=cfg.to_dict(), best_val=value, best_epoch=best["epoch"],
                     bad_epochs=bad)
        atomic_write(out / "best.pt", lambda tmp: torch.save(state, tmp))
    return value, best["epoch"], bad


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of global optimiser step ``step`` (0-based, counted over all
    epochs) of a training with ``steps_per_epoch`` steps per epoch (see
    :class:`TrainConfig`: ``lr``, ``lr_schedule``, ``warmup_epochs``)."""
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(cfg.epochs * steps_per_epoch - warm, 1)
    x = min((step - warm) / span, 1.0)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * x))


def with_defaults(saved: dict) -> dict:
    """A saved training config with the options it predates filled in with their defaults
    (which is what such a training ran with)."""
    out = {f.name: f.default for f in fields(TrainConfig)
           if f.default is not MISSING and f.name not in saved}
    return {**out, **saved}


def _rebest(ck: dict, out: Path, rank: int) -> tuple[float, int, int]:
    """``(best value, best epoch, epochs since)`` of a run resumed without its ``best.pt``
    (e.g. a checkpoint directory copied without it). When the best epoch is the last one,
    ``best.pt`` is written again from ``last.pt`` and nothing is lost. Otherwise the best
    epoch's weights are gone: that is said on stderr, and the best epoch is chosen again
    among the epochs from the last one on (``best.pt`` holds the last weights until a later
    epoch improves on them); the checkpoints record that epoch as ``best_kept_from``."""
    if ck["best_epoch"] != ck["epoch"]:
        entry = next((h for h in ck["history"] if h.get("epoch") == ck["epoch"]), None)
        if entry is None or "val" not in entry:
            raise ValueError(f"--resume: {out} has no best.pt and no validation of its last "
                             f"epoch {ck['epoch']} to start the choice of the best epoch "
                             "again: train into a new --out")
        monitor = with_defaults(ck["config"])["monitor"]
        if rank == 0:
            print(f"warning: {out}: best.pt is missing; the weights of the best epoch "
                  f"{ck['best_epoch']} are lost: the best epoch is chosen again from epoch "
                  f"{ck['epoch']} on", file=sys.stderr, flush=True)
        ck.update(best_val=_monitored(entry["val"], monitor), best_epoch=ck["epoch"],
                  bad_epochs=0, best_kept_from=ck["epoch"])
    if rank == 0:
        atomic_write(out / "best.pt", lambda tmp: torch.save(ck, tmp))
    return ck["best_val"], ck["best_epoch"], ck["bad_epochs"]


def _check_resume(cfg: TrainConfig, saved: dict, last) -> None:
    """Refuse to resume with options that differ from the checkpoint's (the run would
    silently continue with the saved optimiser state, e.g. the old learning rate)."""
    now, saved = cfg.to_dict(), with_defaults(saved)
    diff = []
    for key in sorted(set(now) | set(saved)):
        if key in RESUME_MAY_CHANGE + ("monitor",) and not (
                key == "epochs" and cfg.lr_schedule != "constant"):
            continue
        if key == "model":
            m_now, m_old = now["model"], saved.get("model", {})
            diff += [f"model.{k}: {m_old.get(k)!r} -> {m_now.get(k)!r}"
                     for k in sorted(set(m_now) | set(m_old)) if m_now.get(k) != m_old.get(k)]
        elif now.get(key) != saved.get(key):
            diff.append(f"{key}: {saved.get(key)!r} -> {now.get(key)!r}")
    if diff:
        raise ValueError(f"--resume: {last} was trained with other options ({'; '.join(diff)}); "
                         f"a resumed run keeps its options (only {', '.join(RESUME_MAY_CHANGE)} "
                         "may change): drop the others or train into a new --out")


def _load_data(cfg: TrainConfig):
    from .data.loader import index_batch, load_batch

    if not cfg.train:
        raise ValueError("no training file given (config key 'train' or --train)")
    data, bz = load_batch(cfg.train)
    n = data["valid"].shape[0]
    gen = torch.Generator().manual_seed(cfg.split_seed)
    if cfg.val:
        val, bz_v = load_batch(cfg.val)
        if bz_v != bz:
            raise ValueError(f"train ({bz} T) and validation ({bz_v} T) files differ in field")
        val_idx = torch.randperm(val["valid"].shape[0], generator=gen)
        train_idx = torch.randperm(n, generator=gen)
    else:
        train_idx, val_idx = split_indices(n, cfg.val_fraction, cfg.split_seed)
        val = data
    val = index_batch(val, val_idx[:cfg.max_val_jets])
    data = index_batch(data, train_idx[:cfg.max_jets])
    return data, val, bz


def train(cfg: TrainConfig, *, resume: bool = False) -> dict:
    """Train ``cfg.model`` on ``cfg.train``; returns a summary dict (history, best epoch,
    checkpoint paths). Works as one process or under ``torchrun`` (DDP)."""
    from torch.utils.data import DistributedSampler

    from ._optim import make_optimizer
    from .data.loader import index_batch, to_device
    from .data.normalisation import feature_stats

    if cfg.batch_size < 1 or cfg.epochs < 0:
        raise ValueError("batch_size must be >= 1 and epochs >= 0")
    set_threads(cfg.threads)
    dev = _pick_device(cfg.device)
    started_dist = _maybe_init_distributed(dev.type)
    rank, world = _dist_info()
    steplog = None
    try:
        if cfg.batch_size % world:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the "
                             f"{world} processes")
        out = Path(cfg.out)
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        data, val, bz = _load_data(cfg)
        n_train = data["valid"].shape[0]
        torch.manual_seed(cfg.seed)
        last = out / "last.pt"
        ck = None
        if resume:
            if not last.exists():
                raise FileNotFoundError(f"--resume: no checkpoint {last}")
            ck = _read_checkpoint(last)
            _check_resume(cfg, ck["config"], last)
            stats = ck["stats"]
        else:
            stats = feature_stats(data, bz)
        model = build_model(cfg.model, stats, bz).to(dev)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay) if params else None
        history, best_val, best_epoch, bad, start = [], math.inf, 0, 0, 0
        # CPU seconds of the training so far, carried in the checkpoints: a run that is
        # killed (end of a session) keeps what its finished epochs cost
        cpu_before, cpu0 = (ck or {}).get("cpu_s", 0.0), _cpu_seconds()
        # a checkpoint written before CPU records (no "cpu_s") leaves its epochs uncounted
        cpu_from = (1 if ck is None else ck.get("cpu_from_epoch",
                                                1 if "cpu_s" in ck else ck["epoch"] + 1))
        if ck is not None:
            model.load_state_dict(ck["model"])
            if opt is not None:
                opt.load_state_dict(ck["optimizer"])
            history, best_val = ck["history"], ck["best_val"]
            best_epoch, bad, start = ck["best_epoch"], ck["bad_epochs"], ck["epoch"]
            torch.set_rng_state(ck["rng"])
            stopped_before = ck.get("stopped_early")
            if not (out / "best.pt").exists() and history:
                best_val, best_epoch, bad = _rebest(ck, out, rank)
            if with_defaults(ck["config"])["monitor"] != cfg.monitor:
                best_val, best_epoch, bad = _remonitor(cfg, ck, out, rank)
                stopped_before = bad >= cfg.patience and start < cfg.epochs
            if stopped_before:
                start = cfg.epochs
        ddp = model
        if world > 1 and params:
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda"
                                          else None)
        sampler = DistributedSampler(range(n_train), num_replicas=world, rank=rank,
                                     shuffle=True, seed=cfg.seed, drop_last=True)
        local_bs = cfg.batch_size // world
        data_dev = to_device(data, dev)
        n_epochs = cfg.epochs if params else 0
        stopped = False
        prov = _runlog.provenance()
        if rank == 0:
            _runlog.write_run_info(out, cfg.to_dict(), prov)
            steplog = _runlog.StepLog(out, resume_epoch=start)

        def checkpoint(epoch, improved):
            if rank != 0:
                return
            state = {
                "format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "bz": bz,
                "stats": stats, "model": model.state_dict(),
                "optimizer": opt.state_dict() if opt is not None else None,
                "epoch": epoch, "history": history, "best_val": best_val,
                "best_epoch": best_epoch, "bad_epochs": bad, "rng": torch.get_rng_state(),
                "stopped_early": stopped, "n_train": n_train, "provenance": prov,
                "cpu_s": cpu_before + _cpu_seconds() - cpu0, "cpu_from_epoch": cpu_from,
                "best_kept_from": (ck or {}).get("best_kept_from", 1),
            }
            atomic_write(last, lambda tmp: torch.save(state, tmp))
            if improved:
                atomic_write(out / "best.pt", lambda tmp: torch.save(state, tmp))
            text = json.dumps(history, indent=1)
            atomic_write(out / "history.json", lambda tmp: tmp.write_text(text))
            cpu = json.dumps({"cpu_s": state["cpu_s"], "epoch": epoch,
                              "from_epoch": cpu_from})
            atomic_write(out / "train_cpu.json", lambda tmp: tmp.write_text(cpu))

        if not params and ck is None:
            v = validate(model, val, cfg.batch_size, dev)
            best_val = _monitored(v, cfg.monitor)
            history.append({"epoch": 0, "val": v})
            checkpoint(0, True)

        model.train()
        report_compile = rank == 0 and cfg.model.name != "baseline" and cfg.model.fit_compile
        if report_compile:
            quiet_compile_warnings()  # compile_report says it in one line
        for epoch in range(start + 1, n_epochs + 1):
            sampler.set_epoch(epoch)
            idx = torch.tensor(list(sampler), dtype=torch.long)
            n_steps = math.ceil(len(idx) / local_bs)
            t0 = time.perf_counter()
            run_sum = torch.zeros((), dtype=torch.float64, device=dev)
            step_losses = []  # read back once per epoch: no device sync per step
            bar = None
            if cfg.progress and rank == 0:
                from tqdm import tqdm

                bar = tqdm(total=n_steps * local_bs * world, unit="jet", leave=False,
                           desc=f"{cfg.model.name} epoch {epoch}/{n_epochs}", file=sys.stderr)
            step_lrs = []
            for step in range(n_steps):
                t_step = time.perf_counter()
                rate = learning_rate(cfg, (epoch - 1) * n_steps + step, n_steps)
                for group in opt.param_groups:
                    group["lr"] = rate
                step_lrs.append(rate)
                bidx = idx[step * local_bs:(step + 1) * local_bs].to(dev)
                b = index_batch(data_dev, bidx)
                outp = ddp(b)
                loss, _ = _loss_with_global_counts(model, outp, b, world)
                # the global loss, identical on every process: all stop together on NaN,
                # before a NaN gradient reaches the parameters
                lval = _all_reduce(loss.detach().double()) / world
                _check_finite(lval, epoch, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                _check_finite_grads(model, epoch, step)
                opt.step()
                run_sum += lval
                step_losses.append(lval)
                if report_compile:  # the first step compiled the fit (or loaded it)
                    compile_report(f"[{cfg.model.name}]", time.perf_counter() - t_step)
                    report_compile = False
                if bar is not None and (step % 10 == 0 or step == n_steps - 1):
                    el = time.perf_counter() - t0
                    bar.n = (step + 1) * local_bs * world
                    bar.set_postfix(loss=f"{float(run_sum) / (step + 1):.4f}",
                                    jets_s=f"{bar.n / max(el, 1e-9):.0f}")
            if bar is not None:
                bar.close()
            train_loss = float(run_sum) / max(n_steps, 1)
            _check_finite(torch.tensor(train_loss), epoch, n_steps)
            seconds = time.perf_counter() - t0
            v = validate(model, val, max(local_bs, 256), dev)
            value = _monitored(v, cfg.monitor)
            improved = value < best_val
            if improved:
                best_val, best_epoch, bad = value, epoch, 0
            else:
                bad += 1
            history.append({"epoch": epoch, "train_loss": train_loss, "val": v,
                            "seconds": seconds, "jets_per_s": len(idx) * world / seconds})
            stopped = bad >= cfg.patience and epoch < n_epochs
            if steplog is not None:
                steplog.epoch(epoch, torch.stack(step_losses).tolist(), step_lrs,
                              {"train_loss": train_loss, "val": v["loss"]})
            checkpoint(epoch, improved)
            if rank == 0:
                print(f"[{cfg.model.name}] epoch {epoch}: train {train_loss:.4f} "
                      f"val {v['loss']:.4f} ({seconds:.1f} s, "
                      f"{len(idx) * world / seconds:.0f} jets/s)"
                      + (" best" if improved else ""), file=sys.stderr, flush=True)
            if stopped:
                if rank == 0:
                    print(f"[{cfg.model.name}] early stop: no improvement for "
                          f"{cfg.patience} epochs", file=sys.stderr)
                break
        return {"out": str(out), "history": history, "best_val": best_val,
                "best_epoch": best_epoch, "last": str(last), "best": str(out / "best.pt"),
                "n_train": n_train, "world_size": world}
    finally:
        if steplog is not None:
            steplog.close()
        if started_dist:
            import torch.distributed as dist

            dist.destroy_process_group()


def main(argv=None) -> int:
    """``ndive train`` with the options ``argv`` (default: ``sys.argv[1:]``)."""
    from .cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # python -m ndive_models.train, e.g. under torchrun
    from ndive_models.cli import run_as_program

    sys.exit(run_as_program(["train", *sys.argv[1:]]))

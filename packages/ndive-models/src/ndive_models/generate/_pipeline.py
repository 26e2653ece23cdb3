"""Pythia 8 ttbar -> jets -> HDF5: configuration, seeded worker processes, balancing, progress.

Reproducibility: worker ``w`` of ``W`` runs its own Pythia instance seeded from
``SeedSequence(seed).spawn(W)[w]`` and produces batches of ``batch_events`` events; the main
process takes batches strictly round-robin (0, 1, ..., W-1, 0, ...), so the file depends only on
the options, never on which worker happens to be faster. Event numbers are
``(batch * W + w) * batch_events + i``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from vertexfit import DEFAULT_BZ

from ..data import JetWriter
from ..data.schema import FLAVOURS
from ._workers import WorkerPool

INSTALL_HINT = "pip install 'ndive-models[generate]'"
_PYTHIA_SEED_MAX = 900_000_000  # Pythia accepts seeds up to 900 000 000


class MissingExtraError(ImportError):
    """The optional event-generation dependencies are not installed."""


def require_generate_extra() -> None:
    """Raise :class:`MissingExtraError` naming the install command if Pythia/fastjet are absent."""
    missing = []
    for module in ("pythia8mc", "fastjet", "awkward"):
        try:
            __import__(module)
        except ImportError as err:
            if _interrupted(err):  # pybind11 turns a Ctrl-C during module init into this
                raise KeyboardInterrupt from err
            missing.append(module)
    if missing:
        raise MissingExtraError(
            f"event generation needs {', '.join(missing)}, which is not installed; "
            f"install the extra with: {INSTALL_HINT}"
        )


def _interrupted(err: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the causes of ``err``."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


@dataclass(frozen=True)
class GenerationConfig:
    """Options of one generation run (all of them are stored in the file's attributes).

    Attributes:
        n_jets: jets to write.
        seed: master seed; the same seed and options give an identical file.
        workers: generator processes (part of the options: it changes the event sequence).
        balance: keep equal numbers of b, c and light jets.
        max_tracks: track slots per jet (highest-pT tracks kept).
        mpi: multiparton interactions (the underlying event) on.
        hadronic_w: force W -> quarks (more c-jets, faster balanced generation).
        batch_events: events per Pythia ``nextBatch`` call and per work unit.
        bz: solenoid field [T].
        ecm: centre-of-mass energy [GeV].
    """

    n_jets: int
    seed: int = 1
    workers: int = 2
    balance: bool = False
    max_tracks: int = 15
    mpi: bool = True
    hadronic_w: bool = False
    batch_events: int = 50
    bz: float = DEFAULT_BZ
    ecm: float = 14000.0

    def __post_init__(self):
        checks = {
            "n_jets": self.n_jets >= 1,
            "workers": self.workers >= 1,
            "max_tracks": self.max_tracks >= 1,
            "batch_events": self.batch_events >= 1,
            "seed": 0 <= self.seed < 2**63,
            "bz": self.bz > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid generation option(s): {', '.join(bad)} ({self})")

    def pythia_settings(self) -> list[str]:
        """Pythia ``readString`` lines, except the seed (set per worker)."""
        settings = [
            f"Beams:eCM = {self.ecm:g}",
            "Top:gg2ttbar = on",
            "Top:qqbar2ttbar = on",
            f"PartonLevel:MPI = {'on' if self.mpi else 'off'}",
            "Print:quiet = on",
            "Next:numberCount = 0",
        ]
        if self.hadronic_w:
            settings += ["24:onMode = off", "24:onIfAny = 1 2 3 4 5"]
        return settings


def worker_seeds(seed: int, workers: int) -> list[tuple[int, np.random.SeedSequence]]:
    """(Pythia seed, NumPy SeedSequence) of each worker, derived from the master seed."""
    out = []
    for child in np.random.SeedSequence(seed).spawn(workers):
        pythia_seed = int(child.generate_state(1, np.uint64)[0] % _PYTHIA_SEED_MAX) + 1
        out.append((pythia_seed, child))
    return out


class _ChargeTable:
    """PDG id -> charge [e] from Pythia's particle data, cached."""

    def __init__(self, particle_data):
        self._pd = particle_data
        self._cache: dict[int, float] = {}

    def __call__(self, pdgid: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(pdgid, return_inverse=True)
        for u in uniq.tolist():
            if u not in self._cache:
                self._cache[u] = float(self._pd.charge(u))
        values = np.array([self._cache[u] for u in uniq.tolist()])
        return np.rint(values[inverse.reshape(-1)]).astype(np.int64)


def _pythia(cfg: GenerationConfig, worker: int):
    """Initialised Pythia of one worker."""
    import pythia8mc

    pythia_seed, _ = worker_seeds(cfg.seed, cfg.workers)[worker]
    pythia = pythia8mc.Pythia("", False)
    for line in cfg.pythia_settings() + ["Random:setSeed = on", f"Random:seed = {pythia_seed}"]:
        if not pythia.readString(line):
            raise RuntimeError(f"Pythia rejected setting {line!r}")
    if not pythia.init():
        raise RuntimeError("Pythia initialisation failed")
    return pythia


def _pythia_only(worker: int, cfg: GenerationConfig):
    """Worker entry point for benchmarks: events per batch of Pythia alone (no jets, tracks)."""
    pythia = _pythia(cfg, worker)
    while True:
        yield len(pythia.nextBatch(cfg.batch_events))


def _batches(cfg: GenerationConfig, worker: int):
    """Endless (jets, tracks) batches of one worker (runs in the worker process)."""
    from ._event import process_batch

    _, seq = worker_seeds(cfg.seed, cfg.workers)[worker]
    pythia = _pythia(cfg, worker)
    rng = np.random.default_rng(seq)
    charge_of = _ChargeTable(pythia.particleData)
    for j in itertools.count():
        batch = pythia.nextBatch(cfg.batch_events)
        first_event = (j * cfg.workers + worker) * cfg.batch_events
        jets, tracks = process_batch(
            batch, charge_of, rng, max_tracks=cfg.max_tracks, bz=cfg.bz, event_offset=first_event
        )
        yield jets, tracks, len(batch)


def _produce(worker: int, cfg: GenerationConfig):
    """Worker-process entry point of :class:`~._workers.WorkerPool`."""
    return _batches(cfg, worker)


class _InProcess:
    def __init__(self, cfg):
        self.gen = _batches(cfg, 0)

    def get(self, worker):
        return next(self.gen)

    def close(self):
        self.gen.close()


def _quotas(cfg: GenerationConfig) -> np.ndarray:
    if not cfg.balance:
        return np.array([cfg.n_jets])
    base, rest = divmod(cfg.n_jets, 3)
    return np.array([base + (i < rest) for i in range(3)])


def _package_versions() -> dict:
    out = {}
    for dist in ("ndive-models", "vertexfit", "pythia8mc", "fastjet", "awkward", "numpy", "h5py"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def file_attributes(cfg: GenerationConfig) -> dict:
    """Attributes stored in the output file (deterministic: no timestamps, no host names)."""
    return {
        "bz_tesla": float(cfg.bz),
        "seed": int(cfg.seed),
        "generator": "Pythia 8 pp -> ttbar, anti-kT R=0.4 (fastjet), parametric ATLAS-like tracker",
        "generator_settings": {
            "pythia": cfg.pythia_settings(),
            "options": dataclasses.asdict(cfg),
            "jets": "anti-kT R=0.4, visible stable particles, pT > 20 GeV, |eta| < 2.5",
            "flavour": "weakly decaying b/c hadron pT > 5 GeV, dR < 0.3, nearest jet",
            "tracks": "charged, pT > 0.5 GeV, |eta| < 2.5, r_prod < 300 mm, |z_prod| < 1 m, "
            "eff 0.95/0.85 (pT > 1) 0.70/0.60 (|eta| <=/> 1.5), nearest jet dR < 0.4",
        },
        "package_versions": _package_versions(),
    }


@dataclass
class GenerationResult:
    """What a run produced: path, jets per flavour, events generated, wall times [s].

    ``startup_seconds`` is the time until the first batch arrived (process start, Pythia
    initialisation, first events): :attr:`steady_jets_per_second` excludes it.
    """

    path: Path
    n_jets: int
    n_per_flavour: dict
    n_events: int
    seconds: float
    startup_seconds: float = 0.0
    first_batch_jets: int = 0

    @property
    def steady_jets_per_second(self) -> float:
        dt = self.seconds - self.startup_seconds
        return (self.n_jets - self.first_batch_jets) / dt if dt > 0 else float("nan")

    @property
    def jets_per_second(self) -> float:
        return self.n_jets / self.seconds if self.seconds > 0 else float("nan")


def generate(cfg: GenerationConfig, out, *, progress: bool = True) -> GenerationResult:
    """Generate ``cfg.n_jets`` jets into the HDF5 file ``out`` (written atomically).

    With ``cfg.workers > 1`` the events come from a :class:`~._workers.WorkerPool` of fresh
    worker processes. On any error or interruption (KeyboardInterrupt, SystemExit) the workers
    are ended and no file is left, neither ``out`` nor ``out.partial``.

    Raises:
        MissingExtraError: Pythia, fastjet or awkward are not installed.
        WorkerError: a worker raised (traceback in the message), died or stalled.
    """
    require_generate_extra()
    from tqdm import tqdm

    t0 = time.perf_counter()
    quotas = _quotas(cfg)
    counts = np.zeros_like(quotas)
    per_flavour = np.zeros(len(FLAVOURS), dtype=np.int64)
    n_events = 0
    t_first, first_jets = None, 0
    source = None
    try:  # an interruption while the workers start ends the ones started (WorkerPool.__init__)
        source = WorkerPool(cfg.workers, _produce, (cfg,)) if cfg.workers > 1 else _InProcess(cfg)
        with (
            JetWriter(out, cfg.max_tracks, file_attributes(cfg)) as writer,
            tqdm(total=cfg.n_jets, unit="jets", disable=not progress, smoothing=0.05) as bar,
        ):
            for k in itertools.count():
                jets, tracks, n_ev = source.get(k % cfg.workers)
                if t_first is None:
                    t_first = time.perf_counter() - t0
                n_events += n_ev
                group = jets["flavour_label"] if cfg.balance else np.zeros(len(jets), int)
                take = []
                for g in range(len(quotas)):
                    idx = np.flatnonzero(group == g)[: quotas[g] - counts[g]]
                    counts[g] += len(idx)
                    take.append(idx)
                take = np.sort(np.concatenate(take))
                writer.append(jets[take], tracks[take])
                per_flavour += np.bincount(jets["flavour_label"][take], minlength=len(FLAVOURS))
                bar.update(len(take))
                if k == 0:
                    first_jets = len(take)
                if (counts >= quotas).all():
                    break
            writer.attrs["n_events"] = n_events
            path = writer.path
    finally:
        if source is not None:
            source.close()
    seconds = time.perf_counter() - t0
    flavours = {f: int(n) for f, n in zip(FLAVOURS, per_flavour)}
    return GenerationResult(
        path, int(counts.sum()), flavours, n_events, seconds, t_first or 0.0, first_jets
    )


def describe(cfg: GenerationConfig) -> str:
    """One-line JSON of the options (for logs)."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)

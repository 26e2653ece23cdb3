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
from ._event import EFFICIENCY_R_EDGES
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


#: Option values of each ``--preset`` (docs/generation.md); any option given explicitly wins.
#: ``clean`` is the NDIVE paper's sample; ``run3`` an ATLAS-like Run 3 detector.
PRESETS: dict[str, dict] = {
    "clean": {},
    "run3": {
        "beamspot": (0.012, 0.012, 35.0),
        "pileup": 50.0,
        "reco_pv": True,
        "fake_rate": 0.005,
        "radial_tracking": True,
        "covariance": "correlated",
        "soft_leptons": True,
        "track_selection": True,
    },
}
COVARIANCES = ("diagonal", "correlated")
#: ``GenerationConfig.only`` values, in ``flavour_label`` order (0 b, 1 c, 2 light).
ONLY = ("b", "c", "light")


@dataclass(frozen=True)
class GenerationConfig:
    """Options of one generation run (all of them are stored in the file's attributes).

    Attributes:
        n_jets: jets to write.
        seed: master seed; the same seed and options give an identical file.
        workers: generator processes (part of the options: it changes the event sequence).
        balance: keep equal numbers of b, c and light jets.
        only: ``"b"``, ``"c"`` or ``"light"``: write jets of this flavour alone (e.g. more
            light jets for a test set, whose rejection is ~1000: the other jets of each event
            are simulated but dropped, and with ``workers=1`` events without such a jet get
            no pileup); None (default): every flavour.
        max_tracks: track slots per jet (highest-pT tracks kept).
        mpi: multiparton interactions (the underlying event) on.
        hadronic_w: force W -> quarks (more c-jets, faster balanced generation).
        batch_events: events per Pythia ``nextBatch`` call and per work unit.
        bz: solenoid field [T].
        ecm: centre-of-mass energy [GeV].
        preset: the preset the options started from (:meth:`from_preset`; a record only).
        beamspot: Gaussian beam-spot widths ``(sigma_x, sigma_y, sigma_z)`` [mm] from which the
            hard scatter and every pileup vertex are drawn (0: the origin).
        pileup: mean number mu of minimum-bias interactions (Pythia soft QCD) overlaid on each
            event; their number is Poisson(mu).
        reco_pv: reconstruct the primary vertex (``vertexfit``, beam-spot constraint, adaptive
            weights, largest sum pT^2) and express the tracks w.r.t. it.
        fake_rate: expected fake (random-combination) tracks per real track, in [0, 1].
        radial_tracking: efficiency and resolution depend on the production radius; nothing
            produced beyond the last pixel layer becomes a track.
        covariance: ``"diagonal"`` or ``"correlated"`` (full 5x5 of the detector model, with
            the smearing drawn from it).
        soft_leptons: reconstruct soft electrons and muons (``leptonID``, ``lepton_pt``).
        track_selection: keep only tracks with |d0| < 3.5 mm and |z0 sin(theta)| < 5 mm
            w.r.t. the PV (the FTAG/GN2 selection).
        pileup_pool: 0 (default): every pileup interaction is a minimum-bias event of its
            own. N > 0: each worker simulates N minimum-bias events once and draws the
            interactions of every event from them at random (with replacement), each at a
            fresh beam-spot point, turned about the beam axis and mirrored in z at random:
            much faster; a minimum-bias event's particle content is reused about
            ``events * pileup / N`` times, each time pointing elsewhere (docs/generation.md).
    """

    n_jets: int
    seed: int = 1
    workers: int = 2
    balance: bool = False
    only: str | None = None
    max_tracks: int = 15
    mpi: bool = True
    hadronic_w: bool = False
    batch_events: int = 50
    bz: float = DEFAULT_BZ
    ecm: float = 14000.0
    preset: str = "clean"
    beamspot: tuple = (0.0, 0.0, 0.0)
    pileup: float = 0.0
    reco_pv: bool = False
    fake_rate: float = 0.0
    radial_tracking: bool = False
    covariance: str = "diagonal"
    soft_leptons: bool = False
    track_selection: bool = False
    pileup_pool: int = 0

    def __post_init__(self):
        try:
            beamspot = tuple(float(x) for x in self.beamspot)
        except (TypeError, ValueError):
            beamspot = ()
        if len(beamspot) == 3:
            object.__setattr__(self, "beamspot", beamspot)
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
        # the realistic options, one message each, before any event is generated
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if len(beamspot) != 3 or not all(np.isfinite(x) and x >= 0 for x in beamspot):
            raise ValueError(f"beamspot must be three widths >= 0 [mm], got {self.beamspot!r}")
        if not (np.isfinite(self.pileup) and self.pileup >= 0):
            raise ValueError(f"pileup (mu) must be >= 0, got {self.pileup}")
        if not (0.0 <= self.fake_rate <= 1.0):
            raise ValueError(f"fake_rate must be in [0, 1], got {self.fake_rate}")
        if not (isinstance(self.pileup_pool, int) and self.pileup_pool >= 0):
            raise ValueError(f"pileup_pool must be an integer >= 0, got {self.pileup_pool!r}")
        if self.pileup_pool and not self.pileup > 0:
            raise ValueError(f"pileup_pool {self.pileup_pool} needs pileup (mu) > 0")
        if self.only is not None and self.only not in ONLY:
            raise ValueError(f"only must be one of {', '.join(ONLY)} or None, got {self.only!r}")
        if self.covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {', '.join(COVARIANCES)}, "
                             f"got {self.covariance!r}")  # fmt: skip

    @classmethod
    def from_preset(cls, preset: str = "clean", **options) -> GenerationConfig:
        """The options of ``preset`` (:data:`PRESETS`), overridden by ``options``."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return cls(preset=preset, **{**PRESETS[preset], **options})

    @property
    def detector(self):
        """The realistic-detector options as :class:`~._event.Detector`."""
        from ._event import Detector

        return Detector(
            beamspot_sigma=self.beamspot,
            reco_pv=self.reco_pv,
            fake_rate=self.fake_rate,
            radial_tracking=self.radial_tracking,
            correlated=self.covariance == "correlated",
            soft_leptons=self.soft_leptons,
            track_selection=self.track_selection,
        )

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

    def pileup_pythia_settings(self) -> list[str]:
        """Pythia lines of the minimum-bias (pileup) generator, except the seed."""
        return [
            f"Beams:eCM = {self.ecm:g}",
            "SoftQCD:inelastic = on",
            "Print:quiet = on",
            "Next:numberCount = 0",
        ]


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


def _extra_streams(seq: np.random.SeedSequence) -> tuple[int, np.random.Generator]:
    """(Pythia seed of the pileup generator, NumPy generator of the realistic detector) of a
    worker: streams of their own, so the clean sample's streams stay as they were."""
    pileup_seq, detector_seq = seq.spawn(2)
    pythia_seed = int(pileup_seq.generate_state(1, np.uint64)[0] % _PYTHIA_SEED_MAX) + 1
    return pythia_seed, np.random.default_rng(detector_seq)


def _pythia(settings: list[str], pythia_seed: int):
    """Initialised Pythia with ``settings`` and a seed."""
    import pythia8mc

    pythia = pythia8mc.Pythia("", False)
    for line in settings + ["Random:setSeed = on", f"Random:seed = {pythia_seed}"]:
        if not pythia.readString(line):
            raise RuntimeError(f"Pythia rejected setting {line!r}")
    if not pythia.init():
        raise RuntimeError("Pythia initialisation failed")
    return pythia


def _generators(cfg: GenerationConfig, worker: int):
    """(hard-process Pythia, pileup Pythia or None, NumPy rng, detector rng) of a worker."""
    pythia_seed, seq = worker_seeds(cfg.seed, cfg.workers)[worker]
    pileup_seed, det_rng = _extra_streams(seq)
    pythia = _pythia(cfg.pythia_settings(), pythia_seed)
    pileup = _pythia(cfg.pileup_pythia_settings(), pileup_seed) if cfg.pileup > 0 else None
    return pythia, pileup, np.random.default_rng(seq), det_rng


def _next_events(pythia, cfg: GenerationConfig, pileup, det_rng):
    """One batch of hard events and, with pileup, the interactions per event (Poisson(mu))."""
    batch = pythia.nextBatch(cfg.batch_events)
    if pileup is None:
        return batch, None
    return batch, det_rng.poisson(cfg.pileup, len(batch))


def _pileup_events(pileup, total: int):
    """``total`` minimum-bias events (None if 0)."""
    pu = pileup.nextBatch(total) if total else None
    if pu is not None and len(pu) != total:
        raise RuntimeError(f"the pileup generator returned {len(pu)} of {total} events")
    return pu


def _pythia_only(worker: int, cfg: GenerationConfig):
    """Worker entry point for benchmarks: events per batch of Pythia alone (no jets, tracks)."""
    pythia, pileup, _, det_rng = _generators(cfg, worker)
    while True:
        batch, n_pileup = _next_events(pythia, cfg, pileup, det_rng)
        if pileup is not None:
            _pileup_events(pileup, int(n_pileup.sum()))
        yield len(batch)


def needed_events(group: np.ndarray, jet_event: np.ndarray, n_events: int,
                  remaining: np.ndarray) -> np.ndarray:  # fmt: skip
    """``(n_events,)`` bool: the events holding a jet that :func:`generate` will write.

    ``group`` (n_jets,) is each jet's quota group (its flavour with ``--balance`` or
    ``--only``, else 0), ``jet_event`` (n_jets,) its event, ``remaining`` (n_groups,) the
    jets each group still needs. :func:`generate` writes the first ``remaining[g]`` jets of group ``g`` of a batch,
    so these are exactly the events that contribute; no other event's jet is ever written.
    """
    need = np.zeros(n_events, bool)
    for g, r in enumerate(np.asarray(remaining).tolist()):
        need[jet_event[np.flatnonzero(group == g)[: max(int(r), 0)]]] = True
    return need


def _batches(cfg: GenerationConfig, worker: int, remaining=None):
    """Endless (jets, tracks, n_events, stats) batches of one worker.

    ``remaining``: a callable returning the jets each quota group still needs
    (:func:`needed_events`) when the next batch is about to be simulated, or None. With it
    and pileup, the pileup (and the hard-scatter tracks) of events that will not be written
    is not simulated and their jets are not returned: only possible when the consumer is
    in this process and takes each batch before the next is made (``workers=1``), so that
    what it still needs is known, deterministically, at that point.
    """
    from ._event import hard_scatter, process_batch

    pythia, pileup, rng, det_rng = _generators(cfg, worker)
    charge_of = _ChargeTable(pythia.particleData)
    detector = cfg.detector
    pool = _pileup_events(pileup, cfg.pileup_pool) if pileup is not None else None
    for j in itertools.count():
        batch, n_pileup = _next_events(pythia, cfg, pileup, det_rng)
        first_event = (j * cfg.workers + worker) * cfg.batch_events
        stats: dict = {}
        hard, keep, pu = None, None, None
        if pileup is not None:
            hard = hard_scatter(batch, detector, det_rng)
            if remaining is not None:
                group = _group(cfg, hard.flavour)
                keep = needed_events(group, hard.jets["event"], hard.n_events, remaining())
                n_pileup = np.where(keep, n_pileup, 0)
            total = int(n_pileup.sum())
            if pool is None:
                pu = _pileup_events(pileup, total)
            else:  # the opt-in pool: interactions drawn from it (with replacement)
                pu = pool[det_rng.integers(0, len(pool), total)] if total else None
        jets, tracks = process_batch(
            batch, charge_of, rng, max_tracks=cfg.max_tracks, bz=cfg.bz, event_offset=first_event,
            detector=detector, det_rng=det_rng, pileup=pu, n_pileup=n_pileup, stats=stats,
            hard=hard, keep_events=keep, reorient_pileup=pool is not None,
        )  # fmt: skip
        if pileup is None:
            stats["pileup_events"] = 0
        else:  # minimum-bias events simulated in this batch
            stats["pileup_events"] = (cfg.pileup_pool if j == 0 else 0) if pool is not None else total
        yield jets, tracks, len(batch), stats


def _produce(worker: int, cfg: GenerationConfig):
    """Worker-process entry point of :class:`~._workers.WorkerPool`."""
    return _batches(cfg, worker)


class _InProcess:
    def __init__(self, cfg, remaining=None):
        self.gen = _batches(cfg, 0, remaining)

    def get(self, worker):
        return next(self.gen)

    def close(self):
        self.gen.close()


def _group(cfg: GenerationConfig, flavour: np.ndarray) -> np.ndarray:
    """Each jet's quota group (:func:`_quotas`): its flavour label, or 0 for all."""
    return flavour if (cfg.balance or cfg.only) else np.zeros(len(flavour), int)


def _quotas(cfg: GenerationConfig) -> np.ndarray:
    if cfg.only:  # every jet of the one flavour, none of the others
        return np.array([cfg.n_jets if f == cfg.only else 0 for f in ONLY])
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
            **_detector_settings(cfg),
        },
        "package_versions": _package_versions(),
    }


def _detector_settings(cfg: GenerationConfig) -> dict:
    """The realistic-detector part of ``generator_settings`` (empty for the clean sample)."""
    out = {}
    if cfg.pileup > 0:
        out["pileup_pythia"] = cfg.pileup_pythia_settings()
        out["pileup"] = (
            "Poisson(mu) minimum-bias events per event, each at its own beam-spot point; their "
            "tracks (origin Pileup) join the jets by the same association; jets are clustered "
            "from the hard scatter only (pileup-subtracted jets)"
        )
        if cfg.pileup_pool:
            out["pileup"] += (
                f"; drawn at random, with replacement, from a pool of {cfg.pileup_pool} "
                "minimum-bias events per worker, each use at a fresh beam-spot point, turned "
                "about the beam axis by a random angle and mirrored in z half of the time"
            )
    if cfg.radial_tracking or cfg.covariance == "correlated" or cfg.fake_rate > 0:
        from ._detector import LAYERS, RADIAL_EFFICIENCY

        out["layers"] = [list(row) for row in LAYERS]
        if cfg.radial_tracking:
            out["radial_efficiency"] = list(RADIAL_EFFICIENCY)
    if cfg.reco_pv:
        out["primary_vertex"] = (
            "vertexfit adaptive fit with beam-spot constraint, largest sum pT^2; tracks w.r.t. "
            "it (vertexfit.extrapolate)"
        )
    if cfg.soft_leptons:
        from ._detector import ELECTRON, MUON

        out["soft_leptons"] = {"muon": MUON, "electron": ELECTRON}
    return out


@dataclass
class GenerationResult:
    """What a run produced: path, jets per flavour, events generated, wall times [s], and the
    minimum-bias (pileup) events simulated.

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
    n_pileup_events: int = 0

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
    n_events = n_pileup_events = 0
    efficiency = 0
    t_first, first_jets = None, 0
    source = None
    try:  # an interruption while the workers start ends the ones started (WorkerPool.__init__)
        if cfg.workers > 1:
            source = WorkerPool(cfg.workers, _produce, (cfg,))
        else:  # what is still needed is known before each batch: only its events get pileup
            source = _InProcess(cfg, (lambda: quotas - counts) if cfg.pileup > 0 else None)
        with (
            JetWriter(out, cfg.max_tracks, file_attributes(cfg)) as writer,
            tqdm(total=cfg.n_jets, unit="jets", disable=not progress, smoothing=0.05) as bar,
        ):
            for k in itertools.count():
                jets, tracks, n_ev, stats = source.get(k % cfg.workers)
                efficiency += stats["efficiency"]
                n_pileup_events += stats["pileup_events"]
                if t_first is None:
                    t_first = time.perf_counter() - t0
                n_events += n_ev
                group = _group(cfg, jets["flavour_label"])
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
            if cfg.pileup > 0:
                writer.attrs["n_pileup_events"] = n_pileup_events
            writer.attrs["tracking_efficiency"] = json.dumps({
                "r_edges_mm": list(EFFICIENCY_R_EDGES),
                "particles": efficiency[0].tolist(),
                "tracks": efficiency[1].tolist(),
                "definition": "charged particles with pT > 0.5 GeV, |eta| < 2.5 within dR < 0.4 "
                "of a jet, by production radius, and those that became tracks (before the "
                "max-tracks cut and any track selection)",
            })  # fmt: skip
            path = writer.path
    finally:
        if source is not None:
            source.close()
    seconds = time.perf_counter() - t0
    flavours = {f: int(n) for f, n in zip(FLAVOURS, per_flavour)}
    return GenerationResult(
        path, int(counts.sum()), flavours, n_events, seconds, t_first or 0.0, first_jets,
        n_pileup_events,
    )


def describe(cfg: GenerationConfig) -> str:
    """One-line JSON of the options (for logs)."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)

"""One batch of Pythia events -> jets and tracks in the schema's structured arrays.

The batch is flattened once (all particles of all events in one set of NumPy arrays, with
global indices) so that truth labelling, tracking and association are vectorised over the
batch instead of looping over events or particles in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from vertexfit import extrapolate, wrap_phi

from ..data.schema import JET_DTYPE, ORIGIN, TRACK_DTYPE, set_track_cov
from . import _detector, _tracker, _truth, _vertexing

#: Jet selection (anti-kT R = 0.4).
JET_R = 0.4
JET_PT_MIN = 20.0  # GeV
JET_ETA_MAX = 2.5
#: ATLAS cone labelling: weakly decaying hadrons with pT > 5 GeV within dR < 0.3.
HADRON_PT_MIN = 5.0
HADRON_DR = 0.3
#: Tracks go to the nearest jet axis within this dR.
TRACK_DR = 0.4
#: Production points closer than this to the PV [mm] count as the PV; also the grid on which
#: tracks are grouped into truth vertices (ftagTruthVertexIndex).
VERTEX_GRID = 1e-3
_INVISIBLE = (12, 13, 14, 16)  # neutrinos and muons are not clustered into jets
_HARD_PARTON = 3  # event-record entry of an incoming hard-process parton: its vProd is the PV


@dataclass
class Particles:
    """Flat particle arrays of a batch; ``mother``/``daughter`` are global indices (-1 = none)."""

    event: np.ndarray  # (n,) event index within the batch
    pdgid: np.ndarray
    status: np.ndarray
    mother: np.ndarray
    daughter: np.ndarray
    p: np.ndarray  # (n, 4) px, py, pz, E [GeV]
    vprod: np.ndarray  # (n, 3) production vertex [mm]
    start: np.ndarray  # (n_events,) index of each event's first particle


def flatten(batch) -> Particles:
    """Flatten an awkward batch from ``Pythia.nextBatch`` (fields ``prt.*``)."""
    import awkward as ak

    prt = batch.prt
    counts = ak.to_numpy(ak.num(prt, axis=1)).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    event = np.repeat(np.arange(len(counts)), counts)
    flat = ak.flatten(prt, axis=1)  # one flatten, then cheap per-field views

    def col(x):
        return ak.to_numpy(x)

    def to_global(local):
        # Pythia's index 0 is the event-as-a-whole entry: mother1 = 0 means no mother.
        local = col(local).astype(np.int64)
        return np.where(local > 0, local + start[event], -1)

    mom = flat.p
    p = np.stack([col(mom.px), col(mom.py), col(mom.pz), col(mom.e)], axis=-1)
    v = flat.vProd  # option type: missing vertices count as the origin
    vprod = np.stack(
        [np.ma.filled(ak.to_numpy(v[k], allow_missing=True), 0.0) for k in ("px", "py", "pz")],
        axis=-1,
    )
    return Particles(
        event=event,
        pdgid=col(flat.id).astype(np.int64),
        status=col(flat.status).astype(np.int64),
        mother=to_global(flat.mother1),
        daughter=to_global(flat.daughter1),
        p=p,
        vprod=vprod,
        start=start,
    )


def reorient(parts: Particles, rng: np.random.Generator) -> None:
    """Turn each event of ``parts`` about the beam axis by a random angle and mirror half of
    them in z (in place), its momenta and production points (relative to the event's origin)
    alike.

    Minimum-bias physics is symmetric under both, so a pooled interaction drawn again is an
    equally likely event whose particles point elsewhere: each use lands its tracks in other
    jets (docs/generation.md, "Pileup pool"). The transverse motion is only rotated, so the
    curvature of every track keeps its sign. Draws 2 numbers per event from ``rng``.
    """
    n = len(parts.start)
    phi = rng.uniform(-np.pi, np.pi, n)[parts.event]
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)[parts.event]
    c, s = np.cos(phi), np.sin(phi)
    for a in (parts.p, parts.vprod):
        x, y = a[:, 0].copy(), a[:, 1]
        a[:, 0] = c * x - s * y
        a[:, 1] = s * x + c * y
        a[:, 2] *= flip


def _pt_eta_phi(p: np.ndarray):
    pt = np.hypot(p[:, 0], p[:, 1])
    eta = np.arcsinh(p[:, 2] / np.maximum(pt, 1e-300))
    return pt, eta, np.arctan2(p[:, 1], p[:, 0])


def _pairs(a_event: np.ndarray, b_start: np.ndarray, b_count: np.ndarray):
    """All pairs (a, b) with b among the contiguous block of a's event; returns index arrays."""
    counts = b_count[a_event]
    a_idx = np.repeat(np.arange(len(a_event)), counts)
    offs = np.cumsum(counts) - counts
    b_idx = np.arange(counts.sum()) - np.repeat(offs - b_start[a_event], counts)
    return a_idx, b_idx


def _nearest(a_event, a_eta, a_phi, jets, max_dr):
    """Index of the nearest jet of the same event within ``max_dr`` for each a (-1 = none)."""
    a_idx, j_idx = _pairs(a_event, jets["start"], jets["count"])
    out = np.full(len(a_event), -1, dtype=np.int64)
    if len(a_idx) == 0:
        return out
    dphi = wrap_phi(a_phi[a_idx] - jets["phi"][j_idx])
    dr2 = (a_eta[a_idx] - jets["eta"][j_idx]) ** 2 + dphi**2
    order = np.lexsort((dr2, a_idx))
    first = np.r_[True, a_idx[order][1:] != a_idx[order][:-1]]
    best = order[first]
    ok = dr2[best] < max_dr**2
    out[a_idx[best[ok]]] = j_idx[best[ok]]
    return out


def cluster_jets(parts: Particles, n_events: int) -> dict:
    """Anti-kT R = 0.4 jets of the visible stable particles, pT > 20 GeV, |eta| < 2.5.

    Returns a dict of flat float64 arrays (``px``, ``py``, ``pz``, ``E``, ``pt``, ``eta``,
    ``phi``, ``mass``, ``event``) and per-event ``start``/``count``.
    """
    import awkward as ak
    import fastjet

    vis = (parts.status > 0) & ~np.isin(np.abs(parts.pdgid), _INVISIBLE)
    counts = np.bincount(parts.event[vis], minlength=n_events)
    p = parts.p[vis]
    arr = ak.unflatten(ak.zip({"px": p[:, 0], "py": p[:, 1], "pz": p[:, 2], "E": p[:, 3]}), counts)
    cs = fastjet.ClusterSequence(arr, fastjet.JetDefinition(fastjet.antikt_algorithm, JET_R))
    jets = cs.inclusive_jets(JET_PT_MIN)
    njet = ak.to_numpy(ak.num(jets, axis=1)).astype(np.int64)
    jp = np.stack([ak.to_numpy(ak.flatten(jets[k])) for k in ("px", "py", "pz", "E")], axis=-1)
    pt, eta, phi = _pt_eta_phi(jp)
    event = np.repeat(np.arange(n_events), njet)
    keep = (pt > JET_PT_MIN) & (np.abs(eta) < JET_ETA_MAX)
    count = np.bincount(event[keep], minlength=n_events)
    m2 = jp[:, 3] ** 2 - (jp[:, :3] ** 2).sum(axis=1)
    return {
        "p": jp[keep],
        "pt": pt[keep],
        "eta": eta[keep],
        "phi": phi[keep],
        "mass": np.sqrt(np.maximum(m2[keep], 0.0)),
        "event": event[keep],
        "count": count,
        "start": np.concatenate([[0], np.cumsum(count)[:-1]]),
    }


def _label_jets(parts: Particles, jets: dict, weak_b: np.ndarray, weak_c: np.ndarray):
    """Cone labels: per jet, (flavour_label, cone label, hadron index or -1).

    ``weak_b``/``weak_c`` (n,) flag the weakly decaying b/c hadrons among all particles.
    """
    n_jets = len(jets["pt"])
    flavour = np.full(n_jets, 2, dtype=np.int32)
    hadron = np.full(n_jets, -1, dtype=np.int64)
    for flav, weak in ((0, weak_b), (1, weak_c)):
        h = np.flatnonzero(weak)
        pt, eta, phi = _pt_eta_phi(parts.p[h])
        h, eta, phi, pt = (
            h[pt > HADRON_PT_MIN],
            eta[pt > HADRON_PT_MIN],
            phi[pt > HADRON_PT_MIN],
            pt[pt > HADRON_PT_MIN],
        )
        jet_of = _nearest(parts.event[h], eta, phi, jets, HADRON_DR)
        # b first: a jet with a b hadron is a b-jet whatever else it contains.
        ok = (jet_of >= 0) & (flavour[np.maximum(jet_of, 0)] == 2)
        h, jet_of, pt = h[ok], jet_of[ok], pt[ok]
        if len(h) == 0:
            continue
        # the leading hadron of the jet defines the hf vertex
        order = np.lexsort((-pt, jet_of))
        first = np.r_[True, jet_of[order][1:] != jet_of[order][:-1]]
        lead_jet, lead_h = jet_of[order][first], h[order][first]
        flavour[lead_jet] = flav
        hadron[lead_jet] = lead_h
    cone = np.array([5, 4, 0], dtype=np.int32)[flavour]
    return flavour, cone, hadron


def _vertex_index(
    jet: np.ndarray, rel_vertex: np.ndarray, at_pv: np.ndarray, alone: np.ndarray | None = None
) -> np.ndarray:
    """ftagTruthVertexIndex of stored tracks: 0 = PV, then 1, 2, ... per jet in pT order.

    ``jet`` (k,) jet index of each track (tracks of a jet contiguous, jets ascending, tracks in
    decreasing pT), ``rel_vertex`` (k, 3) production point minus PV [mm], grouped on a 1 um grid
    (daughters of one decay share their production point exactly; the grid also merges decays
    of strongly decaying resonances, which travel far less than 1 um). ``at_pv`` (k,) marks
    tracks within 1 um of the PV (3D), the same definition as for the origin labels; any
    other point has a nonzero grid coordinate. ``alone`` (k,) marks tracks that share their
    vertex with no other track (fakes): each gets an index of its own.
    """
    if len(jet) == 0:
        return np.zeros(0, dtype=np.int32)
    grid = np.round(rel_vertex / VERTEX_GRID).astype(np.int64)
    grid[at_pv] = 0
    own = np.zeros((len(jet), 1), dtype=np.int64)
    if alone is not None:
        own[alone, 0] = np.arange(1, int(alone.sum()) + 1)
    key = np.concatenate([jet[:, None], grid, own], axis=1)
    uniq, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    # displaced groups in order of their highest-pT track: grouped by jet since jets ascend
    disp = np.flatnonzero(uniq[:, 1:].any(axis=1))
    disp = disp[np.argsort(first[disp], kind="stable")]
    gjet = uniq[disp, 0]
    pos = np.arange(len(disp))
    block_start = np.maximum.accumulate(np.where(np.r_[True, gjet[1:] != gjet[:-1]], pos, 0))
    index = np.zeros(len(uniq), dtype=np.int32)
    index[disp] = pos - block_start + 1
    return index[inverse.reshape(-1)]


@dataclass(frozen=True)
class Detector:
    """The realistic-detector options of :func:`process_batch` (all off: the clean sample).

    See :class:`~._pipeline.GenerationConfig` for their meaning; ``rng`` draws everything
    these options add (beam spot, pileup multiplicities, radial efficiency is folded into the
    main draw, fakes, leptons), so the clean sample's random stream is untouched.
    """

    beamspot_sigma: tuple = (0.0, 0.0, 0.0)
    reco_pv: bool = False
    fake_rate: float = 0.0
    radial_tracking: bool = False
    correlated: bool = False
    soft_leptons: bool = False
    track_selection: bool = False


#: Production-radius bins [mm] of the tracking-efficiency histogram stored in every file.
EFFICIENCY_R_EDGES = (0.0, 1.0, 5.0, 10.0, 20.0, 33.25, 50.5, 88.5, 122.5, 200.0, 300.0)
#: FTAG (GN2) track selection w.r.t. the PV: |d0| and |z0 sin(theta)| [mm].
SELECTION_D0_MAX = 3.5
SELECTION_Z0SIN_MAX = 5.0
_HARD, _PILEUP, _FAKE = 0, 1, 2  # source of a track


def _candidates(parts: Particles, event_of, kind: int) -> dict:
    """Final-state particles of ``parts`` as track candidates (event = ``event_of[event]``)."""
    final = np.flatnonzero(parts.status > 0)
    return {
        "idx": final if kind == _HARD else np.full(len(final), -1),
        "event": event_of[parts.event[final]],
        "pdgid": parts.pdgid[final],
        "p": parts.p[final, :3],
        "v": parts.vprod[final],
        "kind": np.full(len(final), kind, dtype=np.int8),
    }


def _concat(a: dict, b: dict) -> dict:
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def _efficiency_counts(stats, cand, charge, pt, eta, r_prod, sel, found, jets):
    """Particles in jets and their tracks per production-radius bin (see ``process_batch``)."""
    den = (charge != 0) & (pt > _tracker.PT_MIN) & (np.abs(eta) < _tracker.ETA_MAX)
    den &= np.abs(cand["v"][:, 2]) < _tracker.Z_PROD_MAX
    num = np.zeros(len(den), bool)
    num[sel[found]] = True
    d = np.flatnonzero(den)
    phi = np.arctan2(cand["p"][d, 1], cand["p"][d, 0])
    d = d[_nearest(cand["event"][d], eta[d], phi, jets, TRACK_DR) >= 0]
    edges = np.asarray(EFFICIENCY_R_EDGES)
    stats["efficiency"] = np.stack([
        np.histogram(r_prod[d], edges)[0], np.histogram(r_prod[d[num[d]]], edges)[0]
    ])  # fmt: skip


@dataclass
class HardScatter:
    """The hard-scatter part of a batch (:func:`hard_scatter`): everything that decides which
    jets exist and their labels, before any track or pileup is simulated."""

    parts: Particles
    n_events: int
    pv_event: np.ndarray  # (n_events, 3) true PV [mm]
    jets: dict  # cluster_jets
    flavour: np.ndarray  # (n_jets,) flavour_label
    cone: np.ndarray  # (n_jets,) HadronConeExclTruthLabelID
    hadron: np.ndarray  # (n_jets,) global index of the labelling hadron, -1 = none
    weak_b: np.ndarray  # (n_particles,) weakly decaying b hadrons
    weak_c: np.ndarray


def hard_scatter(batch, detector: Detector | None = None, det_rng=None) -> HardScatter:
    """Flatten ``batch``, move it to its beam-spot points (``det_rng``), cluster and label jets.

    Jets and their labels come from the hard scatter alone, so the caller can decide from
    this which events it needs before simulating their pileup (``process_batch(hard=...)``).
    """
    det = detector or Detector()
    parts = flatten(batch)
    n_events = len(parts.start)
    sigma_bs = np.asarray(det.beamspot_sigma, dtype=np.float64)
    if sigma_bs.any():  # the hard scatter (and everything it makes) moves to its beam-spot point
        parts.vprod = parts.vprod + (sigma_bs * det_rng.standard_normal((n_events, 3)))[parts.event]
    pv_event = parts.vprod[parts.start + _HARD_PARTON]
    jets = cluster_jets(parts, n_events)
    weak_b = _truth.weakly_decaying(_truth.is_b_hadron(parts.pdgid), parts.mother)
    weak_c = _truth.weakly_decaying(_truth.is_c_hadron(parts.pdgid), parts.mother)
    flavour, cone, hadron = _label_jets(parts, jets, weak_b, weak_c)
    return HardScatter(parts, n_events, pv_event, jets, flavour, cone, hadron, weak_b, weak_c)


def _select_events(hard: HardScatter, keep: np.ndarray):
    """(jets, flavour, cone, hadron) of ``hard`` restricted to the events flagged in ``keep``."""
    sel = keep[hard.jets["event"]]
    jets = {k: hard.jets[k][sel] for k in ("p", "pt", "eta", "phi", "mass", "event")}
    jets["count"] = np.where(keep, hard.jets["count"], 0)
    jets["start"] = np.concatenate([[0], np.cumsum(jets["count"])[:-1]])
    return jets, hard.flavour[sel], hard.cone[sel], hard.hadron[sel]


def process_batch(
    batch,
    charge_of,
    rng: np.random.Generator,
    *,
    max_tracks: int,
    bz: float,
    event_offset: int,
    detector: Detector | None = None,
    det_rng: np.random.Generator | None = None,
    pileup=None,
    n_pileup: np.ndarray | None = None,
    stats: dict | None = None,
    hard: HardScatter | None = None,
    keep_events: np.ndarray | None = None,
    reorient_pileup: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Jets and tracks of one batch of events.

    Args:
        batch: awkward array from ``Pythia.nextBatch``.
        charge_of: callable mapping a PDG id array (n,) to charges (n,) [e].
        rng: generator for efficiency and smearing (the only randomness of the clean sample
            outside Pythia).
        max_tracks: track slots per jet; the highest-pT tracks are kept.
        bz: field [T].
        event_offset: eventNumber of the batch's first event.
        detector: realistic-detector options (default: the clean sample).
        det_rng: generator for what ``detector`` and the pileup add.
        pileup: awkward batch of minimum-bias events overlaid on the events of ``batch``:
            the first ``n_pileup[0]`` on event 0, the next ``n_pileup[1]`` on event 1, ...
        n_pileup: ``(n_events,)`` pileup interactions per event.
        reorient_pileup: turn each pileup interaction by a random azimuth and mirror half in
            z (:func:`reorient`): for interactions drawn again from a pool.
        stats: if given, ``stats["efficiency"]`` gets ``(particles, tracks)`` counts
            ``(2, len(EFFICIENCY_R_EDGES) - 1)`` in bins of production radius: charged
            particles with pT > 0.5 GeV, |eta| < 2.5 within dR < 0.4 of a jet, and those of
            them that became tracks (before the max-tracks cut and any track selection).
        hard: :func:`hard_scatter` of ``batch`` if already computed (it draws the beam spot
            from ``det_rng``: compute it once).
        keep_events: ``(n_events,)`` bool: only these events' jets are returned (and only
            their hard-scatter tracks simulated); ``pileup``/``n_pileup`` need to cover only
            them (``n_pileup`` 0 elsewhere). Default: all events.

    Returns:
        ``(jets (n_jets,) JET_DTYPE, tracks (n_jets, max_tracks) TRACK_DTYPE)``.
    """
    det = detector or Detector()
    if hard is None:
        hard = hard_scatter(batch, det, det_rng)
    parts, n_events, pv_event = hard.parts, hard.n_events, hard.pv_event
    jets, flavour, cone, hadron = hard.jets, hard.flavour, hard.cone, hard.hadron
    weak_b, weak_c = hard.weak_b, hard.weak_c
    if keep_events is not None:
        keep_events = np.asarray(keep_events, bool)
        jets, flavour, cone, hadron = _select_events(hard, keep_events)
    n_jets = len(jets["pt"])
    n_pileup = np.zeros(n_events, np.int64) if n_pileup is None else np.asarray(n_pileup)
    sigma_bs = np.asarray(det.beamspot_sigma, dtype=np.float64)

    # --- tracks: charged stable particles in the acceptance, then the efficiency ---
    cand = _candidates(parts, np.arange(n_events), _HARD)
    if keep_events is not None:  # the dropped events' hard-scatter tracks would reach no jet
        cand = {k: a[keep_events[cand["event"]]] for k, a in cand.items()}
    if pileup is not None and n_pileup.sum() > 0:
        pu = flatten(pileup)
        n_pu = len(pu.start)
        if reorient_pileup:
            reorient(pu, det_rng)
        pu.vprod = pu.vprod + (sigma_bs * det_rng.standard_normal((n_pu, 3)))[pu.event]
        cand = _concat(cand, _candidates(pu, np.repeat(np.arange(n_events), n_pileup), _PILEUP))
    charge = charge_of(cand["pdgid"])
    pt, eta, _ = _pt_eta_phi(cand["p"])
    v = cand["v"]
    r_prod = np.hypot(v[:, 0], v[:, 1])
    r_max = _detector.R_PROD_MAX_STANDARD if det.radial_tracking else _tracker.R_PROD_MAX
    acc = (
        (charge != 0)
        & (pt > _tracker.PT_MIN)
        & (np.abs(eta) < _tracker.ETA_MAX)
        & (r_prod < r_max)
        & (np.abs(v[:, 2]) < _tracker.Z_PROD_MAX)
    )
    sel = np.flatnonzero(acc)
    eff = _tracker.efficiency(pt[sel], eta[sel])
    if det.radial_tracking:
        eff = eff * _detector.radial_efficiency(r_prod[sel])
    found = rng.random(len(sel)) < eff
    if stats is not None:
        _efficiency_counts(stats, cand, charge, pt, eta, r_prod, sel, found, jets)
    sel = sel[found]
    cand = {k: a[sel] for k, a in cand.items()}
    charge, pt, eta, v, r_prod = charge[sel], pt[sel], eta[sel], v[sel], r_prod[sel]
    event = cand["event"]
    # Without a reconstructed PV the parameters are w.r.t. the true PV (the clean sample);
    # with one, first w.r.t. the nominal beam line, where ATLAS tracking expresses them.
    ref = np.zeros((len(event), 3)) if det.reco_pv else pv_event[event]
    truth = _tracker.true_perigee(v, cand["p"], charge, ref, bz)
    if det.correlated or det.radial_tracking:
        cov = _detector.covariance(pt, eta, r_prod if det.radial_tracking else 0.0 * pt, bz,
                                   correlated=det.correlated)  # fmt: skip
        meas = _detector.smear(truth, cov, rng)
        meas[:, 2] = wrap_phi(meas[:, 2])
    else:
        meas, cov = _tracker.measure(truth, pt, eta, rng, bz)
    m_pt = _tracker.pt_from_rho(meas[:, 4], bz)
    m_eta = -np.log(np.tan(0.5 * meas[:, 3]))

    if det.fake_rate > 0:
        fev, fpar, fpt, feta, fq = _detector.fake_tracks(
            event, m_eta, meas[:, 2], meas[:, 1], n_events, det.fake_rate, _tracker.PT_MIN,
            bz, det_rng,
        )
        fcov = _detector.covariance(fpt, feta, np.zeros(len(fev)), bz, correlated=det.correlated)
        n = len(fev)
        cand = _concat(cand, {"idx": np.full(n, -1), "event": fev, "pdgid": np.zeros(n, np.int64),
                              "p": np.zeros((n, 3)), "v": np.zeros((n, 3)),
                              "kind": np.full(n, _FAKE, np.int8)})  # fmt: skip
        event = cand["event"]
        charge, pt, eta = np.r_[charge, fq], np.r_[pt, fpt], np.r_[eta, feta]
        v, truth, meas, cov = cand["v"], np.r_[truth, fpar], np.r_[meas, fpar], np.r_[cov, fcov]
        m_pt = np.r_[m_pt, _tracker.pt_from_rho(fpar[:, 4], bz)]
        m_eta = np.r_[m_eta, feta]
    kind = cand["kind"]

    ref_event = pv_event
    reco = None
    if det.reco_pv:
        reco = _vertexing.reconstruct(event, meas, cov, m_pt, n_events, det.beamspot_sigma,
                                      hard_scatter=kind == _HARD)  # fmt: skip
        ref_event = reco["vertex"]
        new_ref = ref_event[event]
        meas, cov = extrapolate(meas[:, None], cov[:, None], new_ref)
        meas, cov = meas[:, 0], cov[:, 0]
        truth = extrapolate(truth[:, None], None, new_ref)[0][:, 0]
    keep_trk = np.ones(len(event), bool)
    if det.track_selection:
        keep_trk = (np.abs(meas[:, 0]) < SELECTION_D0_MAX) & (
            np.abs(meas[:, 1] * np.sin(meas[:, 3])) < SELECTION_Z0SIN_MAX
        )
    if det.soft_leptons:
        lepton_id, lepton_pt = _detector.soft_leptons(cand["pdgid"], charge, pt, eta, det_rng)
    idx = cand["idx"]

    # --- association to the nearest jet axis, highest-pT tracks first ---
    jet_of = _nearest(event, m_eta, meas[:, 2], jets, TRACK_DR)
    a = np.flatnonzero((jet_of >= 0) & keep_trk)
    a = a[np.lexsort((-m_pt[a], jet_of[a]))]
    ja = jet_of[a]
    n_all = np.bincount(ja, minlength=n_jets)
    jet_start = np.concatenate([[0], np.cumsum(n_all)[:-1]])
    slot = np.arange(len(a)) - jet_start[ja]
    keep = slot < max_tracks
    a, ja, slot = a[keep], ja[keep], slot[keep]

    rel_v = v[a] - pv_event[event[a]]
    hard = kind[a] == _HARD
    displaced = ~hard | (np.sqrt((rel_v**2).sum(axis=1)) > VERTEX_GRID)
    origin = np.where(kind[a] == _PILEUP, ORIGIN["Pileup"], ORIGIN["Fake"]).astype(np.int8)
    origin[hard] = _truth.origin_labels(
        idx[a][hard], weak_b, weak_c, parts.pdgid, parts.status, parts.mother, displaced[hard]
    )

    tracks = np.zeros((n_jets, max_tracks), dtype=TRACK_DTYPE)
    t = np.zeros(len(a), dtype=TRACK_DTYPE)
    t["valid"] = True
    for k, name in enumerate(("d0", "z0", "phi", "theta", "rho")):
        t[name] = meas[a, k]
        t["true_" + name] = truth[a, k]
    set_track_cov(t, cov[a])
    t["charge"] = charge[a]
    t["pt"] = m_pt[a]
    t["eta"] = m_eta[a]
    t["deta"] = m_eta[a] - jets["eta"][ja]
    dphi = wrap_phi(meas[a, 2] - jets["phi"][ja])
    t["dphi"] = dphi
    sd0 = np.sqrt(cov[a, 0, 0])
    sz0 = np.sqrt(cov[a, 1, 1])
    d0, z0 = meas[a, 0], meas[a, 1]
    # Lifetime sign: + when the PCA lies on the jet side of the PV (docs/conventions.md d0 convention:
    # PCA - PV = d0 (sin phi, -cos phi), so PCA . jet_T = d0 sin(phi - phi_jet)).
    t["d0_significance"] = np.abs(d0) / sd0 * np.where(d0 * np.sin(dphi) >= 0, 1.0, -1.0)
    t["z0_significance"] = np.abs(z0) / sz0 * np.where(z0 * (-t["deta"]) >= 0, 1.0, -1.0)
    t["ftagTruthOriginLabel"] = origin
    t["ftagTruthVertexIndex"] = _vertex_index(ja, rel_v, ~displaced, kind[a] == _FAKE)
    t["truth_vertex_x"], t["truth_vertex_y"], t["truth_vertex_z"] = v[a].T
    if det.soft_leptons:
        t["leptonID"] = lepton_id[a]
        t["lepton_pt"] = lepton_pt[a]
    tracks[ja, slot] = t

    # --- jets ---
    out = np.zeros(n_jets, dtype=JET_DTYPE)
    for name in ("pt", "eta", "phi", "mass"):
        out[name] = jets[name]
    out["HadronConeExclTruthLabelID"] = cone
    out["flavour_label"] = flavour
    out["n_tracks"] = np.minimum(n_all, max_tracks)
    out["n_tracks_all"] = n_all
    out["eventNumber"] = event_offset + jets["event"]
    jpv = pv_event[jets["event"]]
    out["pv_x"], out["pv_y"], out["pv_z"] = jpv.T
    out["reco_pv_x"], out["reco_pv_y"], out["reco_pv_z"] = ref_event[jets["event"]].T
    out["reco_pv_is_hs"] = True
    if reco is not None:
        je = jets["event"]
        sig = np.sqrt(np.diagonal(reco["cov"], axis1=1, axis2=2))[je]
        out["reco_pv_sigma_x"], out["reco_pv_sigma_y"], out["reco_pv_sigma_z"] = sig.T
        out["reco_pv_ntracks"] = reco["n_tracks"][je]
        out["reco_pv_is_hs"] = reco["is_hard_scatter"][je]
    out["n_pileup"] = n_pileup[jets["event"]]
    hf = hadron >= 0
    h = hadron[hf]
    # The weakly decaying hadron decays where its daughters are produced.
    dec = parts.vprod[np.where(parts.daughter[h] >= 0, parts.daughter[h], h)]
    hv = np.zeros((n_jets, 3))
    hv[hf] = dec
    out["hf_vertex_x"], out["hf_vertex_y"], out["hf_vertex_z"] = hv.T
    rel = np.where(hf[:, None], hv - jpv, 0.0)
    out["Lxy"] = np.hypot(rel[:, 0], rel[:, 1])
    out["L3D"] = np.sqrt((rel**2).sum(axis=1))
    hpt = np.zeros(n_jets)
    hpt[hf] = np.hypot(parts.p[h, 0], parts.p[h, 1])
    out["hadron_pt"] = hpt
    hid = np.zeros(n_jets, dtype=np.int64)
    hid[hf] = parts.pdgid[h]
    out["hadron_pdgid"] = hid
    from types import SimpleNamespace

    from . import _labels

    geo = SimpleNamespace(pt_eta_phi=_pt_eta_phi, pairs=_pairs, nearest=_nearest)
    for name, values in _labels.extended_truth(parts, jets, flavour, geo).items():
        out[name] = values
    return out, tracks

"""Extended jet truth: tau and light-parton (ud, s, g) labels and the truth jet pT with
neutrinos and muons (the b-jet pT regression target).

Definitions (``docs/generation.md``):

- ``PartonTruthLabelID``: ``|PDG id|`` of the highest-energy quark (d..b) or gluon within
  dR < 0.4 of the jet axis, among the partons of the hard process, the showers and the
  multiparton interactions (``|status|`` 23-59 and 71-79; beam remnants excluded); 0 if none.
- ``jet_class``: b and c as ``flavour_label``; a light jet with a tau lepton (its last copy,
  pT > 5 GeV) within dR < 0.3 is tau (the cone labelling's order: b, c, tau, light); other
  light jets are s (parton label 3), g (21) or ud (everything else, including no parton).
- ``pt_truth_nu_mu``: the jet four-momentum plus the final-state neutrinos and muons (which
  the jets do not cluster) whose nearest jet axis is within dR < 0.4, its pT.
"""

from __future__ import annotations

import numpy as np
from vertexfit import wrap_phi

from . import _truth

#: Partons considered for PartonTruthLabelID.
_PARTON_IDS = (1, 2, 3, 4, 5, 21)
PARTON_DR = 0.4
#: Tau labelling, as the cone labelling of hadrons: pT > 5 GeV within dR < 0.3.
TAU_PT_MIN = 5.0
TAU_DR = 0.3
#: Neutrinos and muons within this dR of their nearest jet axis count in pt_truth_nu_mu.
INVISIBLE_DR = 0.4
_NEUTRINOS_AND_MUONS = (12, 13, 14, 16)
_CLASS = {"b": 0, "c": 1, "ud": 2, "s": 3, "g": 4, "tau": 5}


def _parton_label(parts, jets, geo) -> np.ndarray:
    """PartonTruthLabelID of every jet (see module docstring)."""
    a_status = np.abs(parts.status)
    cand = np.flatnonzero(np.isin(np.abs(parts.pdgid), _PARTON_IDS)
                          & (((a_status >= 23) & (a_status <= 59))
                             | ((a_status >= 71) & (a_status <= 79))))
    pt, eta, phi = geo.pt_eta_phi(parts.p[cand])
    cand, eta, phi = cand[pt > 1e-3], eta[pt > 1e-3], phi[pt > 1e-3]
    label = np.zeros(len(jets["pt"]), dtype=np.int32)
    p_idx, j_idx = geo.pairs(parts.event[cand], jets["start"], jets["count"])
    if len(p_idx) == 0:
        return label
    dphi = wrap_phi(phi[p_idx] - jets["phi"][j_idx])
    near = (eta[p_idx] - jets["eta"][j_idx]) ** 2 + dphi**2 < PARTON_DR**2
    p_idx, j_idx = p_idx[near], j_idx[near]
    energy = parts.p[cand[p_idx], 3]
    order = np.lexsort((-energy, j_idx))  # per jet, highest energy first
    first = np.r_[True, j_idx[order][1:] != j_idx[order][:-1]]
    label[j_idx[order][first]] = np.abs(parts.pdgid[cand[p_idx[order][first]]])
    return label


def _tau_jets(parts, jets, flavour, geo) -> np.ndarray:
    """(n_jets,) bool: light jets with a (last-copy) tau of pT > 5 GeV within dR < 0.3."""
    last = _truth.weakly_decaying(np.abs(parts.pdgid) == 15, parts.mother)
    t = np.flatnonzero(last)
    pt, eta, phi = geo.pt_eta_phi(parts.p[t])
    hard = pt > TAU_PT_MIN
    jet_of = geo.nearest(parts.event[t[hard]], eta[hard], phi[hard], jets, TAU_DR)
    tau = np.zeros(len(jets["pt"]), dtype=bool)
    tau[jet_of[jet_of >= 0]] = True
    return tau & (flavour == 2)


def _pt_with_invisibles(parts, jets, geo) -> np.ndarray:
    """pT of each jet plus its nearest (dR < 0.4) final-state neutrinos and muons [GeV]."""
    inv = np.flatnonzero((parts.status > 0) & np.isin(np.abs(parts.pdgid), _NEUTRINOS_AND_MUONS))
    p4 = jets["p"].copy()
    if len(inv):
        pt, eta, phi = geo.pt_eta_phi(parts.p[inv])
        ok = pt > 1e-3
        inv, eta, phi = inv[ok], eta[ok], phi[ok]
        jet_of = geo.nearest(parts.event[inv], eta, phi, jets, INVISIBLE_DR)
        m = jet_of >= 0
        np.add.at(p4, jet_of[m], parts.p[inv[m]])
    return np.hypot(p4[:, 0], p4[:, 1])


def extended_truth(parts, jets: dict, flavour: np.ndarray, geo) -> dict:
    """``{"PartonTruthLabelID", "jet_class", "pt_truth_nu_mu"}`` arrays (n_jets,) for the jets
    of :func:`~._event.cluster_jets` with their ``flavour_label`` (0 b, 1 c, 2 light).

    ``geo``: the event module's matching helpers (``pt_eta_phi``, ``pairs``, ``nearest``),
    passed in so that this module does not import it (it is imported from there).
    """
    parton = _parton_label(parts, jets, geo)
    cls = np.full(len(flavour), _CLASS["ud"], dtype=np.int32)
    cls[parton == 3] = _CLASS["s"]
    cls[parton == 21] = _CLASS["g"]
    cls[_tau_jets(parts, jets, flavour, geo)] = _CLASS["tau"]
    cls[flavour == 0] = _CLASS["b"]
    cls[flavour == 1] = _CLASS["c"]
    return {"PartonTruthLabelID": parton, "jet_class": cls,
            "pt_truth_nu_mu": _pt_with_invisibles(parts, jets, geo)}

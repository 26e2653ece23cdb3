"""Truth information from the Pythia event record: heavy-flavour hadrons and track ancestry.

Works on flat arrays of all particles of a batch of events (``mother`` and ``daughter`` are
global indices into those arrays; -1 = none). Everything is vectorised over the batch.
"""

from __future__ import annotations

import numpy as np

from ..data.schema import ORIGIN

#: Maximum ancestry depth followed (Pythia chains are far shorter).
_MAX_DEPTH = 200


def _digits(pdgid: np.ndarray):
    a = np.abs(pdgid) % 10000  # drop the radial/orbital excitation digits (10411 -> 411)
    return (a // 1000) % 10, (a // 100) % 10, (a // 10) % 10


def _is_hadron_of(pdgid: np.ndarray, quark: int) -> np.ndarray:
    """Open-flavour hadrons whose heaviest quark is ``quark`` (5 = b, 4 = c).

    Mesons ``0 n2 n3 j`` have their heaviest quark in n2, baryons ``n1 n2 n3 j`` in n1.
    Quarkonia (n2 == n3) carry no open flavour, diquarks (n3 == 0) are not hadrons, and
    ids >= 1e6 are BSM or Pythia's colour-octet onium states.
    """
    a = np.abs(pdgid)
    n1, n2, n3 = _digits(pdgid)
    valid = (a >= 100) & (a < 1_000_000) & (n3 > 0)
    meson = valid & (n1 == 0) & (n2 == quark) & (n3 != quark)
    baryon = valid & (n1 == quark)
    return meson | baryon


def is_b_hadron(pdgid: np.ndarray) -> np.ndarray:
    """True for b hadrons (including B_c, excluding bottomonium)."""
    return _is_hadron_of(pdgid, 5)


def is_c_hadron(pdgid: np.ndarray) -> np.ndarray:
    """True for c hadrons (excluding charmonium and B_c)."""
    return _is_hadron_of(pdgid, 4)


def weakly_decaying(is_flavour: np.ndarray, mother: np.ndarray) -> np.ndarray:
    """Hadrons of a flavour with no hadron of the same flavour among their daughters.

    ``is_flavour`` (n,) bool, ``mother`` (n,) global mother1 indices. Excited states
    (B* -> B gamma) and B0/Bs mixing copies (a one-daughter copy of the oscillated meson) have
    a same-flavour daughter, so the weakly decaying hadron is the last in the chain.
    """
    has_child = np.zeros(len(is_flavour), dtype=bool)
    m = mother[is_flavour]
    m = m[m >= 0]
    has_child[m[is_flavour[m]]] = True
    return is_flavour & ~has_child


def origin_labels(
    start: np.ndarray,
    weak_b: np.ndarray,
    weak_c: np.ndarray,
    pdgid: np.ndarray,
    status: np.ndarray,
    mother: np.ndarray,
    displaced: np.ndarray,
) -> np.ndarray:
    """FTAG ``ftagTruthOriginLabel`` of the particles ``start`` (k,) (global indices).

    ``weak_b``/``weak_c`` (n,) flag weakly decaying b/c hadrons (:func:`weakly_decaying`),
    ``pdgid``, ``status``, ``mother`` (n,) describe all particles of the batch.

    Follows ``mother1`` through every production with ``|status|`` in 71..99 (hadronisation
    and decays): following only 91..99 would stop at the string of B -> psi -> gg -> hadrons and
    call a whole displaced vertex primary. Priority: FromBC (a c hadron between the track and a
    b hadron), FromB, FromC, FromTau, OtherSecondary (production point ``displaced`` from the PV,
    e.g. K0S/Lambda decays), else Primary.

    Only weakly decaying b and c hadrons count: the pion of B** -> B pi or D*+ -> D0 pi+ is made
    at the primary vertex and is Primary (but FromB when the D* itself comes from a B decay),
    so every FromB/FromBC/FromC track starts at a displaced heavy-flavour decay vertex.
    """
    is_b, is_c = weak_b, weak_c
    is_tau = np.abs(pdgid) == 15
    abs_status = np.abs(status)
    k = len(start)
    from_b = np.zeros(k, dtype=bool)
    c_below_b = np.zeros(k, dtype=bool)  # a c hadron met before (below) any b hadron
    from_tau = np.zeros(k, dtype=bool)
    cur = start.copy()
    active = np.arange(k)
    for _ in range(_MAX_DEPTH):
        c = cur[active]
        go = (abs_status[c] >= 71) & (abs_status[c] <= 99) & (mother[c] >= 0)
        active = active[go]
        if len(active) == 0:
            break
        par = mother[cur[active]]
        cur[active] = par
        c_below_b[active] |= is_c[par] & ~from_b[active]
        from_b[active] |= is_b[par]
        from_tau[active] |= is_tau[par]
    label = np.full(k, ORIGIN["Primary"], dtype=np.int8)
    label[displaced] = ORIGIN["OtherSecondary"]
    label[from_tau] = ORIGIN["FromTau"]
    label[c_below_b & ~from_b] = ORIGIN["FromC"]
    label[from_b] = ORIGIN["FromB"]
    label[from_b & c_below_b] = ORIGIN["FromBC"]
    return label

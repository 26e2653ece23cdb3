"""The HDF5 layout of ndive-models jet files (FTAG style: what salt, atlas-ftag-tools, puma read).

A file holds two structured datasets:

- ``jets``   shape ``(N,)``, dtype :data:`JET_DTYPE`;
- ``tracks`` shape ``(N, max_tracks)``, dtype :data:`TRACK_DTYPE`; in each row the valid
  tracks come first, sorted by decreasing measured pT, and padded slots have ``valid = False``
  and all other fields zero.

and file attributes (:data:`REQUIRED_ATTRS`): the conventions (units, d0 sign, rho definition,
field), generator settings, seed and package versions, plus ``complete = True`` written just
before the file gets its final name.

Conventions (physics.md section 1): units mm, GeV, rad, T; Bz = 2 T along +z; track parameters
``(d0, z0, phi, theta, rho)`` are perigee parameters w.r.t. the true primary vertex with
``PCA = PV + d0 * (sin phi, -cos phi)`` (Billoir/Delphes sign; ATLAS/ACTS use ``-d0``) and
``rho = -q K Bz / pT`` [1/mm], ``K = 0.299792458e-3`` GeV/(T mm). Positions (vertices) are in
the detector frame [mm]; with the default settings the primary vertex is the origin.

Field names may be added in later schema versions but never renamed: models read them by name.
"""

from __future__ import annotations

import numpy as np

#: Bumped when fields are added; readers accept files with extra fields.
SCHEMA_VERSION = "1.0"

#: ``flavour_label`` indexes this tuple.
FLAVOURS = ("bjets", "cjets", "ujets")
#: ``HadronConeExclTruthLabelID`` of each flavour_label.
HADRON_CONE_LABELS = (5, 4, 0)
#: ``jet_class`` indexes this tuple: flavour_label's b and c, its light jets split into
#: ud, s, gluon (by PartonTruthLabelID) and tau (a tau lepton in the cone).
JET_CLASSES = ("bjets", "cjets", "udjets", "sjets", "gjets", "taujets")

#: ``ftagTruthOriginLabel`` values (index = label).
ORIGIN_LABELS = (
    "Pileup",
    "Fake",
    "Primary",
    "FromB",
    "FromBC",
    "FromC",
    "FromTau",
    "OtherSecondary",
)
ORIGIN = {name: i for i, name in enumerate(ORIGIN_LABELS)}

#: Track parameter order of ``cov`` and of the perigee fields.
TRACK_PARAMS = ("d0", "z0", "phi", "theta", "rho")

# (name, dtype, shape, unit, description). One table so that the dtype, the reader's checks
# and docs/generation.md cannot drift apart.
JET_FIELDS: tuple[tuple[str, str, tuple, str, str], ...] = (
    ("pt", "f4", (), "GeV", "jet transverse momentum (anti-kT R=0.4, visible particles)"),
    ("eta", "f4", (), "", "jet pseudorapidity"),
    ("phi", "f4", (), "rad", "jet azimuth"),
    ("mass", "f4", (), "GeV", "jet mass"),
    ("HadronConeExclTruthLabelID", "i4", (), "", "5 b, 4 c, 0 light (ATLAS cone labelling)"),
    ("flavour_label", "i4", (), "", "0 b, 1 c, 2 light: index into FLAVOURS"),
    ("n_tracks", "i4", (), "", "number of valid (stored) tracks"),
    ("n_tracks_all", "i4", (), "", "tracks associated before the max-tracks cut"),
    ("eventNumber", "i8", (), "", "global event number (unique within a file)"),
    ("hf_vertex_x", "f4", (), "mm", "true decay vertex of the labelling hadron (0 for light)"),
    ("hf_vertex_y", "f4", (), "mm", "true decay vertex of the labelling hadron (0 for light)"),
    ("hf_vertex_z", "f4", (), "mm", "true decay vertex of the labelling hadron (0 for light)"),
    ("Lxy", "f4", (), "mm", "transverse decay length of the labelling hadron from the PV"),
    ("L3D", "f4", (), "mm", "3D decay length of the labelling hadron from the PV"),
    ("hadron_pt", "f4", (), "GeV", "pT of the labelling hadron (0 for light)"),
    ("hadron_pdgid", "i4", (), "", "PDG id of the labelling hadron (0 for light)"),
    ("PartonTruthLabelID", "i4", (), "", ("|PDG id| of the highest-energy parton within "
                                          "dR < 0.4 (1-5 quarks, 21 gluon, 0 none)")),
    ("jet_class", "i4", (), "", "0 b, 1 c, 2 ud, 3 s, 4 g, 5 tau: index into JET_CLASSES"),
    ("pt_truth_nu_mu", "f4", (), "GeV", ("pT of the jet plus the neutrinos and muons nearest "
                                         "to it within dR < 0.4 (regression target)")),
    ("pv_x", "f4", (), "mm", "true primary vertex"),
    ("pv_y", "f4", (), "mm", "true primary vertex"),
    ("pv_z", "f4", (), "mm", "true primary vertex"),
)

TRACK_FIELDS: tuple[tuple[str, str, tuple, str, str], ...] = (
    ("valid", "?", (), "", "True for a real track, False for padding"),
    ("d0", "f4", (), "mm", "measured transverse impact parameter w.r.t. the PV"),
    ("z0", "f4", (), "mm", "measured longitudinal impact parameter w.r.t. the PV"),
    ("phi", "f4", (), "rad", "measured azimuth at the PCA, in (-pi, pi]"),
    ("theta", "f4", (), "rad", "measured polar angle"),
    ("rho", "f4", (), "1/mm", "measured signed curvature -q K Bz / pT"),
    ("cov", "f4", (5, 5), "", "covariance of (d0, z0, phi, theta, rho) (diagonal here)"),
    ("true_d0", "f4", (), "mm", "unsmeared d0 (exact helix)"),
    ("true_z0", "f4", (), "mm", "unsmeared z0"),
    ("true_phi", "f4", (), "rad", "unsmeared phi"),
    ("true_theta", "f4", (), "rad", "unsmeared theta"),
    ("true_rho", "f4", (), "1/mm", "unsmeared rho"),
    ("charge", "i1", (), "e", "true charge"),
    ("pt", "f4", (), "GeV", "measured pT = K Bz / |rho|"),
    ("eta", "f4", (), "", "measured pseudorapidity -ln tan(theta/2)"),
    ("deta", "f4", (), "", "eta - jet eta"),
    ("dphi", "f4", (), "rad", "phi - jet phi, wrapped to (-pi, pi]"),
    ("d0_significance", "f4", (), "", "d0 / sigma(d0), lifetime-signed w.r.t. the jet axis"),
    ("z0_significance", "f4", (), "", "z0 / sigma(z0), lifetime-signed w.r.t. the jet axis"),
    ("ftagTruthOriginLabel", "i1", (), "", "0..7, see ORIGIN_LABELS"),
    ("ftagTruthVertexIndex", "i4", (), "", "0 = PV; tracks sharing a production vertex share it"),
    ("truth_vertex_x", "f4", (), "mm", "true production vertex"),
    ("truth_vertex_y", "f4", (), "mm", "true production vertex"),
    ("truth_vertex_z", "f4", (), "mm", "true production vertex"),
)


#: Fields added after files were already in use: a file without them is still read (the
#: loader then has no ``jet_class`` / ``pt_truth``; models that need them say so).
OPTIONAL_FIELDS = frozenset({"PartonTruthLabelID", "jet_class", "pt_truth_nu_mu"})


def _dtype(fields) -> np.dtype:
    return np.dtype([(name, dt, shape) if shape else (name, dt) for name, dt, shape, *_ in fields])


#: Structured dtype of the ``jets`` dataset.
JET_DTYPE = _dtype(JET_FIELDS)
#: Structured dtype of the ``tracks`` dataset.
TRACK_DTYPE = _dtype(TRACK_FIELDS)

#: Attributes every complete file carries (values are str, float, int or bool).
REQUIRED_ATTRS = (
    "schema_version",
    "complete",
    "units",
    "d0_sign",
    "rho_definition",
    "bz_tesla",
    "reference_point",
    "flavours",
    "origin_labels",
    "max_tracks",
    "seed",
    "generator_settings",
    "package_versions",
)

#: The convention attributes, written as-is into every file.
CONVENTIONS = {
    "schema_version": SCHEMA_VERSION,
    "units": "length mm, energy/momentum GeV, angle rad, field T",
    "d0_sign": "PCA = PV + d0*(sin(phi), -cos(phi)) (Billoir/Delphes/NDIVE; ATLAS/ACTS d0 = -d0)",
    "rho_definition": "rho = -q*K*Bz/pT [1/mm], K = 0.299792458e-3 GeV/(T mm)",
    "reference_point": "track parameters are perigee parameters w.r.t. the true primary vertex",
    "significance_sign": "d0: sign(d0*sin(phi - phi_jet)); z0: sign(z0*(eta_jet - eta))",
    "flavours": ",".join(FLAVOURS),
    "origin_labels": ",".join(ORIGIN_LABELS),
}

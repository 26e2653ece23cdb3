"""The HDF5 layout of ndive-models jet files (FTAG style: what salt, atlas-ftag-tools, puma read).

A file holds two structured datasets:

- ``jets``   shape ``(N,)``, dtype :data:`JET_DTYPE`;
- ``tracks`` shape ``(N, max_tracks)``, dtype :data:`TRACK_DTYPE`; in each row the valid
  tracks come first, sorted by decreasing measured pT, and padded slots have ``valid = False``
  and all other fields zero.

Every field is a scalar (``ftag.hdf5.H5Reader`` and salt read nothing else; the covariance
is the :data:`COV_FIELDS`). The tables :data:`JET_FIELDS` / :data:`TRACK_FIELDS` (native
fields) and :data:`ATLAS_JET_FIELDS` / :data:`ATLAS_TRACK_FIELDS` (ATLAS names, units and
signs, derived when a file is written) give each field's unit, meaning and ATLAS counterpart;
docs/generation.md prints them. ``jets.attrs["flavour_label"]`` holds :data:`FLAVOURS`.

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

from typing import NamedTuple

import numpy as np

#: Minor version bumped when fields are added (readers accept files with extra fields), major
#: when the layout changes. 2.0: the (5, 5) ``cov`` sub-array became the scalar
#: :data:`COV_FIELDS`, and the ATLAS-named fields were added; 1.x files are still read
#: (converted in memory) and ``ndive convert`` rewrites them.
SCHEMA_VERSION = "2.0"

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

#: Track parameter order of the covariance and of the perigee fields.
TRACK_PARAMS = ("d0", "z0", "phi", "theta", "rho")

class Field(NamedTuple):
    """One row of the layout table: a field of ``jets`` or ``tracks``."""

    name: str
    dtype: str
    shape: tuple
    unit: str
    description: str
    #: The field of ATLAS flavour-tagging dumps (training-dataset-dumper, salt, puma) with the
    #: same meaning, and how it differs; "" when ATLAS dumps have none.
    atlas: str = ""


def _table(rows) -> tuple[Field, ...]:
    return tuple(Field(*row) for row in rows)


def _cov_unit(a: str, b: str) -> str:
    units = sorted((_PARAM_UNITS[a], _PARAM_UNITS[b]))
    if units == ["1/mm", "mm"]:
        return ""
    if units[0] == units[1]:
        return units[0] + "^2" if units[0][:2] != "1/" else "1/" + units[0][2:] + "^2"
    if units[0] == "1/mm":
        return units[1] + "/mm"
    return " ".join(units)


_PARAM_UNITS = {"d0": "mm", "z0": "mm", "phi": "rad", "theta": "rad", "rho": "1/mm"}

#: Names of the covariance fields: the upper triangle of the 5x5 covariance of
#: :data:`TRACK_PARAMS`, row by row (``cov_d0_d0, cov_d0_z0, ..., cov_rho_rho``). Scalars, not a
#: (5, 5) sub-array, so that ``ftag.hdf5.H5Reader`` and salt (which walk ``dtype.descr`` as
#: (name, type) pairs) read the file; :func:`track_cov` assembles the matrix.
COV_FIELDS = tuple(
    f"cov_{a}_{b}" for i, a in enumerate(TRACK_PARAMS) for b in TRACK_PARAMS[i:]
)
_COV_INDEX = tuple(
    (i, j) for i in range(len(TRACK_PARAMS)) for j in range(i, len(TRACK_PARAMS))
)

# One table per dataset: name, dtype, shape, unit, meaning and ATLAS counterpart, so that the
# dtype, the reader's checks and docs/generation.md cannot drift apart. ``shape`` is () for
# every field: sub-array fields break H5Reader and salt.
JET_FIELDS: tuple[Field, ...] = _table((
    ("pt", "f4", (), "GeV", "jet transverse momentum (anti-kT R=0.4, visible particles)",
     "pt_btagJes (MeV)"),
    ("eta", "f4", (), "", "jet pseudorapidity", "eta_btagJes"),
    ("phi", "f4", (), "rad", "jet azimuth", "phi"),
    ("mass", "f4", (), "GeV", "jet mass", "mass (MeV)"),
    ("HadronConeExclTruthLabelID", "i4", (), "", "5 b, 4 c, 0 light (ATLAS cone labelling)",
     "HadronConeExclTruthLabelID"),
    ("flavour_label", "i4", (), "", "0 b, 1 c, 2 light: index into FLAVOURS = (bjets, cjets, ujets)",
     "flavour_label (UPP/salt; class names in jets.attrs['flavour_label'])"),
    ("n_tracks", "i4", (), "", "number of valid (stored) tracks", ""),
    ("n_tracks_all", "i4", (), "", "tracks associated before the max-tracks cut", ""),
    ("eventNumber", "i8", (), "", "global event number (unique within a file)", "eventNumber"),
    ("hf_vertex_x", "f4", (), "mm", "true decay vertex of the labelling hadron (0 for light)",
     ""),
    ("hf_vertex_y", "f4", (), "mm", "true decay vertex of the labelling hadron (0 for light)",
     ""),
    ("hf_vertex_z", "f4", (), "mm", "true decay vertex of the labelling hadron (0 for light)",
     ""),
    ("Lxy", "f4", (), "mm", "transverse decay length of the labelling hadron from the PV",
     "HadronConeExclTruthLabelLxy"),
    ("L3D", "f4", (), "mm", "3D decay length of the labelling hadron from the PV", ""),
    ("hadron_pt", "f4", (), "GeV", "pT of the labelling hadron (0 for light)",
     "HadronConeExclTruthLabelPt (MeV)"),
    ("hadron_pdgid", "i4", (), "", "PDG id of the labelling hadron (0 for light)",
     "HadronConeExclTruthLabelPdgId"),
    ("PartonTruthLabelID", "i4", (), "", ("|PDG id| of the highest-energy parton within "
                                          "dR < 0.4 (1-5 quarks, 21 gluon, 0 none)"),
     "PartonTruthLabelID"),
    ("jet_class", "i4", (), "", "0 b, 1 c, 2 ud, 3 s, 4 g, 5 tau: index into JET_CLASSES", ""),
    ("pt_truth_nu_mu", "f4", (), "GeV", ("pT of the jet plus the neutrinos and muons nearest "
                                         "to it within dR < 0.4 (b-jet pT regression target)"),
     ""),
    ("pv_x", "f4", (), "mm", "true primary vertex", ""),
    ("pv_y", "f4", (), "mm", "true primary vertex", ""),
    ("pv_z", "f4", (), "mm", "true primary vertex", ""),
))  # fmt: skip

#: Jet fields in ATLAS names and units, derived from the native ones by
#: :func:`ndive_models.data.add_atlas_fields` whenever a file is written.
ATLAS_JET_FIELDS: tuple[Field, ...] = _table((
    ("pt_btagJes", "f4", (), "MeV", "1000 * pt", "pt_btagJes"),
    ("eta_btagJes", "f4", (), "", "eta", "eta_btagJes"),
    ("absEta_btagJes", "f4", (), "", "|eta|", "absEta_btagJes"),
))  # fmt: skip

TRACK_FIELDS: tuple[Field, ...] = _table((
    ("valid", "?", (), "", "True for a real track, False for padding", "valid"),
    ("d0", "f4", (), "mm", ("measured transverse impact parameter w.r.t. the PV "
     "(Billoir sign, see d0_sign)"), "-d0 (ATLAS sign: use btagIp_d0)"),
    ("z0", "f4", (), "mm", "measured longitudinal impact parameter w.r.t. the PV",
     "z0 w.r.t. the PV (z0SinTheta / sin theta)"),
    ("phi", "f4", (), "rad", "measured azimuth at the PCA, in (-pi, pi]", "phi"),
    ("theta", "f4", (), "rad", "measured polar angle", "theta"),
    ("rho", "f4", (), "1/mm", "measured signed curvature -q K Bz / pT",
     "qOverP * 1000 * K * Bz / sin(theta)"),
    *((name, "f4", (), _cov_unit(TRACK_PARAMS[i], TRACK_PARAMS[j]),
       f"covariance of ({TRACK_PARAMS[i]}, {TRACK_PARAMS[j]}) (diagonal here: off-diagonal 0)",
       "definingParametersCovMatrix (ATLAS: q/p instead of rho, d0 sign flipped)")
      for name, (i, j) in zip(COV_FIELDS, _COV_INDEX)),
    ("true_d0", "f4", (), "mm", "unsmeared d0 (exact helix)", ""),
    ("true_z0", "f4", (), "mm", "unsmeared z0", ""),
    ("true_phi", "f4", (), "rad", "unsmeared phi", ""),
    ("true_theta", "f4", (), "rad", "unsmeared theta", ""),
    ("true_rho", "f4", (), "1/mm", "unsmeared rho", ""),
    ("charge", "i1", (), "e", "true charge", "truth charge (the measured one is -sign(rho))"),
    ("pt", "f4", (), "GeV", "measured pT = K Bz / |rho|", "pt (MeV)"),
    ("eta", "f4", (), "", "measured pseudorapidity -ln tan(theta/2)", "eta"),
    ("deta", "f4", (), "", "eta - jet eta", "deta"),
    ("dphi", "f4", (), "rad", "phi - jet phi, wrapped to (-pi, pi]", "dphi"),
    ("d0_significance", "f4", (), "", "d0 / sigma(d0), lifetime-signed w.r.t. the jet axis",
     "lifetimeSignedD0Significance (same values)"),
    ("z0_significance", "f4", (), "", "z0 / sigma(z0), lifetime-signed w.r.t. the jet axis",
     "lifetimeSignedZ0SinThetaSignificance uses z0 sin(theta)"),
    ("ftagTruthOriginLabel", "i1", (), "", ("0 Pileup, 1 Fake, 2 Primary, "
     "3 FromB, 4 FromBC, 5 FromC, 6 FromTau, 7 OtherSecondary (ORIGIN_LABELS)"), "ftagTruthOriginLabel"),
    ("ftagTruthVertexIndex", "i4", (), "", ("0 = PV; tracks of a jet sharing "
     "a production vertex (1 um grid) share an index, 1, 2, ... in pT order"),
     "ftagTruthVertexIndex"),
    ("truth_vertex_x", "f4", (), "mm", "true production vertex", ""),
    ("truth_vertex_y", "f4", (), "mm", "true production vertex", ""),
    ("truth_vertex_z", "f4", (), "mm", "true production vertex", ""),
))  # fmt: skip

#: Track fields in ATLAS names, units and signs (training-dataset-dumper / GN2 inputs), derived
#: from the native ones by :func:`ndive_models.data.add_atlas_fields` whenever a file is written;
#: 0 in padded slots. The ATLAS sign of d0 is the opposite of ``d0``'s, so ATLAS's ``d0`` input
#: is ``btagIp_d0`` here (the name of the ATLAS decoration it is read from).
ATLAS_TRACK_FIELDS: tuple[Field, ...] = _table((
    ("btagIp_d0", "f4", (), "mm", "-d0: transverse IP w.r.t. the PV in the ATLAS sign",
     "d0 (GN2 input) = btagIp_d0"),
    ("d0Uncertainty", "f4", (), "mm", "sqrt(cov_d0_d0)", "d0Uncertainty"),
    ("z0SinTheta", "f4", (), "mm", "z0 sin(theta)", "z0SinTheta = btagIp_z0SinTheta"),
    ("z0SinThetaUncertainty", "f4", (), "mm",
     "sigma(z0 sin theta), propagated from cov (z0, theta)", "z0SinThetaUncertainty"),
    ("lifetimeSignedD0", "f4", (), "mm",
     "|d0| * sign(sin(phi_jet - phi) * btagIp_d0): + when the PCA is on the jet side",
     "lifetimeSignedD0"),
    ("lifetimeSignedD0Significance", "f4", (), "", "lifetimeSignedD0 / d0Uncertainty",
     "lifetimeSignedD0Significance"),
    ("lifetimeSignedZ0SinTheta", "f4", (), "mm",
     "|z0SinTheta| * sign((eta_jet - eta) * z0SinTheta)", "lifetimeSignedZ0SinTheta"),
    ("lifetimeSignedZ0SinThetaSignificance", "f4", (), "",
     "lifetimeSignedZ0SinTheta / z0SinThetaUncertainty",
     "lifetimeSignedZ0SinThetaSignificance"),
    ("qOverP", "f4", (), "1/MeV", "q / p with q = -sign(rho), p = pt / sin(theta)", "qOverP"),
    ("qOverPUncertainty", "f4", (), "1/MeV", "sigma(q/p), propagated from cov (theta, rho)",
     "qOverPUncertainty"),
    ("phiUncertainty", "f4", (), "rad", "sqrt(cov_phi_phi)", "phiUncertainty"),
    ("thetaUncertainty", "f4", (), "rad", "sqrt(cov_theta_theta)", "thetaUncertainty"),
    ("ptfrac", "f4", (), "", "pt / jet pt", "ptfrac"),
    ("dr", "f4", (), "", "sqrt(deta^2 + dphi^2)", "dr"),
))  # fmt: skip


#: Fields added after files were already in use, with the value that means "not available":
#: a file without them is still read, and a schema 1.x file upgraded (in memory or by
#: ``ndive convert``) gets this value (the loader then provides no ``jet_class`` /
#: ``pt_truth``; models that need them say so).
OPTIONAL_FIELDS = {"PartonTruthLabelID": -1, "jet_class": -1, "pt_truth_nu_mu": -1.0}


def _dtype(fields) -> np.dtype:
    return np.dtype([(f.name, f.dtype, f.shape) if f.shape else (f.name, f.dtype) for f in fields])


#: Structured dtype of the ``jets`` dataset.
JET_DTYPE = _dtype(JET_FIELDS + ATLAS_JET_FIELDS)
#: Structured dtype of the ``tracks`` dataset.
TRACK_DTYPE = _dtype(TRACK_FIELDS + ATLAS_TRACK_FIELDS)


def track_cov(tracks: np.ndarray) -> np.ndarray:
    """The ``(..., 5, 5)`` float32 covariance of :data:`TRACK_PARAMS` from the ``cov_*`` fields.

    Args:
        tracks: structured array (any shape) with the :data:`COV_FIELDS`.
    """
    out = np.empty(tracks.shape + (5, 5), np.float32)
    for name, (i, j) in zip(COV_FIELDS, _COV_INDEX):
        out[..., i, j] = out[..., j, i] = tracks[name]
    return out


def set_track_cov(tracks: np.ndarray, cov: np.ndarray) -> None:
    """Store the upper triangle of ``cov`` ``(..., 5, 5)`` in the ``cov_*`` fields of ``tracks``."""
    for name, (i, j) in zip(COV_FIELDS, _COV_INDEX):
        tracks[name] = cov[..., i, j]


def markdown_table(fields) -> str:
    """The rows ``fields`` as the Markdown table of docs/generation.md (field, dtype, unit,
    meaning, ATLAS counterpart); ``|`` in cells is escaped."""
    esc = lambda text: str(text).replace("|", "\\|")
    lines = ["| field | dtype | unit | meaning | ATLAS counterpart |", "|---|---|---|---|---|"]
    for f in fields:
        atlas = f"`{f.atlas}`" if f.atlas and " " not in f.atlas else esc(f.atlas)
        lines.append(f"| `{f.name}` | {np.dtype(f.dtype).name} | {esc(f.unit)} | "
                     f"{esc(f.description)} | {atlas} |")
    return "\n".join(lines)


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

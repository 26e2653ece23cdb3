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
``(d0, z0, phi, theta, rho)`` are perigee parameters w.r.t. the primary vertex
:func:`reference_pv` (the true one, or the reconstructed one with ``--reco-pv``) with
``PCA = PV + d0 * (sin phi, -cos phi)`` (Billoir/Delphes sign; ATLAS/ACTS use ``-d0``) and
``rho = -q K Bz / pT`` [1/mm], ``K = 0.299792458e-3`` GeV/(T mm). Positions (vertices) are in
the detector frame [mm]; with the default (clean) settings the primary vertex is the origin.

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
    ("pv_x", "f4", (), "mm", "true primary vertex"),
    ("pv_y", "f4", (), "mm", "true primary vertex"),
    ("pv_z", "f4", (), "mm", "true primary vertex"),
    # realistic detector (docs/generation.md); clean files: reco_pv = pv, sigmas 0, no pileup
    ("reco_pv_x", "f4", (), "mm", "primary vertex the track parameters refer to (reconstructed)"),
    ("reco_pv_y", "f4", (), "mm", "primary vertex the track parameters refer to (reconstructed)"),
    ("reco_pv_z", "f4", (), "mm", "primary vertex the track parameters refer to (reconstructed)"),
    ("reco_pv_sigma_x", "f4", (), "mm", "uncertainty of reco_pv_x from the vertex fit"),
    ("reco_pv_sigma_y", "f4", (), "mm", "uncertainty of reco_pv_y from the vertex fit"),
    ("reco_pv_sigma_z", "f4", (), "mm", "uncertainty of reco_pv_z from the vertex fit"),
    ("reco_pv_ntracks", "i4", (), "", "tracks with adaptive weight > 0.5 in the PV fit"),
    ("reco_pv_is_hs", "?", (), "", "the chosen PV is the hard scatter (most of its sum pT^2)"),
    ("n_pileup", "i4", (), "", "pileup interactions overlaid on the event"),
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
    ("leptonID", "i1", (), "", "reconstructed soft lepton: signed PDG id 11/-11/13/-13, 0 none"),
    ("lepton_pt", "f4", (), "GeV", "pT measured by the lepton reconstruction (0 if none)"),
)


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
    "reference_point": "track parameters are perigee parameters w.r.t. the primary vertex "
    "reco_pv_x/y/z (the true one, pv_x/y/z, unless the PV is reconstructed)",
    "significance_sign": "d0: sign(d0*sin(phi - phi_jet)); z0: sign(z0*(eta_jet - eta))",
    "flavours": ",".join(FLAVOURS),
    "origin_labels": ",".join(ORIGIN_LABELS),
}


def reference_pv(jets: np.ndarray) -> np.ndarray:
    """``(N, 3)`` float64: the point the track parameters of each jet refer to [mm].

    ``reco_pv_x/y/z`` where the file has them (the reconstructed PV, or the true PV in clean
    files), else the true PV ``pv_x/y/z`` (files written before the fields existed). Truth
    vertices are in the detector frame: subtract this to express them in the tracks' frame.
    """
    prefix = "reco_pv_" if "reco_pv_x" in (jets.dtype.names or ()) else "pv_"
    return np.stack([jets[prefix + c] for c in "xyz"], axis=-1).astype(np.float64)

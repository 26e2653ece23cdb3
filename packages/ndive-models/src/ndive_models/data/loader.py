"""From jet files to model inputs: the batch dict of tensors the models take.

A *batch* is a dict of tensors (``B`` jets, ``T`` track slots; all positions in the frame of
the primary vertex the track parameters refer to, :func:`~.data.schema.reference_pv`: the
reconstructed PV in realistic files, the true PV ``pv_x/y/z`` in clean ones):

====================  ===============  ===================================================
key                   shape / dtype    meaning
====================  ===============  ===================================================
``params``            (B, T, 5) f32    perigee ``(d0, z0, phi, theta, rho)`` w.r.t. the PV
``cov``               (B, T, 5, 5) f32 their covariance (identity in padded slots)
``valid``             (B, T) bool      real track (False for padding)
``jet``               (B, 3) f32       jet ``(pt [GeV], eta, phi [rad])``
``flavour``           (B,) int64       0 b, 1 c, 2 light (``flavour_label``)
``origin``            (B, T) int64     ``ftagTruthOriginLabel`` (0..7; 0 in padding)
``vertex_index``      (B, T) int64     ``ftagTruthVertexIndex`` (-1 in padding)
``hf_vertex``         (B, 3) f32       true decay vertex of the labelling hadron - PV [mm]
``truth_weight``      (B, T) f32       1 for tracks from the b/c decay chain, else 0
====================  ===============  ===================================================

and, where the file has the fields:

====================  ===============  ===================================================
``jet_class``         (B,) int64       0 b, 1 c, 2 ud, 3 s, 4 g, 5 tau (``jet_class``)
``pt_truth``          (B,) f32         truth jet pT incl. neutrinos and muons [GeV]
``lepton_id``         (B, T) int64     soft lepton of the track (``leptonID``; 0 none)
``lepton_pt``         (B, T) f32       its pT from the lepton reconstruction [GeV]
====================  ===============  ===================================================

Padded slots hold a harmless placeholder track (``theta = pi/2``, unit covariance), so no
arithmetic on them can produce NaN; models must still mask them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._io import read_attrs, read_jets
from .schema import ORIGIN, TRACK_PARAMS, reference_pv, track_cov

__all__ = ["HF_ORIGINS", "N_ORIGINS", "SAFE_TRACK", "arrays_to_batch", "index_batch",
           "load_batch", "to_device"]

#: Origins counted as "from the heavy-flavour decay chain" (perfect track selection).
HF_ORIGINS = (ORIGIN["FromB"], ORIGIN["FromBC"], ORIGIN["FromC"])
#: Number of track-origin classes (``ftagTruthOriginLabel`` 0..7).
N_ORIGINS = 8
#: Placeholder perigee of padded slots.
SAFE_TRACK = (0.0, 0.0, 0.0, math.pi / 2, 0.0)


def load_batch(path, start: int = 0, stop: int | None = None) -> tuple[dict, float]:
    """Read jets ``[start, stop)`` of a checked file into a CPU batch dict.

    ``path`` may also be a list of files (e.g. the shards of a study): they are read one
    after the other and concatenated in the order given, so the jets are numbered as in one
    file; ``[start, stop)`` then counts over the concatenation. All files must have the same
    field and number of track slots.

    Returns:
        ``(batch, bz)``: the batch (see module docstring) and the field [T] from the file.
    """
    if isinstance(path, (list, tuple)):
        return _load_many(list(path), start, stop)
    jets, tracks = read_jets(path, start, stop)
    bz = float(read_attrs(path)["bz_tesla"])
    return arrays_to_batch(jets, tracks), bz


def _load_many(paths: list, start: int, stop: int | None) -> tuple[dict, float]:
    if not paths:
        raise ValueError("an empty list of files was given")
    parts, bz, offset = [], None, 0
    for p in paths:
        n = int(read_attrs(p)["n_jets"])
        lo, hi = max(start - offset, 0), n if stop is None else min(stop - offset, n)
        offset += n
        if hi <= lo:
            continue
        batch, b = load_batch(p, lo, hi)
        if bz is not None and b != bz:
            raise ValueError(f"{p}: field {b} T differs from {bz} T of {paths[0]}")
        if parts and batch["valid"].shape[1] != parts[0]["valid"].shape[1]:
            raise ValueError(f"{p}: {batch['valid'].shape[1]} track slots, "
                             f"{paths[0]} has {parts[0]['valid'].shape[1]}")
        bz = b
        parts.append(batch)
    if not parts:
        raise ValueError(f"no jets in [{start}, {stop}) of {len(paths)} files")
    if len(parts) == 1:
        return parts[0], bz
    out = {}
    for k in list(parts[0]):  # one key at a time: the peak memory is the batch plus one key
        out[k] = torch.cat([q.pop(k) for q in parts])
    return out, bz


def arrays_to_batch(jets: np.ndarray, tracks: np.ndarray) -> dict:
    """Structured ``jets`` (N,) and ``tracks`` (N, T) arrays -> batch dict of CPU tensors."""
    valid = np.ascontiguousarray(tracks["valid"])
    params = np.stack([tracks[k] for k in TRACK_PARAMS], axis=-1).astype(np.float32)
    params = np.where(valid[..., None], params, np.asarray(SAFE_TRACK, np.float32))
    cov = np.where(valid[..., None, None], track_cov(tracks), np.eye(5, dtype=np.float32))
    pv = reference_pv(jets).astype(np.float32)  # the tracks' reference point
    hf = np.stack([jets["hf_vertex_x"], jets["hf_vertex_y"], jets["hf_vertex_z"]], -1)
    flavour = jets["flavour_label"].astype(np.int64)
    # light jets store 0 (not the PV) as their "HF vertex": keep them at the PV
    hf = np.where((flavour < 2)[:, None], hf - pv, 0.0).astype(np.float32)
    origin = np.where(valid, tracks["ftagTruthOriginLabel"], 0).astype(np.int64)
    vidx = np.where(valid, tracks["ftagTruthVertexIndex"], -1).astype(np.int64)
    truth_w = (np.isin(origin, HF_ORIGINS) & valid).astype(np.float32)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    optional = {}
    # absent, or "not available" (-1) in files upgraded from schema 1: no key
    if "jet_class" in jets.dtype.names and np.all(jets["jet_class"] >= 0):
        optional["jet_class"] = t(jets["jet_class"].astype(np.int64))
    if "pt_truth_nu_mu" in jets.dtype.names and np.all(jets["pt_truth_nu_mu"] >= 0):
        optional["pt_truth"] = t(jets["pt_truth_nu_mu"].astype(np.float32))
    if "leptonID" in tracks.dtype.names:
        optional["lepton_id"] = t(np.where(valid, tracks["leptonID"], 0).astype(np.int64))
        optional["lepton_pt"] = t(np.where(valid, tracks["lepton_pt"], 0).astype(np.float32))
    return {**optional,
        "params": t(params),
        "cov": t(cov.astype(np.float32)),
        "valid": t(valid),
        "jet": t(np.stack([jets["pt"], jets["eta"], jets["phi"]], -1).astype(np.float32)),
        "flavour": t(flavour),
        "origin": t(origin),
        "vertex_index": t(vidx),
        "hf_vertex": t(hf),
        "truth_weight": t(truth_w),
    }


def index_batch(batch: dict, idx) -> dict:
    """The jets ``idx`` (index tensor or slice) of every tensor in ``batch``."""
    return {k: v[idx] for k, v in batch.items()}


def to_device(batch: dict, device) -> dict:
    """Every tensor of ``batch`` on ``device`` (asynchronous copies where possible)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

"""From jet files to model inputs: tensors, track features, normalisation statistics.

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

Padded slots hold a harmless placeholder track (``theta = pi/2``, unit covariance), so no
arithmetic on them can produce NaN; models must still mask them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import read_attrs, read_jets
from .data.schema import ORIGIN, TRACK_PARAMS, reference_pv

#: Origins counted as "from the heavy-flavour decay chain" (perfect track selection).
HF_ORIGINS = (ORIGIN["FromB"], ORIGIN["FromBC"], ORIGIN["FromC"])
#: Number of track-origin classes (``ftagTruthOriginLabel`` 0..7).
N_ORIGINS = 8
#: Names of the columns of :func:`track_features` (without the appended reference point).
FEATURE_NAMES = (
    "d0", "z0", "dphi", "deta", "log_pt", "charge",
    "log_sigma_d0", "log_sigma_z0", "log_sigma_phi", "log_sigma_theta", "log_sigma_rho_rel",
    "d0_sig", "z0_sig", "log_jet_pt", "jet_eta",
)  # fmt: skip
#: Placeholder perigee of padded slots.
SAFE_TRACK = (0.0, 0.0, 0.0, math.pi / 2, 0.0)


def load_batch(path, start: int = 0, stop: int | None = None) -> tuple[dict, float]:
    """Read jets ``[start, stop)`` of a checked file into a CPU batch dict.

    Returns:
        ``(batch, bz)``: the batch (see module docstring) and the field [T] from the file.
    """
    jets, tracks = read_jets(path, start, stop)
    bz = float(read_attrs(path)["bz_tesla"])
    return arrays_to_batch(jets, tracks), bz


def arrays_to_batch(jets: np.ndarray, tracks: np.ndarray) -> dict:
    """Structured ``jets`` (N,) and ``tracks`` (N, T) arrays -> batch dict of CPU tensors."""
    valid = np.ascontiguousarray(tracks["valid"])
    params = np.stack([tracks[k] for k in TRACK_PARAMS], axis=-1).astype(np.float32)
    params = np.where(valid[..., None], params, np.asarray(SAFE_TRACK, np.float32))
    cov = np.where(valid[..., None, None], tracks["cov"], np.eye(5, dtype=np.float32))
    pv = reference_pv(jets).astype(np.float32)  # the tracks' reference point
    hf = np.stack([jets["hf_vertex_x"], jets["hf_vertex_y"], jets["hf_vertex_z"]], -1)
    flavour = jets["flavour_label"].astype(np.int64)
    # light jets store 0 (not the PV) as their "HF vertex": keep them at the PV
    hf = np.where((flavour < 2)[:, None], hf - pv, 0.0).astype(np.float32)
    origin = np.where(valid, tracks["ftagTruthOriginLabel"], 0).astype(np.int64)
    vidx = np.where(valid, tracks["ftagTruthVertexIndex"], -1).astype(np.int64)
    truth_w = (np.isin(origin, HF_ORIGINS) & valid).astype(np.float32)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    return {
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
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _wrap(x):
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def track_features(params, cov, jet, bz: float):
    """Per-track input features (differentiable in ``params`` and ``cov``).

    Args:
        params: ``(B, T, 5)`` perigee ``(d0, z0, phi, theta, rho)`` [mm, mm, rad, rad, 1/mm].
        cov: ``(B, T, 5, 5)`` covariance.
        jet: ``(B, 3)`` jet ``(pt [GeV], eta, phi [rad])``.
        bz: field [T] (turns curvature into pT).

    Returns:
        ``(B, T, len(FEATURE_NAMES))`` features, columns :data:`FEATURE_NAMES`.
    """
    from vertexfit import K_GEV_PER_T_MM

    d0, z0, phi, theta, rho = params.unbind(-1)
    var = torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(1e-30)
    sig = var.sqrt()
    tiny = 1e-12
    abs_rho = rho.abs() + tiny
    eta = -torch.log(torch.tan(0.5 * theta).clamp_min(tiny))
    jpt, jeta, jphi = (c[:, None].expand_as(d0) for c in jet.unbind(-1))
    cols = [
        d0,
        z0,
        _wrap(phi - jphi),
        eta - jeta,
        math.log(K_GEV_PER_T_MM * bz) - torch.log(abs_rho),
        -torch.sign(rho),
        torch.log(sig[..., 0]),
        torch.log(sig[..., 1]),
        torch.log(sig[..., 2]),
        torch.log(sig[..., 3]),
        torch.log(sig[..., 4] / abs_rho),
        d0 / sig[..., 0],
        z0 / sig[..., 1],
        torch.log(jpt.clamp_min(1.0)),
        jeta,
    ]
    return torch.stack(cols, dim=-1)


def feature_stats(batch: dict, bz: float) -> dict:
    """Mean and standard deviation of the track features over valid tracks, and the scale of
    the true HF-vertex displacement (for the appended reference-point features).

    Returns:
        ``{"mean": (F,), "std": (F,), "pos_scale": (3,)}`` float32 tensors.
    """
    with torch.no_grad():
        f = track_features(batch["params"].double(), batch["cov"].double(),
                           batch["jet"].double(), bz)
        x = f[batch["valid"]]
        if x.shape[0] < 2:
            raise ValueError("need at least two valid tracks to compute input normalisation")
        mean, std = x.mean(0), x.std(0)
        std = torch.where(std > 1e-6 * (mean.abs() + 1.0), std, torch.ones_like(std))
        hf = batch["hf_vertex"][batch["flavour"] < 2].double()
        pos = hf.abs().mean(0) if hf.shape[0] else torch.ones(3, dtype=torch.float64)
        pos = torch.where(pos > 1e-3, pos, torch.ones_like(pos))
    return {"mean": mean.float(), "std": std.float(), "pos_scale": pos.float()}

"""Per-track input features and the base class of every tagger (normalised features).

The features are computed inside the model, not in the data loader, because they must stay
differentiable: FTAG+NDIVE recomputes them on tracks extrapolated to the fitted vertex, and
the gradient flows through them into the fit. Their normalisation statistics come from
:func:`ndive_models.data.normalisation.feature_stats` and are stored in the checkpoint.
"""

from __future__ import annotations

import math

import torch
import vertexfit
from torch import nn

from .layers import Normaliser

__all__ = ["FEATURE_NAMES", "MUON_FEATURE_NAMES", "FeatureModel", "select_tracks",
           "track_features"]

#: Names of the columns of :func:`track_features` (without the appended reference point).
FEATURE_NAMES = (
    "d0", "z0", "dphi", "deta", "log_pt", "charge",
    "log_sigma_d0", "log_sigma_z0", "log_sigma_phi", "log_sigma_theta", "log_sigma_rho_rel",
    "d0_sig", "z0_sig", "log_jet_pt", "jet_eta",
)  # fmt: skip
#: Extra columns of a soft-muon token (after the normalised features of its track).
MUON_FEATURE_NAMES = ("log_muon_pt_over_5GeV", "muon_pt_over_track_pt")
#: ``|leptonID|`` of a soft muon.
_MUON_PDGID = 13


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
        vertexfit.wrap_phi(phi - jphi),
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



def select_tracks(cfg, batch: dict) -> dict:
    """``batch`` with ``valid`` restricted to the tracks the model uses: the first
    ``cfg.max_tracks`` (tracks are stored by decreasing pT) with ``|d0| < cfg.d0_max``
    (0 switches a cut off). The same batch object when nothing is cut."""
    if not cfg.max_tracks and not cfg.d0_max:
        return batch
    valid = batch["valid"]
    if cfg.max_tracks:
        slot = torch.arange(valid.shape[1], device=valid.device)
        valid = valid & (slot < cfg.max_tracks)
    if cfg.d0_max:
        valid = valid & (batch["params"][..., 0].abs() < cfg.d0_max)
    return {**batch, "valid": valid}


class FeatureModel(nn.Module):
    """Base of the taggers: holds the field, the input :class:`Normaliser` and the scale of
    the reference-point features; :meth:`features` gives normalised track features.

    Args:
        cfg: :class:`~ndive_models.models.ModelConfig`.
        stats: ``{"mean": (F,), "std": (F,), "pos_scale": (3,)}`` from ``feature_stats``.
        bz: field [T].
    """

    def __init__(self, cfg, stats: dict, bz: float):
        super().__init__()
        self.cfg = cfg
        self.bz = float(bz)
        self.norm = Normaliser(stats["mean"], stats["std"])
        self.register_buffer("pos_scale", torch.as_tensor(stats["pos_scale"]).float().clone())

    def features(self, params, cov, jet):
        """Normalised ``(B, T, F)`` track features."""
        return self.norm(track_features(params, cov, jet, self.bz))

    def input_sizes(self, n_extra: int = 0) -> dict:
        """``{input type: number of features}`` of :meth:`inputs` (``n_extra`` columns
        appended to every type, e.g. the reference point in FTAG+NDIVE)."""
        n = len(FEATURE_NAMES) + n_extra
        sizes = {"tracks": n}
        if "muons" in self.cfg.inputs:
            sizes["muons"] = n + len(MUON_FEATURE_NAMES)
        return sizes

    def inputs(self, batch, params, cov, extra=None) -> dict:
        """The backbone's inputs ``{type: (features, valid)}`` from tracks ``params`` /
        ``cov`` (B, T, 5) / (B, T, 5, 5) (the batch's, or re-expressed at another point;
        ``k B`` jets: k views of the batch's jets stacked, each view's rows in batch order).

        ``tracks``: the normalised track features (+ ``extra`` (k B, T, n) columns).
        ``muons`` (``"muons" in cfg.inputs``): one token per track slot, valid where the track
        is a reconstructed soft muon (``|lepton_id| = 13``): the track's features followed
        by :data:`MUON_FEATURE_NAMES` from the muon reconstruction's pT.
        """
        # k views of the same jets stacked along the jet axis (FtagNdive: PV and NDIVE vertex)
        k = params.shape[0] // batch["valid"].shape[0]

        def rep(x):
            return x if k == 1 else torch.cat([x] * k)

        valid = rep(batch["valid"])
        f = self.features(params, cov, rep(batch["jet"]))
        if extra is not None:
            f = torch.cat([f, extra], -1)
        out = {"tracks": (f, valid)}
        if "muons" in self.cfg.inputs:
            if "lepton_id" not in batch:
                raise ValueError("model.inputs has 'muons' but the data have no soft-lepton "
                                 "fields (track field 'leptonID': generate with soft leptons)")
            from vertexfit import K_GEV_PER_T_MM

            mu = valid & (rep(batch["lepton_id"]).abs() == _MUON_PDGID)
            mpt = rep(batch["lepton_pt"]).to(f.dtype).clamp_min(1e-3)
            tpt = K_GEV_PER_T_MM * self.bz / (params[..., 4].to(f.dtype).abs() + 1e-12)
            mf = torch.stack([torch.log(mpt / 5.0), (mpt / tpt).clamp(0.0, 10.0)], -1)
            out["muons"] = (torch.cat([f, mf], -1), mu)
        return out

"""FTAG+NDIVE: the NDIVE block inside the GN2-like baseline, trained jointly.

Outputs: those of :class:`~ndive_models.models.Baseline` and of
:class:`~ndive_models.models.NDIVE` together.
"""

from __future__ import annotations

import torch

from .baseline import GN2Heads
from .config import ModelConfig
from .features import FEATURE_NAMES, FeatureModel
from .layers import track_encoder
from .losses import gn2_loss_terms, vertex_mae
from .ndive import NDIVE, finite_grad

__all__ = ["FtagNdive", "N_FIT_FEATURES", "fit_features"]

#: Columns of :func:`fit_features`.
N_FIT_FEATURES = 6


def fit_features(nd: dict):
    """The fit's quality as per-track inputs (``model.fit_features``), ``(B, T, 6)``:
    log(1 + track chi2), log(1 + chi2/ndf), log10 of the vertex errors sigma_x, y, z [mm]
    (0 where the fit is unusable) and log(1 + flight significance |v| / sigma(|v|)).
    Detached: the fit's gradients reach the weights through the vertex position."""
    v, cov, ok = nd["vertex"].detach(), nd["vertex_cov"].detach(), nd["fit_ok"]
    T = nd["track_chi2"].shape[1]
    sig = torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(1e-12))
    r = v.norm(dim=-1).clamp_min(1e-9)
    s_r = torch.sqrt((v[:, :, None] * cov * v[:, None, :]).sum((-2, -1)).clamp_min(1e-24)) / r
    okf = ok.to(v.dtype)
    jet = torch.stack([torch.log1p(nd["fit_chi2"].detach().clamp_min(0)
                                   / nd["fit_ndf"].detach().clamp_min(1e-3)),
                       *(okf[:, None] * torch.log10(sig)).unbind(-1),
                       okf * torch.log1p(r / s_r)], -1)
    track = torch.log1p(nd["track_chi2"].detach().clamp_min(0))[..., None]
    return torch.cat([track.to(v.dtype), jet[:, None, :].expand(-1, T, -1)], -1)


class FtagNdive(FeatureModel):
    """The NDIVE block inside the baseline, trained jointly.

    The same track processor runs on the tracks w.r.t. the PV (PV position, zero, appended)
    and on the tracks re-expressed at the NDIVE vertex with ``vertexfit.extrapolate``
    (covariance transported; the vertex position appended); the two embeddings are
    concatenated per track before pooling and the heads. Loss: GN2 terms + ``loss_ndive`` x
    the NDIVE vertex MAE. Where the fit is unusable the PV stands in for the vertex.
    """

    def __init__(self, cfg: ModelConfig, stats: dict, bz: float):
        super().__init__(cfg, stats, bz)
        self.ndive = NDIVE(cfg, stats, bz)
        self.encoder = track_encoder(cfg, len(FEATURE_NAMES) + 3
                                     + (N_FIT_FEATURES if cfg.fit_features else 0))
        self.heads = GN2Heads(2 * cfg.dim, cfg.heads)

    def forward(self, batch):
        import vertexfit

        valid = batch["valid"]
        nd = self.ndive(batch)
        vertex = nd["vertex"]
        params, cov = batch["params"], batch["cov"]
        ext, ext_cov = vertexfit.extrapolate(params.to(vertex.dtype), cov.to(vertex.dtype),
                                             finite_grad(vertex))
        dt = params.dtype
        pos0 = torch.zeros(params.shape[:2] + (3,), dtype=dt, device=params.device)
        posv = (vertex.to(dt) / self.pos_scale)[:, None, :].expand_as(pos0)
        f0 = torch.cat([self.features(params, cov, batch["jet"]), pos0], -1)
        f1 = torch.cat([self.features(ext.to(dt), ext_cov.to(dt), batch["jet"]), posv], -1)
        if self.cfg.fit_features:
            fit = fit_features(nd).to(dt)
            f0 = torch.cat([f0, torch.zeros_like(fit)], -1)
            f1 = torch.cat([f1, fit], -1)
        x = torch.cat([self.encoder(f0, valid), self.encoder(f1, valid)], -1)
        return {**self.heads(x, valid), **nd}

    def loss_terms(self, out, batch):
        terms = gn2_loss_terms(self.cfg, out, batch)
        if self.cfg.weights == "predicted":
            terms["ndive"] = (*vertex_mae(out, batch, self.cfg.vertex_loss_cap),
                              self.cfg.loss_ndive)
        return terms

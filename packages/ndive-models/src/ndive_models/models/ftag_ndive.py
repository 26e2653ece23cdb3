"""FTAG+NDIVE: the NDIVE block inside any FTAG tagger (DIPS, GN2, GN3 settings), trained
jointly. "GN2+NDIVE" and "GN3+NDIVE" are configs (``name: ftag_ndive`` with the backbone
settings), not classes.

Outputs: those of :class:`~ndive_models.models.Baseline` and of
:class:`~ndive_models.models.NDIVE` together.
"""

from __future__ import annotations

import torch

from .baseline import GN2Heads
from .config import ModelConfig
from .features import FeatureModel, select_tracks
from .layers import backbone
from .losses import gn2_loss_terms, vertex_mae
from .ndive import NDIVE, finite_grad

__all__ = ["N_FIT_FEATURES", "FtagNdive", "fit_features"]

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
    """The NDIVE block inside the FTAG tagger, trained jointly.

    The same backbone (``cfg.backbone`` and its settings) runs on the inputs w.r.t. the PV
    (PV position, zero, appended) and on the inputs re-expressed at the NDIVE vertex with
    ``vertexfit.extrapolate`` (covariance transported; the vertex position appended); the
    two embeddings are concatenated per constituent before pooling and the heads. The NDIVE
    weight predictor has its own size (``cfg.ndive_block()``). Loss: task terms +
    ``loss_ndive`` x the NDIVE vertex MAE. Where the fit is unusable the PV stands in for the
    vertex.
    """

    def __init__(self, cfg: ModelConfig, stats: dict, bz: float):
        super().__init__(cfg, stats, bz)
        self.ndive = NDIVE(cfg.ndive_block(), stats, bz)
        self.encoder = backbone(cfg, self.input_sizes(
            n_extra=3 + (N_FIT_FEATURES if cfg.fit_features else 0)))
        self.heads = GN2Heads(cfg, 2 * cfg.dim)

    def forward(self, batch):
        import vertexfit

        batch = select_tracks(self.cfg, batch)
        nd = self.ndive(batch)
        vertex = nd["vertex"]
        params, cov = batch["params"], batch["cov"]
        ext, ext_cov = vertexfit.extrapolate(params.to(vertex.dtype), cov.to(vertex.dtype),
                                             finite_grad(vertex))
        dt = params.dtype
        pos0 = torch.zeros(params.shape[:2] + (3,), dtype=dt, device=params.device)
        posv = (vertex.to(dt) / self.pos_scale)[:, None, :].expand_as(pos0)
        if self.cfg.fit_features:
            fit = fit_features(nd).to(dt)
            pos0, posv = torch.cat([pos0, torch.zeros_like(fit)], -1), torch.cat([posv, fit], -1)
        # both views through the backbone in one call on 2B jets (same arithmetic per jet,
        # half the operations: at training batch sizes the backbone is overhead-bound)
        B = params.shape[0]
        both = self.inputs(batch, torch.cat([params, ext.to(dt)]),
                           torch.cat([cov, ext_cov.to(dt)]), torch.cat([pos0, posv]))
        e = self.encoder(both)
        tokens = {k: torch.cat([x[:B], x[B:]], -1) for k, x in e.items()}
        in0 = {k: (f[:B], v[:B]) for k, (f, v) in both.items()}
        return {**self.heads(tokens, {k: v for k, (_, v) in in0.items()}, batch["jet"]), **nd}

    def loss_terms(self, out, batch):
        terms = gn2_loss_terms(self.cfg, out, batch)
        if self.cfg.weights == "predicted":
            terms["ndive"] = (*vertex_mae(out, batch, self.cfg.vertex_loss_cap),
                              self.cfg.loss_ndive)
        return terms

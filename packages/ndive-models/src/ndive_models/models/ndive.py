"""NDIVE: a track-weight predictor followed by the differentiable Billoir vertex fit.

Outputs (``B`` jets, ``T`` track slots): ``weights`` (B, T) in [0, 1], the track weights
divided by the jet's largest (0 at padding), ``vertex`` (B, 3) [mm, relative to the primary
vertex], ``vertex_cov`` (B, 3, 3) [mm^2], ``fit_ok`` (B,) bool (finite vertex, at least two
tracks, within ``max_displacement``), ``fit_converged`` (B,) bool, ``fit_chi2`` (B,),
``fit_ndf`` (B,) and ``track_chi2`` (B, T) (the fit's; 0, 1 and 0 where not ``fit_ok``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.schema import ORIGIN
from .config import ModelConfig
from .features import FEATURE_NAMES, FeatureModel, select_tracks
from .layers import mlp, track_encoder
from .losses import vertex_mae

__all__ = ["NDIVE", "SECONDARY_ORIGINS", "finite_grad"]

#: Origins of displaced tracks (``weights: secondary``): b, b->c, c, tau decays and other
#: secondaries (docs/labels.md), whatever the jet's flavour.
SECONDARY_ORIGINS = tuple(ORIGIN[k] for k in ("FromB", "FromBC", "FromC", "FromTau",
                                              "OtherSecondary"))


class NDIVE(FeatureModel):
    """Weight predictor + differentiable Billoir fit (``vertexfit.fit``).

    A transformer over the tracks (features include jet pT and eta) gives a weight in
    (0, 1) per track; the weighted fit gives the vertex; the loss is the mean absolute error
    to the true heavy-flavour decay vertex over b- and c-jets with a usable fit. Gradients
    reach the weight predictor through the fit (implicit differentiation when vertexfit's
    PyTorch adapter is available).
    """

    def __init__(self, cfg: ModelConfig, stats: dict, bz: float):
        super().__init__(cfg, stats, bz)
        if cfg.weights == "predicted":
            self.encoder = track_encoder(cfg, len(FEATURE_NAMES))
            self.weight_head = mlp(cfg.dim, [cfg.dim], 1, cfg.activation)

    def track_weights(self, batch):
        """``(weights, fit_weights)``, both ``(B, T)`` and 0 at padding.

        ``weights`` = sigmoid(logit) in (0, 1) (the NDIVE output). The fit is invariant under
        a common scaling of a jet's weights, so nothing stops the network from drifting to
        weights that underflow (sigmoid of a logit below about -88 is 0 in float32, and the
        fit's derivative grows as 1/w). The fit therefore gets ``fit_weights`` = weights /
        (the jet's largest weight), computed from log-sigmoids in float64: the same vertex,
        largest weight 1, finite gradients.
        """
        valid = batch["valid"]
        if self.cfg.weights != "predicted":
            if self.cfg.weights == "truth":
                w = batch["truth_weight"]
            elif self.cfg.weights == "secondary":
                w = torch.isin(batch["origin"], torch.as_tensor(
                    SECONDARY_ORIGINS, device=batch["origin"].device)).to(
                        batch["truth_weight"].dtype)
            else:
                w = torch.ones_like(batch["truth_weight"])
            w = w * valid.to(w.dtype)
            return w, w
        f = self.features(batch["params"], batch["cov"], batch["jet"])
        x = self.encoder({"tracks": (f, valid)})["tracks"]
        logit = self.weight_head(x)[..., 0]
        w = torch.sigmoid(logit) * valid.to(logit.dtype)
        ls = F.logsigmoid(logit.double()).masked_fill(~valid, -torch.inf)
        mx = ls.amax(-1, keepdim=True).detach()
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        w_fit = torch.exp(ls - mx) * valid.to(ls.dtype)
        return w, w_fit

    def forward(self, batch):
        import vertexfit

        batch = select_tracks(self.cfg, batch)
        valid = batch["valid"]
        w, w_fit = self.track_weights(batch)
        dt = getattr(torch, self.cfg.fit_dtype)
        res = vertexfit.fit(batch["params"].to(dt), batch["cov"].to(dt),
                            finite_grad(w_fit.to(dt)), mask=valid, n_iter=self.cfg.fit_iter,
                            model=self.cfg.fit_model, compile=self.cfg.fit_compile)
        vertex = res.vertex
        n_used = ((w_fit > 0) & valid).sum(-1)
        ok = (torch.isfinite(vertex).all(-1) & torch.isfinite(res.vertex_cov).all((-2, -1))
              & (n_used >= 2) & (vertex.detach().norm(dim=-1) < self.cfg.max_displacement))
        vertex = torch.where(ok[:, None], vertex, torch.zeros_like(vertex))
        vcov = torch.where(ok[:, None, None], res.vertex_cov, torch.eye(3, dtype=dt,
                                                                         device=vertex.device))
        # reported weights: the fit's (jet maximum 1); raw sigmoids can underflow to 0 once
        # the scale has drifted, and every use (selection w > 0.5 max) is scale invariant
        return {"weights": w_fit.to(w.dtype), "vertex": vertex, "vertex_cov": vcov,
                "fit_ok": ok, "fit_converged": res.converged & ok,
                "fit_chi2": torch.where(ok, res.chi2, torch.zeros_like(res.chi2)),
                "fit_ndf": torch.where(ok, res.ndf, torch.ones_like(res.ndf)),
                "track_chi2": torch.where(ok[:, None], res.track_chi2,
                                          torch.zeros_like(res.track_chi2))}

    def loss_terms(self, out, batch):
        """``{"ndive": (sum of per-jet MAE, number of jets, 1)}`` over b/c jets with fit_ok."""
        return {"ndive": (*vertex_mae(out, batch, self.cfg.vertex_loss_cap), 1.0)}


def finite_grad(x):
    """``x`` unchanged; in the backward pass, a jet (row) whose gradient has a NaN or inf is
    given zero gradient instead. Guards the parameters against the derivative of a fit or an
    extrapolation that failed numerically (e.g. a nearly singular vertex system): such a jet
    then simply does not contribute to the step."""
    if not x.requires_grad:
        return x

    def hook(g):
        # unconditional where: no host synchronisation (a Python `if` on a CUDA value)
        bad = ~torch.isfinite(g).reshape(g.shape[0], -1).all(-1)
        return torch.where(bad.reshape((-1,) + (1,) * (g.ndim - 1)), torch.zeros_like(g), g)

    x = x.view_as(x)
    x.register_hook(hook)
    return x

"""The paper's models: ``NDIVE``, the GN2-like ``Baseline`` and ``FtagNdive`` (physics.md s. 7).

Every model takes a batch dict (see :mod:`ndive_models._inputs`) and returns a dict of
outputs; ``model.loss_terms(outputs, batch)`` returns ``{name: (sum, count, weight)}`` and
:func:`total_loss` combines them as ``sum_k weight_k * sum_k / count_k``. Keeping sums and
counts apart lets data-parallel training divide by the *global* counts, so K processes give
exactly the single-process loss.

Outputs (``B`` jets, ``T`` track slots):

- NDIVE: ``weights`` (B, T) in [0, 1], the track weights divided by the jet's largest
  (0 at padding), ``vertex`` (B, 3) [mm, relative to the
  primary vertex], ``vertex_cov`` (B, 3, 3) [mm^2], ``fit_ok`` (B,) bool (finite vertex,
  at least two tracks, within ``max_displacement``), ``fit_converged`` (B,) bool.
- Baseline: ``flavour_logits`` (B, 3) (b, c, light), ``origin_logits`` (B, T, 8),
  ``pair_logits`` (B, T, T) (same production vertex).
- FtagNdive: the union of both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from ._inputs import FEATURE_NAMES, N_ORIGINS, track_features
from ._layers import AttentionPooling, Normaliser, TrackEncoder, mlp

__all__ = ["NDIVE", "Baseline", "FtagNdive", "ModelConfig", "build_model", "total_loss"]

MODEL_NAMES = ("baseline", "ndive", "ftag_ndive")
WEIGHT_MODES = ("predicted", "truth", "all")


@dataclass
class ModelConfig:
    """Model hyper-parameters (the paper's values are the defaults).

    Attributes:
        name: ``"baseline"``, ``"ndive"`` or ``"ftag_ndive"``.
        dim: embedding size (reference code: 32). layers / heads: transformer layers and
            attention heads (paper: 1 / 1). ff_mult: feed-forward width / dim.
        weights: track weights of the NDIVE fit: ``"predicted"`` (the network), ``"truth"``
            (perfect selection: 1 for tracks from the b/c decay chain) or ``"all"`` (1).
        loss_flavour / loss_origin / loss_pair: GN2 task weights (1 / 0.5 / 1.5).
        loss_ndive: weight of the NDIVE vertex MAE inside FtagNdive (reference code: 0.1).
        fit_iter: Gauss-Newton iterations of the fit (paper: 10). fit_model: ``"helix"`` or
            ``"billoir"``. fit_dtype: dtype the fit runs in.
        max_displacement: [mm] a fitted vertex further than this from the PV is treated as
            failed (``fit_ok`` False; FtagNdive then uses the PV).
        vertex_loss_cap: [mm] per-component cap of the absolute vertex error in the loss
            (a lost fit costs a constant, not an unbounded gradient).
    """

    name: str = "baseline"
    dim: int = 32
    layers: int = 1
    heads: int = 1
    ff_mult: int = 2
    weights: str = "predicted"
    loss_flavour: float = 1.0
    loss_origin: float = 0.5
    loss_pair: float = 1.5
    loss_ndive: float = 0.1
    fit_iter: int = 10
    fit_model: str = "helix"
    fit_dtype: str = "float64"
    max_displacement: float = 500.0
    vertex_loss_cap: float = 50.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in MODEL_NAMES:
            raise ValueError(f"model name must be one of {MODEL_NAMES}, got {self.name!r}")
        if self.weights not in WEIGHT_MODES:
            raise ValueError(f"weights must be one of {WEIGHT_MODES}, got {self.weights!r}")
        if self.fit_dtype not in ("float32", "float64"):
            raise ValueError(f"fit_dtype must be float32 or float64, got {self.fit_dtype!r}")

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class _Base(nn.Module):
    def __init__(self, cfg: ModelConfig, stats: dict, bz: float):
        super().__init__()
        self.cfg = cfg
        self.bz = float(bz)
        self.norm = Normaliser(stats["mean"], stats["std"])
        self.register_buffer("pos_scale", torch.as_tensor(stats["pos_scale"]).float().clone())

    def features(self, params, cov, jet):
        """Normalised ``(B, T, F)`` track features."""
        return self.norm(track_features(params, cov, jet, self.bz))


class NDIVE(_Base):
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
            self.encoder = TrackEncoder(len(FEATURE_NAMES), cfg.dim, cfg.layers, cfg.heads,
                                        cfg.ff_mult)
            self.weight_head = mlp(cfg.dim, [cfg.dim], 1)

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
            w = batch["truth_weight"] if self.cfg.weights == "truth" else \
                torch.ones_like(batch["truth_weight"])
            w = w * valid.to(w.dtype)
            return w, w
        x = self.encoder(self.features(batch["params"], batch["cov"], batch["jet"]), valid)
        logit = self.weight_head(x)[..., 0]
        w = torch.sigmoid(logit) * valid.to(logit.dtype)
        ls = F.logsigmoid(logit.double()).masked_fill(~valid, -torch.inf)
        mx = ls.amax(-1, keepdim=True).detach()
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        w_fit = torch.exp(ls - mx) * valid.to(ls.dtype)
        return w, w_fit

    def forward(self, batch):
        import vertexfit

        valid = batch["valid"]
        w, w_fit = self.track_weights(batch)
        dt = getattr(torch, self.cfg.fit_dtype)
        res = vertexfit.fit(batch["params"].to(dt), batch["cov"].to(dt),
                            finite_grad(w_fit.to(dt)), mask=valid, n_iter=self.cfg.fit_iter,
                            model=self.cfg.fit_model)
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
                "fit_ok": ok, "fit_converged": res.converged & ok}

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
        bad = ~torch.isfinite(g).reshape(g.shape[0], -1).all(-1)
        if bool(bad.any()):
            g = torch.where(bad.reshape((-1,) + (1,) * (g.ndim - 1)), torch.zeros_like(g), g)
        return g

    x = x.view_as(x)
    x.register_hook(hook)
    return x


def vertex_mae(out, batch, cap: float):
    """Sum over b/c jets with a usable fit of the mean |vertex - true HF vertex| (capped) and
    the number of such jets. Returns ``(sum, count)`` as 0-d tensors."""
    use = out["fit_ok"] & (batch["flavour"] < 2)
    err = (out["vertex"] - batch["hf_vertex"].to(out["vertex"].dtype)).abs().clamp_max(cap)
    per_jet = torch.where(use, err.mean(-1), torch.zeros_like(err[:, 0]))
    return per_jet.sum(), use.sum().to(per_jet.dtype)


class _GN2Heads(nn.Module):
    """Attention pooling + flavour, track-origin and track-pair heads on (B, T, D) tracks."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.pool = AttentionPooling(dim, heads)
        self.flavour = mlp(dim, [dim], 3)
        self.origin = mlp(2 * dim, [dim], N_ORIGINS)
        self.pair = mlp(2 * dim, [dim], 1)

    def forward(self, x, valid):
        B, T, D = x.shape
        jet = self.pool(x, valid)
        xj = torch.cat([x, jet[:, None, :].expand(B, T, D)], -1)
        pairs = torch.cat([x[:, :, None, :].expand(B, T, T, D),
                           x[:, None, :, :].expand(B, T, T, D)], -1)
        return {
            "flavour_logits": self.flavour(jet),
            "origin_logits": self.origin(xj),
            "pair_logits": self.pair(pairs)[..., 0],
        }


def gn2_loss_terms(cfg: ModelConfig, out, batch):
    """Flavour, origin and pair cross entropies as ``{name: (sum, count, weight)}``."""
    valid = batch["valid"]
    fl = F.cross_entropy(out["flavour_logits"].float(), batch["flavour"], reduction="sum")
    oce = F.cross_entropy(out["origin_logits"].float().transpose(1, 2), batch["origin"],
                          reduction="none")
    T = valid.shape[1]
    eye = torch.eye(T, dtype=torch.bool, device=valid.device)
    pmask = valid[:, :, None] & valid[:, None, :] & ~eye
    vi = batch["vertex_index"]
    same = (vi[:, :, None] == vi[:, None, :]).float()
    pce = F.binary_cross_entropy_with_logits(out["pair_logits"].float(), same, reduction="none")
    one = lambda x: torch.as_tensor(float(x), device=valid.device)
    return {
        "flavour": (fl, one(valid.shape[0]), cfg.loss_flavour),
        "origin": ((oce * valid).sum(), valid.sum().float(), cfg.loss_origin),
        "pair": ((pce * pmask).sum(), pmask.sum().float(), cfg.loss_pair),
    }


class Baseline(_Base):
    """GN2-like tagger: track processor (transformer), attention pooling, three heads."""

    def __init__(self, cfg: ModelConfig, stats: dict, bz: float):
        super().__init__(cfg, stats, bz)
        self.encoder = TrackEncoder(len(FEATURE_NAMES), cfg.dim, cfg.layers, cfg.heads,
                                    cfg.ff_mult)
        self.heads = _GN2Heads(cfg.dim, cfg.heads)

    def forward(self, batch):
        valid = batch["valid"]
        x = self.encoder(self.features(batch["params"], batch["cov"], batch["jet"]), valid)
        return self.heads(x, valid)

    def loss_terms(self, out, batch):
        return gn2_loss_terms(self.cfg, out, batch)


class FtagNdive(_Base):
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
        self.encoder = TrackEncoder(len(FEATURE_NAMES) + 3, cfg.dim, cfg.layers, cfg.heads,
                                    cfg.ff_mult)
        self.heads = _GN2Heads(2 * cfg.dim, cfg.heads)

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
        x = torch.cat([self.encoder(f0, valid), self.encoder(f1, valid)], -1)
        return {**self.heads(x, valid), **nd}

    def loss_terms(self, out, batch):
        terms = gn2_loss_terms(self.cfg, out, batch)
        if self.cfg.weights == "predicted":
            terms["ndive"] = (*vertex_mae(out, batch, self.cfg.vertex_loss_cap),
                              self.cfg.loss_ndive)
        return terms


_CLASSES = {"baseline": Baseline, "ndive": NDIVE, "ftag_ndive": FtagNdive}


def build_model(cfg: ModelConfig, stats: dict, bz: float) -> nn.Module:
    """The model named by ``cfg.name`` with input normalisation ``stats`` (``feature_stats``)
    and field ``bz`` [T]."""
    return _CLASSES[cfg.name](cfg, stats, bz)


def total_loss(terms: dict, counts: dict | None = None):
    """``sum_k weight_k * sum_k / max(count_k, 1)``; ``counts`` overrides the counts (e.g. the
    all-reduced global counts in data-parallel training). Returns a 0-d tensor."""
    total = 0.0
    for name, (s, n, w) in terms.items():
        n = counts[name] if counts is not None else n
        total = total + w * s / n.clamp_min(1.0)
    return total

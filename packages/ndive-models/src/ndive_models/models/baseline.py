"""The FTAG tagger: a track processor (backbone), pooling and the task heads. DIPS, GN2 and
GN3 are settings of this one model (``docs/models.md``); ``Baseline`` is the paper's GN2-like
baseline at its default settings.

Outputs (``B`` jets, ``T`` track slots, ``C = cfg.classes``): ``flavour_logits`` (B, C) (classes
in ``cfg.class_names`` order), and per task in ``cfg.tasks``: ``origin_logits`` (B, T, 8)
(``ftagTruthOriginLabel``), ``pair_logits`` (B, T, T) (the two tracks come from the same
production vertex), ``pt_log_ratio`` (B,) (predicted log(truth jet pT incl. neutrinos and
muons / jet pT)) and ``pt_regressed`` (B,) [GeV] (jet pT x its exponential).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.loader import N_ORIGINS
from .config import ModelConfig
from .features import FeatureModel, select_tracks
from .layers import ACTIVATIONS, backbone, mlp, pooling
from .losses import gn2_loss_terms

__all__ = ["Baseline", "GN2Heads", "PairHead"]


class PairHead(nn.Module):
    """Track-pair logits ``mlp([x_i, x_j])`` with the first layer split as
    ``A x_i + B x_j + b``: the (B, T, T, 2D) concatenation is never built (memory
    ``B T^2 hidden`` instead of ``B T^2 (2 D + hidden)``; same function).

    Shapes: ``x`` (B, T, D) -> (B, T, T).
    """

    def __init__(self, dim: int, hidden: int, activation: str = "silu"):
        super().__init__()
        self.first = nn.Linear(dim, hidden)
        self.second = nn.Linear(dim, hidden, bias=False)
        self.act = ACTIVATIONS[activation]()
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.first(x)[:, :, None, :] + self.second(x)[:, None, :, :]
        return self.out(self.act(h))[..., 0]


class GN2Heads(nn.Module):
    """Pooling + the heads of ``cfg.tasks`` on the backbone's per-constituent embeddings.

    The jet vector pools over every input type (tracks and soft muons); the origin and pair
    heads see the tracks. Masked (padded) slots of ``origin_logits`` / ``pair_logits`` are
    arbitrary but finite; the losses ignore them.
    """

    def __init__(self, cfg: ModelConfig, dim: int):
        super().__init__()
        act = cfg.activation
        self.pool = pooling(cfg.pooling, dim, cfg.heads)
        self.flavour = mlp(dim, [dim], cfg.classes, act)
        self.origin = mlp(2 * dim, [dim], N_ORIGINS, act) if "origin" in cfg.tasks else None
        self.pair = PairHead(dim, dim, act) if "pair" in cfg.tasks else None
        self.regression = mlp(dim, [dim], 1, act) if "regression" in cfg.tasks else None

    def forward(self, tokens: dict, valid: dict, jet) -> dict:
        """``tokens`` / ``valid``: ``{type: (B, T_type, D)}`` / ``{type: (B, T_type)}``;
        ``jet`` (B, 3) the batch's jet (pT [GeV], eta, phi)."""
        x = tokens["tracks"]
        jet_vec = self.pool(torch.cat(list(tokens.values()), 1), torch.cat(list(valid.values()), 1))
        out = {"flavour_logits": self.flavour(jet_vec)}
        if self.origin is not None:
            B, T, D = x.shape
            out["origin_logits"] = self.origin(torch.cat([x, jet_vec[:, None, :].expand(B, T, D)],
                                                         -1))
        if self.pair is not None:
            out["pair_logits"] = self.pair(x)
        if self.regression is not None:
            r = self.regression(jet_vec)[:, 0]
            out["pt_log_ratio"] = r
            out["pt_regressed"] = jet[:, 0].to(r.dtype) * torch.exp(r.clamp(-5.0, 5.0))
        return out


class Baseline(FeatureModel):
    """FTAG tagger: backbone (``cfg.backbone``: transformer or deep sets) over the inputs
    (tracks, optionally soft muons), pooling, task heads."""

    def __init__(self, cfg: ModelConfig, stats: dict, bz: float):
        super().__init__(cfg, stats, bz)
        self.encoder = backbone(cfg, self.input_sizes())
        self.heads = GN2Heads(cfg, cfg.dim)

    def forward(self, batch):
        batch = select_tracks(self.cfg, batch)
        inputs = self.inputs(batch, batch["params"], batch["cov"])
        tokens = self.encoder(inputs)
        return self.heads(tokens, {k: v for k, (_, v) in inputs.items()}, batch["jet"])

    def loss_terms(self, out, batch):
        return gn2_loss_terms(self.cfg, out, batch)

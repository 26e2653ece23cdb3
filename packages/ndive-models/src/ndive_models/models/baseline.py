"""The GN2-like baseline: track processor, attention pooling and three task heads.

Outputs (``B`` jets, ``T`` track slots): ``flavour_logits`` (B, 3) (b, c, light),
``origin_logits`` (B, T, 8) (``ftagTruthOriginLabel``), ``pair_logits`` (B, T, T) (the two
tracks come from the same production vertex).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.loader import N_ORIGINS
from .config import ModelConfig
from .features import FEATURE_NAMES, FeatureModel
from .layers import AttentionPooling, mlp, track_encoder
from .losses import gn2_loss_terms

__all__ = ["Baseline", "GN2Heads"]


class GN2Heads(nn.Module):
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


class Baseline(FeatureModel):
    """GN2-like tagger: track processor (transformer), attention pooling, three heads."""

    def __init__(self, cfg: ModelConfig, stats: dict, bz: float):
        super().__init__(cfg, stats, bz)
        self.encoder = track_encoder(cfg, len(FEATURE_NAMES))
        self.heads = GN2Heads(cfg.dim, cfg.heads)

    def forward(self, batch):
        valid = batch["valid"]
        x = self.encoder(self.features(batch["params"], batch["cov"], batch["jet"]), valid)
        return self.heads(x, valid)

    def loss_terms(self, out, batch):
        return gn2_loss_terms(self.cfg, out, batch)

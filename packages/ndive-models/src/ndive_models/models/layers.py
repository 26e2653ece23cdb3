"""Building blocks: input normalisation, masked transformer encoder, attention pooling, MLPs,
and :func:`track_encoder`, which builds the track processor a config asks for.

Masking convention: ``valid`` is a ``(B, T)`` bool tensor, True for real tracks. Padded
slots never influence valid ones (attention scores of padded keys are replaced by a large
negative number before the softmax, so their weight is exactly 0), and every module zeroes
its outputs at padded slots, so garbage there cannot propagate. A jet with no valid track
gives finite (zero) outputs.
"""

from __future__ import annotations

import torch
from torch import nn

# exp(-1e9 - max) is exactly 0 in float32/bfloat16: masked keys get zero weight.
_MASKED_SCORE = -1e9


class Normaliser(nn.Module):
    """``(x - mean) / std`` with statistics stored as buffers (saved in the checkpoint).

    Args:
        mean, std: ``(F,)`` statistics of the training file (see ``feature_stats``).
        clip: normalised values are clipped to ``[-clip, clip]`` (protects against wild
            inputs, e.g. tracks extrapolated to a badly fitted vertex).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, clip: float = 50.0):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).clone())
        self.clip = float(clip)

    def forward(self, x):
        return ((x - self.mean.to(x.dtype)) / self.std.to(x.dtype)).clamp(-self.clip, self.clip)


def mlp(n_in: int, hidden: list[int], n_out: int) -> nn.Sequential:
    """Dense network ``n_in -> hidden... -> n_out`` with SiLU activations (last layer linear)."""
    layers, n = [], n_in
    for h in hidden:
        layers += [nn.Linear(n, h), nn.SiLU()]
        n = h
    layers.append(nn.Linear(n, n_out))
    return nn.Sequential(*layers)


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention over tracks with a key-padding mask.

    Shapes: ``x`` (B, T, D), ``valid`` (B, T) -> (B, T, D).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model dim {dim} is not divisible by the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, valid):
        B, T, D = x.shape
        h = self.heads
        q, k, v = self.qkv(x).view(B, T, 3, h, D // h).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) * (D // h) ** -0.5  # (B, h, T, T)
        scores = scores.masked_fill(~valid[:, None, None, :], _MASKED_SCORE)
        att = torch.softmax(scores, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, D)
        return self.out(y)


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: ``x + MHA(LN x)``, then ``x + FF(LN x)``; zero at padding."""

    def __init__(self, dim: int, heads: int, ff_mult: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MaskedSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.SiLU(),
                                nn.Linear(ff_mult * dim, dim))

    def forward(self, x, valid):
        m = valid[..., None].to(x.dtype)
        x = x + self.attn(self.norm1(x), valid) * m
        x = x + self.ff(self.norm2(x)) * m
        return x


class TrackEncoder(nn.Module):
    """Track processor: per-track embedding MLP then ``layers`` masked transformer layers.

    Shapes: ``features`` (B, T, n_in), ``valid`` (B, T) -> embeddings (B, T, dim), zero in
    padded slots.
    """

    def __init__(self, n_in: int, dim: int, layers: int, heads: int, ff_mult: int = 2):
        super().__init__()
        self.embed = mlp(n_in, [dim], dim)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ff_mult) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, features, valid):
        m = valid[..., None].to(features.dtype)
        # padded slots may hold anything (NaN included): replace before any arithmetic
        x = self.embed(torch.where(valid[..., None], features, torch.zeros_like(features))) * m
        for layer in self.layers:
            x = layer(x, valid)
        return self.norm(x) * m


class AttentionPooling(nn.Module):
    """Jet vector as an attention-weighted sum of track embeddings (one learned query per head).

    Shapes: ``x`` (B, T, D), ``valid`` (B, T) -> (B, D). A jet with no track gives zeros.
    """

    def __init__(self, dim: int, heads: int = 1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"pooling dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        # no bias: a constant score cannot change the softmax (its gradient would be pure
        # rounding noise, which layer-normalised optimisers such as NovoGrad amplify)
        self.score = nn.Linear(dim, heads, bias=False)
        self.value = nn.Linear(dim, dim)

    def forward(self, x, valid):
        B, T, D = x.shape
        s = self.score(x).masked_fill(~valid[..., None], _MASKED_SCORE)  # (B, T, h)
        a = torch.softmax(s, dim=1) * valid[..., None].to(x.dtype)
        v = self.value(x).view(B, T, self.heads, D // self.heads)
        return torch.einsum("bth,bthd->bhd", a, v).reshape(B, D)


def track_encoder(cfg, n_in: int) -> nn.Module:
    """The track processor of every tagger, built from the config: ``(B, T, n_in)`` features
    and ``(B, T)`` ``valid`` -> ``(B, T, cfg.dim)`` embeddings, zero at padding.

    The one place a backbone is chosen: another track processor (deep sets, a transformer
    with other options) is a new config key read here, not a new model class.
    """
    return TrackEncoder(n_in, cfg.dim, cfg.layers, cfg.heads, cfg.ff_mult)

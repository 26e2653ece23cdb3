"""Building blocks: input normalisation, MLPs, masked transformer encoder (with the GN3
options), deep sets, the pooling operations, and :func:`backbone` / :func:`track_encoder`,
which build the track processor a config asks for.

Masking convention: ``valid`` is a ``(B, T)`` bool tensor, True for real tracks. Padded
slots never influence valid ones (attention scores of padded keys are replaced by a large
negative number before the softmax, so their weight is exactly 0), and every module zeroes
its outputs at padded slots, so garbage there cannot propagate. A jet with no valid track
gives finite (zero) outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


#: ``ModelConfig.activation`` -> module class.
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


def mlp(n_in: int, hidden: list[int], n_out: int, activation: str = "silu") -> nn.Sequential:
    """Dense network ``n_in -> hidden... -> n_out`` with ``activation`` between layers (last
    layer linear)."""
    layers, n = [], n_in
    for h in hidden:
        layers += [nn.Linear(n, h), ACTIVATIONS[activation]()]
        n = h
    layers.append(nn.Linear(n, n_out))
    return nn.Sequential(*layers)


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention over tracks with a key-padding mask.

    ``impl="manual"`` writes the softmax out; ``impl="sdpa"`` calls
    :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
    kernels where the device and mask allow; same result up to rounding).

    Shapes: ``x`` (B, T, D), ``valid`` (B, T) -> (B, T, D).
    """

    def __init__(self, dim: int, heads: int, impl: str = "manual"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model dim {dim} is not divisible by the number of heads {heads}")
        self.heads = heads
        self.impl = impl
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, valid):
        B, T, D = x.shape
        h = self.heads
        q, k, v = self.qkv(x).view(B, T, 3, h, D // h).permute(2, 0, 3, 1, 4)
        if self.impl == "sdpa":
            # a jet without any valid key attends to everything (finite; zeroed by the caller)
            keys = valid | ~valid.any(-1, keepdim=True)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :])
        else:
            scores = (q @ k.transpose(-1, -2)) * (D // h) ** -0.5  # (B, h, T, T)
            scores = scores.masked_fill(~valid[:, None, None, :], _MASKED_SCORE)
            y = torch.softmax(scores, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    """Transformer feed-forward ``dim -> ff_mult * dim -> dim``: ``"mlp"`` (act(W1 x)) or
    ``"glu"`` (gated linear unit, GN3: act(W1 x) * (V x))."""

    def __init__(self, dim: int, ff_mult: int = 2, activation: str = "silu", kind: str = "mlp"):
        super().__init__()
        hidden = ff_mult * dim
        self.glu = kind == "glu"
        self.inp = nn.Linear(dim, 2 * hidden if self.glu else hidden)
        self.act = ACTIVATIONS[activation]()
        self.out = nn.Linear(hidden, dim)

    def forward(self, x):
        if self.glu:
            a, b = self.inp(x).chunk(2, dim=-1)
            return self.out(self.act(a) * b)
        return self.out(self.act(self.inp(x)))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: ``x + MHA(LN x)``, then ``x + FF(LN x)``; zero at padding."""

    def __init__(self, dim: int, heads: int, ff_mult: int = 2, activation: str = "silu",
                 feed_forward: str = "mlp", attention: str = "manual"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MaskedSelfAttention(dim, heads, attention)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, ff_mult, activation, feed_forward)

    def forward(self, x, valid):
        m = valid[..., None].to(x.dtype)
        x = x + self.attn(self.norm1(x), valid) * m
        x = x + self.ff(self.norm2(x)) * m
        return x


def _embed_all(embed: nn.ModuleDict, inputs: dict):
    """Per-type embeddings, concatenated along the sequence: ``(x (B, N, D), valid (B, N),
    sizes)``; padded slots are replaced by zeros before any arithmetic (they may hold NaN)."""
    xs, vs, sizes = [], [], []
    for name, (f, valid) in inputs.items():
        x = embed[name](torch.where(valid[..., None], f, torch.zeros_like(f)))
        xs.append(x * valid[..., None].to(x.dtype))
        vs.append(valid)
        sizes.append(f.shape[1])
    return torch.cat(xs, 1), torch.cat(vs, 1), sizes


def _split(x, names, sizes) -> dict:
    return dict(zip(names, x[:, :sum(sizes)].split(sizes, dim=1)))


class TrackEncoder(nn.Module):
    """Transformer track processor (GN2/GN3): per-type embedding MLP, optional register tokens,
    ``layers`` masked transformer layers over all constituents together, final LayerNorm.

    Args:
        n_in: ``{input type: number of features}``, e.g. ``{"tracks": 15, "muons": 16}``.
        registers: learned tokens appended to every jet's sequence (always valid).

    Shapes: ``inputs`` ``{type: (features (B, T_type, n_in), valid (B, T_type))}`` ->
    ``{type: (B, T_type, dim)}``, zero in padded slots.
    """

    def __init__(self, n_in: dict, dim: int, layers: int, heads: int, ff_mult: int = 2,
                 activation: str = "silu", feed_forward: str = "mlp",
                 attention: str = "manual", registers: int = 0):
        super().__init__()
        self.embed = nn.ModuleDict({k: mlp(n, [dim], dim, activation) for k, n in n_in.items()})
        self.registers = nn.Parameter(0.02 * torch.randn(registers, dim)) if registers else None
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ff_mult, activation, feed_forward,
                                                 attention) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, inputs: dict) -> dict:
        x, valid, sizes = _embed_all(self.embed, inputs)
        if self.registers is not None:
            B = x.shape[0]
            x = torch.cat([x, self.registers.to(x.dtype)[None].expand(B, -1, -1)], 1)
            valid = torch.cat([valid, valid.new_ones(B, self.registers.shape[0])], 1)
        for layer in self.layers:
            x = layer(x, valid)
        x = self.norm(x) * valid[..., None].to(x.dtype)
        return _split(x, list(inputs), sizes)


class DeepSetsEncoder(nn.Module):
    """DIPS track processor: per-type network ``n_in -> dim (x layers) -> dim`` applied to each
    constituent independently (activation on its output too, as in DIPS), zero at padding.
    The permutation-invariant sum is the pooling of the heads (``pooling: sum`` or
    ``weighted_sum``).

    Shapes: as :class:`TrackEncoder`.
    """

    def __init__(self, n_in: dict, dim: int, layers: int, activation: str = "relu"):
        super().__init__()
        self.embed = nn.ModuleDict({
            k: nn.Sequential(mlp(n, [dim] * layers, dim, activation), ACTIVATIONS[activation]())
            for k, n in n_in.items()})  # fmt: skip

    def forward(self, inputs: dict) -> dict:
        x, _, sizes = _embed_all(self.embed, inputs)
        return _split(x, list(inputs), sizes)


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


class SumPooling(nn.Module):
    """Deep-sets pooling: ``sum_t x_t`` (``weighted=False``, DIPS) or
    ``sum_t sigmoid(w . x_t + b) x_t`` (``weighted=True``). Permutation invariant.

    Shapes: ``x`` (B, T, D), ``valid`` (B, T) -> (B, D); a jet with no track gives zeros.
    """

    def __init__(self, dim: int, weighted: bool = False):
        super().__init__()
        self.weight = nn.Linear(dim, 1) if weighted else None

    def forward(self, x, valid):
        m = valid[..., None].to(x.dtype)
        if self.weight is not None:
            m = m * torch.sigmoid(self.weight(x))
        return (x * m).sum(1)


def pooling(kind: str, dim: int, heads: int = 1) -> nn.Module:
    """The pooling ``ModelConfig.pooling`` names: ``(B, T, D), (B, T) -> (B, D)``."""
    if kind == "attention":
        return AttentionPooling(dim, heads)
    return SumPooling(dim, weighted=kind == "weighted_sum")


def backbone(cfg, n_in: dict) -> nn.Module:
    """The track processor ``cfg.backbone`` asks for, with ``n_in`` = ``{input type: number of
    features}``: ``{type: (features, valid)}`` -> ``{type: (B, T_type, cfg.dim)}``, zero at
    padding. The one place a backbone is chosen: DIPS, GN2 and GN3 are settings read here."""
    if cfg.backbone == "dips":
        return DeepSetsEncoder(n_in, cfg.dim, cfg.layers, cfg.activation)
    return TrackEncoder(n_in, cfg.dim, cfg.layers, cfg.heads, cfg.ff_mult, cfg.activation,
                        cfg.feed_forward, cfg.attention, cfg.registers)


def track_encoder(cfg, n_in: int) -> nn.Module:
    """A transformer over tracks only, as :func:`backbone` with a single input type
    ``"tracks"`` (NDIVE's weight predictor)."""
    return TrackEncoder({"tracks": n_in}, cfg.dim, cfg.layers, cfg.heads, cfg.ff_mult,
                        cfg.activation, cfg.feed_forward, cfg.attention, cfg.registers)

"""Input normalisation: statistics of the track features over a training sample.

The statistics are computed once from the training data (:func:`feature_stats`), stored in
the checkpoint and applied inside the model by :class:`ndive_models.models.layers.Normaliser`.
"""

from __future__ import annotations

import torch

from ..models.features import track_features

__all__ = ["feature_stats"]


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

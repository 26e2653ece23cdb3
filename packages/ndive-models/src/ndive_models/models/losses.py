"""The training losses, as ``{name: (sum, count, weight)}`` terms, and their combination.

Each model's ``loss_terms(outputs, batch)`` returns such terms; :func:`total_loss` combines
them as ``sum_k weight_k * sum_k / count_k``. Keeping sums and counts apart lets
data-parallel training divide by the *global* counts, so K processes give exactly the
single-process loss.

- :func:`vertex_mae`: NDIVE's vertex loss, the mean absolute error of the fitted vertex to
  the true heavy-flavour decay vertex (b- and c-jets with a usable fit).
- :func:`gn2_loss_terms`: the GN2 multi-task loss (jet flavour, track origin, track pairs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import ModelConfig

__all__ = ["gn2_loss_terms", "total_loss", "vertex_mae"]


def vertex_mae(out, batch, cap: float):
    """Sum over b/c jets with a usable fit of the mean |vertex - true HF vertex| (capped) and
    the number of such jets. Returns ``(sum, count)`` as 0-d tensors."""
    use = out["fit_ok"] & (batch["flavour"] < 2)
    err = (out["vertex"] - batch["hf_vertex"].to(out["vertex"].dtype)).abs().clamp_max(cap)
    per_jet = torch.where(use, err.mean(-1), torch.zeros_like(err[:, 0]))
    return per_jet.sum(), use.sum().to(per_jet.dtype)


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


def total_loss(terms: dict, counts: dict | None = None):
    """``sum_k weight_k * sum_k / max(count_k, 1)``; ``counts`` overrides the counts (e.g. the
    all-reduced global counts in data-parallel training). Returns a 0-d tensor."""
    total = 0.0
    for name, (s, n, w) in terms.items():
        n = counts[name] if counts is not None else n
        total = total + w * s / n.clamp_min(1.0)
    return total

"""The training losses, as ``{name: (sum, count, weight)}`` terms, and their combination.

Each model's ``loss_terms(outputs, batch)`` returns such terms; :func:`total_loss` combines
them as ``sum_k weight_k * sum_k / count_k``. Keeping sums and counts apart lets
data-parallel training divide by the *global* counts, so K processes give exactly the
single-process loss.

- :func:`vertex_mae`: NDIVE's vertex loss, the mean absolute error of the fitted vertex to
  the true heavy-flavour decay vertex (b- and c-jets with a usable fit).
- :func:`gn2_loss_terms`: the GN2 multi-task loss (jet flavour, track origin, track pairs,
  and the b-jet pT regression when the config asks for it).

Balancing (``ModelConfig.loss_balance``): ``"fixed"`` weights, or ``"gls"``, the geometric
mean of the task losses (GN3): ``L = (prod_k L_k)^(1/K)`` over the K tasks present in the
batch, whose gradient ``sum_k L / (K L_k) grad L_k`` weighs each task by the inverse of its
current loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import ModelConfig

__all__ = ["class_labels", "combine", "gn2_loss_terms", "regression_target", "total_loss",
           "vertex_mae"]

#: 6-class ``jet_class`` (b, c, ud, s, g, tau) -> 4-class index (b, c, light, tau).
_SIX_TO_FOUR = (0, 1, 2, 2, 2, 3)


def class_labels(batch: dict, classes: int):
    """``(B,)`` int64 flavour targets for ``classes`` 3 (``flavour``), 4 or 6 (``jet_class``)."""
    if classes == 3:
        return batch["flavour"]
    if "jet_class" not in batch:
        raise ValueError(f"model.classes = {classes} needs the jet field 'jet_class' "
                         "(b/c/ud/s/g/tau labels): regenerate the file with this version")
    jc = batch["jet_class"]
    if classes == 6:
        return jc
    return torch.as_tensor(_SIX_TO_FOUR, device=jc.device)[jc]


def regression_target(batch: dict):
    """``(target (B,), usable (B,) bool)``: log(truth jet pT incl. neutrinos and muons / jet
    pT), usable where both are positive."""
    if "pt_truth" not in batch:
        raise ValueError("the regression task needs the jet field 'pt_truth_nu_mu' (truth "
                         "jet pT with neutrinos and muons): regenerate the file")
    pt, true = batch["jet"][:, 0].double(), batch["pt_truth"].double()
    ok = (pt > 0) & (true > 0)
    return torch.where(ok, torch.log(true.clamp_min(1e-9) / pt.clamp_min(1e-9)),
                       torch.zeros_like(pt)), ok


def vertex_mae(out, batch, cap: float):
    """Sum over b/c jets with a usable fit of the mean |vertex - true HF vertex| (capped) and
    the number of such jets. Returns ``(sum, count)`` as 0-d tensors."""
    use = out["fit_ok"] & (batch["flavour"] < 2)
    err = (out["vertex"] - batch["hf_vertex"].to(out["vertex"].dtype)).abs().clamp_max(cap)
    per_jet = torch.where(use, err.mean(-1), torch.zeros_like(err[:, 0]))
    return per_jet.sum(), use.sum().to(per_jet.dtype)


def gn2_loss_terms(cfg: ModelConfig, out, batch):
    """The task losses of ``cfg.tasks`` as ``{name: (sum, count, weight)}``: flavour, origin
    and pair cross entropies (over the tracks the model uses, ``select_tracks``) and the
    regression's squared error of the predicted log pT ratio."""
    from .features import select_tracks

    batch = select_tracks(cfg, batch)
    valid = batch["valid"]
    one = lambda x: torch.as_tensor(float(x), device=valid.device)
    fl = F.cross_entropy(out["flavour_logits"].float(), class_labels(batch, cfg.classes),
                         reduction="sum")
    terms = {"flavour": (fl, one(valid.shape[0]), cfg.loss_flavour)}
    if "regression" in cfg.tasks:
        target, ok = regression_target(batch)
        se = (out["pt_log_ratio"].double() - target) ** 2
        terms["regression"] = (torch.where(ok, se, torch.zeros_like(se)).sum().float(),
                               ok.sum().float(), cfg.loss_regression)
    if "origin" in cfg.tasks:
        oce = F.cross_entropy(out["origin_logits"].float().transpose(1, 2), batch["origin"],
                              reduction="none")
        terms["origin"] = ((oce * valid).sum(), valid.sum().float(), cfg.loss_origin)
    if "pair" not in cfg.tasks:
        return terms
    T = valid.shape[1]
    eye = torch.eye(T, dtype=torch.bool, device=valid.device)
    pmask = valid[:, :, None] & valid[:, None, :] & ~eye
    vi = batch["vertex_index"]
    same = (vi[:, :, None] == vi[:, None, :]).float()
    pce = F.binary_cross_entropy_with_logits(out["pair_logits"].float(), same, reduction="none")
    terms["pair"] = ((pce * pmask).sum(), pmask.sum().float(), cfg.loss_pair)
    return terms


def _gls_factors(means: dict, present: dict) -> dict:
    """GLS gradient weights ``L / (K L_k)`` (detached) of the tasks ``present`` in the batch,
    from their mean losses; absent tasks get 0."""
    names = [k for k in means if present[k]]
    if not names:
        return {k: 0.0 for k in means}
    logs = {k: torch.log(torch.as_tensor(means[k], dtype=torch.float64).clamp_min(1e-30))
            for k in names}
    log_g = sum(logs.values()) / len(names)
    return {k: float(torch.exp(log_g - logs[k])) / len(names) if k in logs else 0.0
            for k in means}


def total_loss(terms: dict, counts: dict | None = None, balance: str = "fixed",
               means: dict | None = None):
    """Combined loss (0-d tensor) of ``{name: (sum, count, weight)}`` terms.

    ``balance="fixed"``: ``sum_k weight_k * sum_k / max(count_k, 1)``. ``balance="gls"``: the
    geometric mean of the task means ``L_k = sum_k / count_k`` over the tasks with
    ``count_k > 0``, written as ``sum_k c_k L_k`` with ``c_k = G / (K L_k)`` held constant
    (value and gradient of ``G = (prod L_k)^(1/K)``), so that data-parallel processes, each
    with its own share of the sums, add up to the gradient of the global ``G``.

    ``counts`` overrides the counts (the all-reduced global counts in data-parallel
    training); ``means`` overrides the ``L_k`` the GLS factors are computed from (the global
    means there).
    """
    counts = counts or {k: n for k, (_, n, _) in terms.items()}
    if balance == "gls":
        if means is None:
            means = {k: (s.detach() / counts[k].clamp_min(1.0)) for k, (s, _, _) in terms.items()}
        c = _gls_factors(means, {k: float(counts[k]) > 0 for k in terms})
    total = 0.0
    for name, (s, _, w) in terms.items():
        total = total + (c[name] if balance == "gls" else w) * s / counts[name].clamp_min(1.0)
    return total


def combine(means: dict, weights: dict, balance: str = "fixed", present: dict | None = None):
    """The combined loss (float) of per-task mean losses (e.g. over a validation set):
    ``sum_k w_k L_k`` or, for GLS, the geometric mean over the ``present`` tasks."""
    if balance == "gls":
        present = present or {k: True for k in means}
        names = [k for k in means if present[k]]
        if not names:
            return 0.0
        return float(torch.exp(sum(torch.log(torch.tensor(float(means[k]), dtype=torch.float64)
                                             .clamp_min(1e-30)) for k in names) / len(names)))
    return float(sum(weights[k] * means[k] for k in means))

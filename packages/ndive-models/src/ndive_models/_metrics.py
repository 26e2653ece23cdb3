"""Flavour-tagging and vertexing metrics (NumPy only).

Definitions used throughout (docs/labels.md):

- ``D_b = ln(p_b / (f_c p_c + (1 - f_c) p_u))`` (:func:`discriminant`).
- At a b-jet efficiency ``eps``, the cut is the ``1 - eps`` quantile of D_b over b-jets
  (``numpy.quantile``, linear interpolation); a background jet passes if ``D_b > cut``;
  rejection = 1 / (fraction of background passing). Binomial error of the background
  efficiency ``sqrt(e (1 - e) / N)``, propagated: ``sigma_R = R^2 sigma_e``.
- NDIVE track selection: a track is selected if its weight exceeds 0.5 x the largest weight in
  its jet; efficiency = selected HF tracks / HF tracks, purity = selected HF / selected.
- Several trainings (seeds) of a model on one test set: :func:`seed_mean_uncertainty` and,
  for the ratio of two models, :func:`ratio_uncertainty` (seed spread and bootstrap test
  statistics in quadrature).
"""

from __future__ import annotations

import math

import numpy as np

#: Working points (b-jet efficiencies) of the paper's tables.
WORKING_POINTS = (0.60, 0.70, 0.77, 0.85)


def discriminant(p_b, p_c, p_u, f_c: float = 0.05, eps: float = 1e-30):
    """``D_b = ln(p_b / (f_c p_c + (1 - f_c) p_u))`` elementwise; probabilities clipped at
    ``eps`` so a zero probability gives a large finite score, never inf or NaN."""
    p_b, p_c, p_u = (np.maximum(np.asarray(p, np.float64), eps) for p in (p_b, p_c, p_u))
    return np.log(p_b) - np.log(f_c * p_c + (1.0 - f_c) * p_u)


def _split(disc, labels, signal, background):
    disc, labels = np.asarray(disc, np.float64), np.asarray(labels)
    sig, bkg = disc[labels == signal], disc[labels == background]
    if sig.size == 0 or bkg.size == 0:
        raise ValueError(f"need signal ({signal}) and background ({background}) jets, got "
                         f"{sig.size} and {bkg.size}")
    return sig, bkg


def rejection(disc, labels, eff, *, signal: int = 0, background: int = 2) -> dict:
    """Background rejection at signal efficiency ``eff`` with its binomial error.

    Args:
        disc: ``(N,)`` discriminant. labels: ``(N,)`` flavour labels (0 b, 1 c, 2 light).
        eff: signal efficiency in (0, 1).

    Returns:
        ``{"eff": eff, "cut", "bkg_eff", "bkg_eff_err", "rejection", "rejection_err",
        "n_bkg", "n_pass"}``; with no background jet passing, ``rejection`` is ``inf`` and
        ``rejection_err`` ``inf`` (quote the lower limit ``n_bkg``).
    """
    if not 0.0 < eff < 1.0:
        raise ValueError(f"efficiency must be in (0, 1), got {eff}")
    sig, bkg = _split(disc, labels, signal, background)
    cut = float(np.quantile(sig, 1.0 - eff))
    n_pass = int(np.sum(bkg > cut))
    e = n_pass / bkg.size
    err = math.sqrt(e * (1.0 - e) / bkg.size)
    if n_pass == 0:
        rej, rej_err = math.inf, math.inf
    else:
        rej = 1.0 / e
        rej_err = float(rejection_error(rej, bkg.size))
    return {"eff": eff, "cut": cut, "bkg_eff": e, "bkg_eff_err": err, "rejection": rej,
            "rejection_err": rej_err, "n_bkg": int(bkg.size), "n_pass": n_pass}


def rejection_error(rej, n_bkg):
    """Binomial error of a rejection ``R = 1 / e`` measured on ``n_bkg`` background jets:
    ``sigma_R = sigma_e / e^2`` with ``sigma_e = sqrt(e (1 - e) / n_bkg)``, i.e.
    ``R sqrt((R - 1) / n_bkg)`` (arrays welcome; inf where ``R`` is)."""
    r = np.asarray(rej, np.float64)
    return r * np.sqrt(np.clip(r - 1.0, 0.0, None) / n_bkg)


def roc_curve(disc, labels, effs, *, signal: int = 0, background: int = 2) -> np.ndarray:
    """Rejection at each signal efficiency in ``effs`` (``inf`` where nothing passes)."""
    sig, bkg = _split(disc, labels, signal, background)
    cuts = np.quantile(sig, 1.0 - np.asarray(effs, np.float64))
    bkg_sorted = np.sort(bkg)
    n_pass = bkg.size - np.searchsorted(bkg_sorted, cuts, side="right")
    with np.errstate(divide="ignore"):
        return np.where(n_pass > 0, bkg.size / np.maximum(n_pass, 1), np.inf)


def selected_tracks(weights, valid, frac: float = 0.5):
    """``(N, T)`` bool: weight > ``frac`` x the jet's largest weight (valid tracks only)."""
    w = np.where(valid, weights, 0.0)
    wmax = w.max(axis=1, keepdims=True)
    return valid & (w > frac * wmax) & (wmax > 0)


def selection_counts(selected, truth, valid):
    """Per-jet ``(n_true, n_selected, n_both)`` for boolean ``(N, T)`` arrays."""
    truth = truth & valid
    return truth.sum(1), selected.sum(1), (selected & truth).sum(1)


def ratio_with_error(num, den):
    """``num / den`` with a binomial error; ``nan`` where ``den == 0`` (reported as such)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, num / np.maximum(den, 1), np.nan)
        e = np.where(den > 0, np.sqrt(r * (1 - r) / np.maximum(den, 1)), np.nan)
    return r, e


def binned_selection(x, edges, n_true, n_sel, n_both):
    """Efficiency and purity (with errors) in bins of a per-jet variable ``x``.

    Returns ``{"edges", "eff", "eff_err", "pur", "pur_err", "n_jets"}`` (lists, JSON-ready).
    """
    idx = np.digitize(x, edges) - 1
    nb = len(edges) - 1
    ok = (idx >= 0) & (idx < nb)
    t = np.bincount(idx[ok], n_true[ok], nb)
    s = np.bincount(idx[ok], n_sel[ok], nb)
    b = np.bincount(idx[ok], n_both[ok], nb)
    eff, eff_err = ratio_with_error(b, t)
    pur, pur_err = ratio_with_error(b, s)
    return {"edges": list(map(float, edges)), "eff": eff.tolist(), "eff_err": eff_err.tolist(),
            "pur": pur.tolist(), "pur_err": pur_err.tolist(),
            "n_jets": np.bincount(idx[ok], minlength=nb).tolist()}


def residual_summary(res, pull):
    """Robust summary of residuals ``(N, 3)`` [mm] and pulls ``(N, 3)`` per component:
    median and half the 16-84% interval (a Gaussian's sigma)."""
    out = {}
    for name, a in (("residual", res), ("pull", pull)):
        a = np.asarray(a, np.float64)
        a = a[np.all(np.isfinite(a), axis=1)]
        if a.shape[0] == 0:
            out[name] = None
            continue
        q16, q50, q84 = np.quantile(a, [0.16, 0.5, 0.84], axis=0)
        out[name] = {"median": q50.tolist(), "sigma68": ((q84 - q16) / 2).tolist(),
                     "n": int(a.shape[0])}
    return out


# --------------------------------------------------------------------------------------------
def seed_mean_uncertainty(values, boot=None) -> dict:
    """Mean over seeds of a per-training quantity with its uncertainties.

    Args:
        values: ``(k,)`` one value per training (seed) on the full test set.
        boot: ``(k, n_boot)`` the same on the common bootstrap replicates (optional).

    Returns:
        ``{"mean", "seed_sd"`` (sd over seeds), ``"seed"`` (sd / sqrt(k): the training-to-
        training error of the mean), ``"stat"`` (sd over replicates of the mean over seeds:
        the test-statistics error), ``"total"`` (both in quadrature), ``"n"``}; ``nan``
        where not defined (one seed: ``seed`` and ``total``).
    """
    v = np.asarray(values, np.float64)
    k = len(v)
    out = {"mean": float(np.mean(v)), "n": k,
           "seed_sd": float(np.std(v, ddof=1)) if k > 1 else float("nan")}
    out["seed"] = out["seed_sd"] / np.sqrt(k)
    out["stat"] = float("nan")
    if boot is not None:
        bm = np.mean(np.asarray(boot, np.float64), 0)
        bm = bm[np.isfinite(bm)]
        if len(bm) > 1:
            out["stat"] = float(np.std(bm, ddof=1))
    out["total"] = float(np.hypot(out["seed"], out["stat"]))
    return out


def projected_ratio_total(num, den, stat: float, k: int) -> float:
    """The total uncertainty :func:`ratio_uncertainty` would give with ``k`` seeds of each
    model, at the relative seed spreads of ``num`` and ``den`` (``(k_a,)``, ``(k_b,)``,
    2 or more each; ``nan`` otherwise) and the statistical term ``stat`` as measured (kept:
    more seeds on the same test set do not remove its fluctuation)."""
    a, b = np.asarray(num, np.float64), np.asarray(den, np.float64)
    if len(a) < 2 or len(b) < 2 or k < 1:
        return float("nan")
    r = np.mean(a) / np.mean(b)
    rel2 = np.var(a, ddof=1) / np.mean(a) ** 2 + np.var(b, ddof=1) / np.mean(b) ** 2
    return float(np.hypot(r * np.sqrt(rel2 / k), stat))


def seeds_for_target(num, den, stat: float, target: float, most: int = 50) -> int | None:
    """The fewest seeds of each model (2 to ``most``) whose :func:`projected_ratio_total`
    is ``<= target``; None when none is (e.g. ``stat`` alone exceeds it) or the spreads
    are unknown (fewer than 2 seeds of a model)."""
    for k in range(2, most + 1):
        t = projected_ratio_total(num, den, stat, k)
        if not math.isfinite(t):
            return None
        if t <= target:
            return k
    return None


def ratio_uncertainty(num, den, num_boot=None, den_boot=None, *,
                      num_spread: float | None = None,
                      den_spread: float | None = None) -> dict:
    """The ratio of the seed means of two models, ``mean(num) / mean(den)``, with its
    uncertainty.

    Args:
        num, den: ``(k_a,)`` and ``(k_b,)`` per-training values (e.g. light rejection at
            70%) of the two models on the same test set.
        num_boot, den_boot: ``(k_a, n)`` and ``(k_b, n)`` the same on the *same* ``n``
            bootstrap replicates of the test set (optional).
        num_spread, den_spread: the relative seed spread of one training (sd / mean) to use
            for a model with one seed, whose own spread is unknown: in practice that of a
            model of the same kind with several seeds (an estimate; ``None``: unknown).

    Returns:
        ``{"ratio", "seed", "stat", "total", "per_seed", "borrowed"}``: ``seed`` propagates
        the standard errors of the two seed means (``ratio * sqrt(sd_a^2 / (k_a m_a^2) +
        sd_b^2 / (k_b m_b^2))``); ``stat`` is the sd over replicates of the ratio of the
        replicate's seed means (the replicate resamples the test jets once for both models,
        so their correlation through the shared test set is kept); ``total`` adds the two
        in quadrature (conservative: the seed spread on a fixed test set also contains part
        of the test fluctuation). ``per_seed``: ``num[k] / den[k]`` for the seeds both have.
        ``borrowed``: whether a ``*_spread`` stood in for a one-seed model's spread.
        ``nan`` where undefined (one seed and no spread given: ``seed`` and ``total``).
    """
    a, b = np.asarray(num, np.float64), np.asarray(den, np.float64)
    r = float(np.mean(a) / np.mean(b))

    def rel_var(x, spread):  # squared relative standard error of the seed mean
        if len(x) > 1:
            return float(np.var(x, ddof=1) / (len(x) * np.mean(x) ** 2))
        return float("nan") if spread is None else float(spread) ** 2

    seed = r * float(np.sqrt(rel_var(a, num_spread) + rel_var(b, den_spread)))
    borrowed = bool(math.isfinite(seed) and (
        (len(a) == 1 and num_spread is not None) or (len(b) == 1 and den_spread is not None)))
    stat = float("nan")
    if num_boot is not None and den_boot is not None:
        rb = np.mean(np.asarray(num_boot, np.float64), 0) / np.mean(
            np.asarray(den_boot, np.float64), 0)
        rb = rb[np.isfinite(rb)]
        if len(rb) > 1:
            stat = float(np.std(rb, ddof=1))
    return {"ratio": r, "seed": seed, "stat": stat, "total": float(np.hypot(seed, stat)),
            "borrowed": borrowed,
            "per_seed": [float(x / y) for x, y in zip(a, b)]}

"""Plots of ``ndive evaluate`` (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import numpy as np

from ._metrics import rejection_error


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc(effs, curves: dict, reference: str, background: str, path, *, n_bkg: dict,
        title: str | None = None) -> None:
    """Rejection vs b-efficiency of several models, each the mean over its seeds
    (``curves[label]``: ``(n_seeds, len(effs))``, inf/NaN where no background jet passes).
    Band: the uncertainty of that mean, the seeds' standard error and the binomial error of
    the mean rejection over ``n_bkg[label]`` background jets in quadrature. Lower panel:
    ratio to ``reference`` (its band: its own error; the others': both errors)."""
    plt = _plt()
    effs = np.asarray(effs, np.float64)
    fig, (ax, rax) = plt.subplots(2, 1, figsize=(6.5, 6.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1.4]})
    stats = {label: (*mean_rejection_band(c, n_bkg[label]), len(c))
             for label, c in curves.items()}
    ref = stats.get(reference)
    for j, (label, (mean, err, k)) in enumerate(stats.items()):
        ax.plot(effs, mean, color=f"C{j}", label=f"{label} ({k} seed{'s' * (k > 1)})")
        ax.fill_between(effs, mean - err, mean + err, color=f"C{j}", alpha=0.25)
        if ref is not None:
            rr = mean / ref[0]
            rerr = rr * (err / mean if label == reference
                         else np.hypot(err / mean, ref[1] / ref[0]))
            rax.plot(effs, rr, color=f"C{j}")
            rax.fill_between(effs, rr - rerr, rr + rerr, color=f"C{j}", alpha=0.25)
    ax.set_yscale("log")
    ax.set_ylabel(f"{'light' if background == 'light' else 'c'}-jet rejection")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    rax.axhline(1.0, color="k", lw=0.8)
    rax.set_ylabel(f"ratio to\n{reference}", fontsize=8)
    rax.set_xlabel("b-jet efficiency")
    ratio_scale(rax)
    rax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mean_rejection_band(c, n_bkg: int):
    """``(mean, error)`` over the seeds (rows) of rejection curves ``c`` (``(k, n)``; inf or
    NaN where no background jet passes: left out) of ``k`` seeds with a finite value: the
    seeds' standard error (0 for one) and the binomial error of the mean rejection R over
    ``n_bkg`` background jets (:func:`~ndive_models._metrics.rejection_error` / sqrt(k)), in
    quadrature."""
    c = np.asarray(c, np.float64)
    fin = np.isfinite(c)
    k = fin.sum(0)  # seeds with a finite rejection, per point
    mean = _finite_mean(c)
    dev = np.where(fin, c - np.where(np.isfinite(mean), mean, 0.0), 0.0)
    seed = np.where(k > 1, np.sqrt((dev ** 2).sum(0) / np.maximum(k - 1, 1) / np.maximum(k, 1)),
                    0.0)
    stat = rejection_error(mean, n_bkg) / np.sqrt(np.maximum(k, 1))  # of a mean of k
    return mean, np.hypot(seed, stat)


def ratio_scale(rax) -> None:
    """A ratio panel's y axis: linear with plain tick labels, logarithmic only when its
    curves span more than a factor 3 (references such as perfect selection can be far
    above the others); log ticks labelled as plain numbers, not 1.2 x 10^0."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ys = np.concatenate([np.asarray(ln.get_ydata(), np.float64).ravel()
                         for ln in rax.get_lines()] or [np.ones(1)])
    ys = ys[np.isfinite(ys) & (ys > 0)]
    if ys.size and ys.max() / ys.min() > 3.0:
        rax.set_yscale("log")
        rax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        rax.yaxis.set_minor_formatter(NullFormatter())


def _fin(c):
    return np.where(np.isfinite(c), c, np.nan)


def _finite_mean(c):
    c = _fin(c)
    n = np.sum(np.isfinite(c), 0)
    return np.where(n > 0, np.nansum(c, 0) / np.maximum(n, 1), np.nan)


def ratio_summary(rows: list, path, paper: dict) -> None:
    """The study's answer at a glance: rejection ratios at 70% b-efficiency with their
    total 1-sigma uncertainty, one panel per background (light, c), one row per
    comparison, one colour per condition. ``rows``: ``(condition, comparison, background,
    ratio, total)`` (``total`` NaN: drawn without a bar); ``paper``: the paper's ratio per
    background, drawn as a dashed line beside the line at 1."""
    plt = _plt()
    comps = list(dict.fromkeys(r[1] for r in rows))
    conds = list(dict.fromkeys(r[0] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.5 + 0.35 * len(comps) * len(conds)),
                             sharey=True)
    for ax, bkg in zip(axes, ("light", "c")):
        for j, cond in enumerate(conds):
            off = (j - (len(conds) - 1) / 2) * 0.25
            for cond_, comp, bkg_, ratio, total in rows:
                if cond_ != cond or bkg_ != bkg:
                    continue
                y = comps.index(comp) + off
                ax.errorbar(ratio, y, xerr=total if np.isfinite(total) else None, fmt="o",
                            color=f"C{j}", capsize=3, label=cond)
        ax.axvline(1.0, color="k", lw=0.8)
        if bkg in paper:
            ax.axvline(paper[bkg], color="grey", ls="--", lw=0.8, label="paper")
        ax.set_xlabel(f"{bkg}-jet rejection ratio at 70% b-efficiency")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        seen = dict(zip(labels, handles))  # one entry per condition
        ax.legend(seen.values(), seen.keys(), fontsize=7)
    axes[0].set_yticks(range(len(comps)))
    axes[0].set_yticklabels(comps, fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def track_selection(sel: dict, path) -> None:
    """Efficiency (top) and purity (bottom) vs jet pT, multiplicity and Lxy; b and c jets."""
    plt = _plt()
    variables = (("pt", "jet $p_T$ [GeV]"), ("n_tracks", "tracks per jet"),
                 ("Lxy", "hadron $L_{xy}$ [mm]"))
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for label, s in sel.items():
        for flav, ls in (("b", "-"), ("c", "--")):
            for j, (v, xl) in enumerate(variables):
                b = s[flav]["binned"][v]
                e = np.asarray(b["edges"])
                x = 0.5 * (e[1:] + e[:-1])
                for i, q in enumerate(("eff", "pur")):
                    axes[i, j].errorbar(x, b[q], yerr=b[q + "_err"], ls=ls, marker="o", ms=3,
                                        label=f"{label}, {flav}-jets")
                    axes[i, j].set_xlabel(xl)
    for j in range(3):
        axes[0, j].set_ylabel("selection efficiency")
        axes[1, j].set_ylabel("selection purity")
        for i in range(2):
            axes[i, j].set_ylim(0, 1.05)
            axes[i, j].grid(alpha=0.3)
    for i in range(2):
        axes[i, 2].set_xscale("symlog", linthresh=1.0)
        axes[i, 2].set_xlim(left=0.0)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("NDIVE track selection (weight > 0.5 x jet maximum) vs heavy-flavour tracks")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def vertex_residuals(data: dict, path) -> None:
    """Histograms of vertex residuals [mm] (top) and pulls (bottom) in x, y, z."""
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    rbins, pbins = np.linspace(-5, 5, 101), np.linspace(-8, 8, 81)
    for label, (res, pull) in data.items():
        for k, comp in enumerate("xyz"):
            axes[0, k].hist(np.clip(res[:, k], rbins[0], rbins[-1]), bins=rbins,
                            histtype="step", density=True, label=label)
            axes[1, k].hist(np.clip(pull[:, k], pbins[0], pbins[-1]), bins=pbins,
                            histtype="step", density=True, label=label)
            axes[0, k].set_xlabel(f"fitted - true {comp} [mm]")
            axes[1, k].set_xlabel(f"pull {comp}")
    for ax in axes.ravel():
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("b- and c-jet vertices vs the true heavy-flavour decay vertex")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pt_response(data: dict, path) -> None:
    """Median response (left) and relative resolution (right) vs truth pT; ``data[label]`` is
    ``evaluate._regression``'s dict; the uncalibrated jets are drawn once (dashed)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    first = True
    for label, d in data.items():
        e = np.asarray(d["edges"])
        x = 0.5 * (e[1:] + e[:-1])
        rows = [(f"{label}: regressed", d["regressed"], "-")]
        if first:
            rows.append(("uncalibrated", d["uncalibrated"], "--"))
            first = False
        for name, r, ls in rows:
            for ax, key in zip(axes, ("median_response", "resolution")):
                ax.plot(x, r[key], ls=ls, marker="o", ms=3,
                        color="k" if name == "uncalibrated" else None, label=name)
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_ylabel(r"median $p_T / p_T^{\mathrm{truth}}$")
    axes[1].set_ylabel("relative resolution (68 % half width / median)")
    for ax in axes:
        ax.set_xlabel(r"truth $p_T$ incl. neutrinos and muons [GeV]")
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"$p_T$ response of {data[next(iter(data))]['flavour']}-jets")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

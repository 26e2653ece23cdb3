"""Plots of ``ndive evaluate`` (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc(effs, curves: dict, reference: str, background: str, f_c: float, path) -> None:
    """Rejection vs b-efficiency; ``curves[label]`` is ``(n_seeds, len(effs))``: the mean is
    drawn, the band spans min to max over seeds; lower panel: ratio to ``reference``."""
    plt = _plt()
    fig, (ax, rax) = plt.subplots(2, 1, figsize=(6, 6), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1.2]})
    ref = curves.get(reference)
    ref_mean = None if ref is None else _finite_mean(ref)
    for label, c in curves.items():
        mean = _finite_mean(c)
        line, = ax.plot(effs, mean, label=f"{label} ({c.shape[0]} seed"
                        f"{'s' if c.shape[0] > 1 else ''})")
        if c.shape[0] > 1:
            ax.fill_between(effs, np.nanmin(_fin(c), 0), np.nanmax(_fin(c), 0),
                            color=line.get_color(), alpha=0.25)
        if ref_mean is not None:
            rax.plot(effs, mean / ref_mean, color=line.get_color())
            if c.shape[0] > 1:
                rax.fill_between(effs, np.nanmin(_fin(c), 0) / ref_mean,
                                 np.nanmax(_fin(c), 0) / ref_mean, color=line.get_color(),
                                 alpha=0.25)
    ax.set_yscale("log")
    ax.set_ylabel(f"{'light' if background == 'light' else 'c'}-jet rejection")
    ax.set_title(f"$D_b$ with $f_c$ = {f_c:g}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    rax.set_xlabel("b-jet efficiency")
    rax.set_ylabel(f"ratio to\n{reference}", fontsize=8)
    rax.axhline(1.0, color="k", lw=0.8)
    ratio_scale(rax)
    rax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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

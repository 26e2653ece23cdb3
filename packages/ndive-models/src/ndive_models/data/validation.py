"""Physics summary and validation plots of a jet file (``ndive validate-data``).

The numbers to expect (docs/generation.md, Validation; 4000 ttbar events, MPI on): pulls of all five
parameters of primary tracks with mean 0 and width 1; |d0/sigma| > 3 for 0.3% of primary,
63% of FromB, 75% of FromBC and 40% of FromC tracks; 7.6 / 6.7 / 5.8 tracks per b / c / light
jet; median b-hadron L3D 5.3 mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._io import read_attrs, read_jets
from .schema import FLAVOURS, ORIGIN, ORIGIN_LABELS, TRACK_PARAMS


def pulls(tracks: np.ndarray) -> np.ndarray:
    """Pulls ``(measured - true) / sigma`` of the five parameters of a flat track array.

    Args:
        tracks: ``(k,)`` TRACK_DTYPE records (valid tracks only).

    Returns:
        ``(k, 5)`` float64 pulls in the order d0, z0, phi, theta, rho (phi difference wrapped).
    """
    from vertexfit import wrap_phi

    out = np.empty((len(tracks), 5))
    for i, name in enumerate(TRACK_PARAMS):
        diff = tracks[name].astype(np.float64) - tracks["true_" + name].astype(np.float64)
        if name == "phi":
            diff = wrap_phi(diff)
        out[:, i] = diff / np.sqrt(tracks[f"cov_{name}_{name}"].astype(np.float64))
    return out


def summarize(jets: np.ndarray, tracks: np.ndarray) -> dict:
    """Validation figures of jets ``(N,)`` and tracks ``(N, max_tracks)``.

    Returns a dict with ``n_jets``, ``flavour_fractions`` {flavour: fraction},
    ``tracks_per_jet`` {flavour: mean n_tracks}, ``tracks_per_jet_all`` (before the
    max-tracks cut), ``pull_mean`` / ``pull_width`` {param: value} of primary tracks,
    ``n_origin`` {origin: tracks}, ``frac_d0sig_gt3`` {origin: fraction with |d0/sigma| > 3},
    ``median_L3D`` / ``median_Lxy`` {"bjets"/"cjets": mm}, ``displaced_vertices_per_jet``
    {flavour: mean number of distinct nonzero ftagTruthVertexIndex values}.
    """
    flav = jets["flavour_label"]
    valid = tracks["valid"]
    flat = tracks[valid]
    origin = flat["ftagTruthOriginLabel"]
    out: dict = {"n_jets": len(jets)}
    out["flavour_fractions"] = {f: float(np.mean(flav == i)) for i, f in enumerate(FLAVOURS)}
    out["tracks_per_jet"] = {
        f: float(jets["n_tracks"][flav == i].mean()) if np.any(flav == i) else float("nan")
        for i, f in enumerate(FLAVOURS)
    }
    out["tracks_per_jet_all"] = {
        f: float(jets["n_tracks_all"][flav == i].mean()) if np.any(flav == i) else float("nan")
        for i, f in enumerate(FLAVOURS)
    }
    p = pulls(flat[origin == ORIGIN["Primary"]])
    out["pull_mean"] = dict(zip(TRACK_PARAMS, map(float, p.mean(axis=0))))
    out["pull_width"] = dict(zip(TRACK_PARAMS, map(float, p.std(axis=0))))
    sig = np.abs(flat["d0_significance"])
    out["n_origin"] = {name: int(np.sum(origin == i)) for i, name in enumerate(ORIGIN_LABELS)}
    out["frac_d0sig_gt3"] = {
        name: float(np.mean(sig[origin == i] > 3)) if np.any(origin == i) else float("nan")
        for i, name in enumerate(ORIGIN_LABELS)
    }
    out["median_L3D"] = {f: float(np.median(jets["L3D"][flav == i])) for i, f in
                         enumerate(FLAVOURS[:2]) if np.any(flav == i)}  # fmt: skip
    out["median_Lxy"] = {f: float(np.median(jets["Lxy"][flav == i])) for i, f in
                         enumerate(FLAVOURS[:2]) if np.any(flav == i)}  # fmt: skip
    nvtx = _displaced_vertices(tracks)
    out["displaced_vertices_per_jet"] = {
        f: float(nvtx[flav == i].mean()) if np.any(flav == i) else float("nan")
        for i, f in enumerate(FLAVOURS)
    }
    out.update(_detector_summary(jets, flat))
    return out


def _events(jets: np.ndarray) -> np.ndarray:
    """One jet per event (the event-level fields are repeated on every jet)."""
    return jets[np.unique(jets["eventNumber"], return_index=True)[1]]


def _pv_residuals(jets: np.ndarray):
    """Per event: (reconstructed - true PV (E, 3) [mm], fit sigmas (E, 3), is hard scatter (E,))
    or None when the file has no reconstructed PV."""
    names = jets.dtype.names
    if "reco_pv_sigma_z" not in names or not np.any(jets["reco_pv_sigma_z"] > 0):
        return None
    ev = _events(jets)
    res = np.stack([ev["reco_pv_" + c] - ev["pv_" + c] for c in "xyz"], -1).astype(np.float64)
    sig = np.stack([ev["reco_pv_sigma_" + c] for c in "xyz"], -1).astype(np.float64)
    return res, sig, ev["reco_pv_is_hs"]


def _detector_summary(jets: np.ndarray, flat: np.ndarray) -> dict:
    """The realistic-detector figures: origin fractions, z0 significance tails, pileup, PV."""
    origin = flat["ftagTruthOriginLabel"]
    out: dict = {
        "origin_fraction": {
            n: float(np.mean(origin == i)) if len(origin) else float("nan")
            for i, n in enumerate(ORIGIN_LABELS)
        },
        "frac_z0sig_gt3": {
            n: float(np.mean(np.abs(flat["z0_significance"][origin == i]) > 3))
            if np.any(origin == i)
            else float("nan")
            for i, n in enumerate(ORIGIN_LABELS)
        },
    }
    if "n_pileup" in jets.dtype.names:
        out["mean_pileup"] = float(_events(jets)["n_pileup"].mean())
    pv = _pv_residuals(jets)
    if pv is not None:
        res, sig, hs = pv
        ok = hs.astype(bool)
        out["pv"] = {
            "events": len(res),
            "hard_scatter_efficiency": float(ok.mean()),
            "resolution_um": dict(zip("xyz", (1e3 * _robust_std(res[ok])).tolist())),
            "rms_um": dict(zip("xyz", (1e3 * res[ok].std(axis=0)).tolist())),
            "pull_width": dict(zip("xyz", (res[ok] / sig[ok]).std(axis=0).tolist())),
            "pull_width_robust": dict(zip("xyz", _robust_std(res[ok] / sig[ok]).tolist())),
        }
    return out


def _robust_std(x: np.ndarray) -> np.ndarray:
    """1.4826 x median absolute deviation, per column: the Gaussian core width."""
    return 1.4826 * np.median(np.abs(x - np.median(x, axis=0)), axis=0)


def tracking_efficiency(attrs: dict) -> dict | None:
    """Tracking efficiency per production-radius bin from the file attribute, or None."""
    eff = (attrs or {}).get("tracking_efficiency")
    if not isinstance(eff, dict):
        return None
    den, num = np.asarray(eff["particles"], float), np.asarray(eff["tracks"], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(den > 0, num / den, np.nan)
    return {"r_edges_mm": eff["r_edges_mm"], "efficiency": value.tolist(),
            "particles": den.astype(int).tolist()}  # fmt: skip


def _displaced_vertices(tracks: np.ndarray) -> np.ndarray:
    """(N,) number of distinct nonzero ftagTruthVertexIndex values among each jet's tracks."""
    idx = np.where(tracks["valid"], tracks["ftagTruthVertexIndex"], 0)
    # indices are consecutive 1..k in each jet, but a max-tracks cut may drop some: count them
    srt = np.sort(idx, axis=1)
    new = np.concatenate([srt[:, :1] > 0, (srt[:, 1:] != srt[:, :-1]) & (srt[:, 1:] > 0)], 1)
    return new.sum(axis=1)


def format_summary(s: dict, attrs: dict | None = None) -> str:
    """Human-readable table of :func:`summarize` output."""
    lines = [f"jets: {s['n_jets']}"]
    if attrs:
        lines.append(
            f"seed {attrs.get('seed')}, max_tracks {attrs.get('max_tracks')}, "
            f"Bz {attrs.get('bz_tesla')} T, events {attrs.get('n_events', '?')}"
        )
    lines.append("flavour fractions: " + ", ".join(
        f"{k} {v:.3f}" for k, v in s["flavour_fractions"].items()))  # fmt: skip
    lines.append("tracks per jet (stored / before cut): " + ", ".join(
        f"{k} {s['tracks_per_jet'][k]:.2f} / {s['tracks_per_jet_all'][k]:.2f}"
        for k in FLAVOURS))  # fmt: skip
    lines.append("primary-track pulls (mean, width):")
    for k in TRACK_PARAMS:
        lines.append(f"  {k:6s} {s['pull_mean'][k]:+.3f}  {s['pull_width'][k]:.3f}")
    lines.append("fraction |d0/sigma| > 3 by origin (tracks):")
    for k in ORIGIN_LABELS:
        if s["n_origin"][k]:
            lines.append(f"  {k:15s} {s['frac_d0sig_gt3'][k]:.3f}  ({s['n_origin'][k]})")
    for k in s["median_L3D"]:
        lines.append(
            f"median hadron decay length, {k}: L3D {s['median_L3D'][k]:.2f} mm, "
            f"Lxy {s['median_Lxy'][k]:.2f} mm"
        )
    lines.append("displaced truth vertices per jet: " + ", ".join(
        f"{k} {v:.2f}" for k, v in s["displaced_vertices_per_jet"].items()))  # fmt: skip
    lines.append("track origins (fraction of stored tracks; |z0/sigma| > 3): " + ", ".join(
        f"{k} {v:.4f} ({s['frac_z0sig_gt3'][k]:.3f})" for k, v in s["origin_fraction"].items()
        if v > 0))  # fmt: skip
    if "mean_pileup" in s:
        lines.append(f"pileup interactions per event: {s['mean_pileup']:.1f}")
    if "pv" in s:
        pv = s["pv"]
        lines.append(
            f"reconstructed PV ({pv['events']} events): hard scatter chosen in "
            f"{pv['hard_scatter_efficiency']:.3f}; resolution x/y/z "
            + "/".join(f"{pv['resolution_um'][c]:.1f}" for c in "xyz")
            + " um (rms " + "/".join(f"{pv['rms_um'][c]:.1f}" for c in "xyz")
            + "), pulls " + "/".join(f"{pv['pull_width'][c]:.2f}" for c in "xyz")
        )
    if s.get("tracking_efficiency"):
        e = s["tracking_efficiency"]
        lines.append("tracking efficiency in jets vs production radius [mm]: " + ", ".join(
            f"<{hi:g} {v:.2f}" for hi, v in zip(e["r_edges_mm"][1:], e["efficiency"])
            if not np.isnan(v)))  # fmt: skip
    return "\n".join(lines)


def plot(jets: np.ndarray, tracks: np.ndarray, outdir, attrs: dict | None = None) -> list[Path]:
    """Write the validation PNGs into ``outdir``; returns their paths. Needs matplotlib.

    ``attrs`` (the file attributes) adds the efficiency against production radius.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    flav = jets["flavour_label"]
    flat = tracks[tracks["valid"]]
    origin = flat["ftagTruthOriginLabel"]
    written = []

    def save(fig, name):
        fig.tight_layout()
        path = outdir / name
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)

    p = pulls(flat[origin == ORIGIN["Primary"]])
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.5))
    x = np.linspace(-5, 5, 201)
    for i, (ax, name) in enumerate(zip(axes, TRACK_PARAMS)):
        ax.hist(p[:, i], bins=np.linspace(-5, 5, 51), density=True, histtype="step")
        ax.plot(x, np.exp(-0.5 * x**2) / np.sqrt(2 * np.pi), "k:", lw=1)
        ax.set_title(f"{name} pull: {p[:, i].mean():+.3f} / {p[:, i].std():.3f}")
        ax.set_xlabel("(measured - true) / sigma")
    save(fig, "pulls_primary.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(-20, 40, 61)
    for i, name in enumerate(ORIGIN_LABELS):
        sel = origin == i
        if sel.any():
            ax.hist(
                np.clip(flat["d0_significance"][sel], -20, 40),
                bins=bins,
                density=True,
                histtype="step",
                label=f"{name} ({sel.sum()})",
            )
    ax.set_yscale("log")
    ax.set_xlabel("signed d0 / sigma(d0)")
    ax.legend(fontsize=7)
    save(fig, "d0_significance_by_origin.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, name in enumerate(ORIGIN_LABELS):
        sel = origin == i
        if sel.any():
            ax.hist(np.clip(flat["z0_significance"][sel], -20, 40), bins=bins, density=True,
                    histtype="step", label=f"{name} ({sel.sum()})")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("signed z0 / sigma(z0)")
    ax.legend(fontsize=7)
    save(fig, "z0_significance_by_origin.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    frac = np.array([np.mean(origin == i) for i in range(len(ORIGIN_LABELS))])
    ax.bar(ORIGIN_LABELS, np.maximum(frac, 1e-5))
    for i, f in enumerate(frac):
        ax.text(i, max(f, 1e-5) * 1.2, f"{f:.2%}", ha="center", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("fraction of stored tracks")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    save(fig, "track_origins.png")

    if "n_pileup" in jets.dtype.names and jets["n_pileup"].any():
        fig, ax = plt.subplots(figsize=(6, 4))
        n_pu = np.broadcast_to(jets["n_pileup"][:, None], tracks.shape)[tracks["valid"]]
        edges = np.unique(np.quantile(n_pu, np.linspace(0, 1, 9)).round())
        idx = np.clip(np.searchsorted(edges, n_pu, side="right") - 1, 0, max(len(edges) - 2, 0))
        is_pu = origin == ORIGIN["Pileup"]
        for lab, sel in (("all", np.ones_like(is_pu)), ("pT < 2 GeV", flat["pt"] < 2)):
            x = [n_pu[sel & (idx == k)].mean() for k in range(len(edges) - 1) if
                 np.any(sel & (idx == k))]  # fmt: skip
            y = [is_pu[sel & (idx == k)].mean() for k in range(len(edges) - 1) if
                 np.any(sel & (idx == k))]  # fmt: skip
            ax.plot(x, y, "o-", label=lab)
        ax.set_xlabel("pileup interactions in the event")
        ax.set_ylabel("pileup fraction of stored tracks in jets")
        ax.legend()
        save(fig, "pileup_fraction_vs_mu.png")

    pv = _pv_residuals(jets)
    if pv is not None:
        res, sig, hs = pv
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
        for k, c in enumerate("xyz"):
            r = 1e3 * res[:, k]
            lim = 6 * max(np.median(np.abs(r)), 1e-3) * 1.4826
            axes[k].hist(np.clip(r, -lim, lim), bins=50, histtype="step")
            axes[k].set_xlabel(f"reco - true PV {c} [um]")
            axes[k].set_title(f"core {1.4826 * np.median(np.abs(r)):.1f} um, "
                              f"hard scatter {hs.mean():.1%}", fontsize=8)  # fmt: skip
            p = res[hs.astype(bool), k] / sig[hs.astype(bool), k]
            axes[3].hist(np.clip(p, -6, 6), bins=np.linspace(-6, 6, 49), density=True,
                         histtype="step", label=f"{c}: width {p.std():.2f}")  # fmt: skip
        xg = np.linspace(-6, 6, 121)
        axes[3].plot(xg, np.exp(-0.5 * xg**2) / np.sqrt(2 * np.pi), "k:", lw=1)
        axes[3].set_xlabel("PV pull (reco - true) / sigma")
        axes[3].legend(fontsize=7)
        save(fig, "pv_residuals.png")

    eff = tracking_efficiency(attrs)
    if eff is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        e = np.asarray(eff["r_edges_mm"])
        ax.stairs(np.nan_to_num(np.asarray(eff["efficiency"], float)), e)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("production radius [mm]")
        ax.set_ylabel("tracking efficiency (particles in jets)")
        ax.set_ylim(0, 1.05)
        save(fig, "efficiency_vs_radius.png")

    fig, ax = plt.subplots(figsize=(4, 3.5))
    frac = [np.mean(flav == i) for i in range(3)]
    ax.bar(FLAVOURS, frac)
    ax.set_ylabel("fraction of jets")
    save(fig, "flavour_fractions.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    nmax = tracks.shape[1]
    for i, f in enumerate(FLAVOURS):
        sel = flav == i
        if sel.any():
            ax.hist(
                jets["n_tracks"][sel],
                bins=np.arange(nmax + 2) - 0.5,
                density=True,
                histtype="step",
                label=f"{f} (mean {jets['n_tracks'][sel].mean():.2f})",
            )
    ax.set_xlabel("tracks per jet")
    ax.legend()
    save(fig, "tracks_per_jet.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.logspace(-2, 3, 51)
    for i, f in enumerate(FLAVOURS[:2]):
        sel = flav == i
        if sel.any():
            L = jets["L3D"][sel]
            ax.hist(L, bins=bins, histtype="step", label=f"{f}: median {np.median(L):.2f} mm")
    ax.set_xscale("log")
    ax.set_xlabel("hadron decay length L3D [mm]")
    ax.legend()
    save(fig, "decay_length.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    nvtx = _displaced_vertices(tracks)
    for i, f in enumerate(FLAVOURS):
        sel = flav == i
        if sel.any():
            ax.hist(nvtx[sel], bins=np.arange(8) - 0.5, density=True, histtype="step", label=f)
    ax.set_xlabel("distinct displaced truth vertices (ftagTruthVertexIndex > 0) per jet")
    ax.legend()
    save(fig, "vertex_multiplicity.png")
    return written


def validate_file(path, plots_dir=None) -> tuple[dict, str]:
    """Read and check ``path``, summarise it and optionally draw the plots.

    Returns:
        ``(summary dict, printable text)``.
    """
    attrs = read_attrs(path)
    jets, tracks = read_jets(path)
    s = summarize(jets, tracks)
    s["tracking_efficiency"] = tracking_efficiency(attrs)
    text = format_summary(s, attrs)
    if plots_dir is not None:
        paths = plot(jets, tracks, plots_dir, attrs)
        text += f"\nplots: {len(paths)} PNG files in {plots_dir}"
    return s, text

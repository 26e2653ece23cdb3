"""The main job (``nox -s demo``): ttbar jets, classic and differentiable vertex fits, a report.

Steps, each printed as it runs:

1. generate a small Pythia 8 ttbar sample (``ndive_models.generate``; needs the
   ``ndive-models[generate]`` extra), or read ``--input``;
2. fit the secondary vertex of every b-jet with the classic NumPy fit (:func:`vertexfit.fit`
   on NumPy arrays) using four track selections: the tracks produced at the b-hadron decay
   vertex (truth production vertex), the FTAG ``FromB`` label (which also holds daughters of
   long-lived strange hadrons in the b-decay chain), the whole b-hadron decay chain
   (``FromB`` + ``FromBC``, the paper's "perfect selection") and all tracks of the jet; print the pulls and resolutions
   against the true b-hadron decay vertex, and check a few jets against the SciPy
   reference fit (:func:`vertexfit.reference.fit`);
3. the differentiable fit in JAX and in PyTorch: the gradient of the distance between the
   fitted and the true vertex with respect to the track weights (all tracks, weights
   ``sigmoid(s)``), and one gradient step on ``s`` that moves the fitted vertex toward the
   truth (mean distance before/after, and how the step re-weights b-hadron vs other tracks);
4. a brief training of a small GN2-like baseline and FTAG+NDIVE (``ndive_models.train``) on
   the sample, evaluated on an independent test sample (``ndive_models.evaluate``);
5. ``<out>/report.md`` with the numbers and PNG plots (if matplotlib is installed), and the
   headline numbers in ``<out>/summary.json``.

Usage: ``ndive demo [--out demo-output] [--jets 10000] [--seed 1]
[--workers 2] [--input FILE.h5] [--test-input FILE.h5] [--epochs 2] [--train-jets 4000]
[--test-jets 3000] [--no-jax] [--no-torch] [--no-train]`` (``--help`` lists all options);
``python -m ndive_models.demo`` is the same command.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import vertexfit

from .data import read_jets
from .data.schema import ORIGIN, TRACK_PARAMS, track_cov

#: Selections of the classic fit: name -> the ``ftagTruthOriginLabel`` values kept (None: all;
#: ``AT_SV``: tracks whose true production vertex is the b-hadron decay vertex).
AT_SV = "at-sv"
#: Production vertex within this distance [mm] of the b-hadron decay vertex counts as "at" it.
AT_SV_TOLERANCE = 1e-3
SELECTIONS = {
    "b decay vertex (truth)": AT_SV,
    "FromB (truth)": (ORIGIN["FromB"],),
    "FromB+FromBC (truth)": (ORIGIN["FromB"], ORIGIN["FromBC"]),
    "all tracks": None,
}
#: Logit of the starting track weight in the differentiable-fit step (weight 0.88).
START_LOGIT = 2.0


@dataclass
class BJets:
    """The b-jets of a sample as fit inputs. ``N`` jets, ``T`` track slots.

    Attributes:
        tracks: ``(N, T, 5)`` perigee parameters w.r.t. the primary vertex (``ref``).
        cov: ``(N, T, 5, 5)`` their covariance (identity in padded slots).
        valid: ``(N, T)`` bool, real tracks.
        origin: ``(N, T)`` ``ftagTruthOriginLabel``.
        sv_distance: ``(N, T)`` distance [mm] of each track's true production vertex from
            the b-hadron decay vertex.
        ref: ``(N, 3)`` true primary vertex [mm] (the tracks' reference point).
        truth: ``(N, 3)`` true b-hadron decay vertex [mm].
    """

    tracks: np.ndarray
    cov: np.ndarray
    valid: np.ndarray
    origin: np.ndarray
    ref: np.ndarray
    truth: np.ndarray
    sv_distance: np.ndarray

    def take(self, keep: np.ndarray) -> BJets:
        return BJets(*(getattr(self, f)[keep] for f in
                       ("tracks", "cov", "valid", "origin", "ref", "truth", "sv_distance")))

    def mask(self, origins) -> np.ndarray:
        """``(N, T)`` bool: valid tracks with one of ``origins`` (``None``: all valid;
        :data:`AT_SV`: produced at the b-hadron decay vertex)."""
        if origins is None:
            return self.valid.copy()
        if isinstance(origins, str) and origins == AT_SV:
            return self.valid & (self.sv_distance < AT_SV_TOLERANCE)
        return self.valid & np.isin(self.origin, origins)


def b_jets(jets: np.ndarray, tracks: np.ndarray) -> BJets:
    """Fit inputs (float64) of the b-jets (``flavour_label == 0``) of a jet file."""
    b = np.flatnonzero(jets["flavour_label"] == 0)
    jets, tracks = jets[b], tracks[b]
    valid = tracks["valid"].astype(bool)
    q = np.stack([tracks[p] for p in TRACK_PARAMS], axis=-1).astype(np.float64)
    cov = np.where(valid[..., None, None], track_cov(tracks).astype(np.float64), np.eye(5))
    vec = lambda a, pre: np.stack([a[f"{pre}{c}"] for c in "xyz"], -1).astype(np.float64)
    hf = vec(jets, "hf_vertex_")
    sv_distance = np.linalg.norm(vec(tracks, "truth_vertex_") - hf[:, None], axis=-1)
    return BJets(q, cov, valid, tracks["ftagTruthOriginLabel"].astype(np.int64),
                 vec(jets, "pv_"), hf, sv_distance)


def _robust_width(x: np.ndarray) -> np.ndarray:
    """1.4826 x median absolute deviation along axis 0 (the sigma of a Gaussian core)."""
    return 1.4826 * np.median(np.abs(x - np.median(x, axis=0)), axis=0)


def classic_fit(bj: BJets, origins) -> dict:
    """Fit each b-jet's selected tracks (>= 2) with the NumPy fit; pulls and resolutions.

    Returns a dict of summary numbers and the per-jet ``residual`` (n, 3) [mm] and
    ``pull`` (n, 3) of the converged fits.
    """
    mask = bj.mask(origins)
    keep = mask.sum(-1) >= 2
    res = vertexfit.fit(bj.tracks[keep], bj.cov[keep], mask=mask[keep], ref=bj.ref[keep])
    ok = np.asarray(res.converged)
    resid = (res.vertex - bj.truth[keep])[ok]
    sigma = np.sqrt(np.diagonal(res.vertex_cov, axis1=-2, axis2=-1))[ok]
    pull = resid / sigma
    dist = np.linalg.norm(resid, axis=-1)
    return {
        "jets": int(keep.sum()), "converged": float(ok.mean()) if ok.size else math.nan,
        "pull_median": np.median(pull, axis=0), "pull_width": _robust_width(pull),
        "pull_rms": np.sqrt(np.mean(pull**2, axis=0)),
        "pull_tail": np.mean(np.abs(pull) > 5, axis=0),
        "resolution_um": 1e3 * _robust_width(resid), "median_dist_um": 1e3 * np.median(dist),
        "residual": resid, "pull": pull,
        "chi2_ndf_median": float(np.median((res.chi2 / res.ndf)[ok])),
    }


def reference_check(bj: BJets, origins, n: int = 50) -> float:
    """Largest |NumPy fit - SciPy reference fit| / sigma over the first ``n`` selected jets
    (both converged, positive reference variances); NaN if there is none."""
    mask = bj.mask(origins)
    keep = np.flatnonzero(mask.sum(-1) >= 2)[:n]
    args = (bj.tracks[keep], bj.cov[keep])
    kw = {"mask": mask[keep], "ref": bj.ref[keep]}
    fast, slow = vertexfit.fit(*args, **kw), vertexfit.reference.fit(*args, **kw)
    var = np.diagonal(slow.vertex_cov, axis1=-2, axis2=-1)
    ok = np.asarray(fast.converged) & np.asarray(slow.converged) & np.all(var > 0, axis=-1)
    if not ok.any():
        return math.nan
    return float(np.max(np.abs(fast.vertex - slow.vertex)[ok] / np.sqrt(var[ok])))


# --------------------------------------------------------------------------------------------
# the differentiable fit: gradient of the distance to the truth w.r.t. the track weights
# --------------------------------------------------------------------------------------------
def _distance_torch(torch, bj: BJets, logits):
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)
    res = vertexfit.fit(t(bj.tracks), t(bj.cov), torch.sigmoid(logits),
                        mask=torch.as_tensor(bj.valid), ref=t(bj.ref))
    return torch.sqrt(torch.sum((res.vertex - t(bj.truth)) ** 2, dim=-1) + 1e-12)


def torch_step(bj: BJets, lr: float) -> dict:
    """Distances before/after one normalised gradient step on the weight logits (PyTorch)."""
    import torch

    s = torch.full(bj.valid.shape, START_LOGIT, dtype=torch.float64, requires_grad=True)
    t0 = time.perf_counter()
    d0 = _distance_torch(torch, bj, s)
    d0.sum().backward()  # jets are independent: the gradient of the sum is per jet
    seconds = time.perf_counter() - t0
    g = s.grad.detach().numpy()
    with torch.no_grad():
        s1 = torch.as_tensor(START_LOGIT + _step(g, bj.valid, lr))
        d1 = _distance_torch(torch, bj, s1)
    return {"before": d0.detach().numpy(), "after": d1.numpy(), "grad": g,
            "logits": s1.numpy(), "seconds": seconds}


def jax_step(bj: BJets, lr: float) -> dict:
    """The same step in JAX (``jax.jit`` of ``jax.value_and_grad``; float64).

    float64 is switched on for this function only (``jax.enable_x64`` context): the global
    JAX configuration of the calling program is left as it is.
    """
    import jax

    with jax.enable_x64(True):
        return _jax_step_x64(jax, bj, lr)


def _jax_step_x64(jax, bj: BJets, lr: float) -> dict:
    import jax.numpy as jnp

    args = [jnp.asarray(a) for a in (bj.tracks, bj.cov, bj.valid, bj.ref, bj.truth)]

    def distances(logits, tracks, cov, valid, ref, truth):
        res = vertexfit.fit(tracks, cov, jax.nn.sigmoid(logits), mask=valid, ref=ref)
        return jnp.sqrt(jnp.sum((res.vertex - truth) ** 2, axis=-1) + 1e-12)

    def total(logits, *a):
        d = distances(logits, *a)
        return jnp.sum(d), d

    # the XLA options vertexfit recommends on CPU: about half the compile time
    value_and_grad = jax.jit(jax.value_and_grad(total, has_aux=True),
                             compiler_options=vertexfit.jax_compiler_options())
    s = jnp.full(bj.valid.shape, START_LOGIT, dtype=jnp.float64)
    t0 = time.perf_counter()
    (_, d0), g = value_and_grad(s, *args)
    g = np.asarray(g)
    seconds = time.perf_counter() - t0  # includes compilation
    s1 = START_LOGIT + _step(g, bj.valid, lr)
    (_, d1), _ = value_and_grad(jnp.asarray(s1), *args)
    return {"before": np.asarray(d0), "after": np.asarray(d1), "grad": g, "logits": s1,
            "seconds": seconds}


def _step(grad: np.ndarray, valid: np.ndarray, lr: float) -> np.ndarray:
    """``-lr * g / |g|`` per jet (a step of length ``lr`` in logit space; 0 in padding)."""
    g = np.where(valid, grad, 0.0)
    norm = np.linalg.norm(g, axis=-1, keepdims=True)
    return -lr * g / np.maximum(norm, 1e-300)


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
@dataclass
class Report:
    out: Path
    lines: list[str] = field(default_factory=list)
    plots: bool = True

    def say(self, text: str = "", md: str | None = None) -> None:
        """Print ``text`` (progress); add ``md`` to the report if given."""
        print(text, flush=True)
        if md is not None:
            self.lines.append(md)

    def md(self, text: str) -> None:
        self.lines.append(text)

    def write(self) -> Path:
        path = self.out / "report.md"
        path.write_text("\n".join(self.lines) + "\n")
        return path


def _fmt3(a, digits: int = 2) -> str:
    return "(" + ", ".join(f"{x:.{digits}f}" for x in a) + ")"


def _fmt3i(a) -> str:
    return "(" + ", ".join(f"{x:.0f}" for x in a) + ")"


def _plot_classic(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for k, c in enumerate("xyz"):
        for name, r in results.items():
            axes[0, k].hist(np.clip(1e3 * r["residual"][:, k], -2000, 2000), bins=80,
                            histtype="step", label=name)
            axes[1, k].hist(np.clip(r["pull"][:, k], -6, 6), bins=60, histtype="step",
                            density=True, label=name)
        axes[0, k].set_xlabel(f"fitted - true {c} [µm]")
        axes[0, k].set_yscale("log")
        axes[1, k].set_xlabel(f"pull {c}")
        x = np.linspace(-6, 6, 200)
        axes[1, k].plot(x, np.exp(-x**2 / 2) / math.sqrt(2 * math.pi), "k:", label="N(0,1)")
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=8)
    fig.suptitle("b-jet secondary vertex: classic NumPy fit vs the true b-hadron decay vertex")
    fig.tight_layout()
    fig.savefig(out / "classic_fit.png", dpi=90)
    plt.close(fig)
    return ["classic_fit.png"]


def _plot_step(steps: dict, origin: np.ndarray, valid: np.ndarray, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, st = next(iter(steps.items()))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    lo = max(1e-3, float(np.min(st["before"])))
    bins = np.geomspace(lo, max(10.0, float(np.max(st["before"]))), 50)
    axes[0].hist(st["before"], bins=bins, histtype="step", label="before (weights 0.88)")
    axes[0].hist(st["after"], bins=bins, histtype="step", label="after one step")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("|fitted - true vertex| [mm]")
    axes[0].legend()
    w = 1.0 / (1.0 + np.exp(-st["logits"]))
    hf = valid & np.isin(origin, (ORIGIN["FromB"], ORIGIN["FromBC"]))
    other = valid & ~hf
    axes[1].hist(w[hf], bins=40, histtype="step", label="b-hadron tracks")
    axes[1].hist(w[other], bins=40, histtype="step", label="other tracks")
    axes[1].axvline(1.0 / (1.0 + math.exp(-START_LOGIT)), color="k", ls=":")
    axes[1].set_xlabel("track weight after the step")
    axes[1].legend()
    fig.suptitle(f"one gradient step on the track weights ({name})")
    fig.tight_layout()
    fig.savefig(out / "gradient_step.png", dpi=90)
    plt.close(fig)
    return ["gradient_step.png"]


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The parser of ``ndive demo`` (its options are defined in ``_cmd_demo``)."""
    from .cli import subcommand_parser

    return subcommand_parser("demo")


def _section_data(args, rep: Report) -> Path:
    if args.input:
        path = Path(args.input)
        rep.say(f"[1/5] reading {path}")
        return path
    from .generate import GenerationConfig, MissingExtraError, generate

    path = rep.out / "ttbar.h5"
    cfg = GenerationConfig(n_jets=args.jets, seed=args.seed, workers=args.workers)
    rep.say(f"[1/5] generating {args.jets} ttbar jets (Pythia 8, 14 TeV, {args.workers} "
            f"workers, seed {args.seed}) -> {path}")
    try:
        res = generate(cfg, path, progress=sys.stderr.isatty())
    except MissingExtraError as e:
        raise SystemExit(f"demo: {e}") from None
    rep.say(f"      {res.n_jets} jets from {res.n_events} events in {res.seconds:.1f} s "
            f"({res.jets_per_second:.0f} jets/s)",
            md=f"Generated {res.n_jets} jets from {res.n_events} ttbar events in "
               f"{res.seconds:.0f} s ({cfg.workers} workers, seed {cfg.seed}).\n")
    return path


def _section_classic(bj: BJets, rep: Report, plots: bool, n_reference: int) -> dict:
    rep.say(f"[2/5] classic NumPy fit of the b-jet secondary vertices ({len(bj.truth)} b-jets)")
    results = {}
    rep.md("\n## Classic fit (NumPy) of the b-jet secondary vertex\n")
    rep.md("Truth: the b-hadron decay vertex. Pull = (fitted - true) / sigma from the fit's "
           "vertex covariance; width = 1.4826 x median absolute deviation (Gaussian core); "
           "tail = fraction of converged fits with |pull| > 5 (N(0, 1): 6e-7); RMS over all "
           "converged fits (dominated by the tail). Resolution = core width of the "
           "residual.\n")
    rep.md("| selection | jets | converged | pull median (x, y, z) | pull width | pull tail "
           "| pull RMS | resolution x, y, z [µm] | median distance [µm] |")
    rep.md("|---|---|---|---|---|---|---|---|---|")
    for name, origins in SELECTIONS.items():
        r = classic_fit(bj, origins)
        results[name] = r
        rep.say(f"      {name:22s} {r['jets']:6d} jets, converged {r['converged']:.3f}, "
                f"pull median {_fmt3(r['pull_median'])} width {_fmt3(r['pull_width'])} "
                f"tail {_fmt3(r['pull_tail'], 3)} RMS {_fmt3(r['pull_rms'])}, "
                f"resolution {_fmt3i(r['resolution_um'])} µm, "
                f"median distance {r['median_dist_um']:.0f} µm",
                md=f"| {name} | {r['jets']} | {r['converged']:.3f} | {_fmt3(r['pull_median'])} "
                   f"| {_fmt3(r['pull_width'])} | {_fmt3(r['pull_tail'], 3)} | "
                   f"{_fmt3(r['pull_rms'])} | "
                   f"{_fmt3i(r['resolution_um'])} | {r['median_dist_um']:.0f} |")
    rep.md("\nOnly the first selection comes from one point, the b-hadron decay vertex, so only "
           "its pulls should be N(0, 1). `FromB` (the FTAG label) also holds the daughters of "
           "long-lived strange hadrons and secondary interactions in the b-decay chain (a few "
           "% of FromB tracks, produced centimetres away): they make the tail. The decay "
           "chain adds tracks of the c-hadron decay further along the flight path, and all "
           "tracks add primary tracks, which pull the vertex toward the primary vertex: the "
           "pulls widen and shift.\n")
    if n_reference > 0:
        dev = reference_check(bj, AT_SV, n_reference)
        rep.say(f"      NumPy fit vs SciPy reference fit ({n_reference} jets, b decay vertex): "
                f"max |difference| = {dev:.1e} sigma",
                md=f"Cross-check: the batched NumPy fit and the classic SciPy fit "
                   f"(`vertexfit.reference.fit`) of the first {n_reference} b decay vertices "
                   f"differ by at most {dev:.1e} sigma.\n")
    if plots:
        for f in _plot_classic(results, rep.out):
            rep.md(f"![classic fit]({f})\n")
    return results


def _section_gradients(bj: BJets, args, rep: Report) -> dict:
    rep.say(f"[3/5] differentiable fit: gradient of |fitted - true vertex| w.r.t. the track "
            f"weights ({len(bj.truth)} b-jets, all tracks, weights sigmoid(s), s = "
            f"{START_LOGIT})")
    rep.md("\n## Differentiable fit: one gradient step on the track weights\n")
    rep.md(f"All tracks of {len(bj.truth)} b-jets (whose all-tracks fit converges), weights `w = sigmoid(s)` starting at "
           f"s = {START_LOGIT} (w = {1 / (1 + math.exp(-START_LOGIT)):.2f}). The loss of a jet "
           "is the distance between the fitted and the true b-hadron decay vertex; its gradient "
           "w.r.t. `s` flows through `vertexfit.fit`. One step `s -= lr g/|g|` per jet "
           f"(lr = {args.lr}).\n")
    rep.md("| backend | mean distance before [mm] | after [mm] | median before | median after "
           "| jets improved | mean dw b-hadron tracks | mean dw other tracks | time [s] |")
    rep.md("|---|---|---|---|---|---|---|---|---|")
    steps = {}
    backends = []
    if not args.no_jax:
        if importlib.util.find_spec("jax") is None:
            rep.say("      JAX is not installed: skipped (pip install 'vertexfit[jax]')",
                    md="JAX is not installed: skipped (`pip install 'vertexfit[jax]'`).\n")
        else:
            backends.append(("JAX (jit, float64)", jax_step))
    if not args.no_torch:
        backends.append(("PyTorch (float64)", torch_step))
    hf = bj.valid & np.isin(bj.origin, (ORIGIN["FromB"], ORIGIN["FromBC"]))
    other = bj.valid & ~hf
    w0 = 1.0 / (1.0 + math.exp(-START_LOGIT))
    for name, fn in backends:
        st = fn(bj, args.lr)
        steps[name] = st
        dw = 1.0 / (1.0 + np.exp(-st["logits"])) - w0
        improved = float(np.mean(st["after"] < st["before"]))
        rep.say(f"      {name:20s} mean distance {st['before'].mean():.3f} -> "
                f"{st['after'].mean():.3f} mm (median {np.median(st['before']):.3f} -> "
                f"{np.median(st['after']):.3f}), {100 * improved:.0f}% of jets closer; "
                f"mean weight change b-hadron tracks {dw[hf].mean():+.3f}, other "
                f"{dw[other].mean():+.3f} (gradient in {st['seconds']:.1f} s)",
                md=f"| {name} | {st['before'].mean():.3f} | {st['after'].mean():.3f} | "
                   f"{np.median(st['before']):.3f} | {np.median(st['after']):.3f} | "
                   f"{100 * improved:.0f}% | {dw[hf].mean():+.3f} | {dw[other].mean():+.3f} | "
                   f"{st['seconds']:.1f} |")
    if len(steps) == 2:
        (_, a), (_, b) = steps.items()
        rel = float(np.max(np.abs(a["grad"] - b["grad"])) / np.max(np.abs(b["grad"])))
        rep.say(f"      JAX and PyTorch gradients agree to {rel:.1e} (max difference / max |g|)",
                md=f"\nJAX and PyTorch gradients agree to {rel:.1e} (max difference / max "
                   "|g|). The time includes JAX's compilation.\n")
    if steps and not args.no_plots and rep.plots:
        for f in _plot_step(steps, bj.origin, bj.valid, rep.out):
            rep.md(f"![gradient step]({f})\n")
    return steps


def _differentiable_sample(bj: BJets, n: int) -> np.ndarray:
    """Indices of the first ``n`` b-jets with >= 2 tracks whose all-tracks fit converges.

    A fit that does not converge (a few % of jets: all tracks, far from a common point) has
    no well-defined vertex, so neither its gradient.
    """
    cand = np.flatnonzero(bj.valid.sum(-1) >= 2)
    sub = bj.take(cand)
    ok = np.asarray(vertexfit.fit(sub.tracks, sub.cov, mask=sub.valid, ref=sub.ref).converged)
    return cand[ok][:n]


def _training_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in
               ("ndive_models.train", "ndive_models.models", "ndive_models.evaluate"))


#: Models trained by the demo: (title, ``ModelConfig.name``).
DEMO_MODELS = (("baseline (GN2-like)", "baseline"), ("FTAG+NDIVE", "ftag_ndive"))


def _section_training(path: Path, args, rep: Report) -> dict:
    rep.md("\n## Training: baseline vs FTAG+NDIVE (brief)\n")
    if args.no_train:
        rep.say("[4/5] training: skipped (--no-train)")
        rep.md("Skipped (`--no-train`).")
        return {}
    if not _training_available():
        rep.say("[4/5] training: this version of ndive-models has no training modules "
                "(ndive_models.train, .models, .evaluate): skipped")
        rep.md("Skipped: this version of ndive-models has no training modules.")
        return {}
    from .evaluate import evaluate
    from .models import ModelConfig
    from .train import TrainConfig, train

    test = Path(args.test_input) if args.test_input else None
    if test is None and not args.input:
        from .generate import GenerationConfig, generate

        test = rep.out / "ttbar_test.h5"
        n_test = args.test_jets
        rep.say(f"[4/5] generating an independent test sample of {n_test} jets -> {test}")
        generate(GenerationConfig(n_jets=n_test, seed=args.seed + 1000, workers=args.workers),
                 test, progress=False)
    elif test is None:
        test = path
        rep.md("No independent test sample (`--input` without `--test-input`): evaluated on "
               "the training file itself, so the numbers are optimistic.\n")
    rep.say(f"[4/5] training {', '.join(t for t, _ in DEMO_MODELS)} for {args.epochs} "
            f"epoch(s) on {args.train_jets} jets of {path} (AdamW, lr {args.train_lr}, "
            f"dim {args.dim})")
    rep.md(f"A few epochs ({args.epochs}) of a small model (dim {args.dim}, 1 layer, 1 head, "
           f"AdamW lr {args.train_lr}, batch 100) on {args.train_jets} jets of {path.name}: "
           "far from the paper's "
           "training (NovoGrad, early stopping, 500k jets), so the comparison only shows "
           "that everything runs end to end. `nox -s paper` does the real comparison.\n")
    rep.md("| model | epochs | train loss | validation loss | training jets/s | time [s] |")
    rep.md("|---|---|---|---|---|---|")
    summaries, checkpoints = {}, []
    for title, name in DEMO_MODELS:
        cfg = TrainConfig(train=str(path), out=str(rep.out / "train" / name),
                          max_jets=args.train_jets, max_val_jets=max(args.train_jets // 4, 100),
                          epochs=args.epochs, batch_size=100, optimizer="adamw",
                          lr=args.train_lr, seed=args.seed, progress=False,
                          patience=max(args.epochs, 1), device="cpu",
                          threads=_threads(args),
                          model=ModelConfig(name=name, dim=args.dim,
                                            fit_compile=getattr(args, "compile", False)))
        t0 = time.perf_counter()
        summary = train(cfg)
        seconds = time.perf_counter() - t0
        last = summary["history"][-1]
        jps = float(np.mean([h["jets_per_s"] for h in summary["history"] if "jets_per_s" in h]))
        summaries[name] = {"train_loss": last.get("train_loss"), "val_loss": last["val"]["loss"],
                           "jets_per_s": jps, "seconds": seconds}
        checkpoints.append(summary["best"])
        rep.say(f"      {title:20s} train loss {last.get('train_loss', math.nan):.4f}, "
                f"validation loss {last['val']['loss']:.4f}, {jps:.0f} jets/s, {seconds:.0f} s",
                md=f"| {title} | {len(summary['history'])} | "
                   f"{last.get('train_loss', math.nan):.4f} | {last['val']['loss']:.4f} | "
                   f"{jps:.0f} | {seconds:.0f} |")
    metrics = evaluate(checkpoints, test, rep.out / "evaluate", plots=rep.plots,
                       max_jets=args.test_jets)
    rep.md(f"\nEvaluated on {test.name} ({metrics['n_test_jets']} jets: "
           f"{metrics['n_per_flavour']}); rejections at 70% b-efficiency (f_c = "
           f"{metrics['f_c']}), binomial errors:\n")
    rep.md("| model | light rejection | c rejection |")
    rep.md("|---|---|---|")
    for (title, name) in DEMO_MODELS:
        r = metrics["models"].get(name, {}).get("rejection")
        if not r:
            continue
        light, c = r["light"]["0.70"], r["c"]["0.70"]
        summaries[name]["light_rejection_70"] = light["mean"]
        summaries[name]["c_rejection_70"] = c["mean"]
        rep.say(f"      {title:20s} at 70% b-efficiency: light rejection {light['mean']:.1f} "
                f"+- {light['binomial_err_of_mean']:.1f}, c rejection {c['mean']:.2f} +- "
                f"{c['binomial_err_of_mean']:.2f}",
                md=f"| {title} | {light['mean']:.1f} +- {light['binomial_err_of_mean']:.1f} | "
                   f"{c['mean']:.2f} +- {c['binomial_err_of_mean']:.2f} |")
    if rep.plots:
        for f in ("roc_light.png", "roc_c.png", "track_selection.png", "vertex_residuals.png"):
            if (rep.out / "evaluate" / f).exists():
                rep.md(f"\n![{f}](evaluate/{f})")
    return summaries


def main(argv: list[str] | None = None) -> int:
    """``ndive demo`` with the options ``argv`` (default: ``sys.argv[1:]``)."""
    from .cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


def _threads(args) -> int:
    from ._runtime import DEFAULT_THREADS

    threads = getattr(args, "threads", None)
    return DEFAULT_THREADS if threads is None else threads


def run(args: argparse.Namespace) -> int:
    """The demo for parsed ``ndive demo`` options; returns the exit status."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plots = not args.no_plots and importlib.util.find_spec("matplotlib") is not None
    rep = Report(out, plots=plots)
    rep.md("# ndive demo report\n")
    path = _section_data(args, rep)
    jets, tracks = read_jets(path)
    rep.md(f"Sample: `{path}`, {len(jets)} jets (ttbar, Pythia 8, 14 TeV), of which "
           f"{int(np.sum(jets['flavour_label'] == 0))} b-jets.\n")
    bj = b_jets(jets, tracks)
    if len(bj.truth) < 2:
        raise SystemExit(f"demo: only {len(bj.truth)} b-jets in {path}; use more --jets")
    classic = _section_classic(bj, rep, plots, args.reference_jets)
    grad = bj.take(_differentiable_sample(bj, args.grad_jets))
    steps = _section_gradients(grad, args, rep)
    training = _section_training(path, args, rep)
    if not plots:
        rep.md("\n(No plots: matplotlib is not installed or --no-plots was given.)")
    rep.md(f"\nTotal time: {time.perf_counter() - t0:.0f} s.")
    report = rep.write()
    summary = {
        "jets": len(jets), "b_jets": len(bj.truth),
        "classic": {name: {k: np.asarray(v).tolist() for k, v in r.items()
                           if k not in ("residual", "pull")} for name, r in classic.items()},
        "gradient_step": {name: {"jets": len(st["before"]),
                                 "mean_before_mm": float(st["before"].mean()),
                                 "mean_after_mm": float(st["after"].mean()),
                                 "fraction_closer": float(np.mean(st["after"] < st["before"]))}
                          for name, st in steps.items()},
        "training": training,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[5/5] report written to {report.resolve()} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":  # python -m ndive_models.demo
    from ndive_models.cli import run_as_program

    sys.exit(run_as_program(["demo", *sys.argv[1:]]))

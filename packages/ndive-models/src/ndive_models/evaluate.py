"""Evaluate trained models on a test file: ``ndive evaluate``.

For each checkpoint: predictions ``predictions/<label>_<k>.h5`` in the FTAG layout (a
``jets`` table with ``<label>_pb/_pc/_pu``, the labels, ``pt`` in MeV, ``eventNumber`` and the
NDIVE vertex and covariance; a ``tracks`` table with the track weights; see
:func:`predictions_table`), which puma and atlas-ftag-tools read; then ``metrics.json`` and PNG
plots in the output directory:

- ``roc_light.png`` / ``roc_c.png``: rejection vs b-jet efficiency, one curve per model
  (mean over the checkpoints sharing a label, i.e. trainings with different seeds, band =
  min-max), ratio panel to the reference model;
- rejections at 60/70/77/85 % b-efficiency with binomial errors (per checkpoint, and mean
  and standard deviation over seeds) in ``metrics.json``;
- ``track_selection.png``: NDIVE track-selection efficiency and purity vs jet pT, track
  multiplicity and decay length, b- and c-jets;
- ``vertex_residuals.png``: residuals and pulls of the vertex for NDIVE vs all tracks vs
  perfect (truth) track selection;
- ``pt_response.png`` (models with the regression task, files with ``pt_truth_nu_mu``):
  median response ``pT / pT_truth`` and relative resolution (half the 16-84 % range of the
  response over its median) vs the truth pT of b-jets, regressed vs uncalibrated.

Models with 4 or 6 classes enter the ROC curves like 3-class ones: ``p_u`` is the sum of the
probabilities of every class that is neither b nor c (tau included), and the background
labels are ``flavour_label`` (tau jets are light there), so any set of models can be compared.

Labels: the config's ``model.label`` when set, else the model name with ``_truth`` / ``_all``
appended for the reference weight options; checkpoints with the same label are treated as
seeds of one model. The ratio panels divide by ``reference`` (default: the first model when
no model has that label).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import torch

from . import _metrics
from ._files import atomic_write
from .data import read_jets
from .data.loader import HF_ORIGINS, index_batch, load_batch, to_device

__all__ = ["evaluate", "predict", "predictions_table"]

DISPLAY = {"baseline": "Baseline (GN2-like)", "ftag_ndive": "FTAG+NDIVE", "ndive": "NDIVE",
           "ftag_ndive_truth": "FTAG+NDIVE (perfect selection)",
           "ftag_ndive_all": "FTAG+NDIVE (all tracks)", "ndive_truth": "perfect selection",
           "ndive_all": "all tracks"}


@torch.no_grad()
def predict(model, batch: dict, batch_size: int = 1000, device="cpu") -> dict:
    """Run ``model`` over a batch dict in chunks; returns NumPy arrays.

    Keys (present when the model has them): ``p_b, p_c, p_u`` (N,) (``p_u``: every class
    other than b and c), ``probs`` (N, C) (models with more than 3 classes), ``pt_regressed``
    (N,) [GeV], ``vertex`` (N, 3) [mm, relative to the PV], ``vertex_cov`` (N, 3, 3),
    ``track_weights`` (N, T), ``fit_ok`` (N,).
    """
    model.eval()
    parts: dict[str, list] = {}
    n = batch["valid"].shape[0]
    for s in range(0, n, batch_size):
        out = model(to_device(index_batch(batch, slice(s, s + batch_size)), device))
        got = {}
        if "flavour_logits" in out:
            p = torch.softmax(out["flavour_logits"].double(), -1)
            got.update(p_b=p[:, 0], p_c=p[:, 1], p_u=p[:, 2:].sum(-1))
            if p.shape[1] > 3:
                got["probs"] = p
        if "pt_regressed" in out:
            got["pt_regressed"] = out["pt_regressed"]
        if "vertex" in out:
            got.update(vertex=out["vertex"], vertex_cov=out["vertex_cov"],
                       track_weights=out["weights"], fit_ok=out["fit_ok"])
        for k, v in got.items():
            parts.setdefault(k, []).append(v.detach().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def reference_fits(batch: dict, bz: float, n_iter: int = 10) -> dict:
    """Vertex fits with all tracks and with perfect (truth) track selection.

    Returns ``{"all tracks": pred, "perfect selection": pred}`` with ``pred`` as from
    :func:`predict` (vertex keys only).
    """
    from .models import ModelConfig, build_model
    from .models.features import FEATURE_NAMES

    nf = len(FEATURE_NAMES)  # no network in these modes: the normalisation is unused
    stats = {"mean": torch.zeros(nf), "std": torch.ones(nf), "pos_scale": torch.ones(3)}
    out = {}
    for name, w in (("all tracks", "all"), ("perfect selection", "truth")):
        m = build_model(ModelConfig(name="ndive", weights=w, fit_iter=n_iter), stats, bz)
        out[name] = predict(m, batch)
    return out


#: Bin edges of the binned track selection: jet pT [GeV], tracks per jet, hadron Lxy [mm].
SELECTION_EDGES = {"pt": np.array([20, 40, 60, 100, 150, 250, 500.0]),
                   "n_tracks": np.arange(1.5, 16.5, 2.0),
                   "Lxy": np.array([0, 0.5, 1, 2, 4, 8, 16, 40.0])}


def _label(cfg: dict) -> str:
    m = cfg["model"]
    if m.get("label"):
        return m["label"]
    return m["name"] + ("" if m.get("weights", "predicted") == "predicted" else
                        "_" + m["weights"])


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "model"


def pt_response(pt, pt_true, edges) -> dict:
    """Median response ``pt / pt_true`` and relative resolution (half the 16-84 % quantile
    range of the response, divided by its median) in bins of ``pt_true`` [GeV]; bins with
    fewer than 10 jets give NaN."""
    pt, pt_true = np.asarray(pt, np.float64), np.asarray(pt_true, np.float64)
    resp = pt / np.where(pt_true > 0, pt_true, np.nan)
    med, res, n = [], [], []
    for lo, hi in itertools.pairwise(edges):
        r = resp[(pt_true >= lo) & (pt_true < hi) & np.isfinite(resp)]
        n.append(int(r.size))
        if r.size < 10:
            med.append(float("nan"))
            res.append(float("nan"))
            continue
        q16, q50, q84 = np.quantile(r, (0.16, 0.5, 0.84))
        med.append(float(q50))
        res.append(float(0.5 * (q84 - q16) / q50))
    return {"median_response": med, "resolution": res, "n_jets": n}


def _regression(pred, batch, edges):
    """Response and resolution of b-jets vs truth pT, uncalibrated and regressed."""
    b = batch["flavour"].numpy() == 0
    true = batch["pt_truth"].numpy()[b]
    return {"edges": [float(e) for e in edges], "flavour": "b",
            "uncalibrated": pt_response(batch["jet"][:, 0].numpy()[b], true, edges),
            "regressed": pt_response(pred["pt_regressed"][b], true, edges)}


#: Fields of the test file copied into each predictions ``jets`` table (pt becomes MeV).
_JET_COPY = ("eta", "phi", "eventNumber", "HadronConeExclTruthLabelID", "flavour_label",
             "n_tracks", "Lxy")
_COV_NAMES = ("xx", "xy", "xz", "yy", "yz", "zz")


def predictions_table(tagger: str, pred: dict, jets: np.ndarray, valid: np.ndarray):
    """The predictions of one model in the FTAG layout: ``(jets, tracks)`` structured arrays.

    ``jets`` ``(N,)``: ``<tagger>_pb``, ``<tagger>_pc``, ``<tagger>_pu`` (float32), ``pt``
    [MeV] and the test file's ``eta, phi, eventNumber, HadronConeExclTruthLabelID,
    flavour_label, n_tracks, Lxy``; ``<tagger>_pt_regressed`` [MeV] for regression models;
    for models with a vertex fit also
    ``<tagger>_vertex_x/_y/_z`` [mm, w.r.t. the PV], ``<tagger>_vertex_cov_xx, _xy, ...``
    [mm^2] and ``<tagger>_fit_ok``. ``tracks`` ``(N, T)`` (vertex-fit models only):
    ``valid`` and ``<tagger>_track_weight``. What ``puma.Results.load_taggers_from_file``
    and ``ftag.hdf5.H5Reader`` read.
    """
    fields = []
    if "p_b" in pred:
        fields += [(f"{tagger}_p{f}", "f4") for f in "bcu"]
    fields += [("pt", "f4")] + [(k, jets.dtype[k]) for k in _JET_COPY]
    if "pt_regressed" in pred:
        fields += [(f"{tagger}_pt_regressed", "f4")]
    if "vertex" in pred:
        fields += [(f"{tagger}_vertex_{c}", "f4") for c in "xyz"]
        fields += [(f"{tagger}_vertex_cov_{c}", "f4") for c in _COV_NAMES]
        fields += [(f"{tagger}_fit_ok", "?")]
    out = np.zeros(len(jets), fields)
    if "p_b" in pred:
        for f in "bcu":
            out[f"{tagger}_p{f}"] = pred[f"p_{f}"]
    out["pt"] = 1000.0 * jets["pt"].astype(np.float64)
    if "pt_regressed" in pred:
        out[f"{tagger}_pt_regressed"] = 1000.0 * np.asarray(pred["pt_regressed"], np.float64)
    for k in _JET_COPY:
        out[k] = jets[k]
    tracks = None
    if "vertex" in pred:
        for i, c in enumerate("xyz"):
            out[f"{tagger}_vertex_{c}"] = pred["vertex"][:, i]
        for name in _COV_NAMES:
            i, j = "xyz".index(name[0]), "xyz".index(name[1])
            out[f"{tagger}_vertex_cov_{name}"] = pred["vertex_cov"][:, i, j]
        out[f"{tagger}_fit_ok"] = pred["fit_ok"]
        tracks = np.zeros(valid.shape, [("valid", "?"), (f"{tagger}_track_weight", "f4")])
        tracks["valid"] = valid
        tracks[f"{tagger}_track_weight"] = np.where(valid, pred["track_weights"], 0.0)
    return out, tracks


def _write_predictions(path: Path, tagger: str, pred: dict, jets: np.ndarray,
                       valid: np.ndarray, f_c: float) -> None:
    import h5py

    from .data import schema

    table, tracks = predictions_table(tagger, pred, jets, valid)

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("jets", data=table, compression="lzf")
            ds.attrs["flavour_label"] = list(schema.FLAVOURS)
            if tracks is not None:
                f.create_dataset("tracks", data=tracks, compression="lzf")
            f.attrs["tagger"] = tagger
            f.attrs["f_c"] = f_c
            f.attrs["units"] = "pt MeV; vertex mm, w.r.t. the true primary vertex"

    atomic_write(path, write)


def _rejections(pred, labels, f_c, wps):
    d = _metrics.discriminant(pred["p_b"], pred["p_c"], pred["p_u"], f_c)
    return {bkg: {f"{wp:.2f}": _metrics.rejection(d, labels, wp, background=code)
                  for wp in wps}
            for bkg, code in (("light", 2), ("c", 1))}


def _seed_summary(per_seed: list[dict], wps):
    out = {}
    for bkg in ("light", "c"):
        out[bkg] = {}
        for wp in wps:
            k = f"{wp:.2f}"
            r = np.array([s[bkg][k]["rejection"] for s in per_seed])
            e = np.array([s[bkg][k]["rejection_err"] for s in per_seed])
            out[bkg][k] = {"mean": float(np.mean(r)),
                           "std_over_seeds": float(np.std(r, ddof=1)) if len(r) > 1 else None,
                           "binomial_err_of_mean": float(np.sqrt(np.sum(e**2)) / len(e)),
                           "n_seeds": len(r)}
    return out


def _track_selection(pred, batch, edges):
    valid = batch["valid"].numpy()
    truth = np.isin(batch["origin"].numpy(), HF_ORIGINS) & valid
    sel = _metrics.selected_tracks(pred["track_weights"], valid)
    n_true, n_sel, n_both = _metrics.selection_counts(sel, truth, valid)
    fl = batch["flavour"].numpy()
    variables = {"pt": batch["jet"][:, 0].numpy(), "n_tracks": valid.sum(1),
                 "Lxy": np.hypot(batch["hf_vertex"][:, 0].numpy(),
                                 batch["hf_vertex"][:, 1].numpy())}
    out = {}
    for name, code in (("b", 0), ("c", 1)):
        m = fl == code
        eff, _ = _metrics.ratio_with_error(n_both[m].sum(), n_true[m].sum())
        pur, _ = _metrics.ratio_with_error(n_both[m].sum(), n_sel[m].sum())
        out[name] = {"efficiency": float(eff), "purity": float(pur),
                     "binned": {v: _metrics.binned_selection(x[m], edges[v], n_true[m],
                                                             n_sel[m], n_both[m])
                                for v, x in variables.items()}}
    return out


def _vertex_quality(pred, batch):
    hf = batch["hf_vertex"].numpy().astype(np.float64)
    use = pred["fit_ok"] & (batch["flavour"].numpy() < 2)
    res = pred["vertex"][use] - hf[use]
    sig = np.sqrt(np.maximum(np.diagonal(pred["vertex_cov"][use], axis1=1, axis2=2), 1e-30))
    summary = _metrics.residual_summary(res, res / sig)
    summary["n_jets_used"] = int(use.sum())
    summary["fit_ok_fraction"] = float(pred["fit_ok"][batch["flavour"].numpy() < 2].mean())
    return summary, res, res / sig


def evaluate(checkpoints, test, out, *, f_c: float = 0.05, reference: str | None = None,
             working_points=_metrics.WORKING_POINTS, max_jets: int | None = None,
             device: str = "cpu", plots: bool = True, puma: bool = False) -> dict:
    """Evaluate checkpoints on ``test``; writes predictions, ``metrics.json`` and plots to
    ``out`` and returns the metrics dict. ``puma``: also draw puma's ROC and discriminant
    plots into ``out/puma`` (needs the ``ftag`` extra).

    ``reference``: label of the ratio-panel reference (default ``baseline``, if evaluated);
    a given label must be one of the checkpoints'.

    Raises:
        ValueError: ``f_c`` outside [0, 1], ``max_jets`` < 1, an unknown ``reference``, a
            checkpoint or test file that cannot be read (naming it).
    """
    if puma:
        from . import _puma

        if not _puma.available():
            raise ValueError(_puma.INSTALL_HINT)
    from .train import load_checkpoint

    if not 0.0 <= f_c <= 1.0:
        raise ValueError(f"f_c must be in [0, 1], got {f_c}")
    if max_jets is not None and max_jets < 1:
        raise ValueError(f"max_jets must be positive, got {max_jets}")
    loaded = [(p, *load_checkpoint(p, device)) for p in checkpoints]
    known = sorted({_label(ck["config"]) for _, _, ck in loaded})
    if reference is not None and reference not in known:
        raise ValueError(f"reference {reference!r} is not the label of an evaluated "
                         f"checkpoint; labels: {', '.join(known)}")
    reference = "baseline" if reference is None else reference
    out = Path(out)
    batch, bz = load_batch(test, 0, max_jets)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    jets, _ = read_jets(test, 0, max_jets)
    valid = batch["valid"].numpy()
    labels = batch["flavour"].numpy()
    preds: dict[str, list] = {}
    for _, model, ck in loaded:
        label = _label(ck["config"])
        pred = predict(model, batch, device=device)
        k = len(preds.setdefault(label, []))
        preds[label].append(pred)
        _write_predictions(out / "predictions" / f"{_file_name(label)}_{k}.h5", label, pred,
                           jets, valid, f_c)
    refs = reference_fits(batch, bz) if any("vertex" in p[0] for p in preds.values()) else {}

    edges = SELECTION_EDGES
    pt_edges = np.array([20, 30, 40, 60, 80, 100, 150, 250, 500.0])
    metrics = {"test_file": str(test), "n_test_jets": len(labels),
               "n_per_flavour": {n: int((labels == i).sum()) for i, n in
                                 enumerate(("b", "c", "light"))},
               "f_c": f_c, "working_points": list(working_points), "models": {}}
    vertex_data = {}
    for label, plist in preds.items():
        m = {"n_checkpoints": len(plist), "display": DISPLAY.get(label, label)}
        if "p_b" in plist[0]:
            per_seed = [_rejections(p, labels, f_c, working_points) for p in plist]
            m["rejection_per_checkpoint"] = per_seed
            m["rejection"] = _seed_summary(per_seed, working_points)
        if "pt_regressed" in plist[0] and "pt_truth" in batch:
            m["regression"] = _regression(plist[0], batch, pt_edges)
        if "vertex" in plist[0]:
            if label.endswith(("_truth", "_all")):
                pass  # same fits as the references below
            else:
                m["track_selection"] = _track_selection(plist[0], batch, edges)
                m["vertex"], r, pl = _vertex_quality(plist[0], batch)
                vertex_data[DISPLAY.get(label, label)] = (r, pl)
        metrics["models"][label] = m
    metrics["vertex_references"] = {}
    for name, p in refs.items():
        metrics["vertex_references"][name], r, pl = _vertex_quality(p, batch)
        vertex_data[name] = (r, pl)
    text = json.dumps(metrics, indent=1, allow_nan=True)
    atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(text))

    if plots:
        from . import _plots

        effs = np.linspace(0.5, 0.95, 46)
        curves = {}
        for label, plist in preds.items():
            if "p_b" not in plist[0]:
                continue
            for bkg, code in (("light", 2), ("c", 1)):
                curves.setdefault(bkg, {})[DISPLAY.get(label, label)] = np.stack([
                    _metrics.roc_curve(_metrics.discriminant(p["p_b"], p["p_c"], p["p_u"],
                                                             f_c), labels, effs,
                                       background=code) for p in plist])
        ref = DISPLAY.get(reference, reference)
        for bkg, c in curves.items():
            ref = ref if ref in c else next(iter(c))
            n = int(np.sum(labels == (2 if bkg == "light" else 1)))
            _plots.roc(effs, c, ref, bkg, out / f"roc_{bkg}.png", n_bkg=dict.fromkeys(c, n),
                       title=f"$D_b$ with $f_c$ = {f_c:g}")
        sel = {DISPLAY.get(k, k): v["track_selection"] for k, v in metrics["models"].items()
               if "track_selection" in v}
        if sel:
            _plots.track_selection(sel, out / "track_selection.png")
        if vertex_data:
            _plots.vertex_residuals(vertex_data, out / "vertex_residuals.png")
        reg = {DISPLAY.get(k, k): v["regression"] for k, v in metrics["models"].items()
               if "regression" in v}
        if reg:
            _plots.pt_response(reg, out / "pt_response.png")
    if puma:
        files = {label: out / "predictions" / f"{_file_name(label)}_0.h5"
                 for label, plist in preds.items() if "p_b" in plist[0]}
        if files:
            metrics["puma_plots"] = [p.name for p in _puma.puma_plots(
                files, out / "puma", f_c=f_c, reference=reference, display=DISPLAY)]
    return metrics

"""Export a trained checkpoint to ONNX and check it against ONNX Runtime on real jets.

The ONNX graph takes the jet file's quantities directly (no preprocessing outside the graph:
the input normalisation and the track features are inside it):

=================  ===============  ===================================================
input              shape / dtype    meaning
=================  ===============  ===================================================
``track_params``   (B, T, 5) f32    perigee ``(d0, z0, phi, theta, rho)`` w.r.t. the PV
                                    (Billoir d0 sign; mm, mm, rad, rad, 1/mm)
``track_cov``      (B, T, 15) f32   the ``cov_*`` fields (upper triangle, row by row)
``track_valid``    (B, T) bool      False for padded slots
``jet``            (B, 3) f32       jet ``(pt [GeV], eta, phi [rad])``
=================  ===============  ===================================================

Outputs (as the model has them): ``probs`` (B, 3) = ``(p_b, p_c, p_u)``; for NDIVE and
FTAG+NDIVE ``vertex`` (B, 3) [mm, w.r.t. the PV], ``vertex_cov`` (B, 3, 3) [mm^2],
``track_weights`` (B, T), ``fit_ok`` (B,) bool.

The vertex fit runs in float32 in the exported graph (ONNX Runtime has no float64 kernels
for several operators the fit needs, e.g. ``Cos``). The model's configuration, the input
normalisation (feature means and widths) and the field are stored as ONNX metadata
(``metadata_props``), so the file alone says what it expects.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import torch
from torch import nn

from ._files import atomic_write
from .data.schema import COV_FIELDS, TRACK_PARAMS

__all__ = ["OnnxModel", "check_onnx", "export_onnx", "export_report", "onnx_inputs"]

INPUT_NAMES = ("track_params", "track_cov", "track_valid", "jet")

# (i, j) of each cov_* field, and for each of the 25 matrix entries its field index
_UPPER = [(i, j) for i in range(5) for j in range(i, 5)]
_FULL_INDEX = [_UPPER.index((min(i, j), max(i, j))) for i in range(5) for j in range(5)]


class OnnxModel(nn.Module):
    """A trained model with the ONNX interface of this module (tensors in, tensors out)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("full_index", torch.tensor(_FULL_INDEX, dtype=torch.long),
                             persistent=False)

    def forward(self, track_params, track_cov, track_valid, jet):
        B, T = track_params.shape[0], track_params.shape[1]
        cov = track_cov.index_select(-1, self.full_index).reshape(B, T, 5, 5)
        # placeholders in padded slots, as the training inputs have them (data.loader.SAFE_TRACK)
        safe = torch.tensor([0.0, 0.0, 0.0, 1.5707963267948966, 0.0], dtype=track_params.dtype)
        params = torch.where(track_valid[..., None], track_params, safe)
        eye = torch.eye(5, dtype=track_params.dtype)
        cov = torch.where(track_valid[..., None, None], cov, eye)
        out = self.model({"params": params, "cov": cov, "valid": track_valid, "jet": jet})
        res = {}
        if "flavour_logits" in out:
            res["probs"] = torch.softmax(out["flavour_logits"].float(), -1)
        if "vertex" in out:
            res["vertex"] = out["vertex"].float()
            res["vertex_cov"] = out["vertex_cov"].float()
            res["track_weights"] = out["weights"].float()
            res["fit_ok"] = out["fit_ok"]
        return tuple(res.values()) if len(res) > 1 else next(iter(res.values()))

    def output_names(self) -> list[str]:
        names = []
        if self.model.cfg.name in ("baseline", "ftag_ndive"):
            names.append("probs")
        if self.model.cfg.name in ("ndive", "ftag_ndive"):
            names += ["vertex", "vertex_cov", "track_weights", "fit_ok"]
        return names


def onnx_inputs(jets: np.ndarray, tracks: np.ndarray) -> dict[str, np.ndarray]:
    """The ONNX inputs (see the module docstring) from structured ``jets`` ``(N,)`` and
    ``tracks`` ``(N, T)`` arrays of a jet file."""
    return {
        "track_params": np.stack([tracks[k] for k in TRACK_PARAMS], -1).astype(np.float32),
        "track_cov": np.stack([tracks[k] for k in COV_FIELDS], -1).astype(np.float32),
        "track_valid": np.ascontiguousarray(tracks["valid"]),
        "jet": np.stack([jets["pt"], jets["eta"], jets["phi"]], -1).astype(np.float32),
    }


def _metadata(ck: dict, model: nn.Module) -> dict[str, str]:
    from . import __version__
    from .models.features import FEATURE_NAMES

    stats = {k: torch.as_tensor(v).tolist() for k, v in ck["stats"].items()}
    config = json.loads(json.dumps(ck["config"]))
    config["model"]["fit_dtype"] = "float32"
    return {
        "ndive_models_version": __version__,
        "model": model.cfg.name,
        "config": json.dumps(config, sort_keys=True),
        "fit_dtype": "float32",
        "bz_tesla": repr(float(ck["bz"])),
        "normalisation": json.dumps({"features": list(FEATURE_NAMES), **stats}),
        "inputs": json.dumps({"track_params": list(TRACK_PARAMS),
                              "track_cov": list(COV_FIELDS),
                              "track_valid": "bool", "jet": ["pt [GeV]", "eta", "phi"]}),
        "units": "length mm, momentum GeV, angle rad, curvature 1/mm (file schema 2.0)",
    }


def export_onnx(checkpoint, out, example: dict[str, np.ndarray], *, opset: int = 17,
                dynamic_batch: bool = True) -> dict:
    """Export ``checkpoint`` to the ONNX file ``out``.

    Args:
        checkpoint: a ``.pt`` file written by ``ndive train``.
        out: the ``.onnx`` file (written atomically).
        example: ONNX inputs of a few real jets (:func:`onnx_inputs`), used for tracing.
        opset: ONNX opset.
        dynamic_batch: make the jet axis dynamic (the track axis always is).

    Returns:
        ``{"nodes", "export_seconds", "dynamic_axes", "opset", "path"}``.
    """
    import onnx

    from .train import load_checkpoint

    _, ck = load_checkpoint(checkpoint)
    wrapper = _wrapped(checkpoint, "float32")
    model = wrapper.model
    args = tuple(torch.from_numpy(example[k]) for k in INPUT_NAMES)
    axes = {"track_params": {1: "tracks"}, "track_cov": {1: "tracks"},
            "track_valid": {1: "tracks"}, "jet": {}}
    outs = {"probs": {}, "vertex": {}, "vertex_cov": {}, "track_weights": {1: "tracks"},
            "fit_ok": {}}
    if dynamic_batch:
        for d in (*axes.values(), *outs.values()):
            d[0] = "jets"
    names = wrapper.output_names()
    buf = io.BytesIO()
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(wrapper, args, buf, input_names=list(INPUT_NAMES),
                          output_names=names, opset_version=opset, dynamo=False,
                          dynamic_axes={**axes, **{k: outs[k] for k in names}})
    seconds = time.perf_counter() - t0
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in _metadata(ck, model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    out = atomic_write(out, lambda tmp: onnx.save(proto, str(tmp)))
    return {"nodes": len(proto.graph.node), "export_seconds": seconds, "opset": opset,
            "dynamic_axes": sorted({a for d in axes.values() for a in d.values()}),
            "path": str(out)}


def check_onnx(path, checkpoint, inputs: dict[str, np.ndarray], *, batch: int = 256) -> dict:
    """Run the ONNX file with ONNX Runtime and the checkpoint with PyTorch (the same float32
    fit) on ``inputs`` and compare.

    ONNX Runtime gets the jets in batches of ``batch`` (another batch size than the export's
    example, so a jet axis that is not really dynamic fails here) and PyTorch all at once.

    For models with a vertex fit, ``"pytorch_float32_vs_float64"`` gives the same numbers
    for PyTorch's float32 fit against its float64 fit: the scale of float32 rounding in the
    fit (ill-conditioned fits, e.g. of tracks all from the PV, amplify it), to judge the
    ONNX differences by.

    Returns:
        ``{output: {"max_abs_diff", "q99_abs_diff"}}`` (per jet the largest component, then
        the maximum and 99% quantile over jets); for ``fit_ok`` the fraction of jets that
        differ (those jets are left out of the other outputs' differences); plus ``"jets"``
        and ``"tracks"`` (the input shape).
    """
    import onnxruntime as ort

    names = None
    n = len(inputs["jet"])
    ref = {}
    for dtype in ("float32", "float64"):
        wrapper = _wrapped(checkpoint, dtype)
        names = wrapper.output_names()
        with torch.no_grad():
            out = wrapper(*(torch.from_numpy(inputs[k]) for k in INPUT_NAMES))
        ref[dtype] = [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]
        if "vertex" not in names:
            break
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = [np.concatenate(parts) for parts in zip(*[
        sess.run(names, {k: v[s:s + batch] for k, v in inputs.items()})
        for s in range(0, n, batch)])]
    report: dict = {"jets": n, "tracks": int(inputs["track_valid"].shape[1]),
                    **_differences(names, got, ref["float32"])}
    if "float64" in ref:
        report["pytorch_float32_vs_float64"] = _differences(names, ref["float32"],
                                                            ref["float64"])
    return report


def _wrapped(checkpoint, fit_dtype: str) -> OnnxModel:
    from .train import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    for m in model.modules():
        if hasattr(m, "cfg"):
            m.cfg.fit_dtype = fit_dtype
    return OnnxModel(model).eval()


def _differences(names, got, ref) -> dict:
    # a jet whose fit is usable on one side only (fit_ok: a vertex near the max_displacement
    # cut, or a fit at the edge of convergence) has a zeroed vertex there: it is counted in
    # fit_ok's differing_fraction and left out of the other outputs' differences
    same = np.ones(len(got[0]), bool)
    if "fit_ok" in names:
        i = names.index("fit_ok")
        same = got[i] == ref[i]
    out = {}
    for name, a, b in zip(names, got, ref):
        if a.dtype == bool:
            out[name] = {"differing_fraction": float(np.mean(a != b))}
            continue
        d = np.abs(a.astype(np.float64) - b).reshape(len(a), -1).max(axis=1)[same]
        out[name] = {"max_abs_diff": float(d.max()), "q99_abs_diff": float(np.quantile(d, 0.99))}
    return out


def export_report(checkpoint, out, data, *, jets: int = 1000, opset: int = 17,
                  dynamic_batch: bool = True) -> dict:
    """:func:`export_onnx` with the first 4 jets of ``data`` as example, then
    :func:`check_onnx` on its first ``jets`` jets, with all track slots and with three fewer
    (when the track axis is dynamic); the report is also written to ``<out>.json``."""
    from .data import read_jets

    j, t = read_jets(data, 0, jets)
    inputs = onnx_inputs(j, t)
    report = export_onnx(checkpoint, out, {k: v[:4] for k, v in inputs.items()}, opset=opset,
                         dynamic_batch=dynamic_batch)
    batch = 256 if dynamic_batch else 4
    n = len(j) if dynamic_batch else 4
    full = {k: v[:n] for k, v in inputs.items()}
    report["check"] = [check_onnx(out, checkpoint, full, batch=batch)]
    T = full["track_valid"].shape[1]
    if T > 3:
        fewer = {k: (v[:, :T - 3] if k != "jet" else v) for k, v in full.items()}
        report["check"].append(check_onnx(out, checkpoint, fewer, batch=batch))
    atomic_write(str(out) + ".json", lambda f: f.write_text(json.dumps(report, indent=1)))
    return report

"""The PyTorch fit traced into ONNX (torch.onnx, as ``ndive export`` does) keeps its jet and
track axes dynamic and matches eager PyTorch in ONNX Runtime."""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import vertexfit  # noqa: E402
from vertexfit import toy  # noqa: E402


class _Fit(torch.nn.Module):
    def forward(self, tracks, cov, weights, mask):
        r = vertexfit.fit(tracks, cov, weights, mask=mask)
        return r.vertex, r.vertex_cov, r.converged


def _inputs(n, t, seed):
    d = toy.generate(n, t, seed=seed, variable=True, min_tracks=3, dtype=np.float32)
    w = np.random.default_rng(seed).uniform(0.2, 1.0, d.mask.shape).astype(np.float32)
    return [np.asarray(d.tracks, np.float32), np.asarray(d.cov, np.float32), w, d.mask]


def test_traced_fit_has_dynamic_axes_and_matches_pytorch():
    names = ["tracks", "cov", "weights", "mask"]
    f = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            _Fit(), tuple(torch.from_numpy(a) for a in _inputs(3, 8, 0)), f,
            input_names=names, output_names=["vertex", "vertex_cov", "converged"],
            dynamic_axes={n: {0: "jets", 1: "tracks"} for n in names} | {
                "vertex": {0: "jets"}, "vertex_cov": {0: "jets"}, "converged": {0: "jets"}},
            opset_version=17, dynamo=False)
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    for n, t in ((50, 8), (37, 12)):  # other jet and track counts than the traced ones
        a = _inputs(n, t, n)
        got = sess.run(None, dict(zip(names, a)))
        with torch.no_grad():
            ref = [x.numpy() for x in _Fit()(*(torch.from_numpy(x) for x in a))]
        assert got[0].shape == (n, 3)
        assert ref[2].mean() > 0.9 and np.array_equal(got[2], ref[2])
        sig = np.sqrt(np.diagonal(ref[1], axis1=1, axis2=2))
        assert np.max(np.abs(got[0] - ref[0]) / sig) < 1e-2

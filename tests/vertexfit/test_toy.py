"""Toy generator and resolution tables."""

from __future__ import annotations

import numpy as np
import pytest

import vertexfit as vf
from vertexfit import toy
from vertexfit.resolution import sigmas


def wrap(a):
    return np.pi - np.remainder(np.pi - a, 2 * np.pi)


def test_seeded_reproducibility():
    a = toy.generate(50, 7, seed=3, variable=True)
    b = toy.generate(50, 7, seed=3, variable=True)
    c = toy.generate(50, 7, seed=4, variable=True)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.tracks, c.tracks)
    assert not np.array_equal(a.vertex, c.vertex)


def test_namespace_dtype_shapes(backend):
    t = toy.generate(6, 5, seed=1, xp=backend.xp, dtype=backend.dtype, variable=True)
    for name, shape in [("tracks", (6, 5, 5)), ("cov", (6, 5, 5, 5)), ("vertex", (6, 3)),
                        ("momenta", (6, 5, 3)), ("true_tracks", (6, 5, 5))]:
        backend.check(getattr(t, name), shape)
    assert t.mask.dtype == backend.xp.bool and tuple(t.mask.shape) == (6, 5)
    ref = toy.generate(6, 5, seed=1, variable=True)  # same numbers whatever the namespace
    np.testing.assert_array_equal(backend.to_numpy(t.tracks), ref.tracks)
    np.testing.assert_array_equal(backend.to_numpy(t.mask), ref.mask)


def test_float32(backend32):
    t = toy.generate(4, 3, seed=2, xp=backend32.xp, dtype=backend32.dtype)
    backend32.check(t.tracks, (4, 3, 5))
    backend32.check(t.cov, (4, 3, 5, 5))


def test_truth_is_the_exact_helix_and_kinematics_are_sane():
    t = toy.generate(400, 15, seed=5, displacement=5.0)
    np.testing.assert_allclose(t.true_tracks, vf.perigee(t.vertex, t.momenta), atol=0, rtol=0)
    phi, theta, rho = np.moveaxis(t.momenta, -1, 0)
    pt = vf.K_GEV_PER_T_MM * 2.0 / np.abs(rho)
    eta = -np.log(np.tan(theta / 2))
    assert pt.min() >= 0.5 - 1e-9 and pt.max() <= 50 + 1e-9
    assert np.median(pt) < 2.0  # falling spectrum
    assert np.abs(eta).max() <= 2.5
    # tracks are collimated around the flight direction of the vertex (dR < 0.4)
    L = np.linalg.norm(t.vertex, axis=-1)
    vdir_eta = np.arcsinh(t.vertex[:, 2] / np.hypot(t.vertex[:, 0], t.vertex[:, 1]))
    vdir_phi = np.arctan2(t.vertex[:, 1], t.vertex[:, 0])
    dr = np.hypot(eta - vdir_eta[:, None], wrap(phi - vdir_phi[:, None]))
    assert dr.max() < 0.4
    assert 3.0 < np.median(L) < 4.0  # exponential of mean 5 mm: median 5 ln 2 = 3.47 mm
    assert np.all(np.diagonal(t.cov, axis1=-2, axis2=-1) > 0)
    # prompt option
    p = toy.generate(10, 4, seed=5, displacement=0.0, smear=False)
    np.testing.assert_array_equal(p.vertex, 0.0)
    np.testing.assert_allclose(p.tracks[..., :2], 0.0, atol=1e-12)


def test_pulls_are_standard_normal():
    t = toy.generate(2000, 15, seed=9)
    d = t.tracks - t.true_tracks
    d[..., 2] = wrap(d[..., 2])
    pulls = d / np.sqrt(np.diagonal(t.cov, axis1=-2, axis2=-1))
    pulls = pulls.reshape(-1, 5)  # 30,000 per parameter: sigma(mean) 0.006, sigma(width) 0.004
    np.testing.assert_array_less(np.abs(pulls.mean(0)), 0.03)
    np.testing.assert_array_less(np.abs(pulls.std(0) - 1), 0.03)
    assert np.all(np.abs(t.tracks[..., 2]) <= np.pi)


def test_variable_track_counts_and_padding():
    t = toy.generate(300, 8, seed=2, variable=True, min_tracks=3, fill=np.nan)
    n = t.mask.sum(-1)
    assert n.min() == 3 and n.max() == 8
    # valid tracks first, padded slots hold the fill value
    np.testing.assert_array_equal(t.mask, np.arange(8)[None, :] < n[:, None])
    assert np.all(np.isnan(t.tracks[~t.mask])) and np.all(np.isnan(t.cov[~t.mask]))
    assert np.all(np.isfinite(t.tracks[t.mask])) and np.all(np.isfinite(t.cov[t.mask]))
    with pytest.raises(ValueError, match="min_tracks"):
        toy.generate(3, 4, variable=True, min_tracks=5)


def test_resolution_tables():
    # docs/conventions.md (resolutions of the toy generator) numbers: d0/z0 bins closed on the
    # right, low-pT angular values
    s = sigmas(np.array([0.7, 1.0, 1.5, 5.0, 12.0, 20.0, 100.0]), 0.1)
    np.testing.assert_allclose(s[:, 0], [0.080, 0.080, 0.045, 0.020, 0.014, 0.014, 0.0115])
    np.testing.assert_allclose(s[:, 1], [0.140, 0.140, 0.096, 0.058, 0.055, 0.050, 0.047])
    np.testing.assert_allclose(s[0, 2], 1.5e-3, rtol=0.01)
    theta = 2 * np.arctan(np.exp(-0.1))
    np.testing.assert_allclose(s[0, 3], np.sin(theta) ** 2 * 1.75e-3, rtol=0.01)
    # q/pT: ~1.5 % at low pT in the barrel, a different parametrisation beyond |eta| 1.5
    rho = vf.K_GEV_PER_T_MM * 2.0 / 0.7
    np.testing.assert_allclose(s[0, 4] / rho, 0.34e-3 * np.hypot(0.7, 44), rtol=1e-12)
    e = sigmas(2.0, -2.0)
    np.testing.assert_allclose(e[4] / (vf.K_GEV_PER_T_MM * 2.0 / 2.0),
                               0.41e-3 * np.hypot(2.0, 80.0), rtol=1e-12)
    assert sigmas(2.0, 2.4)[2] > sigmas(2.0, 0.1)[2]  # forward tracks are worse
    assert sigmas(np.ones((4, 3)), np.zeros((4, 3))).shape == (4, 3, 5)
    assert np.all(sigmas(np.geomspace(0.1, 1e3, 50), np.linspace(-3, 3, 50)) > 0)

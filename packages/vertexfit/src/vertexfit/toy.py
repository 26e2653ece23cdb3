"""Seeded toy vertices and tracks from the exact helix, with ATLAS-like resolutions.

For tests, examples and benchmarks. Each "jet" is one displaced vertex (a heavy-flavour
decay) from which ``n_tracks`` charged tracks emerge, collimated around a jet axis:

* jet axis: azimuth uniform, pseudorapidity uniform in ``|eta| < jet_eta_max``;
* vertex: at distance ``L ~ Exponential(mean = displacement)`` [mm] from the origin along the
  jet axis (the b-hadron median decay length in ttbar is ~5 mm; ``displacement=0`` gives
  prompt tracks from the origin);
* tracks: (d eta, d phi) ~ N(0, ``spread``) around the axis, kept within dR < 0.4 and
  |eta| < 2.5; pT from a falling power law ``dN/dpT ~ pT^-pt_power`` on ``pt_range``;
  charge +-1 with equal probability; rho = -q K Bz / pT;
* perigee parameters w.r.t. the origin from :func:`vertexfit.perigee` (exact helix), then
  Gaussian smearing with the diagonal covariance of :func:`vertexfit.resolution.sigmas`
  (the Delphes ATLAS tables), phi re-wrapped to (-pi, pi].

Everything is drawn with NumPy from ``numpy.random.default_rng(seed)`` (same seed, same
numbers, on every backend) and converted at the end to the requested namespace and dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._angle import wrap_phi
from ._perigee import DEFAULT_BZ, covariance_from_sigmas, curvature, perigee
from .resolution import sigmas as resolution_sigmas

__all__ = ["Toy", "generate"]

_MAX_DR = 0.4
_MAX_ETA = 2.5


class Toy(NamedTuple):
    """Toy jets. ``J`` = number of jets, ``T`` = padded number of tracks per jet.

    Attributes:
        tracks: ``(J, T, 5)`` measured (smeared) perigee parameters ``(d0, z0, phi, theta,
            rho)`` w.r.t. the origin [mm, mm, rad, rad, 1/mm].
        cov: ``(J, T, 5, 5)`` their covariance (diagonal) [mm^2, ..., 1/mm^2].
        mask: ``(J, T)`` bool, True for real tracks (valid tracks first).
        vertex: ``(J, 3)`` true vertex [mm].
        momenta: ``(J, T, 3)`` true ``(phi, theta, rho)`` at the vertex.
        true_tracks: ``(J, T, 5)`` noise-free perigee parameters (``tracks`` before smearing).

    Masked slots of ``tracks``, ``cov``, ``momenta`` and ``true_tracks`` hold ``fill``.
    """

    tracks: object
    cov: object
    mask: object
    vertex: object
    momenta: object
    true_tracks: object


def _power_law(rng, size, lo, hi, power):
    """Inverse-CDF sample of dN/dx ~ x^-power on [lo, hi]."""
    u = rng.random(size)
    if abs(power - 1.0) < 1e-12:
        return lo * (hi / lo) ** u
    a = 1.0 - power
    return (lo**a + u * (hi**a - lo**a)) ** (1.0 / a)


def _collimated(rng, shape, spread):
    """(d eta, d phi) ~ N(0, spread) per track, redrawn until inside dR < 0.4."""
    d = rng.normal(0.0, spread, shape + (2,))
    outside = np.hypot(d[..., 0], d[..., 1]) >= _MAX_DR
    while outside.any():  # a handful of redraws for spread ~ 0.1
        d[outside] = rng.normal(0.0, spread, (int(outside.sum()), 2))
        outside = np.hypot(d[..., 0], d[..., 1]) >= _MAX_DR
    return d[..., 0], d[..., 1]


def generate(
    n_jets,
    n_tracks=15,
    *,
    seed=0,
    displacement=5.0,
    bz=DEFAULT_BZ,
    xp=None,
    dtype=None,
    variable=False,
    min_tracks=2,
    smear=True,
    fill=0.0,
    pt_range=(0.5, 50.0),
    pt_power=2.0,
    jet_eta_max=2.0,
    spread=0.1,
):
    """Generate ``n_jets`` toy vertices with ``n_tracks`` tracks each.

    Args:
        n_jets: number of vertices (jets), ``J``.
        n_tracks: tracks per jet ``T`` (the padded length when ``variable``).
        seed: seed of ``numpy.random.default_rng``; the output is a pure function of the
            arguments (except ``xp``/``dtype``, which only convert).
        displacement: mean decay length [mm] of the exponential distribution of the
            vertex's distance from the origin along the jet axis (0: vertices at the origin).
        bz: field [T] along +z (curvature and the rho resolution).
        xp: array namespace of the output (``array_api_compat.torch``, ``jax.numpy``,
            ``array_api_strict``, ...); ``None`` returns NumPy arrays.
        dtype: floating dtype of ``xp`` (default float64); ``mask`` is always boolean.
        variable: draw the number of tracks per jet uniformly in ``[min_tracks, n_tracks]``
            and pad to ``n_tracks`` (``mask`` False, values ``fill``).
        min_tracks: smallest number of tracks when ``variable``.
        smear: if False, ``tracks`` are the noise-free parameters (``cov`` is still given).
        fill: value stored in padded slots (e.g. ``numpy.nan`` to test masking).
        pt_range: ``(lo, hi)`` [GeV] of the pT spectrum.
        pt_power: exponent of the falling spectrum dN/dpT ~ pT^-pt_power.
        jet_eta_max: the jet axis has ``|eta| < jet_eta_max`` (tracks stay within 2.5).
        spread: Gaussian width of the tracks' (eta, phi) around the jet axis (dR < 0.4).

    Returns:
        :class:`Toy` ``(tracks, cov, mask, vertex, momenta, true_tracks)``.
    """
    if int(n_jets) != n_jets or n_jets < 0:
        raise ValueError(f"n_jets must be a non-negative integer, got {n_jets!r}")
    if int(n_tracks) != n_tracks or n_tracks < 1:
        raise ValueError(f"n_tracks must be a positive integer, got {n_tracks!r}")
    if variable and not 1 <= min_tracks <= n_tracks:
        raise ValueError(f"min_tracks must be in [1, n_tracks={n_tracks}], got {min_tracks!r}")
    if displacement < 0:
        raise ValueError(f"displacement must be >= 0, got {displacement!r}")
    J, T = int(n_jets), int(n_tracks)
    rng = np.random.default_rng(seed)

    jet_phi = rng.uniform(-np.pi, np.pi, J)
    jet_eta = rng.uniform(-jet_eta_max, jet_eta_max, J)
    length = rng.exponential(displacement, J) if displacement > 0 else np.zeros(J)
    jet_theta = 2.0 * np.arctan(np.exp(-jet_eta))
    axis = np.stack([np.sin(jet_theta) * np.cos(jet_phi), np.sin(jet_theta) * np.sin(jet_phi),
                     np.cos(jet_theta)], axis=-1)
    vertex = length[:, None] * axis

    deta, dphi = _collimated(rng, (J, T), spread)
    eta = np.clip(jet_eta[:, None] + deta, -_MAX_ETA, _MAX_ETA)
    phi = jet_phi[:, None] + dphi
    phi = wrap_phi(phi)
    theta = 2.0 * np.arctan(np.exp(-eta))
    pt = _power_law(rng, (J, T), pt_range[0], pt_range[1], pt_power)
    charge = rng.choice(np.array([-1.0, 1.0]), (J, T))
    rho = curvature(charge, pt, bz)
    momenta = np.stack([phi, theta, rho], axis=-1)

    true_tracks = perigee(vertex, momenta)
    sig = resolution_sigmas(pt, eta, bz)
    cov = covariance_from_sigmas(sig)
    noise = rng.normal(size=(J, T, 5))
    tracks = true_tracks + sig * noise if smear else true_tracks.copy()
    tracks[..., 2] = wrap_phi(tracks[..., 2])

    if variable:
        n_valid = rng.integers(min_tracks, T + 1, J)
        mask = np.arange(T)[None, :] < n_valid[:, None]
    else:
        mask = np.ones((J, T), dtype=bool)
    pad = ~mask
    for a in (tracks, true_tracks, momenta):
        a[pad] = fill
    cov[pad] = fill

    if xp is None:
        dt = np.float64 if dtype is None else dtype
        return Toy(tracks.astype(dt), cov.astype(dt), mask, vertex.astype(dt),
                   momenta.astype(dt), true_tracks.astype(dt))
    dt = xp.float64 if dtype is None else dtype

    def conv(a, d):
        return xp.asarray(np.ascontiguousarray(a), dtype=d)

    return Toy(conv(tracks, dt), conv(cov, dt), conv(mask, xp.bool), conv(vertex, dt),
               conv(momenta, dt), conv(true_tracks, dt))

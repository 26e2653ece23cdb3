"""Public track-model functions: perigee parameters, curvature, ACTS/ATLAS conversions."""

from __future__ import annotations

import numpy as _np

from . import _xp
from ._jet import Jet, Ops
from ._model import get_model
from ._smallmat import sum_terms, sym_from_array, sym_get

__all__ = [
    "DEFAULT_BZ",
    "K_GEV_PER_T_MM",
    "covariance_from_sigmas",
    "curvature",
    "extrapolate",
    "from_acts",
    "perigee",
    "to_acts",
]

#: Curvature constant: rho [1/mm] = -q K Bz [T] / pT [GeV].
K_GEV_PER_T_MM = 0.299792458e-3
#: Default solenoid field along +z [T].
DEFAULT_BZ = 2.0


def _check_last(name, a, n):
    if a.ndim < 1 or a.shape[-1] != n:
        raise ValueError(f"{name} must have shape (..., {n}), got {tuple(a.shape)}")


def _check_batch(what, *named):
    """Raise if the batch shapes ``(name, shape)`` of several arguments do not broadcast.

    Checked eagerly on shapes only (valid under ``jax.jit``): the backends' own broadcasting
    errors would not say which argument is wrong.
    """
    shapes = []
    for name, shape in named:
        shapes.append(tuple(shape))
        try:
            _np.broadcast_shapes(*shapes)
        except ValueError:
            listing = ", ".join(f"{n} {tuple(s)}" for n, s in named[: len(shapes)])
            raise ValueError(
                f"{name}: batch shape {tuple(shape)} does not broadcast with the other "
                f"arguments of {what} ({listing})"
            ) from None


def curvature(charge, pt, bz=DEFAULT_BZ):
    """Signed transverse curvature rho = -q K Bz / pT [1/mm] of a particle of ``pt`` [GeV].

    A positive particle in Bz > 0 turns clockwise (rho < 0). |rho| = 2e-4 /mm at 3 GeV, 2 T.
    """
    return -charge * (K_GEV_PER_T_MM * bz) / pt


def perigee(vertex, momenta, ref=None, *, model="helix"):
    """Perigee parameters of tracks made at a vertex.

    Args:
        vertex: ``(..., 3)`` production vertex [mm] in the global frame.
        momenta: ``(..., T, 3)`` momentum of each track at the vertex as
            ``(phi, theta, rho)`` [rad, rad, 1/mm]; ``rho`` is the signed curvature.
        ref: ``(..., 3)`` reference point [mm] (default: the origin).
        model: ``"helix"`` (exact) or ``"billoir"`` (the paper's first-order model).

    Returns:
        ``(..., T, 5)`` array ``(d0, z0, phi, theta, rho)`` w.r.t. ``ref`` [mm, mm, rad, rad,
        1/mm], same namespace, dtype and device as the inputs; ``phi`` in (-pi, pi]
        (:func:`vertexfit.wrap_phi`).
    """
    xp = _xp.namespace(vertex, momenta, ref)
    _check_last("vertex", vertex, 3)
    _check_last("momenta", momenta, 3)
    if momenta.ndim < 2:
        raise ValueError(f"momenta must have shape (..., T, 3), got {tuple(momenta.shape)}")
    if ref is not None:
        _check_last("ref", ref, 3)
    _check_batch("perigee", ("vertex", vertex.shape[:-1]), ("momenta", momenta.shape[:-2]),
                 *([] if ref is None else [("ref", ref.shape[:-1])]))
    local = vertex if ref is None else vertex - ref
    x, y, z = (c[..., None] for c in _xp.unstack(xp, local, axis=-1))
    M = Ops(xp)
    out = list(get_model(model)(M, x, y, z, *_xp.unstack(xp, momenta, axis=-1)))
    out[2] = M.wrap(out[2])
    return xp.stack(xp.broadcast_arrays(*out), axis=-1)


def extrapolation_jets(xp, tracks, shift, order):
    """Perigee parameters w.r.t. a point displaced by ``shift`` = new_ref - ref, as jets.

    The track's point of closest approach ``O + (d0 sin phi, -d0 cos phi, z0)`` and its
    momentum there are a production point of the same helix, so the exact model applied to
    it (relative to the new reference point) re-expresses the track: no second formula.
    Variables 0..4 are the input perigee parameters.
    """
    M = Ops(xp)
    d0, z0, phi, theta, rho = (Jet.variable(c, k, order)
                               for k, c in enumerate(_xp.unstack(xp, tracks, axis=-1)))
    sin_phi, cos_phi = M.sincos(phi)
    sx, sy, sz = (c[..., None] for c in _xp.unstack(xp, shift, axis=-1))
    x = d0 * sin_phi - sx
    y = -(d0 * cos_phi) - sy
    z = z0 - sz
    return get_model("helix")(M, x, y, z, phi, theta, rho)


def _transport(xp, jets, cov, n_in):
    """``J V J^T`` for jets holding d(out)/d(in); ``cov`` is ``(..., n_in, n_in)``."""
    V = sym_from_array(xp, cov, n_in)
    n_out = len(jets)
    J = [[o.d(i) if isinstance(o, Jet) else None for i in range(n_in)] for o in jets]
    JV = [[None] * n_in for _ in range(n_out)]
    for r in range(n_out):
        for c in range(n_in):
            terms = [J[r][k] * sym_get(V, k, c) for k in range(n_in) if J[r][k] is not None]
            JV[r][c] = sum_terms(terms)
    rows = []
    for r in range(n_out):
        row = []
        for c in range(n_out):
            terms = [JV[r][k] * J[c][k] for k in range(n_in) if J[c][k] is not None]
            row.append(sum_terms(terms))
        rows.append(xp.stack(xp.broadcast_arrays(*row), axis=-1))
    return xp.stack(xp.broadcast_arrays(*rows), axis=-2)


def _acts_jets(xp, tracks, bz, sign):
    """(d0, z0, phi, theta, x) with d0 -> -d0 and x = sign-dependent curvature <-> q/p map."""
    M = Ops(xp)
    d0, z0, phi, theta, last = (Jet.variable(c, k, 1)
                                for k, c in enumerate(_xp.unstack(xp, tracks, axis=-1)))
    kb = K_GEV_PER_T_MM * bz
    sin_theta, _ = M.sincos(theta)
    if sign > 0:  # rho -> q/p = -rho sin(theta) / (K Bz)
        new_last = -(last * sin_theta) / kb
    else:  # q/p -> rho = -(q/p) K Bz / sin(theta)
        new_last = -(last * kb) / sin_theta
    return (-d0, z0, phi, theta, new_last)


def _convert(tracks, cov, bz, sign):
    xp = _xp.namespace(tracks, cov)
    _check_last("tracks", tracks, 5)
    jets = _acts_jets(xp, tracks, bz, sign)
    out = xp.stack(xp.broadcast_arrays(*[j.v for j in jets]), axis=-1)
    if cov is None:
        return out
    if tuple(cov.shape[-2:]) != (5, 5):
        raise ValueError(f"cov must have shape (..., 5, 5), got {tuple(cov.shape)}")
    return out, _transport(xp, jets, cov, 5)


def to_acts(tracks, cov=None, *, bz=DEFAULT_BZ):
    """Convert perigee parameters to the ACTS/ATLAS convention.

    ``(d0, z0, phi, theta, rho)`` [this package] -> ``(d0, z0, phi, theta, q/p)`` [ACTS/ATLAS:
    mm, mm, rad, rad, e/GeV] with ``d0_ACTS = -d0`` and ``q/p = -rho sin(theta) / (K Bz)``.
    ACTS' sixth parameter (time) is not part of this model and is not returned.

    Args:
        tracks: ``(..., 5)``.
        cov: optional ``(..., 5, 5)`` covariance, transported with the exact Jacobian.
        bz: field along +z [T].

    Returns:
        ``(..., 5)``, or ``((..., 5), (..., 5, 5))`` if ``cov`` is given.
    """
    return _convert(tracks, cov, bz, +1)


def from_acts(tracks, cov=None, *, bz=DEFAULT_BZ):
    """Inverse of :func:`to_acts`: ACTS/ATLAS ``(d0, z0, phi, theta, q/p)`` to this package's."""
    return _convert(tracks, cov, bz, -1)


def covariance_from_sigmas(sigmas, correlation=None):
    """Build a covariance ``(..., n, n)`` from standard deviations ``(..., n)``.

    ``correlation`` (``(..., n, n)``, optional) gives the correlation matrix; by default the
    parameters are uncorrelated (diagonal covariance, as in the NDIVE paper's data).
    """
    xp = _xp.namespace(sigmas, correlation)
    outer = sigmas[..., :, None] * sigmas[..., None, :]
    if correlation is None:
        n = sigmas.shape[-1]
        eye = xp.eye(n, dtype=sigmas.dtype, device=_xp.device(sigmas))
        return outer * eye
    return outer * correlation


def extrapolate(tracks, cov, new_ref, *, ref=None):
    """Re-express tracks' perigee parameters with respect to a new reference point.

    Closed form (no scan): the exact helix through the track's point of closest approach is
    re-evaluated relative to ``new_ref``; the covariance is transported with the analytic
    Jacobian, ``J V J^T``. A round trip O -> P -> O returns the input to rounding error.

    Args:
        tracks: ``(..., T, 5)`` perigee parameters w.r.t. ``ref``.
        cov: ``(..., T, 5, 5)`` their covariance, or ``None`` (then ``None`` is returned).
        new_ref: ``(..., 3)`` the new reference point [mm] (e.g. a fitted vertex).
        ref: ``(..., 3)`` the current reference point (default: the origin).

    Returns:
        ``(tracks, cov)`` w.r.t. ``new_ref``, same shapes, namespace and dtype.
    """
    xp = _xp.namespace(tracks, cov, new_ref, ref)
    _check_last("tracks", tracks, 5)
    _check_last("new_ref", new_ref, 3)
    if tracks.ndim < 2:
        raise ValueError(f"tracks must have shape (..., T, 5), got {tuple(tracks.shape)}")
    if ref is not None:
        _check_last("ref", ref, 3)
    if cov is not None:
        if cov.ndim < 3 or tuple(cov.shape[-2:]) != (5, 5):
            raise ValueError(f"cov must have shape (..., T, 5, 5), got {tuple(cov.shape)}")
        if tuple(cov.shape[:-2]) != tuple(tracks.shape[:-1]):
            raise ValueError(f"cov must have shape {tuple(tracks.shape[:-1]) + (5, 5)} to "
                             f"match tracks {tuple(tracks.shape)}, got {tuple(cov.shape)}")
    _check_batch("extrapolate", ("tracks", tracks.shape[:-2]), ("new_ref", new_ref.shape[:-1]),
                 *([] if ref is None else [("ref", ref.shape[:-1])]))
    shift = new_ref if ref is None else new_ref - ref
    jets = list(extrapolation_jets(xp, tracks, shift, order=1))
    jets[2] = Ops(xp).wrap(jets[2])
    out = xp.stack(xp.broadcast_arrays(*[j.v for j in jets]), axis=-1)
    if cov is None:
        return out, None
    if tuple(cov.shape[-2:]) != (5, 5):
        raise ValueError(f"cov must have shape (..., T, 5, 5), got {tuple(cov.shape)}")
    return out, _transport(xp, jets, cov, 5)

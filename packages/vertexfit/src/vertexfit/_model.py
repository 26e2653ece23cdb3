"""The track models h(v, p): perigee parameters of a track made at a vertex. Written once.

Both functions take the vertex position relative to the reference point ``(x, y, z)`` [mm]
and the momentum at the vertex ``(phi, theta, rho)`` [rad, rad, 1/mm], and return the
perigee parameters ``(d0, z0, phi, theta, rho)`` with respect to the reference point, in the
convention of ``docs/conventions.md`` (d0 > 0 when the PCA is at ``d0 * (sin phi, -cos phi)``).

``M`` is an :class:`vertexfit._jet.Ops` namespace: on plain arrays the functions return
values, on :class:`vertexfit._jet.Jet` inputs they also return exact derivatives.

Derivation of the exact, rho -> 0 stable helix form (see docs/conventions.md):
with ``Q = x cos(phi) + y sin(phi)`` (distance along the track direction) and
``R = y cos(phi) - x sin(phi)``, the centre-based expressions
``d0 = 1/rho - sign(rho) |c|`` and ``phi_pca = atan2(-s c_x, s c_y)`` become, after
multiplying through by rho and rationalising,

* ``N = sqrt((1 + rho R)^2 + (rho Q)^2) = sqrt(1 + rho t)`` with
  ``t = 2 R + rho (x^2 + y^2)`` (``N = |rho| |c|``, and ``Q^2 + R^2 = x^2 + y^2``),
* ``d0 = (1 - N) / rho = -t / (1 + N)``,
* the turning angle from the vertex to the PCA is ``-2 atan(rho k)`` with
  ``k = Q / (N + 1 + rho R)`` (half-angle form of ``atan2(-rho Q, 1 + rho R)``), so the
  signed transverse arc length is ``L = -2 k atanc(rho k)`` with ``atanc(w) = atan(w) / w``,
  ``z0 = z + L cot(theta)`` and ``phi_pca = phi + rho L``.

The models return ``phi_pca`` unwrapped (cheaper, and smooth for derivatives); callers wrap
it (:func:`vertexfit.perigee`) or wrap residuals.

No expression divides by rho, so the formulas are exact and accurate for every rho,
including exactly zero (straight line: ``d0 = -R``, ``z0 = z - Q cot(theta)``).
"""

from __future__ import annotations

__all__ = ["MODELS", "billoir", "helix"]


def helix(M, x, y, z, phi, theta, rho):
    """Exact helix perigee of a track made at (x, y, z) with momentum (phi, theta, rho)."""
    s, c = M.sincos(phi)
    Q = x * c + y * s
    R = y * c - x * s
    # Q^2 + R^2 = x^2 + y^2: a per-vertex quantity, cheaper than per track
    t = 2.0 * R + rho * (x * x + y * y)
    N = M.sqrt(1.0 + rho * t)
    d0 = -t / (1.0 + N)
    k = Q / (N + 1.0 + rho * R)
    arc = -2.0 * k * M.atanc(rho * k)
    z0 = z + arc * M.cot(theta)
    # the turning angle from the vertex to the PCA is rho * arc: no atan2 needed
    phi_pca = phi + rho * arc
    return d0, z0, phi_pca, theta, rho


def billoir(M, x, y, z, phi, theta, rho):
    """The paper's first-order (Billoir-Qian) model, App. A of arXiv:2310.12804.

    Agrees with :func:`helix` up to terms of order rho^2 (tested).
    """
    s, c = M.sincos(phi)
    Q = x * c + y * s
    R = y * c - x * s
    d0 = -R - Q * Q * rho * 0.5
    z0 = z - Q * (1.0 - R * rho) * M.cot(theta)
    phi_pca = phi - Q * rho
    return d0, z0, phi_pca, theta, rho


MODELS = {"helix": helix, "billoir": billoir}


def get_model(name: str):
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}") from None

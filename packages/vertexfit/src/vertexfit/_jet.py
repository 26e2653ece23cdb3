"""Truncated Taylor arithmetic ("jets") over array-API arrays.

A track model is written once as ordinary arithmetic (see ``_model.py``). Evaluated on plain
arrays it gives values; evaluated on :class:`Jet` objects it also gives the exact first
derivatives (order 1: the Jacobian used by every fit iteration) and second derivatives
(order 2: the exact Hessian used by the implicit gradients). Derivatives are stored sparsely
by variable index, so structural zeros (e.g. d(d0)/d(theta)) cost nothing; a derivative that
is exactly one is stored as the Python float ``1.0`` and never multiplied.

This is forward-mode automatic differentiation restricted to the handful of elementary
functions the helix needs; it works identically on NumPy, JAX, PyTorch and any array-API
namespace, and is itself differentiable by JAX/PyTorch autodiff (third derivatives for
free where a framework asks for them).
"""

from __future__ import annotations

from . import _speed
from ._angle import wrap_phi
from ._smallmat import mul as _mul

__all__ = ["Jet", "Ops"]


def _acc(d, k, term):
    d[k] = term if k not in d else d[k] + term


class Jet:
    """Value ``v`` with sparse gradient ``g[i]`` and (order 2) Hessian ``h[(i, j)]``, i <= j."""

    __slots__ = ("g", "h", "sincos", "v")

    def __init__(self, v, g, h=None):
        self.v = v
        self.g = g
        self.h = h
        self.sincos = None  # (sin v, cos v) when known in advance (see :meth:`variable`)

    @classmethod
    def variable(cls, value, index: int, order: int, sincos=None):
        """An independent variable with d(value)/d(var index) = 1.

        ``sincos``: ``(sin(value), cos(value))`` if the caller has them already;
        :meth:`Ops.sincos` then uses them instead of computing them again.
        """
        jet = cls(value, {index: 1.0}, {} if order >= 2 else None)
        jet.sincos = sincos
        return jet

    # --- construction helpers -------------------------------------------------------------
    def _scaled(self, s, v):
        g = {i: _mul(s, gi) for i, gi in self.g.items()}
        h = None if self.h is None else {k: _mul(s, hk) for k, hk in self.h.items()}
        return Jet(v, g, h)

    def unary(self, f0, f1, f2):
        """Chain rule for a scalar function with value ``f0``, derivatives ``f1``, ``f2``."""
        g = {i: _mul(f1, gi) for i, gi in self.g.items()}
        if self.h is None:
            return Jet(f0, g, None)
        h = {k: _mul(f1, hk) for k, hk in self.h.items()}
        keys = sorted(self.g)
        for n, i in enumerate(keys):
            for j in keys[n:]:
                _acc(h, (i, j), _mul(f2, _mul(self.g[i], self.g[j])))
        return Jet(f0, g, h)

    @staticmethod
    def binary(a, b, f0, fa, fb, faa, fab, fbb):
        """Chain rule for f(a, b) with partial derivatives (faa etc. unused at order 1)."""
        g = {}
        for i, gi in a.g.items():
            _acc(g, i, _mul(fa, gi))
        for i, gi in b.g.items():
            _acc(g, i, _mul(fb, gi))
        if a.h is None or b.h is None:
            return Jet(f0, g, None)
        h = {}
        for k, hk in a.h.items():
            _acc(h, k, _mul(fa, hk))
        for k, hk in b.h.items():
            _acc(h, k, _mul(fb, hk))
        keys = sorted(set(a.g) | set(b.g))
        for n, i in enumerate(keys):
            for j in keys[n:]:
                ai, aj, bi, bj = a.g.get(i), a.g.get(j), b.g.get(i), b.g.get(j)
                if ai is not None and aj is not None:
                    _acc(h, (i, j), _mul(faa, _mul(ai, aj)))
                if bi is not None and bj is not None:
                    _acc(h, (i, j), _mul(fbb, _mul(bi, bj)))
                if ai is not None and bj is not None:
                    _acc(h, (i, j), _mul(fab, _mul(ai, bj)))
                if bi is not None and aj is not None:  # for i == j this doubles, as it must
                    _acc(h, (i, j), _mul(fab, _mul(bi, aj)))
        return Jet(f0, g, h)

    # --- arithmetic -----------------------------------------------------------------------
    def __neg__(self):
        return self._scaled(-1.0, -self.v)

    def __add__(self, other):
        if not isinstance(other, Jet):
            return Jet(self.v + other, self.g, self.h)
        g = dict(self.g)
        for i, gi in other.g.items():
            _acc(g, i, gi)
        h = None
        if self.h is not None and other.h is not None:
            h = dict(self.h)
            for k, hk in other.h.items():
                _acc(h, k, hk)
        return Jet(self.v + other.v, g, h)

    __radd__ = __add__

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        if not isinstance(other, Jet):
            return self._scaled(other, self.v * other)
        a, b = self, other
        g = {}
        for i, gi in a.g.items():
            _acc(g, i, _mul(gi, b.v))
        for i, gi in b.g.items():
            _acc(g, i, _mul(gi, a.v))
        if a.h is None or b.h is None:
            return Jet(a.v * b.v, g, None)
        h = {}
        for k, hk in a.h.items():
            _acc(h, k, _mul(hk, b.v))
        for k, hk in b.h.items():
            _acc(h, k, _mul(hk, a.v))
        keys = sorted(set(a.g) | set(b.g))
        for n, i in enumerate(keys):
            for j in keys[n:]:
                ai, aj, bi, bj = a.g.get(i), a.g.get(j), b.g.get(i), b.g.get(j)
                if ai is not None and bj is not None:
                    _acc(h, (i, j), _mul(ai, bj))
                if aj is not None and bi is not None:
                    _acc(h, (i, j), _mul(aj, bi))
        return Jet(a.v * b.v, g, h)

    __rmul__ = __mul__

    def reciprocal(self):
        r = 1.0 / self.v
        r2 = r * r
        return self.unary(r, -r2, None if self.h is None else 2.0 * r2 * r)

    def __truediv__(self, other):
        if not isinstance(other, Jet):
            return self._scaled(1.0 / other, self.v / other)
        return self * other.reciprocal()

    def __rtruediv__(self, other):
        return self.reciprocal() * other

    # --- read-out -------------------------------------------------------------------------
    def d(self, i):
        """First derivative by variable ``i`` (``None`` if structurally zero)."""
        return self.g.get(i)

    def d2(self, i, j):
        """Second derivative by variables ``i`` and ``j`` (``None`` if structurally zero)."""
        return self.h.get((i, j) if i <= j else (j, i))


# Taylor coefficients of atan(w)/w = sum_n (-1)^n w^(2n) / (2n + 1), used for |w| < _SERIES_W.
# With |w| < 0.02 the first omitted term is < 1e-18 relative; above it the closed forms lose at
# most ~1e-12 relative to cancellation in float64.
_SERIES_W = 0.02
_NTERMS = 6


def _atanc_series(w2, order):
    """atan(w)/w, its first derivative divided by w, and (order 2) its second derivative."""
    f0 = f1w = f2 = 0.0
    for n in reversed(range(_NTERMS)):
        c = (-1.0) ** n / (2 * n + 1)
        f0 = f0 * w2 + c
        if n >= 1 and order >= 1:
            f1w = f1w * w2 + c * 2 * n
        if n >= 1 and order >= 2:
            f2 = f2 * w2 + c * 2 * n * (2 * n - 1)
    return f0, f1w, f2


class Ops:
    """Elementary functions that accept arrays of namespace ``xp`` or :class:`Jet` objects."""

    def __init__(self, xp):
        self.xp = xp

    def sincos(self, a):
        """``(sin(a), cos(a))`` sharing one evaluation of each transcendental (or the pair a
        variable carries, see :meth:`Jet.variable`)."""
        xp = self.xp
        v = a.v if isinstance(a, Jet) else a
        if isinstance(a, Jet) and a.sincos is not None:
            s, c = a.sincos
        else:
            # barrier: computed once, not re-fused into every consumer by XLA
            s, c = _speed.barrier(xp, _speed.sincos(xp, v))
        if not isinstance(a, Jet):
            return s, c
        order2 = a.h is not None
        return a.unary(s, c, -s if order2 else None), a.unary(c, -s, -c if order2 else None)

    def cot(self, a):
        """cot(a) = 1/tan(a): one transcendental; derivatives -(1 + cot^2), 2 cot (1 + cot^2)."""
        xp = self.xp
        ct = _speed.cot(xp, a.v if isinstance(a, Jet) else a)
        if not isinstance(a, Jet):
            return ct
        f1 = -(1.0 + ct * ct)
        return a.unary(ct, f1, None if a.h is None else -2.0 * ct * f1)

    def sqrt(self, a):
        xp = self.xp
        if not isinstance(a, Jet):
            return xp.sqrt(a)
        r = xp.sqrt(a.v)
        f1 = 0.5 / r
        return a.unary(r, f1, None if a.h is None else -0.5 * f1 / a.v)

    def atan2(self, y, x):
        """atan2(y, x) in (-pi, pi]; derivatives x/r^2 (by y) and -y/r^2 (by x)."""
        xp = self.xp
        if not isinstance(y, Jet) and not isinstance(x, Jet):
            return xp.atan2(y, x)
        yv = y.v if isinstance(y, Jet) else y
        xv = x.v if isinstance(x, Jet) else x
        y = y if isinstance(y, Jet) else Jet(y, {}, {})
        x = x if isinstance(x, Jet) else Jet(x, {}, {})
        r2 = xv * xv + yv * yv
        f0 = xp.atan2(yv, xv)
        fy, fx = xv / r2, -yv / r2
        if y.h is None or x.h is None:
            return Jet.binary(y, x, f0, fy, fx, None, None, None)
        r4 = r2 * r2
        fyy = -2.0 * xv * yv / r4
        return Jet.binary(y, x, f0, fy, fx, fyy, (yv * yv - xv * xv) / r4, -fyy)

    def atanc(self, a):
        """atan(w)/w, finite and accurate (with its derivatives) for every w including 0."""
        xp = self.xp
        w = a.v if isinstance(a, Jet) else a
        small = xp.abs(w) < _SERIES_W
        # double where: the unused branch never sees w = 0, so neither value nor gradient is
        # NaN; the branches are then blended arithmetically (cheaper than more wheres)
        ws = xp.where(small, xp.ones_like(w), w)
        sm = xp.astype(small, w.dtype)
        order = 0 if not isinstance(a, Jet) else (1 if a.h is None else 2)
        s0, s1w, s2 = _atanc_series(w * w, order)
        b0 = _speed.atan(xp, ws) / ws
        f0 = b0 + sm * (s0 - b0)
        if order == 0:
            return _speed.barrier(xp, f0)
        q = 1.0 / (1.0 + ws * ws)
        b1 = (q - b0) / ws
        f1 = b1 + sm * (s1w * w - b1)
        f2 = None if order == 1 else (lambda b2: b2 + sm * (s2 - b2))(-2.0 * q * q - 2.0 * b1 / ws)
        # barrier: the series and both branches once, not once per consumer (XLA would
        # re-fuse them into every fusion that reads a derivative)
        return a.unary(*_speed.barrier(xp, (f0, f1, f2)))

    def wrap(self, a):
        """:func:`wrap_phi` of an angle or a jet; the derivative is one (a constant shift)."""
        if not isinstance(a, Jet):
            return wrap_phi(a)
        return Jet(wrap_phi(a.v), a.g, a.h)


"""Butcher tableaus, explicit and implicit: frozen, validated data, the one source of truth for every RK method."""

from dataclasses import dataclass, field

import numpy as np

_TOL = 1e-12


def _close(a, b, scale=1.0):
    return abs(a - b) <= _TOL * max(1.0, abs(scale))


def _sparse(row):
    """Indices and values of the non-zero entries of `row`: zeros cost nothing in a fused op."""
    idx = tuple(j for j, v in enumerate(row) if v != 0.0)
    return idx, [float(row[j]) for j in idx]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method in standard form.

    ``c``: the s nodes; ``a``: s rows, row i holding the i coefficients of the stages before
    it; ``b``: the s solution weights; ``e``: error weights ``b - b_hat`` (adaptive methods);
    ``dense``: s rows of polynomial coefficients, ``P_j(x) = sum_d dense[j][d] * x**(d + 1)``,
    so that ``y(t0 + x*dt) = y0 + dt * sum_j P_j(x) k_j`` is the method's continuous extension.

    Construction checks the consistency conditions: rows of ``a`` sum to ``c``, ``b`` sums to 1,
    ``e`` sums to 0, and the dense output ends on the solution (``P_j(1) = b_j``).
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    e: tuple[float, ...] | None = None
    dense: tuple[tuple[float, ...], ...] | None = None
    # derived, sparse forms used by the solver loop
    stage_terms: tuple = field(init=False, repr=False, compare=False)
    b_terms: tuple = field(init=False, repr=False, compare=False)
    e_terms: tuple = field(init=False, repr=False, compare=False)
    dense_flat: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        s = len(self.c)
        if s == 0 or self.c[0] != 0.0:
            raise ValueError("tableau: the first node c[0] must be 0")
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError("tableau: a must have s rows, row i holding i coefficients")
        for i, row in enumerate(self.a):
            if not _close(sum(row), self.c[i]):
                raise ValueError("tableau: row %d of a sums to %r, not c[%d] = %r" % (i, sum(row), i, self.c[i]))
        if len(self.b) != s or not _close(sum(self.b), 1.0):
            raise ValueError("tableau: b must have s entries summing to 1, got sum %r" % sum(self.b))
        if self.e is not None and (len(self.e) != s or not _close(sum(self.e), 0.0)):
            raise ValueError("tableau: e must have s entries summing to 0, got sum %r" % sum(self.e))
        if self.dense is not None:
            if len(self.dense) != s or len({len(row) for row in self.dense}) != 1:
                raise ValueError("tableau: dense must have s rows of equal length")
            for j, row in enumerate(self.dense):
                if not _close(sum(row), self.b[j], sum(abs(v) for v in row)):
                    raise ValueError(
                        "tableau: dense output of stage %d ends at %r, not b[%d] = %r" % (j, sum(row), j, self.b[j])
                    )
        object.__setattr__(self, "stage_terms", tuple(_sparse(row) for row in self.a))
        object.__setattr__(self, "b_terms", _sparse(self.b))
        object.__setattr__(self, "e_terms", None if self.e is None else _sparse(self.e))
        object.__setattr__(
            self, "dense_flat", None if self.dense is None else [float(v) for row in self.dense for v in row]
        )

    @property
    def stages(self):
        return len(self.c)

    @property
    def fsal(self):
        """First same as last: the last stage is evaluated at the solution itself."""
        return self.c[-1] == 1.0 and self.b[-1] == 0.0 and tuple(self.a[-1]) == tuple(self.b[:-1])


@dataclass(frozen=True)
class ImplicitTableau:
    """A Runge-Kutta method with a full s x s matrix ``a`` (rows of s entries), nodes ``c``
    and weights ``b``. Construction checks that rows of ``a`` sum to ``c`` and ``b`` sums to 1,
    that only the first stage may be explicit (a zero row, c = 0) and that the implicit block
    of ``a`` is invertible; it derives the weights of the solution from the stage increments."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    explicit_first: bool = field(init=False, repr=False, compare=False)
    implicit: tuple = field(init=False, repr=False, compare=False)  # indices of the implicit stages
    a_implicit: tuple = field(init=False, repr=False, compare=False)  # a[I][I]
    a_explicit: tuple = field(init=False, repr=False, compare=False)  # a[I][0] (explicit first stage)
    d: tuple = field(init=False, repr=False, compare=False)  # y1 = y0 + dt e f0 + sum d_i Z_i
    e: float = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        s = len(self.c)
        if s == 0 or len(self.a) != s or any(len(row) != s for row in self.a) or len(self.b) != s:
            raise ValueError("implicit tableau: c, b and the rows of a must all have s entries")
        for i, row in enumerate(self.a):
            if not _close(sum(row), self.c[i], sum(abs(v) for v in row)):
                raise ValueError(
                    "implicit tableau: row %d of a sums to %r, not c[%d] = %r" % (i, sum(row), i, self.c[i])
                )
        if not _close(sum(self.b), 1.0):
            raise ValueError("implicit tableau: b must sum to 1, got %r" % sum(self.b))
        zero_rows = [i for i, row in enumerate(self.a) if not any(row)]
        if zero_rows not in ([], [0]):
            raise ValueError("implicit tableau: only the first stage may be explicit (a zero row of a)")
        explicit_first = zero_rows == [0]
        implicit = tuple(range(1, s) if explicit_first else range(s))
        a = np.array(self.a, dtype=np.float64)
        a_ii = a[np.ix_(implicit, implicit)]
        if abs(np.linalg.det(a_ii)) < _TOL:
            raise ValueError("implicit tableau: the block of a over the implicit stages must be invertible")
        if tuple(self.b) == tuple(self.a[-1]):  # stiffly accurate: y1 is the last stage, exactly
            d = np.eye(len(implicit))[-1]
        else:
            d = np.linalg.solve(a_ii.T, np.array(self.b, dtype=np.float64)[list(implicit)])
        a_i0 = a[list(implicit), 0] if explicit_first else np.zeros(len(implicit))
        e = (self.b[0] - float(d @ a_i0)) if explicit_first else 0.0
        object.__setattr__(self, "explicit_first", explicit_first)
        object.__setattr__(self, "implicit", implicit)
        object.__setattr__(self, "a_implicit", tuple(tuple(float(v) for v in row) for row in a_ii))
        object.__setattr__(self, "a_explicit", tuple(float(v) for v in a_i0))
        object.__setattr__(self, "d", tuple(float(v) for v in d))
        object.__setattr__(self, "e", float(e))

    @property
    def stages(self):
        return len(self.c)


# Basis of the quartic fitted through y0, y1, y(1/2), f0 and f1 (torchdiffeq's interp_fit),
# as coefficients of x, x^2, x^3, x^4 multiplying (y1 - y0), (y_mid - y0), dt*f0 and dt*f1.
_QUARTIC_Y1 = (0.0, -5.0, 14.0, -8.0)
_QUARTIC_YMID = (0.0, 16.0, -32.0, 16.0)
_QUARTIC_F0 = (1.0, -4.0, 5.0, -2.0)
_QUARTIC_F1 = (0.0, 1.0, -3.0, 2.0)


def quartic_dense(b, mid):
    """Dense output of a method from the weights `mid` of its midpoint value y(t0 + dt/2).

    It is the quartic through y0, y1, y_mid, f0 = k_0 and f1 = k_last (the stage at the end of
    the step), written as polynomials in x multiplying each stage.
    """
    s = len(b)
    rows = []
    for j in range(s):
        row = [b[j] * p + mid[j] * q for p, q in zip(_QUARTIC_Y1, _QUARTIC_YMID)]
        if j == 0:
            row = [r + p for r, p in zip(row, _QUARTIC_F0)]
        if j == s - 1:
            row = [r + p for r, p in zip(row, _QUARTIC_F1)]
        rows.append(tuple(row))
    return tuple(rows)


def linear_dense(b):
    """Linear interpolation between y0 and y1: y0 + x * dt * sum_j b_j k_j."""
    return tuple((float(bj),) for bj in b)


# Cubic Hermite through y0, y1, f0 = k_0 and an extra f1 = f(t1, y1): coefficients of
# x, x^2, x^3 multiplying (y1 - y0), dt*f0 and dt*f1.
_HERMITE_Y1 = (0.0, 3.0, -2.0)
_HERMITE_F0 = (1.0, -2.0, 1.0)
_HERMITE_F1 = (0.0, -1.0, 1.0)


def hermite_dense_flat(b):
    """Flat polynomial rows for the stages followed by one row for f(t1, y1)."""
    flat = []
    for j, bj in enumerate(b):
        row = [bj * p for p in _HERMITE_Y1]
        if j == 0:
            row = [r + p for r, p in zip(row, _HERMITE_F0)]
        flat.extend(row)
    flat.extend(_HERMITE_F1)
    return flat

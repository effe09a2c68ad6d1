"""sdeint's frozen, validated tableaus: Roessler's (2010) SRI and SRA schemes (srk) and the
Butcher tableaus of the Runge-Kutta methods whose stages weigh drift and diffusion alike.

Roessler, "Runge-Kutta methods for the strong approximation of solutions of stochastic
differential equations", SIAM J. Numer. Anal. 48(3), 2010.
"""

from dataclasses import dataclass, field

from ..solvers.tableau import ButcherTableau

_TOL = 1e-12

Rows = tuple[tuple[float, ...], ...]


def _dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def _times(rows, v):
    """The lower-triangular matrix `rows` (row i holds i entries) times the vector v."""
    return tuple(_dot(row, v) for row in rows)


def _squared(v):
    return tuple(x * x for x in v)


def _check_shape(name, stages, vectors, matrices):
    if any(len(v) != stages for v in vectors) or any(
        len(rows) != stages or any(len(row) != i for i, row in enumerate(rows)) for rows in matrices
    ):
        raise ValueError(
            "%s tableau: every vector needs one entry per stage and every matrix s rows, row i holding i entries" % name
        )


def _check_conditions(name, conditions):
    """Each (what, value, required) must hold to rounding."""
    for what, value, required in conditions:
        if abs(value - required) > _TOL:
            raise ValueError("%s tableau: %s is %r, not %r" % (name, what, value, required))


@dataclass(frozen=True)
class SRITableau:
    """Roessler's (2010) stochastic Runge-Kutta method for Ito SDEs with scalar noise (and,
    coordinate by coordinate, diagonal noise), with I_k = W, I_(k,0) = U = int (W_u - W_t0) du,
    I_(k,k) = (I_k^2 - h) / 2 and I_(k,k,k) = (I_k^3 - 3 h I_k) / 6 over the step:

        H0_i = y + sum_j a0_ij f_j h + sum_j b0_ij g_j I_(k,0) / h
        H1_i = y + sum_j a1_ij f_j h + sum_j b1_ij g_j sqrt(h)
        y1 = y + sum_i alpha_i f_i h
               + sum_i (beta1_i I_k + beta2_i I_(k,k) / sqrt(h) + beta3_i I_(k,0) / h + beta4_i I_(k,k,k) / h) g_i

    with f_i = f(t0 + c0_i h, H0_i) and g_i = g(t0 + c1_i h, H1_i). Construction checks that the
    rows of a0 and a1 sum to c0 and c1 and the paper's conditions for strong order 1.5.
    """

    c0: tuple[float, ...]
    c1: tuple[float, ...]
    a0: Rows
    a1: Rows
    b0: Rows
    b1: Rows
    alpha: tuple[float, ...]
    beta1: tuple[float, ...]
    beta2: tuple[float, ...]
    beta3: tuple[float, ...]
    beta4: tuple[float, ...]
    # stage i's drift is evaluated only where alpha_i or a later row of a0 / a1 uses it
    drift_needed: tuple[bool, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        s = len(self.c0)
        vectors = (self.c1, self.alpha, self.beta1, self.beta2, self.beta3, self.beta4)
        _check_shape("SRI", s, vectors, (self.a0, self.a1, self.b0, self.b1))
        e = (1.0,) * s
        b0e, b1e = _times(self.b0, e), _times(self.b1, e)
        conditions = [
            ("the sum of row %d of a%d" % (i, k), sum(a[i]), c[i])
            for k, a, c in ((0, self.a0, self.c0), (1, self.a1, self.c1))
            for i in range(s)
        ]
        conditions += [
            ("alpha . e", _dot(self.alpha, e), 1.0),
            ("alpha . c0", _dot(self.alpha, self.c0), 0.5),
            ("alpha . (b0 e)", _dot(self.alpha, b0e), 1.0),
            ("alpha . (b0 e)^2", _dot(self.alpha, _squared(b0e)), 1.5),
        ]
        # beta1 .. beta4 against each vector: the right-hand sides of the order conditions
        required = {
            "e": (e, (1.0, 0.0, 0.0, 0.0)),
            "(b1 e)": (b1e, (0.0, 1.0, 0.0, 0.0)),
            "c1": (self.c1, (1.0, 0.0, -1.0, 0.0)),
            "(b1 e)^2": (_squared(b1e), (1.0, 0.0, -1.0, 2.0)),
            "b1 (b1 e)": (_times(self.b1, b1e), (0.0, 0.0, 0.0, 1.0)),
        }
        betas = (self.beta1, self.beta2, self.beta3, self.beta4)
        for what, (v, rhs) in required.items():
            conditions += [
                ("beta%d . %s" % (k + 1, what), _dot(beta, v), r) for k, (beta, r) in enumerate(zip(betas, rhs))
            ]
        a1b0e = _times(self.a1, b0e)
        mixed = 0.5 * _dot(self.beta1, a1b0e) + _dot(self.beta3, a1b0e) / 3
        _check_conditions("SRI", conditions + [("beta1 . a1 (b0 e) / 2 + beta3 . a1 (b0 e) / 3", mixed, 0.0)])
        needed = tuple(
            self.alpha[i] != 0 or any(self.a0[k][i] != 0 or self.a1[k][i] != 0 for k in range(i + 1, s))
            for i in range(s)
        )
        object.__setattr__(self, "drift_needed", needed)

    @property
    def stages(self) -> int:
        return len(self.c0)


@dataclass(frozen=True)
class SRATableau:
    """Roessler's (2010) stochastic Runge-Kutta method for Ito SDEs with additive noise (g
    independent of the state), I_k = W and I_(k,0) = U as for SRITableau:

        H0_i = y + sum_j a0_ij f_j h + sum_j b0_ij g(t0 + c1_j h) I_(k,0) / h
        y1 = y + sum_i alpha_i f_i h + sum_i g(t0 + c1_i h) (beta1_i I_k + beta2_i I_(k,0) / h)

    with f_i = f(t0 + c0_i h, H0_i). Construction checks that the rows of a0 sum to c0 and the
    paper's conditions for strong order 1.5.
    """

    c0: tuple[float, ...]
    c1: tuple[float, ...]
    a0: Rows
    b0: Rows
    alpha: tuple[float, ...]
    beta1: tuple[float, ...]
    beta2: tuple[float, ...]

    def __post_init__(self):
        s = len(self.c0)
        _check_shape("SRA", s, (self.c1, self.alpha, self.beta1, self.beta2), (self.a0, self.b0))
        e = (1.0,) * s
        b0e = _times(self.b0, e)
        conditions = [("the sum of row %d of a0" % i, sum(self.a0[i]), self.c0[i]) for i in range(s)]
        conditions += [
            ("alpha . e", _dot(self.alpha, e), 1.0),
            ("beta1 . e", _dot(self.beta1, e), 1.0),
            ("beta2 . e", _dot(self.beta2, e), 0.0),
            ("alpha . (b0 e)", _dot(self.alpha, b0e), 1.0),
            ("alpha . c0", _dot(self.alpha, self.c0), 0.5),
            ("alpha . (b0 e)^2", _dot(self.alpha, _squared(b0e)), 1.5),
            ("beta1 . c1", _dot(self.beta1, self.c1), 1.0),
            ("beta2 . c1", _dot(self.beta2, self.c1), -1.0),
        ]
        _check_conditions("SRA", conditions)

    @property
    def stages(self) -> int:
        return len(self.c0)


# Roessler (2010)'s SRI2 for diagonal noise ("SRID2" in torchsde, ODE order 3) and SRA1, as torchsde 0.2.6 has them.
SRID2 = SRITableau(
    c0=(0, 1, 1 / 2, 0),
    c1=(0, 1 / 4, 1, 1 / 4),
    a0=((), (1,), (1 / 4, 1 / 4), (0, 0, 0)),
    a1=((), (1 / 4,), (1, 0), (0, 0, 1 / 4)),
    b0=((), (0,), (1, 1 / 2), (0, 0, 0)),
    b1=((), (-1 / 2,), (1, 0), (2, -1, 1 / 2)),
    alpha=(1 / 6, 1 / 6, 2 / 3, 0),
    beta1=(-1, 4 / 3, 2 / 3, 0),
    beta2=(1, -4 / 3, 1 / 3, 0),
    beta3=(2, -4 / 3, -2 / 3, 0),
    beta4=(-2, 5 / 3, -2 / 3, 1),
)
SRA1 = SRATableau(
    c0=(0, 3 / 4),
    c1=(1, 0),
    a0=((), (3 / 4,)),
    b0=((), (3 / 2,)),
    alpha=(1 / 3, 2 / 3),
    beta1=(1, 0),
    beta2=(-1, 1),
)
# Drift and diffusion weighed alike (y + a (f h + g dW) per stage), as diffrax's SDE solvers do.
EULER = ButcherTableau(c=(0.0,), a=((),), b=(1.0,))
HEUN = ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5))
MIDPOINT = ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0))

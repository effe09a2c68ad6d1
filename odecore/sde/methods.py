"""sdeint's methods: one solver class per method, each stepping over a frozen, validated tableau.

Kloeden & Platen, "Numerical Solution of Stochastic Differential Equations", Springer 1992.
Roessler, "Runge-Kutta methods for the strong approximation of solutions of stochastic
differential equations", SIAM J. Numer. Anal. 48(3), 2010.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce
from types import ModuleType
from typing import ClassVar

import torch

from ..solvers.tableau import ButcherTableau
from .system import NOISE_TYPES, SDESystem

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


def _weighted_sum(weights, xs):
    """sum_j w_j x_j over the non-zero weights; a weight shared by all terms is factored out,
    so that Heun's update is (f0 + f1) / 2, one multiplication."""
    terms = [(w, x) for w, x in zip(weights, xs) if w != 0]
    if len({w for w, _ in terms}) == 1:
        total = reduce(torch.add, [x for _, x in terms])
        return total if terms[0][0] == 1 else terms[0][0] * total
    return reduce(torch.add, [w * x for w, x in terms])


class SDESolver:
    """One step y(t0) -> y(t1) of a method on the Brownian motion ``bm``; the first step also
    checks the shapes of f, g and bm's increments."""

    name: ClassVar[str]
    sde_types: ClassVar[tuple[str, ...]]
    noise_types: ClassVar[tuple[str, ...]] = NOISE_TYPES
    levy_areas: ClassVar[tuple[str, ...] | None] = None  # the bm's levy_area_approximation it needs

    def __init__(self, system: SDESystem, bm: Callable, ops: ModuleType, like: torch.Tensor):
        self.system, self.bm, self.ops = system, bm, ops
        self.dtype, self.device = like.dtype, like.device
        self.unchecked = True

    def time(self, t: float) -> torch.Tensor:
        return torch.scalar_tensor(t, dtype=self.dtype, device=self.device)

    def step(self, t0: float, t1: float, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class RungeKutta(SDESolver):
    """An explicit stochastic Runge-Kutta method over a ButcherTableau whose stages weigh drift
    and diffusion alike: Y_i = y + sum_j a_ij (f_j h + g_j dW), y1 = y + sum_j b_j (f_j h + g_j dW),
    with f_j, g_j at (t0 + c_j h, Y_j). The update is one fused ``sde_step``."""

    tableau: ClassVar[ButcherTableau]

    def step(self, t0: float, t1: float, y: torch.Tensor) -> torch.Tensor:
        h = t1 - t0
        dw = self.bm(t0, t1)
        start = self.time(t0)
        f, g = self.system.f(start, y), self.system.g(start, y)
        if self.unchecked:
            self.system.check(y, f, g)
            self.system.check_increment(y, g, dw)
            self.unchecked = False
        g, dw_e = self.system.elementwise(g, dw)  # g dW = g_e * dw_e elementwise, for every noise type
        fs, gs = [f], [g]
        for c, row in zip(self.tableau.c[1:], self.tableau.a[1:]):
            # t0 + h may differ from t1 in the last bit: a stage at the step's end is evaluated at t1
            t = self.time(t1 if c == 1 else t0 + c * h)
            y_i = self._stage(y, row, fs, gs, dw_e, h)
            f, g = self.system.f(t, y_i), self.system.g(t, y_i)
            fs.append(f)
            gs.append(self.system.elementwise(g, dw)[0])
        f, g = _weighted_sum(self.tableau.b, fs), _weighted_sum(self.tableau.b, gs)
        correction = h if self.system.sde_type == "ito" else 0.0
        return self.ops.sde_step(y, f, g, dw_e, self.gdg(start, y), h, correction)

    def _stage(self, y, row, fs, gs, dw, h):
        terms = [(a, f, g) for a, f, g in zip(row, fs, gs) if a != 0]
        if len(terms) == 1 and terms[0][0] == 1:  # a whole Euler-Maruyama step is the fused update itself
            return self.ops.sde_step(y, terms[0][1], terms[0][2], dw, None, h, 0.0)
        for a, f, g in terms:
            y = y + a * (f * h + g * dw)
        return y

    def gdg(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """g dg/dy for the update's Milstein term; None: the method has none."""
        return None


class EulerMaruyama(RungeKutta):
    """Euler-Maruyama (Kloeden & Platen 1992, section 10.2): Ito, strong order 0.5 (1.0 for
    additive noise)."""

    name, sde_types, tableau = "euler", ("ito",), EULER


class Milstein(EulerMaruyama):
    """Milstein (Kloeden & Platen 1992, section 10.3): Euler-Maruyama plus 1/2 g dg/dy (dW^2 - h)
    (Ito) or 1/2 g dg/dy dW^2 (Stratonovich); diagonal or additive noise (where the term
    vanishes); strong order 1.0."""

    name, sde_types, noise_types = "milstein", ("ito", "stratonovich"), ("diagonal", "additive")

    def gdg(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return self.system.gdg(t, y) if self.system.noise_type == "diagonal" else None


class Heun(RungeKutta):
    """Stochastic Heun (Ruemelin, "Numerical treatment of stochastic differential equations",
    SIAM J. Numer. Anal. 19(3), 1982): the trapezoidal rule on an Euler-Maruyama predictor;
    Stratonovich, strong order 0.5 (1.0 for commutative noise)."""

    name, sde_types, tableau = "heun", ("stratonovich",), HEUN


class Midpoint(RungeKutta):
    """Stochastic midpoint (Ruemelin 1982, as Heun): f and g at the half-step predictor;
    Stratonovich, strong order 0.5 (1.0 for commutative noise)."""

    name, sde_types, tableau = "midpoint", ("stratonovich",), MIDPOINT


class SRK(SDESolver):
    """torchsde's srk: Roessler's (2010) stochastic Runge-Kutta schemes SRID2 (diagonal and
    scalar noise, 4 stages) and SRA1 (additive noise, 2 stages), driven by I = W and
    I_(k,0) = U of each step, ``bm(t0, t1, return_U=True)``; so bm needs a space-time Levy area.
    Ito, strong order 1.5 (2 for additive noise with a linear drift, e.g. Ornstein-Uhlenbeck,
    where SRA1's order-1.5 error term vanishes). Its arithmetic is torchsde's, operation for
    operation, so that both give the same values on the same Brownian path."""

    name, sde_types, noise_types = "srk", ("ito",), ("diagonal", "scalar", "additive")
    levy_areas = ("space-time", "davie", "foster")

    def step(self, t0: float, t1: float, y: torch.Tensor) -> torch.Tensor:
        I, I0 = self.bm(t0, t1, return_U=True)
        if self.unchecked:
            g0 = self.system.g(self.time(t0), y)
            self.system.check(y, self.system.f(self.time(t0), y), g0)
            self.system.check_increment(y, g0, I, "bm(t0, t1, return_U=True)[0]")
            self.system.check_increment(y, g0, I0, "bm(t0, t1, return_U=True)[1]")
            self.unchecked = False
        if self.system.noise_type == "additive":
            return self._additive_step(t0, t1 - t0, y, I, I0, SRA1)
        return self._diagonal_step(t0, t1 - t0, y, I, I0, SRID2)

    def _diagonal_step(self, t0, h, y, I, I0, tab):
        """SRI: diagonal g (batch, d), or scalar g (batch, d, 1) times (batch, 1) weights."""
        # torchsde takes the root of the step as a tensor; torch's sqrt can differ from math.sqrt
        # in the last bit (it does on AVX-512 CPUs), and the results would then too
        sqrt_h = self.time(h).sqrt()
        rh = 1.0 / h
        Ikk = (I**2 - h) * 0.5
        Ikkk = (I**3 - 3 * h * I) * (1 / 6)
        fs, gs = [], []
        y1 = y
        for i in range(tab.stages):
            H0, H1 = y, y
            for j in range(i):  # zero coefficients skipped (x + 0 * y == x)
                if tab.a0[i][j] != 0:
                    H0 = H0 + tab.a0[i][j] * fs[j] * h
                if tab.b0[i][j] != 0:
                    H0 = H0 + tab.b0[i][j] * gs[j] * I0 * rh
                if tab.a1[i][j] != 0:
                    H1 = H1 + tab.a1[i][j] * fs[j] * h
                if tab.b1[i][j] != 0:
                    H1 = H1 + tab.b1[i][j] * gs[j] * sqrt_h
            fs.append(self.system.f(self.time(t0 + tab.c0[i] * h), H0) if tab.drift_needed[i] else None)
            g = self.system.g(self.time(t0 + tab.c1[i] * h), H1)
            gs.append(g.squeeze(2) if g.dim() == 3 else g)
            weight = tab.beta1[i] * I + tab.beta2[i] * Ikk / sqrt_h + tab.beta3[i] * I0 * rh + tab.beta4[i] * Ikkk * rh
            if tab.alpha[i] != 0:
                y1 = y1 + tab.alpha[i] * fs[i] * h
            y1 = y1 + gs[i] * weight
        return y1

    def _additive_step(self, t0, h, y, I, I0, tab):
        """SRA: g is evaluated at y, once per distinct time (additive noise does not depend on the state)."""
        rh = 1.0 / h
        diffusion = {}

        def g_prod(c, v):
            if c not in diffusion:
                diffusion[c] = self.system.g(self.time(t0 + c * h), y)
            return torch.bmm(diffusion[c], v.unsqueeze(-1)).squeeze(-1)

        fs = []
        y1 = y
        for i in range(tab.stages):
            H0 = y
            for j in range(i):
                H0 = H0 + tab.a0[i][j] * fs[j] * h + g_prod(tab.c1[j], tab.b0[i][j] * I0 * rh)
            fs.append(self.system.f(self.time(t0 + tab.c0[i] * h), H0))
            weight = tab.beta2[i] * I0 * rh
            if tab.beta1[i] != 0:
                weight = tab.beta1[i] * I + weight
            y1 = y1 + tab.alpha[i] * fs[i] * h + g_prod(tab.c1[i], weight)
        return y1


SOLVERS = {cls.name: cls for cls in (EulerMaruyama, Milstein, Heun, Midpoint, SRK)}
METHODS = {name: cls.sde_types for name, cls in SOLVERS.items()}  # method -> the SDE types it solves
DEFAULT_METHOD = {"ito": "euler", "stratonovich": "midpoint"}
SRK_NOISE_TYPES = SRK.noise_types


def needs_levy_area(method: object) -> bool:
    """Whether `method` (a name, possibly not a method's) steps on bm(t0, t1, return_U=True)."""
    return isinstance(method, str) and method in SOLVERS and SOLVERS[method].levy_areas is not None


def _either(names):
    return names[0] if len(names) == 1 else "%s or %s" % (", ".join(names[:-1]), names[-1])


def solver_for(method: object, system: SDESystem, argument: str = "method", note: str = "") -> type[SDESolver]:
    """The solver class of `method`, refusing (ValueError, naming `argument`) an unknown method
    or one that does not solve the system's SDE or noise type."""
    if method not in SOLVERS:
        raise ValueError("%s must be one of %s, got %r" % (argument, sorted(METHODS), method))
    cls = SOLVERS[method]
    if system.sde_type not in cls.sde_types:
        raise ValueError(
            "%s %r does not solve %s SDEs (it solves %s)%s"
            % (argument, method, system.sde_type, ", ".join(cls.sde_types), note)
        )
    if system.noise_type not in cls.noise_types:
        raise ValueError(
            "%s %r needs %s noise, got %s" % (argument, method, _either(cls.noise_types), system.noise_type)
        )
    return cls

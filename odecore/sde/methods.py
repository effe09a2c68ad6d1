"""sdeint's methods: one solver class per method, each stepping over a frozen, validated tableau
(odecore.sde.tableau) or torchsde's update, operation for operation.

Kloeden & Platen, "Numerical Solution of Stochastic Differential Equations", Springer 1992.
Roessler, "Runge-Kutta methods for the strong approximation of solutions of stochastic
differential equations", SIAM J. Numer. Anal. 48(3), 2010.
Kidger, Foster, Li & Lyons, "Efficient and Accurate Gradients for Neural SDEs", NeurIPS 2021
(the reversible Heun method).
"""

import math
from collections.abc import Callable
from functools import reduce
from types import ModuleType
from typing import ClassVar

import torch

from .system import NOISE_TYPES, SDESystem
from .tableau import EULER, HEUN, MIDPOINT, SRA1, SRID2, ButcherTableau


def _weighted_sum(weights, xs):
    """sum_j w_j x_j over the non-zero weights; a weight shared by all terms is factored out,
    so that Heun's update is (f0 + f1) / 2, one multiplication."""
    terms = [(w, x) for w, x in zip(weights, xs) if w != 0]
    if len({w for w, _ in terms}) == 1:
        total = reduce(torch.add, [x for _, x in terms])
        return total if terms[0][0] == 1 else terms[0][0] * total
    return reduce(torch.add, [w * x for w, x in terms])


class SDESolver:
    """One step (y(t0), extra) -> (y(t1), extra) of a method on the Brownian motion ``bm``;
    ``extra`` is the method's extra solver state (torchsde's), () for all but reversible_heun.
    The first step also checks the shapes of f, g and bm's increments."""

    name: ClassVar[str]
    sde_types: ClassVar[tuple[str, ...]]
    noise_types: ClassVar[tuple[str, ...]] = NOISE_TYPES
    levy_areas: ClassVar[tuple[str, ...] | None] = None  # the bm's levy_area_approximation it needs
    default_levy_area: ClassVar[str] = "none"  # that of sdeint's Brownian motion when bm is None

    def __init__(self, system: SDESystem, bm: Callable, ops: ModuleType, like: torch.Tensor, options=None):
        self.system, self.bm, self.ops = system, bm, ops
        self.dtype, self.device = like.dtype, like.device
        self.options = dict(options or {})
        self.unchecked = True
        if self.needs_g():
            system.require_g("method %r" % self.name)

    def needs_g(self) -> bool:
        """Whether the method needs the diffusion matrix g itself (not only g dW)."""
        return False

    def time(self, t: float) -> torch.Tensor:
        return torch.scalar_tensor(t, dtype=self.dtype, device=self.device)

    def init_extra(self, t0: float, y0: torch.Tensor) -> tuple:
        """The extra solver state at (t0, y0) (torchsde's init_extra_solver_state)."""
        return ()

    def check_extra(self, extra: object, y0: torch.Tensor) -> tuple:
        """A user's extra_solver_state as the tuple the method steps on."""
        if not isinstance(extra, (tuple, list)) or len(extra) != 0:
            raise ValueError(
                "extra_solver_state: method %r keeps no extra solver state; pass None or (), got %r"
                % (self.name, type(extra).__name__ if not isinstance(extra, (tuple, list)) else extra)
            )
        return ()

    def evaluate(self, t: torch.Tensor, y: torch.Tensor, dw: torch.Tensor) -> tuple:
        """The system's drift_and_noise (f, g_e, dw_e), the shapes checked on the first call."""
        if not self.unchecked:
            return self.system.drift_and_noise(t, y, dw)
        system = self.system
        if system.uses_prod:
            system.check_increment(y, None, dw)
            f, gdw = system.f_and_g_prod(t, y, dw)
            system.check_first(y, f, gdw)
            out = f, gdw, system.ones_like(gdw)
        else:
            f, g = system.f_and_g(t, y)
            system.check(y, f, g)
            system.check_increment(y, g, dw)
            out = (f,) + system.elementwise(g, dw)
        self.unchecked = False
        return out

    def step(self, t0: float, t1: float, y: torch.Tensor, extra: tuple) -> tuple[torch.Tensor, tuple]:
        raise NotImplementedError


class RungeKutta(SDESolver):
    """An explicit stochastic Runge-Kutta method over a ButcherTableau whose stages weigh drift
    and diffusion alike: Y_i = y + sum_j a_ij (f_j h + g_j dW), y1 = y + sum_j b_j (f_j h + g_j dW),
    with f_j, g_j dW at (t0 + c_j h, Y_j), each from one call of the sde's cheapest combined
    function (SDESystem.drift_and_noise). The update is one fused ``sde_step``."""

    tableau: ClassVar[ButcherTableau]

    def increment(self, t0: float, t1: float) -> torch.Tensor:
        return self.bm(t0, t1)

    def step(self, t0: float, t1: float, y: torch.Tensor, extra: tuple) -> tuple[torch.Tensor, tuple]:
        h = t1 - t0
        dw = self.increment(t0, t1)
        f, g, dw_e = self.evaluate(self.time(t0), y, dw)  # g dW = g * dw_e elementwise, for every noise type
        fs, gs = [f], [g]
        for c, row in zip(self.tableau.c[1:], self.tableau.a[1:]):
            # t0 + h may differ from t1 in the last bit: a stage at the step's end is evaluated at t1
            t = self.time(t1 if c == 1 else t0 + c * h)
            f, g, _ = self.system.drift_and_noise(t, self._stage(y, row, fs, gs, dw_e, h), dw)
            fs.append(f)
            gs.append(g)
        f, g = _weighted_sum(self.tableau.b, fs), _weighted_sum(self.tableau.b, gs)
        return self.ops.sde_step(y, f, g, dw_e, None, h, 0.0), extra

    def _stage(self, y, row, fs, gs, dw, h):
        terms = [(a, f, g) for a, f, g in zip(row, fs, gs) if a != 0]
        if len(terms) == 1 and terms[0][0] == 1:  # a whole Euler-Maruyama step is the fused update itself
            return self.ops.sde_step(y, terms[0][1], terms[0][2], dw, None, h, 0.0)
        for a, f, g in terms:
            y = y + a * (f * h + g * dw)
        return y


class EulerMaruyama(RungeKutta):
    """Euler-Maruyama (Kloeden & Platen 1992, section 10.2): Ito, strong order 0.5 (1.0 for
    additive noise)."""

    name, sde_types, tableau = "euler", ("ito",), EULER


class Milstein(EulerMaruyama):
    """Milstein (Kloeden & Platen 1992, section 10.3): Euler-Maruyama plus 1/2 (g . grad) g
    (dW^2 - h) (Ito) or 1/2 (g . grad) g dW^2 (Stratonovich); diagonal, scalar or additive noise
    (where the term vanishes); strong order 1.0. (g . grad) g is g_i dg_i/dy_i for diagonal
    noise and the Jacobian-vector product J g for scalar noise, from one evaluation of g (of
    f_and_g where the sde defines it) and autograd, or, with ``options={'grad_free': True}``,
    torchsde's derivative-free (g(y + (h f) + g sqrt(h)) - g(y)) / sqrt(h) (the h f for Ito).
    torchsde 0.2.6 takes J^T g for scalar noise, which is the same where J is symmetric (one
    state dimension, or g_i a function of y_i) and otherwise only strong order 0.5."""

    name, sde_types = "milstein", ("ito", "stratonovich")
    noise_types = ("diagonal", "scalar", "additive")

    def needs_g(self) -> bool:
        return self.system.noise_type != "additive"

    def step(self, t0: float, t1: float, y: torch.Tensor, extra: tuple) -> tuple[torch.Tensor, tuple]:
        system = self.system
        if system.noise_type == "additive":  # (g . grad) g = 0: an Euler-Maruyama step
            return super().step(t0, t1, y, extra)
        h = t1 - t0
        dw = self.bm(t0, t1)
        start = self.time(t0)
        if self.options.get("grad_free", False):
            f, g, gdg = self._grad_free(start, y, h)
        else:
            f, g, gdg = system.diffusion_and_gdg(start, y, with_f=system.has_f_and_g)
            if f is None:
                f = system.f(start, y)
        if self.unchecked:
            system.check(y, f, g)
            system.check_increment(y, g, dw)
            self.unchecked = False
        g, dw_e = system.elementwise(g, dw)
        correction = h if system.sde_type == "ito" else 0.0
        return self.ops.sde_step(y, f, g, dw_e, gdg, h, correction), extra

    def _grad_free(self, t, y, h):
        """f, g and the finite-difference (g . grad) g of torchsde's grad_free Milstein."""
        f, g = self.system.f_and_g(t, y)
        if self.unchecked:
            self.system.check(y, f, g)
        g_e = g.squeeze(2) if g.dim() == 3 else g
        sqrt_h = math.sqrt(h)
        y_prime = y + g_e * sqrt_h
        if self.system.sde_type == "ito":
            y_prime = y_prime + h * f
        g_prime = self.system.g(t, y_prime)
        g_prime = g_prime.squeeze(2) if g_prime.dim() == 3 else g_prime
        return f, g, (g_prime - g_e) / sqrt_h


class Heun(RungeKutta):
    """Stochastic Heun (Ruemelin, "Numerical treatment of stochastic differential equations",
    SIAM J. Numer. Anal. 19(3), 1982): the trapezoidal rule on an Euler-Maruyama predictor;
    Stratonovich, strong order 0.5 (1.0 for commutative noise)."""

    name, sde_types, tableau = "heun", ("stratonovich",), HEUN


class Midpoint(RungeKutta):
    """Stochastic midpoint (Ruemelin 1982, as Heun): f and g at the half-step predictor;
    Stratonovich, strong order 0.5 (1.0 for commutative noise)."""

    name, sde_types, tableau = "midpoint", ("stratonovich",), MIDPOINT


class EulerHeun(SDESolver):
    """torchsde's euler_heun: the drift by Euler, the diffusion by Heun on the predictor
    y + g dW (no drift in the predictor, so one drift and two diffusion evaluations a step);
    Stratonovich, strong order 1.0 (0.5 for general noise)."""

    name, sde_types = "euler_heun", ("stratonovich",)

    def step(self, t0: float, t1: float, y: torch.Tensor, extra: tuple) -> tuple[torch.Tensor, tuple]:
        dw = self.bm(t0, t1)
        f, g0, dw_e = self.evaluate(self.time(t0), y, dw)
        g1 = self.system.noise(self.time(t1), y + g0 * dw_e, dw)
        return self.ops.sde_step(y, f, 0.5 * (g0 + g1), dw_e, None, t1 - t0, 0.0), extra


class LogODE(Midpoint):
    """torchsde's log_ode (log_ode_midpoint): the midpoint method on the log-ODE of the step
    (Lie-Trotter splitting), bm(t0, t1, return_A=True) giving W and the Levy area A. For general
    noise the update gains sum_l (dg_l/dy) (g A)_l at the midpoint (one Jacobian-vector product
    per Brownian channel); for the other noise types that term vanishes and the step is the
    midpoint step. Stratonovich, strong order 1.0 (0.5 for general noise). bm needs Davie's or
    Foster's Levy area (sdeint's default motion has Foster's)."""

    name, sde_types = "log_ode", ("stratonovich",)
    levy_areas, default_levy_area = ("davie", "foster"), "foster"

    def needs_g(self) -> bool:
        return self.system.noise_type == "general"

    def increment(self, t0: float, t1: float) -> torch.Tensor:
        dw, self._area = self.bm(t0, t1, return_A=True)
        return dw

    def step(self, t0: float, t1: float, y: torch.Tensor, extra: tuple) -> tuple[torch.Tensor, tuple]:
        if self.system.noise_type != "general":
            return super().step(t0, t1, y, extra)
        h = t1 - t0
        dw = self.increment(t0, t1)
        f, g, dw_e = self.evaluate(self.time(t0), y, dw)
        y_half = y + 0.5 * h * f + 0.5 * (g * dw_e)
        f, g, term = self._with_area_term(self.time(t0 + 0.5 * h), y_half, self._area)
        return self.ops.sde_step(y, f, self.system.prod(g, dw), dw_e, None, h, 0.0) + term, extra

    def _with_area_term(self, t, y, area):
        """f, g and sum_l (dg_l/dy)(g A)_l at (t, y), g_l the l-th column of g (torchsde's
        dg_ga_jvp_column_sum), each Jacobian-vector product by double backward."""
        grad_mode = torch.is_grad_enabled()
        with torch.enable_grad():
            x = y if y.requires_grad else y.detach().requires_grad_(True)
            f, g = self.system.f_and_g(t, x)
            ga = torch.bmm(g, area)
            term = torch.zeros_like(x)
            for col in range(g.shape[-1]) if g.requires_grad else ():
                probe = torch.zeros_like(x, requires_grad=True)
                (jt_probe,) = torch.autograd.grad(g[..., col], x, probe, create_graph=True, allow_unused=True)
                if jt_probe is not None and jt_probe.requires_grad:
                    (jvp,) = torch.autograd.grad(jt_probe, probe, ga[..., col], create_graph=grad_mode)
                    term = term + jvp
        if not grad_mode:
            f, g, term = f.detach(), g.detach(), term.detach()
        return f, g, term


class ReversibleHeun(SDESolver):
    """The reversible Heun method (Kidger et al. 2021; torchsde's reversible_heun), with the extra
    solver state (f, g, z): z1 = 2 y0 - z0 + f0 h + g0 dW, (f1, g1) = (f, g)(t1, z1),
    y1 = y0 + (f0 + f1) h / 2 + (g0 + g1) dW / 2, one evaluation of f_and_g a step. Algebraically
    reversible, which sdeint_adjoint's adjoint_reversible_heun uses for exact gradients.
    Stratonovich, strong order 0.5 (1.0 for additive noise)."""

    name, sde_types = "reversible_heun", ("stratonovich",)

    def needs_g(self) -> bool:
        return True

    def init_extra(self, t0: float, y0: torch.Tensor) -> tuple:
        f, g = self.system.f_and_g(self.time(t0), y0)
        self.system.check(y0, f, g)
        return (f, g, y0)

    def check_extra(self, extra: object, y0: torch.Tensor) -> tuple:
        sequence = isinstance(extra, (tuple, list))
        if sequence and len(extra) == 3 and all(isinstance(x, torch.Tensor) for x in extra):
            f, g, z = extra
            g_shape = {"diagonal": tuple(y0.shape), "scalar": (*y0.shape, 1)}.get(self.system.noise_type)
            g_ok = tuple(g.shape) == g_shape if g_shape else g.dim() == 3 and g.shape[:2] == y0.shape
            if f.shape == y0.shape and z.shape == y0.shape and g_ok:
                return tuple(extra)
        got = (
            [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in extra] if sequence else extra
        )
        raise ValueError(
            "extra_solver_state must be reversible_heun's (f, g, z) at ts[0], as sdeint(..., extra=True) returns "
            "it: f and z of y0's shape %s, g the diffusion's shape; got %r" % (tuple(y0.shape), got)
        )

    def step(self, t0: float, t1: float, y: torch.Tensor, extra: tuple) -> tuple[torch.Tensor, tuple]:
        f0, g0, z0 = extra
        h = t1 - t0
        dw = self.bm(t0, t1)
        if self.unchecked:
            self.system.check_increment(y, g0, dw)
            self.unchecked = False
        g0_e, dw_e = self.system.elementwise(g0, dw)
        z1 = self.ops.sde_step(2 * y - z0, f0, g0_e, dw_e, None, h, 0.0)
        f1, g1 = self.system.f_and_g(self.time(t1), z1)
        g_sum, _ = self.system.elementwise(g0 + g1, dw)
        y1 = self.ops.sde_step(y, f0 + f1, 0.5 * g_sum, dw_e, None, 0.5 * h, 0.0)
        return y1, (f1, g1, z1)


class SRK(SDESolver):
    """torchsde's srk: Roessler's (2010) stochastic Runge-Kutta schemes SRID2 (diagonal and
    scalar noise, 4 stages) and SRA1 (additive noise, 2 stages), driven by I = W and
    I_(k,0) = U of each step, ``bm(t0, t1, return_U=True)``; so bm needs a space-time Levy area.
    Ito, strong order 1.5 (2 for additive noise with a linear drift, e.g. Ornstein-Uhlenbeck,
    where SRA1's order-1.5 error term vanishes). Its arithmetic is torchsde's, operation for
    operation, so that both give the same values on the same Brownian path."""

    name, sde_types, noise_types = "srk", ("ito",), ("diagonal", "scalar", "additive")
    levy_areas, default_levy_area = ("space-time", "davie", "foster"), "space-time"

    def needs_g(self) -> bool:
        return True

    def step(self, t0: float, t1: float, y: torch.Tensor, extra: tuple) -> tuple[torch.Tensor, tuple]:
        I, I0 = self.bm(t0, t1, return_U=True)
        if self.unchecked:
            g0 = self.system.g(self.time(t0), y)
            self.system.check(y, self.system.f(self.time(t0), y), g0)
            self.system.check_increment(y, g0, I, "bm(t0, t1, return_U=True)[0]")
            self.system.check_increment(y, g0, I0, "bm(t0, t1, return_U=True)[1]")
            self.unchecked = False
        if self.system.noise_type == "additive":
            return self._additive_step(t0, t1 - t0, y, I, I0, SRA1), extra
        return self._diagonal_step(t0, t1 - t0, y, I, I0, SRID2), extra

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


SOLVERS = {cls.name: cls for cls in (EulerMaruyama, Milstein, Heun, Midpoint, SRK, EulerHeun, ReversibleHeun, LogODE)}
METHODS = {name: cls.sde_types for name, cls in SOLVERS.items()}  # method -> the SDE types it solves
DEFAULT_METHOD = {"ito": "euler", "stratonovich": "midpoint"}
SRK_NOISE_TYPES = SRK.noise_types
# sdeint_adjoint's method that differentiates reversible_heun exactly (sdeint refuses it)
ADJOINT_REVERSIBLE_HEUN = "adjoint_reversible_heun"


def default_levy_area(method: object) -> str:
    """The levy_area_approximation of sdeint's Brownian motion for `method` (a name, possibly
    not a method's) when bm is None: 'space-time' for srk, 'foster' for log_ode, else 'none'."""
    return SOLVERS[method].default_levy_area if isinstance(method, str) and method in SOLVERS else "none"


def _either(names):
    return names[0] if len(names) == 1 else "%s or %s" % (", ".join(names[:-1]), names[-1])


def solver_for(method: object, system: SDESystem, argument: str = "method", note: str = "") -> type[SDESolver]:
    """The solver class of `method`, refusing (ValueError, naming `argument`, with torchsde's
    message at the end) an unknown method or one that does not solve the system's SDE or noise type."""
    if method == ADJOINT_REVERSIBLE_HEUN and argument == "method":
        raise ValueError("%s can only be used for adjoint_method." % ADJOINT_REVERSIBLE_HEUN)
    if method not in SOLVERS:
        raise ValueError("%s must be one of %s, got %r" % (argument, sorted(METHODS), method))
    cls = SOLVERS[method]
    if system.sde_type not in cls.sde_types:
        raise ValueError(
            "%s %r does not solve %s SDEs (it solves %s)%s: SDE is of type %s but solver is for type %s"
            % (argument, method, system.sde_type, ", ".join(cls.sde_types), note, system.sde_type, cls.sde_types[0])
        )
    if system.noise_type not in cls.noise_types:
        raise ValueError(
            "%s %r needs %s noise, got %s: SDE has noise type %s but solver only supports noise types %s"
            % (
                argument,
                method,
                _either(cls.noise_types),
                system.noise_type,
                system.noise_type,
                sorted(cls.noise_types),
            )
        )
    return cls

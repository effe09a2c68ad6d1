"""Dense output: solve once, evaluate anywhere in [t0, t1].

``odeint_dense(func, y0, t0, t1, ...)`` has torchdiffeq 0.2.5's signature (torchdiffeq's is
dopri5-only and evaluates one scalar time at a time). It runs the same solve as
``odeint(func, y0, torch.tensor([t0, t1]), ...)`` (the same steps, with a recorder so the
host loop is used) and keeps each step's start, size, state and stages. The returned
`DenseSolution` evaluates each step's own continuous extension,

    y(t_i + x h_i) = y_i + dt_i * sum_j P_j(x) k_ij,     x in [0, 1],

with the method's polynomial (``tableau.dense_flat``, the one `rk_interp` uses for output
times: Shampine's quartic for dopri5, the fitted quartic of the other adaptive methods,
dopri8's and tsit5's own), or for fixed-grid methods their ``interp`` option (linear, or the
cubic Hermite through y_i, y_{i+1}, f_i, f_{i+1}). Many times are evaluated in one call:
the step of each time is found with `torch.searchsorted`, and the polynomials of all of them
are formed at once (one gather and multiply-add per stage).
"""

import math
from collections.abc import Callable

import torch

from ._problem import SolverFactory, TensorOrTuple, Tolerance, prepare
from .solvers import AdaptiveRKSolver, FixedGridRKSolver


class _StepLog:
    """A solver recorder (see odecore.checkpoint) keeping every accepted step's
    (t0, y0, k, dt) and end time t1. A step is accepted (`step`) before the solver stores
    it as ``last_step``, so each is picked up at the next step and once more at the end."""

    def __init__(self, solver):
        self.solver = solver
        self.infos = []
        self.steps = []

    def step(self, info, y, f):
        if self.infos:
            self.steps.append(self.solver.last_step)
        self.infos.append(info)

    def outputs(self, times):
        pass

    def finish(self):
        if self.infos:
            self.steps.append(self.solver.last_step)
        for (t0, _, _, _), info in zip(self.steps, self.infos):
            if t0 != info[0]:  # pragma: no cover - the solver's step bookkeeping changed
                raise RuntimeError("odeint_dense: the recorded steps are out of order")
        return [(t0, info[2], dt, y0, list(k)) for (t0, y0, k, dt), info in zip(self.steps, self.infos)]


def _as_time(value, name):
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError("%s must be a single time, got a tensor of shape %s" % (name, tuple(value.shape)))
        value = value.detach().item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError("%s must be a float or a one-element tensor, got %s" % (name, type(value).__name__)) from None
    if not math.isfinite(value):
        raise ValueError("%s must be finite, got %r" % (name, value))
    return value


def odeint_dense(
    func: Callable,
    y0: TensorOrTuple,
    t0: torch.Tensor | float,
    t1: torch.Tensor | float,
    *,
    rtol: Tolerance = 1e-7,
    atol: Tolerance = 1e-9,
    method: str | None = None,
    options: dict | None = None,
) -> "DenseSolution":
    """Solves dy/dt = func(t, y), y(t0) = y0 up to t1 once and returns a `DenseSolution`:
    ``sol(t)`` is y at any t in [t0, t1] (either direction: t1 < t0 integrates backwards)
    from each step's own dense output.

    Arguments are odeint's (`t0`, `t1` floats or one-element tensors; every method of
    ``odecore.SOLVERS`` built on the adaptive or fixed-grid Runge-Kutta loops, including the
    Adams methods; fixed-grid methods interpolate as their ``interp`` option says). The solve
    takes exactly odeint's steps. Gradients reach y0 and func's parameters through the
    evaluated values when grad is enabled during the solve, and the evaluation time through
    the polynomial when it requires grad; t0 and t1 are taken as constants.
    """
    t0, t1 = _as_time(t0, "t0"), _as_time(t1, "t1")
    if t0 == t1:
        raise ValueError("odeint_dense needs t1 != t0, got t0 = t1 = %r" % (t0,))
    like = y0 if isinstance(y0, torch.Tensor) else (y0[0] if isinstance(y0, tuple) and y0 else None)
    device = like.device if isinstance(like, torch.Tensor) else None
    t = torch.tensor([t0, t1], dtype=torch.float64, device=device)
    p = prepare(func, y0, t, rtol, atol, method, options)
    opts = dict(p.options)
    if opts.pop("checkpoint", None) is not None:
        raise ValueError("options['checkpoint'] is not supported by odeint_dense")
    if opts.get("batch_dim") is not None:
        raise NotImplementedError("options['batch_dim'] (per-sample solves) is not supported by odeint_dense")
    factory = SolverFactory(p.func, p.times, t, p.reverse, p.rtol, p.atol, p.method, opts, p.backend, p.segments)
    solver = factory(p.y0)
    if isinstance(solver, AdaptiveRKSolver):
        log = _StepLog(solver)
        factory.integrate(solver, log)
        steps = log.finish()
        ends = [solver.y] if steps else []
        # step i ends where step i + 1 starts; the last where the solver stopped
        ends = [y0_ for (_, _, _, y0_, _) in steps[1:]] + ends
        poly = solver.tableau.dense_flat
    elif isinstance(solver, FixedGridRKSolver):
        records = []
        advance = solver._advance

        def recording_advance(ta, tb, y):
            k, y1 = advance(ta, tb, y)
            records.append((ta, tb, y, k, y1))
            return k, y1

        solver._advance = recording_advance
        try:
            factory.integrate(solver)
        finally:
            del solver._advance
        if solver.interp == "cubic":
            poly = solver._hermite
            steps = [(ta, tb, tb - ta, y, list(k) + [solver.func(tb, y1)]) for ta, tb, y, k, y1 in records]
        else:
            poly = solver._linear
            steps = [(ta, tb, tb - ta, y, list(k)) for ta, tb, y, k, y1 in records]
        ends = [y1 for _, _, _, _, y1 in records]
    else:
        raise NotImplementedError(
            "odeint_dense supports the adaptive and fixed-grid Runge-Kutta and the Adams methods, not %r" % (p.method,)
        )
    if not steps:  # pragma: no cover - a solve over t0 != t1 takes at least one step
        raise RuntimeError("odeint_dense: the solver took no steps")
    return DenseSolution(steps, ends, poly, factory.sign, t0, t1, p, solver.stats())


class DenseSolution:
    """y(t) for t in [t0, t1] from a solve's accepted steps (see `odeint_dense`).

    Call it with a float or 0-d tensor (returns y0's shape) or a 1-D tensor or list of times
    (returns ``(len(t), *y0.shape)``; tuples for a tuple y0). Attributes: ``ts`` (the step
    boundaries in the user's time, a float64 tensor on the CPU, starting at t0; an adaptive
    solve's last step may end past t1, as odeint's does), ``stats`` (the solve's statistics,
    as odeint's ``return_stats``), ``t0``, ``t1``, ``n_steps``.
    """

    def __init__(self, steps, ends, poly, sign, t0, t1, problem, stats):
        self.t0, self.t1 = t0, t1
        self.stats = stats
        self._sign = sign
        self._problem = problem
        like = steps[0][3]
        self._dtype, self._device = like.dtype, like.device
        host = torch.tensor([(ta, tb, dt) for ta, tb, dt, _, _ in steps], dtype=torch.float64)
        self._s0, self._s1, self._dt = (host[:, i].to(self._device) for i in range(3))
        self._s0_host = host[:, 0].contiguous()
        self._span = self._s1 - self._s0
        self._y0 = torch.stack([y for _, _, _, y, _ in steps])
        self._y1 = torch.stack(list(ends))
        stages = len(steps[0][4])
        self._k = [torch.stack([k[j] for _, _, _, _, k in steps]) for j in range(stages)]
        degree = len(poly) // stages
        self._poly = torch.tensor(poly, dtype=torch.float64, device=self._device).view(stages, degree)
        self.ts = sign * torch.cat([host[:, 0], host[-1:, 1]])
        self.n_steps = len(steps)
        self._lo, self._hi = min(t0, t1), max(t0, t1)

    def __repr__(self):
        return "DenseSolution(t0=%r, t1=%r, n_steps=%d)" % (self.t0, self.t1, self.n_steps)

    def __call__(self, t):
        scalar = not isinstance(t, (torch.Tensor, list, tuple)) or (isinstance(t, torch.Tensor) and t.dim() == 0)
        if isinstance(t, torch.Tensor):
            if t.dim() > 1:
                raise ValueError("t must be a float, a 0-d or a 1-D tensor, got shape %s" % (tuple(t.shape),))
            times = t.to(device=self._device, dtype=torch.float64).reshape(-1)
        else:
            times = torch.tensor(t, dtype=torch.float64).reshape(-1).to(self._device)
        host = times.detach().cpu()
        bad = ~((host >= self._lo) & (host <= self._hi))  # NaN is bad too
        if bool(bad.any()):
            raise ValueError("t=%r is outside the solved interval [%r, %r]" % (host[bad][0].item(), self._lo, self._hi))
        s = self._sign * times
        idx = (torch.searchsorted(self._s0_host, self._sign * host, right=True) - 1).clamp_(0, self.n_steps - 1)
        idx = idx.to(self._device)
        x = (s - self._s0[idx]) / self._span[idx]
        # dt * P_j(x) for every time and stage (Horner, as rk_interp), float64
        acc = torch.zeros(len(x), self._poly.shape[0], dtype=torch.float64, device=self._device)
        for d in range(self._poly.shape[1] - 1, -1, -1):
            acc = acc * x[:, None] + self._poly[:, d]
        weights = (acc * x[:, None] * self._dt[idx, None]).to(self._dtype)
        expand = (-1,) + (1,) * (self._y0.dim() - 1)  # a weight per time, over the state's shape
        total = None
        for j, k in enumerate(self._k):
            term = k[idx] * weights[:, j].view(expand)
            total = term if total is None else total + term
        y = self._y0[idx] + total
        at_end = s.detach() == self._s1[idx]  # a step's end: its solution itself
        if bool(at_end.any()):
            y = torch.where(at_end.view(expand), self._y1[idx], y)
        y = self._problem.unflatten(y)
        if scalar:
            return tuple(part[0] for part in y) if isinstance(y, tuple) else y[0]
        return y

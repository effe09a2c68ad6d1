"""Event handling: integrate until ``event_fn(t, y)`` changes sign (torchdiffeq 0.2.5 semantics).

``odeint(func, y0, t, event_fn=...)`` (t = [t0, anything in the direction of integration])
steps from t0 with the method's own step control until ``event_fn`` has changed sign at the
end of an accepted step (reaching exactly 0 counts, as in torchdiffeq), then finds the first
crossing on that step's dense output (the same polynomial `rk_interp` evaluates for output
times) to about 2 ulp of t; a step ending at an exact 0 is searched the same way, so an
earlier crossing inside it is the event. It returns
``(event_t, solution)`` with ``solution = [y0, y(event_t)]``. As in torchdiffeq, a vector
``event_fn`` is combined as ``min(event_fn(t, y) * sign(event_fn(t0, y0)))``, so the first
component to change sign ends the solve, and ``y(event_t)`` is differentiable at a *fixed*
event time while ``event_t`` itself carries no gradient. ``odeint_adjoint(..., event_fn=...)``
returns the same solution (adjoint gradients at the fixed event time) and an ``event_t`` with
the implicit gradient below (torchdiffeq's supports backward() but its gradient is zero).

``odeint_event`` adds the gradient of the event time by the implicit function theorem:
with g(t*, y(t*; theta); theta) = 0,

    dt*/dtheta = -(dg/dtheta + dg/dy . dy/dtheta) / (dg/dt + dg/dy . f(t*, y*))

and the state at the event moves by f(t*, y*) dt*/dtheta on top of its fixed-time
gradient. It is written as a zero-valued surrogate, so ``event_fn``'s own parameters get
their gradient too (torchdiffeq's ImplicitFnGradientRerouting leaves that term out; the
others are the same).

The root finder is ITP (interpolate, truncate, project): regula falsi kept within one
iteration of bisection's worst case, so superlinear on smooth crossings and at most about 54
evaluations of the dense output for a float64 time (a hard cap of `MAX_ROOT_ITERS`, after
which it raises). The event time returned is the last point found before the sign change,
within 2 ulp of the crossing, so that a solve restarted there sees event_fn with its old sign
(or, where the bracket ends at an exact 0 of event_fn, that point on the crossing).
"""

import math
import warnings

import torch

from ._problem import SolverFactory, TupleFunc, prepare, time_sensitivity
from .solvers import AdaptiveRKSolver, FixedGridRKSolver

MAX_ROOT_ITERS = 200
MAX_FIXED_GRID_STEPS = 20000  # torchdiffeq's limit for fixed-grid event solves


def check_event_problem(p):
    if len(p.times) != 2:
        raise ValueError(f"We require len(t) == 2 when in event handling mode, but got len(t)={len(p.times)}.")
    if getattr(p, "complex_shape", None) is not None:
        raise NotImplementedError(
            "event_fn with a complex y0 is not supported; integrate its real view (torch.view_as_real) instead"
        )
    if p.options.get("batch_dim") is not None:
        raise NotImplementedError("options['batch_dim'] (per-sample solves) is not supported with event_fn")


def combine_event_fn(event_fn, t0, y0_flat, split):
    """event_fn as one scalar that starts positive: min(event_fn(t, y) * sign(event_fn(t0, y0)))
    over its entries (torchdiffeq's combine_event_functions), on the flat state."""
    if not callable(event_fn):
        raise TypeError("event_fn must be callable as event_fn(t, y), got %s" % type(event_fn).__name__)

    def raw(t, y):
        out = event_fn(t, split(y))
        if not isinstance(out, torch.Tensor):
            raise TypeError("event_fn must return a torch.Tensor, got %s" % type(out).__name__)
        if out.numel() == 0:
            raise ValueError("event_fn returned an empty tensor")
        return out

    with torch.no_grad():
        signs = torch.sign(raw(t0.detach(), y0_flat.detach()))

    def combined(t, y):
        return torch.min(raw(t, y) * signs)

    return combined


def event_splitter(p):
    return p.func.split if p.shapes is not None else (lambda y: y)


class _Probe:
    """The combined event function at a solver-frame time s (a float), as a float; counts calls."""

    def __init__(self, combined, sign, time_dtype, device):
        self.combined, self.sign, self.time_dtype, self.device = combined, sign, time_dtype, device
        self.calls = 0

    def __call__(self, s, y):
        t = torch.tensor(self.sign * s, dtype=self.time_dtype, device=self.device)
        with torch.no_grad():
            value = float(self.combined(t, y.detach()))
        self.calls += 1
        if math.isnan(value):
            raise RuntimeError("event_fn returned NaN at t=%r" % (self.sign * s,))
        return value


def find_root(h, a, b, ha, hb, eps):
    """A crossing of h in [a, b] with h(a) = ha > 0 >= h(b) = hb, by the ITP method (Oliveira &
    Takahashi, "An Enhancement of the Bisection Method Average Performance Preserving Minmax
    Optimality", ACM TOMS 47(1), 2020; kappa1 = 0.2 / (b - a), kappa2 = 2, n0 = 1): regula
    falsi, truncated and projected so that it never takes more than one iteration beyond
    bisection's ceil(log2((b - a) / (2 delta))) (plus the one probe below), superlinear on
    smooth crossings.

    The bracket is narrowed to 2 delta, delta = eps * max(|a|, |b|, b - a) (an ulp of t, or of
    the step when t is near 0). h <= 0 is the far side (torchdiffeq's find_event counts a 0 as
    a changed sign), so where h is 0 on part of the bracket the first point where it stops
    being positive is found, not any zero. The first exact 0 met inside the bracket is most
    likely the crossing itself, so h is tried once 2 delta before it (which ends the search
    where h > 0 there) instead of letting regula falsi creep up on it from one side.
    Returns (s, evaluations of h): the bracket's far end where h is exactly 0 there (a point on
    the crossing), else the last point found on a's side (h > 0)."""
    delta = eps * max(abs(a), abs(b), b - a)
    n_max = max(0, math.ceil(math.log2((b - a) / (2 * delta)))) + 1
    kappa1 = 0.2 / (b - a)
    probed = False
    for j in range(MAX_ROOT_ITERS):
        width = b - a
        mid = a + 0.5 * width
        if width <= 2 * delta or not a < mid < b:
            return (b if hb == 0.0 else a), j + probed
        radius = delta * 2.0 ** (n_max - j) - 0.5 * width
        falsi = a + width * (ha / (ha - hb))
        sigma = 1.0 if mid >= falsi else -1.0
        truncation = kappa1 * width * width
        c = falsi + sigma * truncation if truncation <= abs(mid - falsi) else mid
        if abs(c - mid) > radius:
            c = mid - sigma * radius
        if not a < c < b:
            c = mid
        hc = h(c)
        if hc == 0.0 and not probed and c - 2 * delta > a:
            probed = True
            b, hb = c, hc
            c = c - 2 * delta
            hc = h(c)
        if hc > 0:
            a, ha = c, hc
        else:
            b, hb = c, hc
    raise RuntimeError(
        "event root finding did not converge in %d iterations: event_fn changes sign in "
        "[%r, %r] (solver time) but the bracket is still %r wide" % (MAX_ROOT_ITERS, a, b, b - a)
    )


def solve_until_event(factory, y0, combined):
    """Integrates from factory.times[0] until the combined event function is <= 0 at the end
    of a step; returns (s, y, stats) with s the event time in the solver's (increasing) frame
    and y the state there (differentiable at fixed s when y0 or func's parameters are)."""
    solver = factory(y0)
    s0 = factory.times[0]
    time_dtype = getattr(solver, "time_dtype", torch.promote_types(torch.float64, y0.dtype))
    probe = _Probe(combined, factory.sign, time_dtype, y0.device)
    eps = torch.finfo(time_dtype).eps
    g0 = probe(s0, y0)
    if isinstance(solver, AdaptiveRKSolver):
        if g0 == 0.0:  # torchdiffeq: an event function that is zero at t0 ends the solve there
            return s0, y0, _stats(solver, probe, 0)
        solver.integrate([s0])  # sets up f0 and the initial step, takes no step
        attempts = 0
        ga = g0
        while True:
            if attempts >= solver.max_num_steps:
                raise RuntimeError(
                    "max_num_steps exceeded (%d steps) at t=%r before event_fn changed sign; the event "
                    "may never happen (raise options['max_num_steps'] if it is just far away)"
                    % (solver.max_num_steps, factory.sign * solver.t)
                )
            accepted = solver.n_accepted
            solver._step()
            attempts += 1
            if solver.n_accepted == accepted:
                continue
            gb = probe(solver.t, solver.y)
            if gb <= 0.0:
                break
            ga = gb
        ta, ya, k, dt = solver.last_step
        tb, yb = solver.t, solver.y
        poly = solver.tableau.dense_flat
    elif isinstance(solver, FixedGridRKSolver):
        step_size = factory.options.get("step_size")
        if step_size is None:
            raise ValueError(
                "Event handling for fixed step solvers currently requires `step_size` to be provided in options."
            )
        if g0 == 0.0:
            return s0, y0, _stats(solver, probe, 0)
        step_size = float(step_size)
        ta, ya, ga = s0, y0, g0
        for _ in range(MAX_FIXED_GRID_STEPS):
            tb = ta + step_size
            k, yb = solver._advance(ta, tb, ya)
            gb = probe(tb, yb)
            if gb <= 0.0:
                break
            ta, ya, ga = tb, yb, gb
        else:
            raise RuntimeError(
                "Reached maximum number of iterations %d at t=%r before event_fn changed sign; the event "
                "may never happen" % (MAX_FIXED_GRID_STEPS, factory.sign * ta)
            )
        dt = tb - ta
        if solver.interp == "cubic":
            k = list(k) + [solver.func(tb, yb)]
            poly = solver._hermite
        else:
            poly = solver._linear
    else:
        raise NotImplementedError(
            "event_fn is supported for the adaptive and fixed-grid Runge-Kutta and the Adams "
            "methods, not %r" % (factory.method,)
        )
    # an exact 0 at tb is searched like a sign change: an earlier crossing in the step comes first
    ops, span = solver.ops, tb - ta

    def h(s):
        with torch.no_grad():
            return probe(s, ops.rk_interp(ya, k, poly, dt, [(s - ta) / span])[0])

    s, iterations = find_root(h, ta, tb, ga, gb, eps)
    return s, ops.rk_interp(ya, k, poly, dt, [(s - ta) / span])[0], _stats(solver, probe, iterations)


def _stats(solver, probe, iterations):
    stats = solver.stats()
    stats["event_evals"] = probe.calls
    stats["root_iterations"] = iterations
    return stats


def event_odeint(func, y0, t, rtol, atol, method, options, event_fn):
    """odeint(..., event_fn=event_fn): see the module docstring."""
    p = prepare(func, y0, t, rtol, atol, method, options)
    check_event_problem(p)
    opts = dict(p.options)
    if opts.pop("checkpoint", None) is not None:
        raise ValueError("options['checkpoint'] is not supported with event_fn")
    combined = combine_event_fn(event_fn, t[0], p.y0, event_splitter(p))
    start = p.y0
    if t.requires_grad and torch.is_grad_enabled():
        # y(event_t) depends on t0 through -(dy/dy0) f(t0, y0), as in odeint
        start = p.y0 - time_sensitivity(p.func, t[:1], p.y0.unsqueeze(0)).squeeze(0)
    factory = SolverFactory(
        p.func, p.times, t.detach(), p.reverse, p.rtol, p.atol, p.method, opts, p.backend, p.segments
    )
    s, y_event, stats = solve_until_event(factory, start, combined)
    event_t = torch.tensor(factory.sign * s, dtype=t.dtype, device=t.device)
    solution = p.unflatten(torch.stack([p.y0, y_event]))
    return (event_t, solution, stats) if p.return_stats else (event_t, solution)


def implicit_gradient(func, y0, t, event_fn, event_t, solution):
    """(event_t, solution) with the implicit function theorem's gradient of the event time
    added (zero in value): see the module docstring."""
    is_tuple = not isinstance(y0, torch.Tensor)
    if is_tuple:
        shapes = [y.shape for y in y0]
        flat_func = TupleFunc(func, shapes)
        split = flat_func.split
        state = torch.cat([s[-1].reshape(-1) for s in solution])
        y0_flat = torch.cat([y.reshape(-1) for y in y0])
    else:
        flat_func, split, state, y0_flat = func, (lambda y: y), solution[-1], y0
    t_star = event_t.detach()
    if not torch.is_grad_enabled():
        return t_star, solution
    combined = combine_event_fn(event_fn, t[0], y0_flat, split)
    g_live = combined(t_star, state)
    if not g_live.requires_grad:
        return t_star, solution
    with torch.enable_grad():
        tq = t_star.clone().requires_grad_(True)
        yq = state.detach().requires_grad_(True)
        dg_dt, dg_dy = torch.autograd.grad(combined(tq, yq), (tq, yq), allow_unused=True)
    with torch.no_grad():
        f = flat_func(t_star.to(state.dtype), state.detach()).reshape(state.shape)
        dcdt = torch.zeros((), dtype=torch.float64, device=state.device)
        if dg_dt is not None:
            dcdt = dcdt + dg_dt.to(torch.float64)
        if dg_dy is not None:
            dcdt = dcdt + (dg_dy.to(torch.float64) * f.to(torch.float64)).sum()
        if float(dcdt) == 0.0:
            warnings.warn(
                "odeint_event: event_fn has zero time derivative at the event (a tangential crossing); "
                "the event time's gradient is not defined there (using torchdiffeq's 1e-12 regulariser)"
            )
            dcdt = dcdt + 1e-12
    # tau is zero in value; its gradient is dt*/dtheta
    tau = (g_live - g_live.detach()) / (-dcdt).to(g_live.dtype)
    event_t = t_star + tau.to(t_star.dtype)
    state = state + f * tau.to(state.dtype)
    if is_tuple:
        parts = split(state)
        solution = tuple(
            torch.cat([s[:-1], part.reshape(1, *shape)]) for s, part, shape in zip(solution, parts, shapes)
        )
    else:
        solution = torch.cat([solution[:-1], state.unsqueeze(0)])
    return event_t, solution

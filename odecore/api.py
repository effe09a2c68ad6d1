"""odeint: input validation and normalisation around the solver loop (torchdiffeq 0.2.5 semantics).

The call travels: validate -> tuple state to one flat tensor -> decreasing t to negated time
-> pick the solver class -> solve with the backend's ops -> reshape back.
"""
import math

import torch

from .ops import BACKENDS, get_ops
from .solvers import SOLVERS, AdaptiveRKSolver
from .solvers.base import RHS

_ODECORE_OPTIONS = ("backend", "return_stats")


def _check_y0(y0):
    if isinstance(y0, torch.Tensor):
        tensors = (y0,)
    elif isinstance(y0, tuple):
        if not y0:
            raise ValueError("y0 must not be an empty tuple")
        tensors = y0
    else:
        raise TypeError("y0 must be a torch.Tensor or a tuple of torch.Tensor, got %s" % type(y0).__name__)
    for i, y in enumerate(tensors):
        name = "y0" if isinstance(y0, torch.Tensor) else "y0[%d]" % i
        if not isinstance(y, torch.Tensor):
            raise TypeError("%s must be a torch.Tensor, got %s" % (name, type(y).__name__))
        if not torch.is_floating_point(y):
            raise TypeError("%s must be a floating point tensor, got dtype %s" % (name, y.dtype))
        if y.dtype != tensors[0].dtype:
            raise TypeError("all tensors in y0 must have the same dtype, got %s and %s" % (tensors[0].dtype, y.dtype))
        if y.device != tensors[0].device:
            raise ValueError("all tensors in y0 must be on the same device, got %s and %s" % (tensors[0].device, y.device))
        if not bool(torch.isfinite(y).all()):
            raise ValueError("%s contains NaN or inf" % name)
    return tensors


def _check_t(t, device):
    if not isinstance(t, torch.Tensor):
        raise TypeError("t must be a torch.Tensor, got %s" % type(t).__name__)
    if not torch.is_floating_point(t):
        raise TypeError("t must be a floating point tensor, got dtype %s" % t.dtype)
    if t.dim() != 1:
        raise ValueError("t must be one-dimensional, got shape %s" % (tuple(t.shape),))
    if len(t) == 0:
        raise ValueError("t must contain at least one time")
    if t.device != device:
        raise ValueError("t is on %s but y0 is on %s; put them on the same device" % (t.device, device))
    times = t.detach().tolist()
    if not all(math.isfinite(v) for v in times):
        raise ValueError("t contains NaN or inf")
    increasing = all(b > a for a, b in zip(times[:-1], times[1:]))
    decreasing = all(b < a for a, b in zip(times[:-1], times[1:]))
    if not (increasing or decreasing):
        raise ValueError("t must be strictly increasing or strictly decreasing")
    return times, len(times) > 1 and decreasing


def _tolerance(name, tol, shapes, y0):
    """rtol/atol as float64 tensors holding 1 or y0.numel() values (per tuple element if given so)."""
    is_tuple = shapes is not None
    if is_tuple and not isinstance(tol, (torch.Tensor, float, int)):
        tol = tuple(tol)
        if len(tol) != len(shapes):
            raise ValueError("{} has {} entries but y0 is a tuple of {} tensors".format(name, len(tol), len(shapes)))
        parts = [_tolerance(name, v, None, y0.new_empty(shape)).expand(math.prod(shape)) for v, shape in zip(tol, shapes)]
        return torch.cat(parts)
    if isinstance(tol, torch.Tensor):
        if tol.requires_grad:
            raise ValueError("%s cannot require gradient" % name)
        tol = tol.detach()
    elif not isinstance(tol, (float, int)):
        raise TypeError("%s must be a float or a tensor, got %s" % (name, type(tol).__name__))
    tol = torch.as_tensor(tol, dtype=torch.float64, device=y0.device)
    if torch.isnan(tol).any() or (tol < 0).any():
        raise ValueError("%s must be non-negative, got %s" % (name, tol.tolist() if tol.numel() < 8 else "a tensor with negative or NaN entries"))
    if tol.numel() == 1:
        return tol.reshape(1)
    try:
        return torch.broadcast_to(tol, y0.shape).reshape(-1).contiguous()
    except RuntimeError:
        raise ValueError("%s of shape %s does not broadcast to y0's shape %s" % (name, tuple(tol.shape), tuple(y0.shape))) from None


class _TupleFunc:
    """func on a tuple state, seen by the solver as a function of one flat tensor."""

    def __init__(self, func, shapes):
        self.func = func
        self.shapes = shapes
        self.numels = [math.prod(s) for s in shapes]
        self._checked = False

    def split(self, flat):
        return tuple(part.view(shape) for part, shape in zip(flat.split(self.numels, dim=-1), self.shapes))

    def __call__(self, t, y):
        out = self.func(t, self.split(y))
        if not self._checked:
            if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes):
                raise TypeError("func must return a tuple of %d tensors for a tuple y0, got %s" % (len(self.shapes), type(out).__name__))
            for i, (o, shape) in enumerate(zip(out, self.shapes)):
                if not isinstance(o, torch.Tensor):
                    raise TypeError("func returned %s at position %d, expected a torch.Tensor" % (type(o).__name__, i))
                if o.shape != shape:
                    raise ValueError("func returned shape %s at position %d, but y0[%d] has shape %s" % (tuple(o.shape), i, i, tuple(shape)))
                if o.dtype != y.dtype:
                    raise TypeError("func returned dtype %s at position %d, but y0[%d] has dtype %s" % (o.dtype, i, i, y.dtype))
            self._checked = True
        return torch.cat([o.reshape(-1) for o in out])


def _flip(times):
    if times is None:
        return None
    return -torch.as_tensor(times)


def odeint(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None, event_fn=None):
    """Integrate dy/dt = func(t, y), y(t[0]) = y0, returning y at every time in `t`.

    A drop-in replacement for ``torchdiffeq.odeint`` (0.2.5): same arguments, options, method
    names, defaults and results, with the step arithmetic in fused kernels.

    Args:
        func: callable ``func(t, y)`` returning dy/dt with y's shape and dtype; ``t`` is a 0-d
            tensor of y's dtype. With a tuple ``y0`` it takes and returns a tuple.
        y0: initial state, a floating point tensor of any shape or a tuple of them.
        t: 1-D tensor of times, strictly increasing or strictly decreasing; ``t[0]`` is the
            initial time. It may require grad.
        rtol, atol: relative and absolute tolerances: floats, tensors broadcastable to y0, or
            (tuple y0) one entry per tensor.
        method: one of ``odecore.SOLVERS`` (default 'dopri5').
        options: method options as in torchdiffeq; odecore adds ``backend`` ('fused' or
            'reference', default: the global backend), ``return_stats`` (also return a
            dict with 'nfe', 'n_steps', 'n_accepted', 'n_rejected', 'final_dt', 'loop' and
            'host_reads'), ``checkpoint`` (N: exact gradients from at most N stored steps)
            and ``sync_every`` (K: the device-resident loop reading the host once every K
            steps; default 16 on CUDA, 0 = the host loop elsewhere; see the README).
        event_fn: not supported yet (raises NotImplementedError).

    Returns:
        A tensor of shape ``(len(t), *y0.shape)`` (a tuple of such for a tuple ``y0``), and
        the statistics dict when ``options['return_stats']`` is true.
    """
    if event_fn is not None:
        raise NotImplementedError("odecore.odeint does not support event_fn yet")
    if isinstance(options, dict) and options.get("batch_dim") is not None:
        from .solvers.per_sample import odeint_per_sample

        return odeint_per_sample(func, y0, t, rtol, atol, method, options)
    p = _prepare(func, y0, t, rtol, atol, method, options)
    if len(p.times) == 1:
        solution = p.y0.unsqueeze(0)
        stats = {"nfe": 0, "n_steps": 0, "n_accepted": 0, "n_rejected": 0}
    else:
        t_grad = t.requires_grad and torch.is_grad_enabled()
        start = p.y0
        if t_grad:
            # Gradients for t, exact for the solved trajectory: an output time t_j moves
            # the output along f(t_j, y_j), and the start time moves it by -(dy_j/dy0) f(t0, y0).
            start = p.y0 - _time_sensitivity(p.func, t[:1], p.y0.unsqueeze(0)).squeeze(0)
        solution, stats = _solve(p.func, start, p.times, t.detach(), p.reverse, p.rtol, p.atol, p.method, p.options,
                                 p.backend, p.segments)
        if t_grad:
            solution = solution + _time_sensitivity(p.func, t, solution)
    solution = p.unflatten(solution)
    return (solution, stats) if p.return_stats else solution


class _Problem:
    """A validated, normalised call: flat state, flat func, host times, tolerances, options."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def unflatten(self, solution):
        """(len(t), numel) back to the user's tuple of (len(t), *shape), or the tensor as is."""
        if self.shapes is None:
            return solution
        parts = solution.split(self.segments, dim=1)
        return tuple(part.reshape(len(solution), *shape) for part, shape in zip(parts, self.shapes))


def _prepare(func, y0, t, rtol, atol, method, options):
    tensors = _check_y0(y0)
    is_tuple = not isinstance(y0, torch.Tensor)
    times, reverse = _check_t(t, tensors[0].device)
    if method is None:
        method = "dopri5"
    if method not in SOLVERS:
        raise ValueError('Invalid method "{}". Must be one of {}'.format(method, '{"' + '", "'.join(SOLVERS) + '"}.'))
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        raise TypeError("options must be a dict, got %s" % type(options).__name__)
    else:
        options = dict(options)
    backend = options.pop("backend", None)
    if backend is not None and backend not in BACKENDS:
        raise ValueError("options['backend'] must be one of %s, got %r" % (", ".join(map(repr, BACKENDS)), backend))
    return_stats = bool(options.pop("return_stats", False))

    shapes = [y.shape for y in tensors] if is_tuple else None
    y0_flat = torch.cat([y.reshape(-1) for y in tensors]) if is_tuple else y0
    flat_func = _TupleFunc(func, shapes) if is_tuple else func
    if is_tuple and "norm" in options:
        user_norm = options["norm"]
        options["norm"] = lambda flat: user_norm(flat_func.split(flat))
    if reverse:
        for key in ("step_t", "jump_t"):
            if key in options:
                options[key] = _flip(options[key])
        if options.get("grid_constructor") is not None:
            grid_constructor = options["grid_constructor"]
            options["grid_constructor"] = lambda f, y, tt: -grid_constructor(f, y, -tt)
    return _Problem(
        y0=y0_flat, func=flat_func, times=times, reverse=reverse, shapes=shapes,
        segments=[math.prod(s) for s in shapes] if is_tuple else [y0_flat.numel()],
        rtol=_tolerance("rtol", rtol, shapes, y0_flat), atol=_tolerance("atol", atol, shapes, y0_flat),
        method=method, options=options, backend=backend, return_stats=return_stats,
    )


def _time_sensitivity(func, t, ys):
    """f(t_j, y_j) * (t_j - stop_grad(t_j)): zero in value, f(t_j, y_j) as gradient for t_j."""
    with torch.enable_grad():
        fs = torch.stack([func(tj.detach().to(ys.dtype), y.detach()) for tj, y in zip(t, ys)])
    delta = (t - t.detach()).to(ys.dtype)
    return fs.detach() * delta.view(-1, *([1] * (ys.dim() - 1)))


class _SolverFactory:
    """Everything needed to build the solver of one call, for the flat state given."""

    def __init__(self, func, times, t, reverse, rtol, atol, method, options, backend, segments):
        self.func, self.reverse = func, reverse
        self.sign = -1.0 if reverse else 1.0
        self.times = [self.sign * v for v in times]  # increasing, as the solver sees them
        self.t = self.sign * t
        self.rtol, self.atol, self.method, self.options = rtol, atol, method, options
        self.backend, self.segments = backend, segments

    def __call__(self, y0):
        rhs = RHS(self.func, y0, time_sign=self.sign)
        ops = get_ops(self.backend, y0.device)
        return SOLVERS[self.method](rhs, y0, self.rtol, self.atol, ops=ops, segments=self.segments, **self.options)

    def integrate(self, solver, recorder=None):
        if isinstance(solver, AdaptiveRKSolver):
            return solver.integrate(self.times, recorder=recorder)
        return solver.integrate(self.times, self.t, recorder=recorder)


def _solve(func, y0, times, t, reverse, rtol, atol, method, options, backend, segments):
    """Solves dy/dt = func(t, y) on the flat state y0 at `times` (host floats, in the
    direction of `t`), with the error norm's `segments`; returns (solution, stats).
    ``options['checkpoint'] = N`` (with grad enabled) keeps at most N step checkpoints
    for the backward pass instead of the whole graph (odecore.checkpoint)."""
    options = dict(options)
    checkpoints = options.pop("checkpoint", None)
    factory = _SolverFactory(func, times, t, reverse, rtol, atol, method, options, backend, segments)
    if checkpoints is not None:
        from .checkpoint import checkpointed_solve

        if torch.is_grad_enabled():
            return checkpointed_solve(factory, y0, checkpoints)
    solver = factory(y0)
    return factory.integrate(solver), solver.stats()

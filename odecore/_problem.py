"""What every odeint entry point shares before the solver runs, and how it runs the solver.

Input checks with clear errors, a tuple state as one flat tensor (and a complex one as its real
view), decreasing times as negated time, per-element tolerances, the solver built by name
(`SolverFactory`), the time gradient, and `solve` (direct or checkpointed).
"""

import math
import warnings
from collections.abc import Sequence

import torch

from .checkpoint import checkpointed_solve
from .ops import check_backend, get_ops
from .solvers import SOLVERS, AdaptiveRKSolver, FixedGridRKSolver, compiled
from .solvers.base import ADJOINT_CALLBACK_NAMES, CALLBACK_NAMES, RHS
from .solvers.complex_state import as_complex, for_complex_state

DEFAULT_METHOD = "dopri5"

# the types of the public entry points' arguments
TensorOrTuple = torch.Tensor | tuple[torch.Tensor, ...]
Tolerance = float | torch.Tensor | Sequence[float | torch.Tensor]


def check_y0(y0):
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
        if not (torch.is_floating_point(y) or y.dtype in (torch.complex64, torch.complex128)):
            raise TypeError("%s must be a floating point or complex tensor, got dtype %s" % (name, y.dtype))
        if y.dtype != tensors[0].dtype:
            raise TypeError("all tensors in y0 must have the same dtype, got %s and %s" % (tensors[0].dtype, y.dtype))
        if y.device != tensors[0].device:
            raise ValueError(
                "all tensors in y0 must be on the same device, got %s and %s" % (tensors[0].device, y.device)
            )
        if not bool(torch.isfinite(y).all()):
            raise ValueError("%s contains NaN or inf" % name)
    return tensors


def check_t(t, device):
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


def tolerance(name, tol, shapes, y0):
    """rtol/atol as float64 tensors holding 1 or y0.numel() values (per tuple element if given so)."""
    is_tuple = shapes is not None
    if is_tuple and not isinstance(tol, (torch.Tensor, float, int)):
        tol = tuple(tol)
        if len(tol) != len(shapes):
            raise ValueError("{} has {} entries but y0 is a tuple of {} tensors".format(name, len(tol), len(shapes)))
        parts = [
            tolerance(name, v, None, y0.new_empty(shape)).expand(math.prod(shape)) for v, shape in zip(tol, shapes)
        ]
        return torch.cat(parts)
    if isinstance(tol, torch.Tensor):
        if tol.requires_grad:
            raise ValueError("%s cannot require gradient" % name)
        tol = tol.detach()
    elif not isinstance(tol, (float, int)):
        raise TypeError("%s must be a float or a tensor, got %s" % (name, type(tol).__name__))
    tol = torch.as_tensor(tol, dtype=torch.float64, device=y0.device)
    if torch.isnan(tol).any() or (tol < 0).any():
        raise ValueError(
            "%s must be non-negative, got %s"
            % (name, tol.tolist() if tol.numel() < 8 else "a tensor with negative or NaN entries")
        )
    if tol.numel() == 1:
        return tol.reshape(1)
    try:
        return torch.broadcast_to(tol, y0.shape).reshape(-1).contiguous()
    except RuntimeError:
        raise ValueError(
            "%s of shape %s does not broadcast to y0's shape %s" % (name, tuple(tol.shape), tuple(y0.shape))
        ) from None


def _valid_callbacks(method):
    """The callbacks a method calls (torchdiffeq's ``valid_callbacks``)."""
    cls = SOLVERS[method]
    valid = getattr(cls, "valid_callbacks", None)
    if valid is not None:
        return set(valid())
    return set(CALLBACK_NAMES) if issubclass(cls, AdaptiveRKSolver) else set()


def warn_unsupported_callbacks(method, func, names=CALLBACK_NAMES):
    """torchdiffeq's warning for callbacks of func (`names`, reported without any _adjoint
    suffix) that `method` does not call."""
    callback_names = set()
    for name in names:
        if callable(getattr(func, name, None)):
            callback_names.add(name[: -len("_adjoint")] if name.endswith("_adjoint") else name)
    invalid_callbacks = callback_names - _valid_callbacks(method)
    if len(invalid_callbacks) > 0:
        warnings.warn("Solver '{}' does not support callbacks {}".format(method, invalid_callbacks))


def wrap_callbacks(wrapper, inner, to_inner=None, time_sign=1.0):
    """Gives `wrapper` (a function the solver sees in place of `inner`) inner's callbacks
    as torchdiffeq passes them on: the state turned back by `to_inner`, t0 negated for a
    time_sign of -1; the _adjoint variants are passed on unchanged."""
    for name in CALLBACK_NAMES:
        callback = getattr(inner, name, None)
        if callable(callback):

            def wrapped(t0, y0, dt, _callback=callback):
                return _callback(-t0 if time_sign < 0 else t0, y0 if to_inner is None else to_inner(y0), dt)

            setattr(wrapper, name, wrapped)
    for name in ADJOINT_CALLBACK_NAMES:
        callback = getattr(inner, name, None)
        if callable(callback):
            setattr(wrapper, name, callback)


class TupleFunc:
    """func on a tuple state, seen by the solver as a function of one flat tensor."""

    def __init__(self, func, shapes):
        self.func = func
        self.shapes = shapes
        self.numels = [math.prod(s) for s in shapes]
        self._checked = False
        wrap_callbacks(self, func, self.split)

    def split(self, flat):
        return tuple(part.view(shape) for part, shape in zip(flat.split(self.numels, dim=-1), self.shapes))

    def __call__(self, t, y):
        out = self.func(t, self.split(y))
        if not self._checked:
            if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes):
                raise TypeError(
                    "func must return a tuple of %d tensors for a tuple y0, got %s"
                    % (len(self.shapes), type(out).__name__)
                )
            for i, (o, shape) in enumerate(zip(out, self.shapes)):
                if not isinstance(o, torch.Tensor):
                    raise TypeError("func returned %s at position %d, expected a torch.Tensor" % (type(o).__name__, i))
                if o.shape != shape:
                    raise ValueError(
                        "func returned shape %s at position %d, but y0[%d] has shape %s"
                        % (tuple(o.shape), i, i, tuple(shape))
                    )
                if o.dtype != y.dtype:
                    raise TypeError(
                        "func returned dtype %s at position %d, but y0[%d] has dtype %s" % (o.dtype, i, i, y.dtype)
                    )
            self._checked = True
        return torch.cat([o.reshape(-1) for o in out])


class ComplexFunc:
    """func on a complex state, seen by the solver as a function of its real view (..., 2)
    (see odecore.solvers.complex_state)."""

    complex_view = True

    def __init__(self, func, dtype):
        self.func = func
        self.dtype = dtype
        self._checked = False
        wrap_callbacks(self, func, as_complex)

    def __call__(self, t, y):
        out = self.func(t, as_complex(y))
        if not self._checked:
            if not isinstance(out, torch.Tensor):
                raise TypeError("func must return a torch.Tensor, got %s" % type(out).__name__)
            if out.dtype != self.dtype:
                raise TypeError("func returned dtype %s, but the state y0 has dtype %s" % (out.dtype, self.dtype))
            if out.shape != y.shape[:-1]:
                raise ValueError(
                    "func returned a tensor of shape %s, but the state y0 has shape %s"
                    % (tuple(out.shape), tuple(y.shape[:-1]))
                )
            self._checked = True
        if out.requires_grad and torch.is_grad_enabled():
            # the same values as view_as_real, with a backward that takes any gradient layout
            # (odeint_adjoint hands the VJP views of its flat state, at odd offsets)
            return torch.stack((out.real, out.imag), dim=-1)
        if out.is_conj():
            out = out.resolve_conj()
        return torch.view_as_real(out)


def _flip(times):
    if times is None:
        return None
    return -torch.as_tensor(times)


class Problem:
    """A validated, normalised call: flat state, flat func, host times, tolerances, options."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def unflatten(self, solution):
        """(len(t), numel) back to the user's tuple of (len(t), *shape), or the tensor as is
        (a complex state from its real view)."""
        if self.complex_shape is not None:
            solution = as_complex(solution.reshape(len(solution), -1, 2))
            if self.shapes is None:
                return solution.reshape(len(solution), *self.complex_shape)
        if self.shapes is None:
            return solution
        parts = solution.split([math.prod(s) for s in self.shapes], dim=1)
        return tuple(part.reshape(len(solution), *shape) for part, shape in zip(parts, self.shapes))


def prepare(func, y0, t, rtol, atol, method, options):
    tensors = check_y0(y0)
    is_tuple = not isinstance(y0, torch.Tensor)
    times, reverse = check_t(t, tensors[0].device)
    if method is None:
        method = DEFAULT_METHOD
    if method not in SOLVERS:
        raise ValueError('Invalid method "{}". Must be one of {}'.format(method, '{"' + '", "'.join(SOLVERS) + '"}.'))
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        raise TypeError("options must be a dict, got %s" % type(options).__name__)
    else:
        options = dict(options)
    backend = options.pop("backend", None)
    check_backend(backend)
    return_stats = bool(options.pop("return_stats", False))
    warn_unsupported_callbacks(method, func)

    shapes = [y.shape for y in tensors] if is_tuple else None
    y0_flat = torch.cat([y.reshape(-1) for y in tensors]) if is_tuple else y0
    flat_func = TupleFunc(func, shapes) if is_tuple else func
    if is_tuple and "norm" in options:
        user_norm = options["norm"]
        split = flat_func.split
        options["norm"] = lambda flat: user_norm(split(flat))
    # tolerances per element of y0 (per complex element for a complex y0)
    tolerances = tolerance("rtol", rtol, shapes, y0_flat), tolerance("atol", atol, shapes, y0_flat)
    complex_shape = None
    if y0_flat.is_complex():
        # solved as its real view; func, callbacks, a norm and the output see complex tensors
        complex_shape = y0_flat.shape
        flat_func = ComplexFunc(flat_func, y0_flat.dtype)
        # (stack, not view_as_real: its backward takes gradients at any storage offset)
        y0_flat = torch.stack((y0_flat.real, y0_flat.imag), dim=-1)
    if reverse:
        for key in ("step_t", "jump_t"):
            if key in options:
                options[key] = _flip(options[key])
        if options.get("grid_constructor") is not None:
            grid_constructor = options["grid_constructor"]
            options["grid_constructor"] = lambda f, y, tt: -grid_constructor(f, y, -tt)
    width = 1 if complex_shape is None else 2  # segments count real elements
    return Problem(
        y0=y0_flat,
        func=flat_func,
        times=times,
        reverse=reverse,
        shapes=shapes,
        complex_shape=complex_shape,
        segments=[width * math.prod(s) for s in shapes] if is_tuple else [y0_flat.numel()],
        rtol=tolerances[0],
        atol=tolerances[1],
        method=method,
        options=options,
        backend=backend,
        return_stats=return_stats,
    )


def time_sensitivity(func, t, ys):
    """f(t_j, y_j) * (t_j - stop_grad(t_j)): zero in value, f(t_j, y_j) as gradient for t_j."""
    with torch.enable_grad():
        fs = torch.stack([func(tj.detach().to(ys.dtype), y.detach()) for tj, y in zip(t, ys)])
    delta = (t - t.detach()).to(ys.dtype)
    return fs.detach() * delta.view(-1, *([1] * (ys.dim() - 1)))


class SolverFactory:
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
        cls, rtol, atol = SOLVERS[self.method], self.rtol, self.atol
        if rhs.complex_view:  # a complex state's real view
            cls = for_complex_state(cls)
            if issubclass(cls, FixedGridRKSolver):  # their tolerances act elementwise on the real view
                rtol, atol = (tol.repeat_interleave(2) if tol.numel() > 1 else tol for tol in (rtol, atol))
        return cls(rhs, y0, rtol, atol, ops=ops, segments=self.segments, **self.options)

    def integrate(self, solver, recorder=None):
        if isinstance(solver, AdaptiveRKSolver):
            return solver.integrate(self.times, recorder=recorder)
        return solver.integrate(self.times, self.t, recorder=recorder)


def solve(func, y0, times, t, reverse, rtol, atol, method, options, backend, segments):
    """Solves dy/dt = func(t, y) on the flat state y0 at `times` (host floats, in the
    direction of `t`), with the error norm's `segments`; returns (solution, stats).
    ``options['checkpoint'] = N`` (with grad enabled) keeps at most N step checkpoints
    for the backward pass instead of the whole graph (odecore.checkpoint)."""
    options = dict(options)
    checkpoints = options.pop("checkpoint", None)
    mode = compiled.check_mode(options.pop("compile", False))
    factory = SolverFactory(func, times, t, reverse, rtol, atol, method, options, backend, segments)
    if checkpoints is not None:
        if torch.is_grad_enabled():
            return checkpointed_solve(factory, y0, checkpoints)
    if mode:
        return compiled.solve(factory, y0, mode)
    solver = factory(y0)
    return factory.integrate(solver), solver.stats()

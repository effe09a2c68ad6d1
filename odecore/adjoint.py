"""odeint_adjoint: gradients by the adjoint sensitivity method in constant memory.

Chen, Rubanova, Bettencourt & Duvenaud, "Neural Ordinary Differential Equations", NeurIPS
2018, section 2 and appendix B: the backward pass solves the augmented system
[a_t, y, a = dL/dy, a_theta] backwards in time, one vector-Jacobian product of `func` per
evaluation, instead of storing the forward solver's activations. The forward pass saves
only its outputs at `t`. The seminorm option is from Kidger, Chen & Lyons, "'Hey, that's
not an ODE': Faster ODE Adjoints via Seminorms", ICML 2021.

Semantics follow torchdiffeq 0.2.5's odeint_adjoint; the augmented state is one flat
tensor [a_t (1), y (N), a (N), a_theta (P)] that the same solver classes and fused ops
integrate, with its error norm computed in the same kernel pass (one segment per part).
"""

import copy
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from . import events
from ._problem import (
    SolverFactory,
    TensorOrTuple,
    Tolerance,
    _flip,
    prepare,
    solve,
    tolerance,
    warn_unsupported_callbacks,
    wrap_callbacks,
)
from .ops import get_ops
from .solvers import compiled
from .solvers.base import ADJOINT_CALLBACK_NAMES, CALLBACK_NAMES
from .solvers.per_sample import odeint_per_sample

# Whether the augmented dynamics evaluate in C++ (odecore._C.AdjointDynamics) with the fused
# backend; the tests compare it with the Python evaluation.
NATIVE_DYNAMICS = True


def find_parameters(module):
    """The parameters of `module` that require grad (torchdiffeq's find_parameters)."""
    return [p for p in module.parameters() if p.requires_grad]


def odeint_adjoint(
    func: Callable,
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: Tolerance = 1e-7,
    atol: Tolerance = 1e-9,
    method: str | None = None,
    options: dict | None = None,
    event_fn: Callable | None = None,
    adjoint_rtol: Tolerance | None = None,
    adjoint_atol: Tolerance | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
) -> Any:
    """Like `odeint`, with gradients from the adjoint method (memory constant in the steps).

    ``func`` must be an ``nn.Module`` unless ``adjoint_params`` (possibly ``()``) lists the
    tensors to differentiate. ``adjoint_rtol``/``adjoint_atol``/``adjoint_method`` default to
    the forward ones and ``adjoint_options`` to ``options`` without its norm;
    ``adjoint_options={'norm': 'seminorm'}`` leaves the parameter adjoints out of the
    backward error norm. Gradients reach ``y0``, ``t`` (when it requires grad) and every
    parameter; a parameter that ``func`` does not use gets a zero gradient.
    With ``event_fn`` it returns ``(event_t, solution)`` as `odeint` does, the adjoint pass
    running from the (fixed) event time; ``event_t`` carries the implicit function theorem's
    gradient (torchdiffeq's backpropagates zeros there), the solution is the one at the fixed time.
    """
    if torch.compiler.is_compiling() and event_fn is None:
        # inside the caller's program: its gradient is backpropagation through the traced loop
        return compiled.traced_odeint(func, y0, t, rtol, atol, method, options)
    if adjoint_params is None and not isinstance(func, nn.Module):
        raise ValueError(
            "func must be an instance of nn.Module to specify the adjoint parameters; alternatively they "
            "can be specified explicitly via the `adjoint_params` argument. If there are no parameters "
            "then it is allowable to set `adjoint_params=()`."
        )
    adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options = _adjoint_settings(
        rtol, atol, method, options, adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options
    )
    params = _adjoint_params(func, adjoint_params, adjoint_options)

    per_sample = None
    if isinstance(options, dict) and options.get("batch_dim") is not None:
        # per-sample steps forward (odecore.solvers.per_sample); the backward pass shares its
        # steps over the batch (the parameter adjoints are sums over the samples)
        options = dict(options)
        per_sample = dict(options)
        options.pop("batch_dim")
        adjoint_options.pop("batch_dim", None)
    p = prepare(func, y0, t, rtol, atol, method, options)
    p.per_sample = None if per_sample is None else (func, y0, t, rtol, atol, method, per_sample)
    # torchdiffeq checks the callbacks twice on the forward pass (odeint_adjoint, then its odeint)
    warn_unsupported_callbacks(p.method, func)
    back = _Backward(p, params, adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options)
    # a compiled backward solve needs func's VJP in traceable form: its parameters by name
    params_by_name = isinstance(func, nn.Module) and params == tuple(find_parameters(func))
    back.module = func if params_by_name else None
    if event_fn is not None:  # odecore.events: forward until the event, adjoint from the event time
        return adjoint_event_solve(p, back, params, t, event_fn)
    if len(p.times) == 1:
        solution, stats = (
            p.y0.unsqueeze(0),
            {"nfe": 0, "n_steps": 0, "n_accepted": 0, "n_rejected": 0, "final_dt": None},
        )
    else:
        # Solve in increasing time: a decreasing t is negated (a differentiable op, so t's
        # gradient gets the sign back) and func sees -t and returns -f, as in odeint.
        t_solve = -t if p.reverse else t
        func_solve = _Reversed(p.func) if p.reverse else p.func
        stats = {}
        solution = _AdjointSolve.apply(p, back, func_solve, stats, p.y0, t_solve, *params)
    solution = p.unflatten(solution)
    return (solution, stats) if p.return_stats else solution


def _adjoint_settings(rtol, atol, method, options, adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options):
    """The backward pass's tolerances, method and options, defaulting to the forward ones (torchdiffeq's)."""
    if adjoint_rtol is None:
        adjoint_rtol = rtol
    if adjoint_atol is None:
        adjoint_atol = atol
    if adjoint_method is None:
        adjoint_method = method
    if adjoint_method != method and options is not None and adjoint_options is None:
        raise ValueError(
            "If `adjoint_method != method` then we cannot infer `adjoint_options` from `options`. So as "
            "`options` has been passed then `adjoint_options` must be passed as well."
        )
    if adjoint_options is None:
        adjoint_options = {k: v for k, v in options.items() if k != "norm"} if options is not None else {}
    else:
        adjoint_options = dict(adjoint_options)
    return adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options


def _adjoint_params(func, adjoint_params, adjoint_options):
    """The tensors the backward pass differentiates: func's parameters unless given, those requiring grad."""
    params = tuple(find_parameters(func)) if adjoint_params is None else tuple(adjoint_params)
    for i, q in enumerate(params):
        if not isinstance(q, torch.Tensor):
            raise TypeError("adjoint_params[%d] must be a torch.Tensor, got %s" % (i, type(q).__name__))
    n_given = len(params)
    params = tuple(p for p in params if p.requires_grad)
    if len(params) != n_given and callable(adjoint_options.get("norm")):
        warnings.warn(
            "An adjoint parameter was passed without requiring gradient. For efficiency this will be "
            "excluded from the adjoint pass, and will not appear as a tensor in the adjoint norm."
        )
    return params


class _Reversed:
    def __init__(self, func):
        self.func = func
        self.complex_view = getattr(func, "complex_view", False)
        wrap_callbacks(self, func, time_sign=-1.0)  # callbacks get the caller's (un-negated) t0

    def __call__(self, t, y):
        return -self.func(-t, y)


def _rms(x):
    return x.abs().pow(2).mean().sqrt()


class _Backward:
    """The augmented backward system: flat state [a_t (1), y (N), a (N), a_theta (P)], its
    tolerances, method, options and error-norm segments.

    ``settings`` holds what torchdiffeq keeps on the output's grad_fn (adjoint_rtol, adjoint_atol,
    adjoint_method and adjoint_options, whose 'norm' is the callable the backward pass uses on the
    tuple (a_t, y, adj_y, *adj_params)); code may replace them before calling backward, and
    `configure` rebuilds the system from them."""

    def __init__(self, p, params, rtol, atol, method, options):
        self.params = params
        self.n = p.y0.numel()
        self.param_sizes = [q.numel() for q in params]
        self.parts = [1, self.n, self.n] + self.param_sizes
        # torchdiffeq's default adjoint norm measures y and adj_y with the forward norm
        forward_norm = p.options.get("norm") if p.complex_shape is None else None
        self.state_norm = forward_norm if callable(forward_norm) else None
        self.default_norm, self.seminorm = self._default_norms(p)
        options = dict(options, norm=self._exposed_norm(options.get("norm"), p))
        self.settings = (rtol, atol, method, options)
        self.configure(p, rtol, atol, method, options)

    def configure(self, p, rtol, atol, method, options):
        """The backward solves' method, backend, options, norm and tolerances from torchdiffeq's settings."""
        options = dict(options)
        options.pop("return_stats", None)
        self.method = p.method if method is None else method
        self.backend = options.pop("backend", p.backend)
        self.segments = self._segments(options.pop("norm", None), options, p)
        if not p.reverse:
            # the backward solves run in negated time (-t); decreasing t already was negated forward
            for key in ("step_t", "jump_t"):
                if key in options:
                    options[key] = _flip(options[key])
            if options.get("grid_constructor") is not None:
                grid_constructor = options["grid_constructor"]  # sees [t_i, t_(i-1)], as torchdiffeq's
                options["grid_constructor"] = lambda f, y, tt: -grid_constructor(f, y, -tt)
        self.options = options
        like = p.y0.new_empty(sum(self.parts))
        self.rtol = self._tolerance("adjoint_rtol", rtol, like)
        self.atol = self._tolerance("adjoint_atol", atol, like)

    def changed(self, rtol, atol, method, options):
        """Whether grad_fn's settings were replaced after the forward pass (by identity, not by value)."""
        rtol0, atol0, method0, options0 = self.settings
        if rtol is not rtol0 or atol is not atol0 or method is not method0 or options.keys() != options0.keys():
            return True
        return any(options[key] is not value for key, value in options0.items())

    def _segments(self, norm, options, p):
        """The error norm as fused-norm segments, or options['norm'] on the flat state for any other norm."""
        if norm is None:
            norm = self.default_norm
        elif isinstance(norm, str) and norm == "seminorm":
            norm = self.seminorm
        if not callable(norm):
            raise ValueError("adjoint_options['norm'] must be a callable or 'seminorm', got %r" % (norm,))
        if self.state_norm is None and (norm is self.default_norm or norm is self.seminorm):
            # the largest of |a_t|, the state norm of y and of a, and the RMS of each parameter
            # adjoint; the seminorm leaves those out (negative segments)
            sign = -1 if norm is self.seminorm else 1
            return [1] + p.segments + p.segments + [sign * size for size in self.param_sizes]
        options["norm"] = self._flat_norm(norm, p)
        return [sum(self.parts)]

    def _default_norms(self, p):
        """torchdiffeq's default adjoint norm and seminorm on (a_t, y, adj_y, *adj_params)."""
        state_norm = self.state_norm
        if state_norm is None:

            def state_norm(y):
                return max(_rms(part) for part in y.reshape(-1).split(p.segments))

        def default_adjoint_norm(tensor_tuple):
            a_t, y, adj_y, *adj_params = tensor_tuple
            return max(a_t.abs(), state_norm(y), state_norm(adj_y), *[_rms(x) for x in adj_params])

        def adjoint_seminorm(tensor_tuple):
            a_t, y, adj_y, *_ = tensor_tuple
            return max(a_t.abs(), state_norm(y), state_norm(adj_y))

        return default_adjoint_norm, adjoint_seminorm

    def _exposed_norm(self, norm, p):
        """The user's adjoint norm as torchdiffeq stores it: one taking (a_t, y, adj_y, *adj_params),
        y and adj_y flat for a tuple state, which it hands on as (a_t, *y, *adj_y, *adj_params)."""
        if norm is None:
            return self.default_norm
        if isinstance(norm, str) and norm == "seminorm":
            return self.seminorm
        if not callable(norm):
            raise ValueError("adjoint_options['norm'] must be a callable or 'seminorm', got %r" % (norm,))
        if p.shapes is None:
            return norm

        def split(flat):
            return tuple(x[0] for x in p.unflatten(flat.reshape(1, -1)))

        def tuple_adjoint_norm(tensor_tuple):
            a_t, y, adj_y, *adj_params = tensor_tuple
            return norm((a_t, *split(y), *split(adj_y), *adj_params))

        return tuple_adjoint_norm

    def _tolerance(self, name, tol, like):
        """A float or one-element tensor, or (as torchdiffeq) one entry per augmented part."""
        if isinstance(tol, (tuple, list)):
            if len(tol) != len(self.parts):
                raise ValueError(
                    "%s has %d entries, but the augmented state has %d parts (a_t, y, adj_y and one per "
                    "parameter)" % (name, len(tol), len(self.parts))
                )
            return torch.cat([tolerance(name, v, None, like[:1]).expand(size) for v, size in zip(tol, self.parts)])
        if isinstance(tol, torch.Tensor) and tol.numel() != 1:
            raise ValueError(
                "%s must be a float, a one-element tensor or one entry per augmented part; got a tensor of "
                "shape %s (pass adjoint_rtol/adjoint_atol explicitly)" % (name, tuple(tol.shape))
            )
        return tolerance(name, tol, None, like)

    def _flat_norm(self, norm, p):
        """`norm` of (a_t, y, adj_y, *adj_params) as a norm of the flat augmented state; y and adj_y
        have y0's shape (flat for a tuple state), as torchdiffeq's backward odeint gives them."""

        def adjoint_norm(flat):
            a_t, y, adj_y, *adj_params = flat.split(self.parts)
            if p.shapes is None:
                y, adj_y = y.view(p.y0.shape), adj_y.view(p.y0.shape)
            adj_params = [x.view_as(q) for x, q in zip(adj_params, self.params)]
            return norm((a_t.reshape(()), y, adj_y, *adj_params))

        return adjoint_norm

    def split(self, z):
        return z.split(self.parts)


try:  # the autograd engine without torch.autograd.grad's argument normalisation
    from torch.autograd.graph import _engine_run_backward
except ImportError:  # pragma: no cover - older or newer torch
    _engine_run_backward = None


def vector_jacobian_product(f, inputs, v):
    """v^T df/d(inputs) for each input (None where f does not depend on it); `v` has f's
    shape and dtype (checked by the caller), so torch.autograd.grad's checks are skipped.

    The graph is retained, as torchdiffeq's VJP retains it: f may depend on tensors whose graph
    was built outside func (torchcde's coefficients in adjoint_params), which every evaluation
    backpropagates through. f's own graph is still freed with f, on return (tests/test_adjoint_dropin.py)."""
    if not f.requires_grad:
        return (None,) * len(inputs)
    if _engine_run_backward is not None:
        return _engine_run_backward((f,), (v,), True, False, inputs, True, False)
    return torch.autograd.grad(f, inputs, v, allow_unused=True, retain_graph=True)


def _check_backward_output(f, shape, dtype):
    if not isinstance(f, torch.Tensor) or f.shape != shape or f.dtype != dtype:
        raise ValueError(
            "odeint_adjoint: func returned %s during the backward pass, expected a tensor of shape %s "
            "and dtype %s" % (getattr(f, "shape", type(f).__name__), tuple(shape), dtype)
        )


class _AugmentedDynamics:
    """d/dt [a_t, y, a, a_theta] = [-a.df/dt, f, -a.df/dy, -a.df/dtheta]: one evaluation
    and one vector-Jacobian product of func. y and a are views of the flat state; the
    derivative is written in one pass (one concatenation of the VJP's outputs).

    It is only ever integrated backwards in time, so it returns the derivative with respect
    to the solver's reversed time directly, [a.df/dt, -f, a.df/dy, a.df/dtheta]
    (``negated_when_reversed``): the VJP takes a itself and only f is negated, instead of
    negating a and then the whole augmented derivative.

    As torchdiffeq 0.2.5 does in practice, the VJP always includes t, so the a_t part
    (and with it the backward error norm and steps) matches torchdiffeq's whether or not
    t requires grad."""

    negated_when_reversed = True

    def __init__(self, func, back, shape):
        self.func = func
        self.back = back
        self.shape = shape
        self._zeros = None
        self._checked = False
        # the C++ evaluation (odecore._C.AdjointDynamics), made after the first call's checks
        # with the fused backend; the compiled host loop calls it without Python
        self._odecore_native = None
        # func's callback_*_adjoint become this system's callbacks (as torchdiffeq), given the
        # augmented state as the tuple (a_t, y, a, *a_theta)
        for name, adjoint_name in zip(CALLBACK_NAMES, ADJOINT_CALLBACK_NAMES):
            callback = getattr(func, adjoint_name, None)
            if callable(callback):
                setattr(self, name, lambda t0, z, dt, _callback=callback: _callback(t0, self.split(z), dt))

    def split(self, z):
        """The flat augmented state as torchdiffeq's tuple (a_t, y, a, *a_theta)."""
        a_t, y, a, *adj_params = z.split(self.back.parts)
        return (
            a_t.view(()),
            y.view(self.shape),
            a.view(self.shape),
            *(x.view_as(q) for x, q in zip(adj_params, self.back.params)),
        )

    def __call__(self, t, z):
        native = self._odecore_native
        if native is not None:
            return native(t, z)
        back, n, shape = self.back, self.back.n, self.shape
        y = z[1 : 1 + n].view(shape)
        a = z[1 + n : 1 + 2 * n].view(shape)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            t = t.detach().requires_grad_(True)
            f = self.func(t, y)
            if not self._checked:
                self._check(f, z)
            vjps = vector_jacobian_product(f, (t, y) + back.params, a)
        pieces = [f.detach().reshape(-1).neg()]
        for i, vjp in enumerate(vjps):
            pieces.append(self._zeros[i] if vjp is None else vjp.reshape(-1))
        pieces[0], pieces[1] = pieces[1], pieces[0]  # order: a_t, -f, a_y, a_theta
        return torch.cat(pieces)

    def _check(self, f, z):
        _check_backward_output(f, self.shape, z.dtype)
        if any(q.dtype != z.dtype for q in self.back.params):
            raise TypeError(
                "odeint_adjoint: the parameters must have the state's dtype %s, got %s"
                % (z.dtype, sorted({str(q.dtype) for q in self.back.params}))
            )
        self._zeros = [z.new_zeros(size) for size in [1, self.back.n] + self.back.param_sizes]
        self._checked = True
        if NATIVE_DYNAMICS and self.back.backend != "reference":
            native = getattr(get_ops(self.back.backend, z.device), "AdjointDynamics", None)
            if native is not None:
                # the checker holds no reference to self (the C++ object's Python references are
                # invisible to the garbage collector)
                check = functools.partial(_check_backward_output, shape=self.shape, dtype=z.dtype)
                self._odecore_native = native(
                    self.func, list(self.back.params), list(self.shape), self.back.n, self._zeros, check
                )


class _Reparametrized(nn.Module):
    """func with `module`'s parameters swappable by torch.func.functional_call ("module.<name>")."""

    def __init__(self, func, module):
        super().__init__()
        self.module = module
        object.__setattr__(self, "func", func)  # a wrapper of module, not a second registration

    def forward(self, t, y):
        return self.func(t, y)


class TracedAugmentedDynamics:
    """The augmented dynamics of `_AugmentedDynamics` written with torch.func.vjp, so that a compiled
    backward solve (options['compile']) traces func and its vector-Jacobian product into the program.
    Its compiled programs belong to the module (`compile_owner`), so every backward pass reuses them."""

    negated_when_reversed = True

    def __init__(self, func, module, shape, n):
        self.swap = _Reparametrized(func, module)
        self.names = ["module." + name for name, q in module.named_parameters() if q.requires_grad]
        self.shape, self.n = shape, n
        self.compile_owner = module

    def __call__(self, t, z):
        n, shape = self.n, self.shape
        y, a = z[1 : 1 + n].view(shape), z[1 + n : 1 + 2 * n].view(shape)
        params = [self.swap.get_parameter(name) for name in self.names]

        def f(tt, yy, *qs):
            return torch.func.functional_call(self.swap, dict(zip(self.names, qs)), (tt, yy))

        out, pullback = torch.func.vjp(f, t, y, *params)
        vjp_t, vjp_y, *vjp_params = pullback(a)
        pieces = [vjp_t.reshape(-1), out.reshape(-1).neg(), vjp_y.reshape(-1)] + [v.reshape(-1) for v in vjp_params]
        return torch.cat(pieces)


_SETTING_NAMES = ("adjoint_rtol", "adjoint_atol", "adjoint_method", "adjoint_options")


def expose_settings(ctx, p, back, params, event_mode):
    """Keeps on ctx (the output's grad_fn) what torchdiffeq 0.2.5's OdeintAdjointMethod keeps, by the
    same names: shapes (None for a tensor state), the backward pass's settings (adjoint_options['norm']
    the callable it uses) and event_mode. Code that replaces one before calling backward changes the
    backward pass (see `_current_backward`)."""
    ctx.shapes = p.shapes
    rtol, atol, method, options = back.settings
    ctx.adjoint_rtol, ctx.adjoint_atol, ctx.adjoint_method = rtol, atol, method
    ctx.adjoint_options = dict(options)  # a copy: the original tells what was changed
    ctx.adjoint_params = tuple(params)  # torchdiffeq's are saved_tensors[2:] (t and y saved here too)
    ctx.event_mode = event_mode


def _current_backward(ctx):
    """ctx.back, or a copy configured from the settings on ctx where code replaced them after forward."""
    back = ctx.back
    if not hasattr(ctx, "adjoint_options"):
        return back
    settings = [getattr(ctx, name) for name in _SETTING_NAMES]
    if not isinstance(settings[3], dict):
        raise TypeError("grad_fn.adjoint_options must be a dict, got %s" % type(settings[3]).__name__)
    if not back.changed(*settings):
        return back
    back = copy.copy(back)
    back.configure(ctx.p, *settings)
    return back


def _backward_dynamics(func, back, shape):
    """The augmented dynamics the backward solves integrate: traceable when they will be compiled."""
    has_callbacks = any(callable(getattr(func, name, None)) for name in ADJOINT_CALLBACK_NAMES)
    if back.options.get("compile") and back.module is not None and not has_callbacks:
        return TracedAugmentedDynamics(func, back.module, shape, back.n)
    return _AugmentedDynamics(func, back, shape)


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p, back, func, stats, y0, t, *params):
        with torch.no_grad():
            if getattr(p, "per_sample", None) is not None:
                user_func, user_y0, user_t, rtol, atol, method, options = p.per_sample
                solution, forward_stats = odeint_per_sample(
                    user_func, user_y0.detach(), user_t.detach(), rtol, atol, method, dict(options, return_stats=True)
                )
                solution = solution.reshape(len(user_t), -1)
            else:
                solution, forward_stats = solve(
                    func, y0, t.tolist(), t.detach(), False, p.rtol, p.atol, p.method, p.options, p.backend, p.segments
                )
        stats.update(forward_stats)
        ctx.p, ctx.back, ctx.func, ctx.stats = p, back, func, stats
        ctx.t_requires_grad = t.requires_grad
        expose_settings(ctx, p, back, params, event_mode=False)
        ctx.save_for_backward(t, solution)
        return solution

    @staticmethod
    def backward(ctx, grad_solution):
        t, solution = ctx.saved_tensors
        p, stats = ctx.p, ctx.stats
        back = _current_backward(ctx)
        n, shape = back.n, p.y0.shape
        dynamics = _backward_dynamics(ctx.func, back, shape)
        times = t.tolist()
        with torch.no_grad():
            grad_solution = grad_solution.reshape(len(times), -1)
            flat_solution = solution.reshape(len(times), -1)
            aug = solution.new_zeros(sum(back.parts))
            aug[1 : 1 + n] = flat_solution[-1]
            aug[1 + n : 1 + 2 * n] = grad_solution[-1]
            time_vjps = torch.zeros(len(times), dtype=t.dtype, device=t.device) if ctx.t_requires_grad else None
            totals = dict.fromkeys(("nfe", "n_steps", "n_accepted", "n_rejected"), 0)
            final_dt, loop = None, (None, None)
            for i in range(len(times) - 1, 0, -1):
                if ctx.t_requires_grad:
                    # moving the output time t_i moves y(t_i) along f(t_i, y_i)
                    f_i = ctx.func(t[i].to(solution.dtype), solution[i])
                    dl_dt = (f_i.reshape(-1) * grad_solution[i]).sum()
                    aug[0] -= dl_dt
                    time_vjps[i] = dl_dt
                warn_unsupported_callbacks(back.method, ctx.func, ADJOINT_CALLBACK_NAMES)  # per solve, as torchdiffeq
                out, step_stats = solve(
                    dynamics,
                    aug,
                    [times[i], times[i - 1]],
                    t[i - 1 : i + 1].flip(0).detach(),
                    True,
                    back.rtol,
                    back.atol,
                    back.method,
                    dict(back.options),
                    back.backend,
                    back.segments,
                )
                for key in totals:
                    # None: not known for this solver (scipy_solver's implicit methods)
                    totals[key] = (
                        None if totals[key] is None or step_stats[key] is None else totals[key] + step_stats[key]
                    )
                final_dt = step_stats.get("final_dt")
                loop = (step_stats.get("loop"), step_stats.get("compiles"))
                aug = out[1].clone()
                aug[1 : 1 + n] = flat_solution[i - 1]  # the forward pass's state, not the re-integrated one
                aug[1 + n : 1 + 2 * n] += grad_solution[i - 1]
            if ctx.t_requires_grad:
                time_vjps[0] = aug[0]
        totals["final_dt"] = final_dt  # of the last backward solve (the one ending at t[0])
        totals["loop"], totals["compiles"] = loop
        stats.update({"backward_" + key: value for key, value in totals.items()})
        _, _, adj_y, *adj_params = back.split(aug)
        grad_params = [g.view_as(q).to(q.dtype) for g, q in zip(adj_params, back.params)]
        return (None, None, None, None, adj_y.view(shape), time_vjps, *grad_params)


def adjoint_event_solve(p, back, params, t, event_fn):
    """odeint_adjoint(..., event_fn=event_fn), from odeint_adjoint's prepared problem `p` and
    backward system `back`: the adjoint pass runs from the event time (held fixed) to t0.
    event_t gets the implicit function theorem's gradient (events.implicit_gradient) through
    y(event_t) and its adjoint; the solution is the one at the fixed event time, as torchdiffeq's,
    so odeint_event(..., odeint_interface=odeint_adjoint) adds the event time's terms once."""
    events.check_event_problem(p)
    p = copy.copy(p)
    split = events.event_splitter(p)
    p.event = events.combine_event_fn(event_fn, t[0], p.y0, split)
    # solve in increasing time, as odeint_adjoint does
    t_solve = -t if p.reverse else t
    func_solve = _Reversed(p.func) if p.reverse else p.func
    stats = {}
    event_t, solution = _AdjointEventSolve.apply(p, back, func_solve, stats, p.y0, t_solve, *params)
    if p.reverse:
        event_t = -event_t
    flat_event_fn = lambda tt, y: event_fn(tt, split(y))  # noqa: E731
    event_t, _ = events.implicit_gradient(p.func, p.y0, t, flat_event_fn, event_t, solution)
    solution = p.unflatten(solution)
    return (event_t, solution, stats) if p.return_stats else (event_t, solution)


class _AdjointEventSolve(_AdjointSolve):
    """_AdjointSolve whose forward pass stops at the event; the backward pass is the adjoint
    from [t0, event_t] (event_t fixed, as in torchdiffeq; adjoint_event_solve adds event_t's gradient)."""

    @staticmethod
    def forward(ctx, p, back, func, stats, y0, t, *params):
        opts = dict(p.options)
        opts.pop("checkpoint", None)
        with torch.no_grad():
            times = t.tolist()
            factory = SolverFactory(
                func, times, t.detach(), False, p.rtol, p.atol, p.method, opts, p.backend, p.segments
            )
            # the event function sees the user's time: -s when the solve runs in negated time
            sign = -1.0 if p.reverse else 1.0
            combined = p.event if sign > 0 else (lambda tt, y: p.event(-tt, y))
            s, y_event, forward_stats = events.solve_until_event(factory, y0, combined)
            solution = torch.stack([y0, y_event])
        stats.update(forward_stats)
        event_s = torch.tensor(s, dtype=t.dtype, device=t.device)
        ctx.p, ctx.back, ctx.func, ctx.stats = p, back, func, stats
        ctx.t_requires_grad = t.requires_grad
        expose_settings(ctx, p, back, params, event_mode=True)
        ctx.save_for_backward(torch.stack([t[0].detach(), event_s]), solution)
        ctx.mark_non_differentiable(event_s)
        return event_s, solution

    @staticmethod
    def backward(ctx, grad_event_t, grad_solution):
        grads = list(_AdjointSolve.backward(ctx, grad_solution))
        if grads[5] is not None:  # only t0 gets a gradient (torchdiffeq's event mode)
            grads[5] = torch.cat([grads[5][:1], torch.zeros_like(grads[5][1:])])
        return tuple(grads)

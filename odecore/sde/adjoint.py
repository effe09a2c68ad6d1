"""sdeint_adjoint: gradients of SDE solutions by the stochastic adjoint, in constant memory.

Li, Wong, Chen & Duvenaud, "Scalable Gradients for Stochastic Differential Equations",
AISTATS 2020; torchsde 0.2.6's ``sdeint_adjoint`` interface.

Gradients reach ``y0`` and every adjoint parameter that requires grad (a parameter that ``sde``
does not use gets a zero gradient). ``ts`` (a tensor or a list of floats) must not require
grad. ``bm`` is any Brownian motion sdeint accepts (queried as ``bm(ta, tb)``, forwards and then
backwards); by default the same seeded ``BrownianInterval`` that sdeint would create. The
forward solve is sdeint's, adaptive with ``adaptive=True`` (rtol, atol, dt_min); ``extra=True``
also returns its final extra solver state and ``extra_solver_state`` starts it, as sdeint's.
``adjoint_method`` defaults as in torchsde (Ito: milstein for diagonal noise, euler otherwise;
Stratonovich: midpoint; ``method='reversible_heun'``: adjoint_reversible_heun); the backward
solve takes fixed steps of ``dt`` from each output time. ``adjoint_options`` (odecore:
``backend``, ``max_num_steps``) defaults to ``options`` without milstein's ``grad_free``. The
gradients are those of the continuous problem discretised backwards, so they agree with
backpropagation through ``sdeint`` only up to the discretisation error (it vanishes as dt -> 0,
at the schemes' strong order); with ``method='reversible_heun'`` and
``adjoint_method='adjoint_reversible_heun'`` they are those of the forward solution itself (to
rounding; odecore.sde.reversible), also for adaptive steps and output times off the step grid.

Double backward (``create_graph=True``) differentiates the backward solve itself: the second
derivatives are those of the computed gradients (the outputs' own sensitivities again from the
adjoint; memory then grows with the steps of the backward solve); third derivatives raise
NotImplementedError. torchsde differentiates the adjoint SDE again instead (Stratonovich only).
With adjoint_reversible_heun the first derivatives are still computed under create_graph=True,
and differentiating them raises NotImplementedError.

Supported: noise types diagonal (g_i a function of y_i, as for Milstein), scalar and additive;
general noise for Stratonovich SDEs; forward methods those of sdeint; adjoint methods euler
(Ito), milstein (Ito or Stratonovich; diagonal/additive noise), midpoint and heun
(Stratonovich), adjoint_reversible_heun (for method='reversible_heun'). Not supported
(NotImplementedError): adjoint_adaptive, logqp, general noise for Ito SDEs and the adjoint
methods srk, euler_heun and reversible_heun; log_ode and a grad_free Milstein adjoint raise
torchsde's ValueErrors.
"""

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .methods import ADJOINT_REVERSIBLE_HEUN, DEFAULT_METHOD, METHODS, default_levy_area, solver_for
from .reversible import reversible_heun_gradients
from .sdeint import Trajectory, as_times, default_brownian, integrate, sdeint
from .system import SDESystem

__all__ = ["sdeint_adjoint"]

# torchsde 0.2.6's default adjoint method (adjoint.py::_select_default_adjoint_method).
DEFAULT_ADJOINT_METHOD = {
    "ito": {"diagonal": "milstein", "additive": "euler", "scalar": "euler", "general": "euler"},
    "stratonovich": dict.fromkeys(("diagonal", "additive", "scalar", "general"), "midpoint"),
}
# The sdeint method that steps the augmented system for each adjoint method (see _AdjointSDE:
# milstein is an Euler step whose increment includes the Milstein term).
_STEPPER = {"euler": "euler", "milstein": "euler", "midpoint": "midpoint", "heun": "heun"}
_NO_REVERSIBLE_DOUBLE_BACKWARD = (
    "odecore.sdeint_adjoint: the gradients of adjoint_method='adjoint_reversible_heun' cannot be "
    "differentiated again (double backward); use another adjoint_method or odecore.sdeint"
)
_NO_THIRD_DERIVATIVES = "odecore.sdeint_adjoint supports second derivatives (double backward), not third ones"


def sdeint_adjoint(
    sde: object,
    y0: torch.Tensor,
    ts: torch.Tensor | Sequence[float],
    bm: Callable | None = None,
    method: str | None = None,
    adjoint_method: str | None = None,
    dt: float = 1e-3,
    adaptive: bool = False,
    adjoint_adaptive: bool = False,
    rtol: float = 1e-5,
    adjoint_rtol: float = 1e-5,
    atol: float = 1e-4,
    adjoint_atol: float = 1e-4,
    dt_min: float = 1e-5,
    options: dict | None = None,
    adjoint_options: dict | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
    names: dict | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: tuple | None = None,
) -> torch.Tensor | tuple:
    """Like ``odecore.sdeint`` (torchsde 0.2.6's ``sdeint_adjoint`` signature), with gradients
    from the stochastic adjoint: the backward pass solves the adjoint SDE backwards in time on
    the same Brownian path (fixed steps of ``dt``), so memory does not grow with the number of
    steps. ``sde`` must be an ``nn.Module`` unless ``adjoint_params`` (possibly ``()``) lists
    the tensors to differentiate. The forward solve is sdeint's (``adaptive``, ``extra``,
    ``extra_solver_state`` as there); ``adjoint_method`` defaults as in torchsde. With
    ``method='reversible_heun'`` the default adjoint_reversible_heun gives the gradients of the
    forward solution itself; create_graph=True gives second derivatives. The module docstring
    has the details, what is supported and the differences from torchsde.
    """
    for flag, name in ((adjoint_adaptive, "adjoint_adaptive=True"), (logqp, "logqp=True")):
        if flag:
            raise NotImplementedError("odecore.sdeint_adjoint does not support %s yet" % name)
    if adjoint_params is None and not isinstance(sde, nn.Module):
        raise ValueError(
            "sde must be an instance of nn.Module to specify the adjoint parameters; alternatively they "
            "can be specified explicitly via the `adjoint_params` argument. If there are no parameters "
            "then it is allowable to set `adjoint_params=()`."
        )
    problem, extra_in = _prepare(
        sde, y0, ts, bm, method, adjoint_method, dt, adaptive, rtol, atol, dt_min, options, adjoint_options,
        adjoint_params, names, extra_solver_state,
    )  # fmt: skip
    ys, *final = _SdeintAdjoint.apply(problem, y0, *extra_in, *problem.params)
    return (ys, tuple(final)) if extra else ys


def _prepare(
    sde, y0, ts, bm, method, adjoint_method, dt, adaptive, rtol, atol, dt_min, options, adjoint_options,
    adjoint_params, names, extra_solver_state,
):  # fmt: skip
    """(the _Problem of a call, the forward solve's initial extra state) once the arguments are
    checked and the defaults chosen."""
    system = SDESystem(sde, names)
    ts = _check_supported(system, y0, ts)
    method = DEFAULT_METHOD[system.sde_type] if method is None else method
    if adjoint_method is None:
        adjoint_method = (
            ADJOINT_REVERSIBLE_HEUN
            if method == "reversible_heun"
            else DEFAULT_ADJOINT_METHOD[system.sde_type][system.noise_type]
        )
    adjoint_options = _adjoint_options(dict(options or {}), adjoint_options, adjoint_method)
    _check_adjoint_method(adjoint_method, method, system)
    params = _differentiated(tuple(sde.parameters()) if adjoint_params is None else tuple(adjoint_params), y0)
    if bm is None:
        with torch.no_grad():  # what sdeint does with bm=None, so that the same seed gives the same path
            bm = default_brownian(system, y0.detach(), float(ts[0]), float(ts[-1]), default_levy_area(method))
    extra_in = _initial_extra(system, method, y0, ts, extra_solver_state)
    problem = _Problem(
        sde=sde, system=system, names=names, ts=ts, bm=bm, method=method, adjoint_method=adjoint_method, dt=dt,
        adaptive=adaptive, rtol=rtol, atol=atol, dt_min=dt_min, options=dict(options or {}),
        adjoint_options=adjoint_options, params=params, n_extra=len(extra_in),
        extra_given=extra_solver_state is not None or method == "reversible_heun",
        reversible=adjoint_method == ADJOINT_REVERSIBLE_HEUN,
    )  # fmt: skip
    return problem, extra_in


def _check_supported(system, y0, ts):
    """The noise and SDE types, y0 and ts are ones the adjoint handles (sdeint checks the rest);
    returns ts as a tensor."""
    if system.noise_type == "general" and system.sde_type == "ito":
        raise NotImplementedError(
            "odecore.sdeint_adjoint does not support general noise (noise_type='general') for "
            "Ito SDEs yet; write the SDE in Stratonovich form (sde_type='stratonovich', drift "
            "f - 1/2 sum_j (dg_j/dy) g_j) or use diagonal, scalar or additive noise"
        )
    if not isinstance(y0, torch.Tensor) or not torch.is_floating_point(y0):
        raise TypeError("y0 must be a floating point tensor")
    if y0.dim() != 2:
        raise ValueError("y0 must be of shape (batch, d), got %s" % (tuple(y0.shape),))
    ts = as_times(ts, y0)
    if ts.requires_grad:
        raise ValueError(
            "ts must not require grad: odecore.sdeint_adjoint gives no gradient with respect to the output times"
        )
    return ts


def _adjoint_options(options, adjoint_options, adjoint_method):
    """adjoint_options, by default options without milstein's grad_free; torchsde's ValueError
    for a derivative-free Milstein adjoint."""
    if adjoint_options is None:
        return {k: v for k, v in options.items() if k != "grad_free"}
    if not isinstance(adjoint_options, dict):
        raise TypeError("adjoint_options must be a dict, got %s" % type(adjoint_options).__name__)
    if adjoint_method == "milstein" and adjoint_options.get("grad_free", False) is True:
        raise ValueError(
            "Derivative-free Milstein cannot be used for adjoint SDEs, because it requires "
            "direct access to the diffusion, whilst adjoint SDEs rely on a more efficient "
            "diffusion-vector product. Use derivative-using Milstein instead: "
            "`adjoint_options=dict(grad_free=False)`"
        )
    return dict(adjoint_options)


def _check_adjoint_method(adjoint_method, method, system):
    if adjoint_method == ADJOINT_REVERSIBLE_HEUN:
        if method != "reversible_heun":
            raise ValueError(
                "adjoint_method=%r differentiates method='reversible_heun' only, got method=%r"
                % (ADJOINT_REVERSIBLE_HEUN, method)
            )
        return
    if method == "reversible_heun":
        warnings.warn("method='reversible_heun', but adjoint_method!='adjoint_reversible_heun'.")
    if adjoint_method == "log_ode":
        raise ValueError(
            "Log-ODE schemes cannot be used for adjoint SDEs, because they require "
            "direct access to the diffusion, whilst adjoint SDEs rely on a more efficient "
            "diffusion-vector product. Use a different method instead. (adjoint_method='log_ode')"
        )
    if adjoint_method in METHODS and adjoint_method not in _STEPPER:
        raise NotImplementedError(
            "odecore.sdeint_adjoint does not support adjoint_method=%r yet; use one of %s"
            % (adjoint_method, sorted(_STEPPER) + [ADJOINT_REVERSIBLE_HEUN])
        )
    solver_for(adjoint_method, system, "adjoint_method", "; the adjoint SDE has the forward SDE's type")
    if adjoint_method == "milstein" and system.noise_type == "scalar":
        raise ValueError("adjoint_method 'milstein' needs diagonal or additive noise, got scalar")
    if not _plain(system, adjoint_method):
        system.require_g("the adjoint of an Ito SDE (or adjoint_method 'milstein')")


def _plain(system, adjoint_method):
    """Whether the adjoint's increment needs only f and g dW (no derivative of g): Stratonovich
    SDEs without the Milstein term, and additive noise."""
    if system.noise_type in ("additive", "general"):
        return True
    return not (system.sde_type == "ito" or (adjoint_method == "milstein" and system.noise_type == "diagonal"))


def _initial_extra(system, method, y0, ts, extra_solver_state):
    """The forward solve's initial extra state, as inputs of the autograd function (so that
    gradients reach what it was computed from): reversible_heun's (f, g, z) at (ts[0], y0)."""
    if extra_solver_state is not None:
        if not isinstance(extra_solver_state, (tuple, list)):
            raise ValueError(
                "extra_solver_state must be a tuple of tensors, got %s" % type(extra_solver_state).__name__
            )
        return tuple(extra_solver_state)
    if method != "reversible_heun":
        return ()
    system.require_g("method 'reversible_heun'")
    f, g = system.f_and_g(torch.scalar_tensor(float(ts[0]), dtype=y0.dtype, device=y0.device), y0)
    return (f, g, y0)


def _differentiated(params, y0):
    """The adjoint parameters that require grad, once all are tensors of y0's dtype and device."""
    for q in params:
        if not isinstance(q, torch.Tensor):
            raise TypeError("adjoint_params must be tensors, got %r" % (type(q).__name__,))
    params = tuple(q for q in params if q.requires_grad)
    if any(q.dtype != y0.dtype or q.device != y0.device for q in params):
        raise TypeError(
            "odecore.sdeint_adjoint: the adjoint parameters must have y0's dtype %s and device %s, got %s"
            % (y0.dtype, y0.device, sorted({"%s on %s" % (q.dtype, q.device) for q in params}))
        )
    return params


class _Problem:
    """Everything the forward and backward solves need (the autograd.Function's context)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


class _SdeintAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, problem, y0, *extra_and_params):
        p = problem
        extra_in, params = extra_and_params[: p.n_extra], extra_and_params[p.n_extra :]
        trajectory = Trajectory() if p.reversible else None
        with torch.no_grad():
            ys, _, final = integrate(
                p.sde,
                y0.detach(),
                p.ts,
                p.bm,
                p.method,
                p.dt,
                p.adaptive,
                p.rtol,
                p.atol,
                p.dt_min,
                p.options,
                p.names,
                False,
                tuple(x.detach() for x in extra_in) if p.extra_given else None,
                trajectory,
            )
            final = tuple(x.clone() for x in final)
        ctx.problem, ctx.trajectory, ctx.n_final = p, trajectory, len(final)
        # The parameters are saved only so that autograd reports their in-place modification
        # between forward and backward; the backward uses the same tensors through p.params.
        ctx.save_for_backward(ys, *(final if p.reversible else ()), *params)
        return (ys, *final)

    @staticmethod
    def backward(ctx, grad_ys, *grad_final):
        p = ctx.problem
        ys = ctx.saved_tensors[0]
        if p.reversible:
            final = ctx.saved_tensors[1 : 1 + ctx.n_final]
            with torch.no_grad():
                adj_y, adj_extra, adj_params = reversible_heun_gradients(
                    p.system, p.bm, p.params, ys, final, grad_ys, grad_final, ctx.trajectory
                )
            grads = (adj_y, *adj_extra, *adj_params)
            if torch.is_grad_enabled():  # create_graph=True: first derivatives only
                grads = _FirstOrderOnly.apply(_NO_REVERSIBLE_DOUBLE_BACKWARD, len(grads), *grads, grad_ys, *p.params)
            return (None, *grads)
        # create_graph=True (grad mode on): the backward solve is recorded, so that its result
        # can be differentiated again (see _Increment)
        differentiable = torch.is_grad_enabled()
        with torch.set_grad_enabled(differentiable):
            adj_y, grads = _adjoint_solve(p, ys, grad_ys, differentiable)
        return (None, adj_y, *([None] * p.n_extra), *grads)


class _FirstOrderOnly(torch.autograd.Function):
    """The first n inputs, passed on (as gradients of the inputs after them); differentiating
    them raises NotImplementedError(message), their own graph not being recorded."""

    @staticmethod
    def forward(ctx, message, n, *tensors):
        ctx.message = message
        return tuple(x.clone() for x in tensors[:n])

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(ctx.message)


def _adjoint_solve(p, ys, grad_ys, differentiable):
    """dL/dy0 and dL/d each parameter by the adjoint SDE, solved backwards between the outputs."""
    shape, n = ys.shape[1:], ys[0].numel()
    sizes = [q.numel() for q in p.params]
    aug = _AdjointSDE(p.system, p.params, shape, p.adjoint_method, differentiable)
    bm = _ReplayedBrownian(p.bm, aug, ys)
    grad_ys = grad_ys.reshape(len(ys), n)
    flat_ys = ys.reshape(len(ys), n)
    adj_y = grad_ys[-1].clone()
    adj_params = ys.new_zeros(sum(sizes))
    for i in range(len(ys) - 1, 0, -1):
        z = torch.cat([flat_ys[i], adj_y, adj_params]).unsqueeze(0)
        span = torch.stack([-p.ts[i], -p.ts[i - 1]]).detach()
        z = sdeint(aug, z, span, bm=bm, method=_STEPPER[p.adjoint_method], dt=p.dt, options=p.adjoint_options)[-1, 0]
        # y restarts from the saved forward value; a collects this output's gradient.
        adj_y = z[n : 2 * n] + grad_ys[i - 1]
        adj_params = z[2 * n :]
    grads = [g.view_as(q) for g, q in zip(adj_params.split(sizes), p.params)]
    return adj_y.view(shape), grads


class _ReplayedBrownian:
    """The Brownian motion that sdeint sees in the backward solve: for a reverse step
    [s0, s1] it fetches the forward increment bm(-s1, -s0) (the *same* path, queried in
    reverse), hands it and h = s1 - s0 to the augmented SDE, and returns a unit increment.

    sdeint asks an SDE for f(t, y) and the matrix g(t, y), never for the product g dW, and the
    augmented diffusion is a (2N + P) x (number of Brownian coordinates) matrix that would cost
    one VJP per Brownian coordinate to build. So the adjoint system is given to sdeint as a
    scalar-noise SDE with drift 0 driven by this unit increment, whose "diffusion" at a point is
    that evaluation's whole increment h F(z) + G(z) dW (+ the Milstein term): sdeint's update
    z + 0 h + increment * 1, and its midpoint and Heun stages, are then exactly the Euler,
    midpoint and Heun steps of the adjoint system (all three are linear in h F + G dW)."""

    def __init__(self, bm, aug, like):
        self.bm, self.aug = bm, aug
        self.one = like.new_ones(1, 1)

    def __call__(self, s0, s1):
        self.aug.set_step(s1 - s0, self.bm(-s1, -s0))
        return self.one


class _AdjointSDE:
    """The augmented adjoint system in reverse time s = -t on the flat state z = [y, a = dL/dy,
    a_theta] (shape (1, 2N + P)), as sdeint sees it: scalar noise with a unit increment, drift 0
    and "diffusion" the evaluation's increment h F(z) + G(z) dW (+ Milstein term) for the step
    announced by `set_step` (see _ReplayedBrownian). sdeint asks for f and then g at the same
    point; both come from one evaluation.

    For the Stratonovich SDE dy = f dt + g o dW the adjoint system is

        dy = -f ds - g o dW,   da = (a df/dy) ds + (a dg/dy) o dW,   da_theta = (a df/dtheta) ds + (a dg/dtheta) o dW

    (the y-part re-integrates the forward path backwards; at every output time it is reset to
    the saved forward value and a receives that output's incoming gradient); it needs only f and
    g dW, from the sde's f_and_g_prod where it has one. An Ito SDE is the Stratonovich one with
    drift f - 1/2 g dg/dy; its adjoint is solved in Ito form, like torchsde 0.2.6: the
    Stratonovich adjoint plus the Ito-Stratonovich correction of the *augmented* diffusion,
    which for diagonal noise (g' = dg_i/dy_i, ( )_c a constant factor) comes out as

        dy = -(f - g g') ds - g dW,   d(a, a_theta) = grad_(y, theta)[a.f - (a g)_c . g'] ds + (a dg/d(y, theta)) dW

    and similarly with a Jacobian-vector product for scalar noise. Each evaluation costs one call
    each of f and g (or one of f_and_g / f_and_g_prod) and one ``torch.autograd.grad`` (the
    vector-Jacobian products of f, g and g' with their weights together); with Ito diagonal noise
    or the Milstein adjoint g' is taken with ``create_graph`` first, so that grad includes second
    derivatives (as torchsde's). ``adjoint_method='milstein'`` is sdeint's Euler step on an
    increment that includes the Milstein term 1/2 sum_j (dG_j/dz G_j)(dW_j^2 - h) (Ito; dW_j^2 for
    Stratonovich) of the augmented system, which for diagonal noise needs no Brownian cross terms.

    ``differentiable`` (double backward): each evaluation is an `_Increment` node, so that the
    backward solve's result is a differentiable function of the saved outputs, the incoming
    gradients and the parameters."""

    noise_type = "scalar"

    def __init__(self, system, params, shape, adjoint_method, differentiable=False):
        self.system, self.params, self.shape = system, params, shape
        self.n = shape.numel()
        self.ito = system.sde_type == "ito"
        self.milstein = adjoint_method == "milstein"
        self.plain = _plain(system, adjoint_method)
        self.sde_type = "ito" if _STEPPER[adjoint_method] == "euler" else "stratonovich"
        self.differentiable = differentiable
        self.checked = False
        self._h = self._dw = None
        self._at = (None, None)
        self._zero = self._increment = None

    def set_step(self, h, dw):
        self._h, self._dw = h, dw

    def f(self, t, z):
        self._evaluate(t, z)
        if self._zero is None or self._zero.shape != z.shape:
            self._zero = torch.zeros_like(z)
        return self._zero

    def g(self, t, z):
        self._evaluate(t, z)
        return self._increment

    def _evaluate(self, t, z):
        if self._at[0] is t and self._at[1] is z:
            return
        if self.differentiable:
            self._increment = _Increment.apply(self, t, z, *self.params)
        else:
            self._increment = self.increment_at(t, z, create_graph=False)
        self._at = (t, z)

    def increment_at(self, t, z, create_graph):
        """h F(z) + G(z) dW (+ Milstein term) at z for the announced step, shape (1, 2N + P, 1):
        with ``create_graph`` a differentiable function of z (y's part included) and the
        parameters; else a constant."""
        n, system, h, dw = self.n, self.system, self._h, self._dw
        y = z[0, :n].view(self.shape)
        if not create_graph:
            y = y.detach().requires_grad_(True)
        a = z[0, n : 2 * n].view(self.shape)
        with torch.enable_grad():
            if self.plain:  # f and g dW suffice: Stratonovich without the Milstein term, or additive noise
                f, gdw = system.f_and_g_prod(-t, y, dw)
                self._check(y, f, gdw)
                y_inc, outputs, weights = -(h * f + gdw), [f, gdw], [h * a, a]
            else:
                f, g = system.f_and_g(-t, y)
                self._check(y, f, None, g)
                split = self._diagonal if system.noise_type == "diagonal" else self._scalar
                y_inc, outputs, weights = split(y, a, f, g, h, dw, create_graph)
            inputs = (y,) + self.params
            pairs = [(o, w) for o, w in zip(outputs, weights) if o.requires_grad]
            vjps = (None,) * len(inputs)
            if pairs:  # else neither f nor g depends on y or a parameter
                vjps = torch.autograd.grad(
                    [o for o, _ in pairs], inputs, [w for _, w in pairs], allow_unused=True, create_graph=create_graph
                )
        pieces = [(y_inc if create_graph else y_inc.detach()).reshape(-1)]
        for x, vjp in zip(inputs, vjps):
            pieces.append(torch.zeros(x.numel(), dtype=z.dtype, device=z.device) if vjp is None else vjp.reshape(-1))
        return torch.cat(pieces).view(1, -1, 1)

    def _check(self, y, f, gdw, g=None):
        if self.checked:
            return
        if g is not None:
            self.system.check(y, f, g)
        else:
            self.system.check_drift(y, f)
            self.system.check_drift(y, gdw, "sde.g_prod (g dW)")
        self.checked = True

    def _diagonal(self, y, a, f, g, h, dw, create_graph):
        """Diagonal noise, g_i a function of y_i: with g' = dg_i/dy_i, v2 = dW^2 - h (Ito) or
        dW^2 (Stratonovich) for the Milstein term and 0 otherwise, and k = h for the Ito
        correction (0 for Stratonovich), the y-increment is -h f - g dW + g g' (k + v2/2) and
        the (a, a_theta)-increment is the gradient over (y, theta) of
            h a.f + (a (dW + v2/2 g'))_c . g - (a g (k + v2/2))_c . g'
        (outputs [f, g, g'] and their weights, the ( )_c)."""
        y_inc = -(h * f + g * dw)
        outputs, weights = [f, g], [h * a, a * dw]
        if (self.ito or self.milstein) and g.requires_grad:
            (gp,) = torch.autograd.grad(g, y, torch.ones_like(g), create_graph=True, allow_unused=True)
            if gp is not None:
                v2 = (dw * dw - h if self.ito else dw * dw) if self.milstein else torch.zeros_like(dw)
                c = (h if self.ito else 0.0) + 0.5 * v2
                y_inc = y_inc + g * gp * c
                weights[1] = weights[1] + 0.5 * v2 * a * gp
                outputs.append(gp)
                weights.append(-(a * g * c))
        return y_inc, outputs, weights

    def _scalar(self, y, a, f, g, h, dw, create_graph):
        """Scalar noise, column c = g[..., 0] and one Brownian coordinate per batch row. Ito:
        the y-increment gains h J c (J = dc/dy, a Jacobian-vector product by double
        backward) and the (a, a_theta)-gradient's scalar loses h (J^T a) . c_c."""
        c = g[..., 0]
        y_inc = -(h * f + c * dw)
        outputs, weights = [f, c], [h * a, a * dw]
        if self.ito and c.requires_grad:
            probe = torch.zeros_like(c, requires_grad=True)
            (jt_probe,) = torch.autograd.grad(c, y, probe, create_graph=True, allow_unused=True)
            if jt_probe is not None:  # c depends on y
                weight = c if create_graph else c.detach()
                (jc,) = torch.autograd.grad(jt_probe, probe, weight, retain_graph=True, create_graph=create_graph)
                (jt_a,) = torch.autograd.grad(c, y, a, create_graph=True, retain_graph=True)
                y_inc = y_inc + h * jc
                outputs.append(jt_a)
                weights.append(-h * c)
        return y_inc, outputs, weights


class _Increment(torch.autograd.Function):
    """One evaluation of the adjoint's increment as an autograd node (double backward): the
    forward records the increment's graph from a leaf copy of z and the parameters (so that its
    vector-Jacobian products are partial derivatives), the backward differentiates that graph."""

    @staticmethod
    def forward(ctx, aug, t, z, *params):
        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            increment = aug.increment_at(t, leaf, create_graph=True)
        ctx.graph = (increment, leaf, params)
        return increment.detach()

    @staticmethod
    def backward(ctx, grad):
        increment, leaf, params = ctx.graph
        inputs = (leaf,) + tuple(params)
        if not increment.requires_grad:
            return (None, None) + (None,) * len(inputs)
        with torch.no_grad():
            grads = torch.autograd.grad(increment, inputs, grad, allow_unused=True, retain_graph=True)
        if torch.is_grad_enabled():  # create_graph=True on the second derivatives: they cannot be differentiated
            present = [g for g in grads if g is not None]
            passed = iter(_FirstOrderOnly.apply(_NO_THIRD_DERIVATIVES, len(present), *present, grad, *params))
            grads = tuple(None if g is None else next(passed) for g in grads)
        return (None, None) + tuple(grads)

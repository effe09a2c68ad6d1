"""sdeint_adjoint: gradients of SDE solutions by the stochastic adjoint, in constant memory.

Li, Wong, Chen & Duvenaud, "Scalable Gradients for Stochastic Differential Equations",
AISTATS 2020; torchsde 0.2.6's ``sdeint_adjoint`` interface.
"""

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .methods import DEFAULT_METHOD, METHODS, needs_levy_area, solver_for
from .sdeint import default_brownian, sdeint
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


def sdeint_adjoint(
    sde: object,
    y0: torch.Tensor,
    ts: torch.Tensor,
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
    extra_solver_state: object = None,
) -> torch.Tensor:
    """Like ``odecore.sdeint`` (torchsde 0.2.6's ``sdeint_adjoint`` signature), with gradients
    from the stochastic adjoint: the backward pass solves the adjoint SDE backwards in time on
    the same Brownian path, so memory does not grow with the number of steps.

    ``sde`` must be an ``nn.Module`` unless ``adjoint_params`` (possibly ``()``) lists the
    tensors to differentiate; gradients reach ``y0`` and every one of them that requires grad
    (a parameter that ``sde`` does not use gets a zero gradient). ``ts`` must not require
    grad. ``bm`` is any Brownian motion sdeint accepts (queried as ``bm(ta, tb)``, forwards
    and then backwards); by default the same seeded ``BrownianInterval`` that sdeint would
    create. ``adjoint_method`` defaults as in torchsde (Ito: milstein for diagonal noise,
    euler otherwise; Stratonovich: midpoint); the backward solve uses the same ``dt``.
    ``adjoint_options`` (odecore: ``backend``) defaults to ``options``. rtol, atol,
    adjoint_rtol, adjoint_atol and dt_min only matter for adaptive steps, which are not
    supported. The gradients are those of the continuous problem discretised backwards, so
    they agree with backpropagation through ``sdeint`` only up to the discretisation error
    (it vanishes as dt -> 0, at the schemes' strong order).

    Supported: noise types diagonal (g_i a function of y_i, as for Milstein), scalar and
    additive; general noise for Stratonovich SDEs; forward methods those of sdeint; adjoint
    methods euler (Ito), milstein (Ito or Stratonovich; diagonal/additive noise), midpoint and
    heun (Stratonovich). Not supported (NotImplementedError): adaptive, adjoint_adaptive,
    logqp, extra, extra_solver_state, general noise for Ito SDEs, adjoint_method='srk', and
    double backward (differentiating the gradients again raises).
    """
    for flag, name in (
        (adaptive, "adaptive=True"),
        (adjoint_adaptive, "adjoint_adaptive=True"),
        (logqp, "logqp=True"),
        (extra, "extra=True"),
        (extra_solver_state is not None, "extra_solver_state"),
    ):
        if flag:
            raise NotImplementedError("odecore.sdeint_adjoint does not support %s yet" % name)
    if adjoint_params is None and not isinstance(sde, nn.Module):
        raise ValueError(
            "sde must be an instance of nn.Module to specify the adjoint parameters; alternatively they "
            "can be specified explicitly via the `adjoint_params` argument. If there are no parameters "
            "then it is allowable to set `adjoint_params=()`."
        )
    system = SDESystem(sde, names)
    _check_supported(system, y0, ts)
    method = DEFAULT_METHOD[system.sde_type] if method is None else method
    if adjoint_method is None:
        adjoint_method = DEFAULT_ADJOINT_METHOD[system.sde_type][system.noise_type]
    _check_adjoint_method(adjoint_method, system)
    options = dict(options or {})
    adjoint_options = dict(options if adjoint_options is None else adjoint_options)
    params = _differentiated(tuple(sde.parameters()) if adjoint_params is None else tuple(adjoint_params), y0)
    if bm is None:
        with torch.no_grad():  # what sdeint does with bm=None, so that the same seed gives the same path
            bm = default_brownian(system, y0.detach(), float(ts[0]), float(ts[-1]), needs_levy_area(method))
    problem = _Problem(sde, system, names, ts, bm, method, adjoint_method, dt, options, adjoint_options, params)
    return _SdeintAdjoint.apply(problem, y0, *params)


def _check_supported(system, y0, ts):
    """The noise and SDE types, y0 and ts are ones the adjoint handles (sdeint checks the rest)."""
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
    if not isinstance(ts, torch.Tensor) or ts.dim() != 1 or len(ts) < 1:
        raise ValueError("ts must be a non-empty 1-D tensor")
    if ts.requires_grad:
        raise ValueError(
            "ts must not require grad: odecore.sdeint_adjoint gives no gradient with respect to the output times"
        )


def _check_adjoint_method(adjoint_method, system):
    if adjoint_method in METHODS and adjoint_method not in _STEPPER:
        raise NotImplementedError(
            "odecore.sdeint_adjoint does not support adjoint_method=%r yet; use one of %s"
            % (adjoint_method, sorted(_STEPPER))
        )
    solver_for(adjoint_method, system, "adjoint_method", "; the adjoint SDE has the forward SDE's type")


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

    def __init__(self, sde, system, names, ts, bm, method, adjoint_method, dt, options, adjoint_options, params):
        self.sde, self.system, self.names, self.ts, self.bm = sde, system, names, ts, bm
        self.method, self.adjoint_method, self.dt = method, adjoint_method, dt
        self.options, self.adjoint_options, self.params = options, adjoint_options, params


class _SdeintAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, problem, y0, *params):
        p = problem
        with torch.no_grad():
            ys = sdeint(p.sde, y0.detach(), p.ts, bm=p.bm, method=p.method, dt=p.dt, options=p.options, names=p.names)
        ctx.problem = p
        # The parameters are saved only so that autograd reports their in-place modification
        # between forward and backward; the backward uses the same tensors through p.params.
        ctx.save_for_backward(ys, *params)
        return ys

    @staticmethod
    def backward(ctx, grad_ys):
        if torch.is_grad_enabled():
            # create_graph=True: the gradients would silently be constants of any later
            # differentiation, so refuse (torchsde differentiates the adjoint again instead).
            raise NotImplementedError(
                "odecore.sdeint_adjoint does not support double backward (differentiating its "
                "gradients, e.g. backward with create_graph=True); use odecore.sdeint"
            )
        with torch.no_grad():
            return _SdeintAdjoint._backward(ctx, grad_ys)

    @staticmethod
    def _backward(ctx, grad_ys):
        p = ctx.problem
        ys = ctx.saved_tensors[0]
        shape, n = ys.shape[1:], ys[0].numel()
        sizes = [q.numel() for q in p.params]
        aug = _AdjointSDE(p.system, p.params, shape, p.adjoint_method)
        bm = _ReplayedBrownian(p.bm, aug, ys)
        grad_ys = grad_ys.reshape(len(ys), n)
        flat_ys = ys.reshape(len(ys), n)
        adj_y = grad_ys[-1].clone()
        adj_params = ys.new_zeros(sum(sizes))
        for i in range(len(ys) - 1, 0, -1):
            z = torch.cat([flat_ys[i], adj_y, adj_params]).unsqueeze(0)
            span = torch.stack([-p.ts[i], -p.ts[i - 1]]).detach()
            z = sdeint(aug, z, span, bm=bm, method=_STEPPER[p.adjoint_method], dt=p.dt, options=p.adjoint_options)[
                -1, 0
            ]
            # y restarts from the saved forward value; a collects this output's gradient.
            adj_y = z[n : 2 * n] + grad_ys[i - 1]
            adj_params = z[2 * n :]
        grads = [g.view_as(q) for g, q in zip(adj_params.split(sizes), p.params)]
        return (None, adj_y.view(shape), *grads)


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
    the saved forward value and a receives that output's incoming gradient). An Ito SDE is the
    Stratonovich one with drift f - 1/2 g dg/dy; its adjoint is solved in Ito form, like
    torchsde 0.2.6: the Stratonovich adjoint plus the Ito-Stratonovich correction of the
    *augmented* diffusion, which for diagonal noise (g' = dg_i/dy_i, ( )_c a constant factor)
    comes out as

        dy = -(f - g g') ds - g dW,   d(a, a_theta) = grad_(y, theta)[a.f - (a g)_c . g'] ds + (a dg/d(y, theta)) dW

    and similarly with a Jacobian-vector product for scalar noise. Each evaluation costs one call
    each of f and g and one ``torch.autograd.grad`` (the drift's and the noise's VJPs together,
    as one scalar); with Ito diagonal noise or the Milstein adjoint g' is taken with
    ``create_graph`` first, so that grad includes second derivatives (as torchsde's).
    ``adjoint_method='milstein'`` is sdeint's Euler step on an increment that includes the
    Milstein term 1/2 sum_j (dG_j/dz G_j)(dW_j^2 - h) (Ito; dW_j^2 for Stratonovich) of the
    augmented system, which for diagonal noise needs no Brownian cross terms."""

    noise_type = "scalar"

    def __init__(self, system, params, shape, adjoint_method):
        self.system, self.params, self.shape = system, params, shape
        self.n = shape.numel()
        self.ito = system.sde_type == "ito"
        self.milstein = adjoint_method == "milstein"
        self.sde_type = "ito" if _STEPPER[adjoint_method] == "euler" else "stratonovich"
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
        n, system, h, dw = self.n, self.system, self._h, self._dw
        y = z[0, :n].view(self.shape).detach().requires_grad_(True)
        a = z[0, n : 2 * n].view(self.shape)
        with torch.enable_grad():
            f, g = system.f(-t, y), system.g(-t, y)
            if not self.checked:
                system.check(y, f, g)
                self.checked = True
            if system.noise_type == "diagonal":
                y_inc, phi = self._diagonal(y, a, f, g, h, dw)
            elif system.noise_type == "scalar":
                y_inc, phi = self._scalar(y, a, f, g, h, dw)
            else:  # additive, or general for Stratonovich SDEs: g does not enter the Ito correction
                gdw = torch.bmm(g, dw.unsqueeze(-1)).squeeze(-1)
                y_inc = -(h * f + gdw).detach()
                phi = (a * (h * f + gdw)).sum()
            inputs = (y,) + self.params
            if phi.requires_grad:
                vjps = torch.autograd.grad(phi, inputs, allow_unused=True)
            else:  # neither f nor g depends on y or a parameter
                vjps = (None,) * len(inputs)
        pieces = [y_inc.reshape(-1)]
        for x, vjp in zip(inputs, vjps):
            pieces.append(torch.zeros(x.numel(), dtype=z.dtype, device=z.device) if vjp is None else vjp.reshape(-1))
        self._increment = torch.cat(pieces).view(1, -1, 1)
        self._at = (t, z)

    def _diagonal(self, y, a, f, g, h, dw):
        """Diagonal noise, g_i a function of y_i: with g' = dg_i/dy_i, v2 = dW^2 - h (Ito) or
        dW^2 (Stratonovich) for the Milstein term and 0 otherwise, and k = h for the Ito
        correction (0 for Stratonovich), the y-increment is -h f - g dW + g g' (k + v2/2) and
        the (a, a_theta)-increment is the gradient over (y, theta) of
            h a.f + (a (dW + v2/2 g'))_c . g - (a g (k + v2/2))_c . g'."""
        y_inc = -(h * f + g * dw)
        phi = (a * (h * f + g * dw)).sum()
        if (self.ito or self.milstein) and g.requires_grad:
            (gp,) = torch.autograd.grad(g, y, torch.ones_like(g), create_graph=True, allow_unused=True)
            if gp is not None:
                v2 = (dw * dw - h if self.ito else dw * dw) if self.milstein else torch.zeros_like(dw)
                c = (h if self.ito else 0.0) + 0.5 * v2
                y_inc = y_inc + g * gp * c
                phi = phi + ((0.5 * v2 * a * gp).detach() * g).sum() - ((a * g * c).detach() * gp).sum()
        return y_inc.detach(), phi

    def _scalar(self, y, a, f, g, h, dw):
        """Scalar noise, column c = g[..., 0] and one Brownian coordinate per batch row. Ito:
        the y-increment gains h J c (J = dc/dy, a Jacobian-vector product by double
        backward) and the (a, a_theta)-gradient's scalar loses h (J^T a) . c_c."""
        c = g[..., 0]
        y_inc = -(h * f + c * dw)
        phi = (a * (h * f + c * dw)).sum()
        if self.ito and c.requires_grad:
            probe = torch.zeros_like(c, requires_grad=True)
            (jt_probe,) = torch.autograd.grad(c, y, probe, create_graph=True, allow_unused=True)
            if jt_probe is not None:  # c depends on y
                (jc,) = torch.autograd.grad(jt_probe, probe, c.detach(), retain_graph=True)
                (jt_a,) = torch.autograd.grad(c, y, a, create_graph=True, retain_graph=True)
                y_inc = y_inc + h * jc
                phi = phi - h * (jt_a * c.detach()).sum()
        return y_inc.detach(), phi

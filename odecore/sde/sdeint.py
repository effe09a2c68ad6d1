"""sdeint, torchsde 0.2.6's interface: argument checks, the stepping loop, adaptive step doubling
and the logqp augmentation. The methods' steps are in odecore.sde.methods."""

import copy
import math
import warnings
from collections.abc import Callable, Sequence

import torch

from ..ops import check_backend, get_ops
from .brownian import BrownianInterval
from .methods import DEFAULT_METHOD, solver_for
from .system import SDESystem

# Default bound on the steps (attempts, when adaptive) between two output times, as odeint's.
MAX_NUM_STEPS = 2**31 - 1


def sdeint(
    sde: object,
    y0: torch.Tensor,
    ts: torch.Tensor | Sequence[float],
    bm: Callable | None = None,
    method: str | None = None,
    dt: float = 1e-3,
    adaptive: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-4,
    dt_min: float = 1e-5,
    options: dict | None = None,
    names: dict | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: tuple | None = None,
) -> torch.Tensor | tuple:
    """Solves an SDE at the times `ts`; torchsde.sdeint's signature. Returns (len(ts), batch, d).

    ``sde`` has ``f(t, y)`` (drift), ``g(t, y)`` (diffusion) or instead / as well torchsde's
    ``f_and_g(t, y)``, ``g_prod(t, y, v)`` and ``f_and_g_prod(t, y, v)`` (the combined call is
    used where defined, see SDESystem), ``noise_type`` ('diagonal', 'scalar', 'additive',
    'general') and ``sde_type`` ('ito', 'stratonovich'); ``y0`` is (batch, d); ``ts`` a 1-D
    tensor or a list / tuple of floats (made a tensor of y0's dtype). Steps are of size ``dt``
    (the last one shortened to end on ``ts[-1]``), or adaptive (``adaptive=True``, see
    `_attempt`; ``dt`` is then the first step size), and outputs between steps are linearly
    interpolated, as torchsde does. ``bm(t0, t1)`` gives each step's Brownian increment; by
    default a seeded `BrownianInterval` on [ts[0], ts[-1]]. ``method``: 'euler', 'milstein',
    'srk' (Ito), 'heun', 'midpoint', 'euler_heun', 'reversible_heun', 'log_ode' (Stratonovich;
    milstein solves both) (odecore.sde.methods). ``logqp=True`` returns (ys, log_ratio) (see
    `with_logqp`); ``extra=True`` returns (ys, extra_solver_state) (or (ys, log_ratio,
    extra_solver_state)): the method's extra state after the last step, () but for
    reversible_heun's (f, g, z), which ``extra_solver_state=`` accepts back to continue a solve.
    ``options``: torchsde's ``grad_free`` (milstein's derivative-free variant) and odecore's
    ``backend`` ('fused' or 'reference') and ``max_num_steps`` (the most steps, or adaptive
    attempts, between two output times; RuntimeError naming t and dt beyond it, as odeint's).

    Differences from torchsde: the default Ito method is ``euler`` (torchsde: ``srk`` unless the
    noise is general); with ``adaptive=True``, ``dt_min`` must be > 0 and ``rtol``, ``atol`` >= 0
    (ValueError; torchsde does not check); milstein's scalar-noise term is J g (torchsde: J^T g);
    an extra_solver_state that does not fit the method is refused (ValueError; torchsde ignores
    it). Adaptive runs of srk and additive-noise euler take torchsde's steps on the same Brownian
    path; the fused updates of the other methods can differ from torchsde's in the last bit,
    which can move a step, so theirs match only statistically.
    """
    ys, log_ratio, final = integrate(
        sde, y0, ts, bm, method, dt, adaptive, rtol, atol, dt_min, options, names, logqp, extra_solver_state
    )
    out = (ys,) + ((log_ratio,) if log_ratio is not None else ()) + ((final,) if extra else ())
    return out if len(out) > 1 else ys


class Trajectory:
    """What a solve records for sdeint_adjoint's exact reversible gradients: ``steps``, the
    (t0, t1) of every step that makes the solution (an accepted adaptive attempt's two halves),
    and ``outputs``, for each output time (i_prev, w_prev, i_curr, w_curr): the output is
    w_prev * state[i_prev] + w_curr * state[i_curr], state[i] the state after i steps."""

    def __init__(self):
        self.steps, self.outputs = [], []


def integrate(
    sde: object,
    y0: torch.Tensor,
    ts: torch.Tensor | Sequence[float],
    bm: Callable | None = None,
    method: str | None = None,
    dt: float = 1e-3,
    adaptive: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-4,
    dt_min: float = 1e-5,
    options: dict | None = None,
    names: dict | None = None,
    logqp: bool = False,
    extra_solver_state: tuple | None = None,
    trajectory: Trajectory | None = None,
) -> tuple:
    """sdeint's solve: (ys, log_ratio or None, the final extra solver state); records the steps
    and output weights into `trajectory` when given."""
    logqp = bool(logqp)
    system = SDESystem(sde, names)
    if logqp:
        system = with_logqp(system, sde)
    times = _check_state_and_times(y0, ts, dt)
    if method is None:
        method = DEFAULT_METHOD[system.sde_type]
    if adaptive and method == "euler" and system.noise_type != "additive":  # torchsde warns before it refuses
        warnings.warn(
            "Numerical solution is not guaranteed to converge to the correct solution when using "
            "adaptive time-stepping with the Euler--Maruyama method with non-additive noise."
        )
    solver_class = solver_for(method, system)
    tolerances = _check_tolerances(rtol, atol, dt_min) if adaptive else None
    backend, max_num_steps, method_options = _parse_options(options)
    ops = get_ops(backend, y0.device)
    d = y0.shape[1]
    if logqp:  # torchsde's augmented state: the log-ratio integral as one more coordinate
        y0 = torch.cat([y0, y0.new_zeros(y0.shape[0], 1)], dim=1)
    if bm is None:
        bm = default_brownian(system, y0, times[0], times[-1], solver_class.default_levy_area)
    elif logqp and system.noise_type == "diagonal" and tuple(getattr(bm, "shape", ()))[-1:] == (d,):
        bm = _PaddedBrownian(bm)
    _check_levy_area(bm, solver_class)
    solver = solver_class(system, bm, ops, y0, method_options)
    if extra_solver_state is None:
        extra0 = solver.init_extra(times[0], y0)
    else:
        extra0 = solver.check_extra(extra_solver_state, y0)
    out, final = _solve(solver.step, y0, extra0, times, dt, max_num_steps, tolerances, trajectory)
    if not bool(torch.isfinite(out.detach()).all()):
        bad = int((~torch.isfinite(out.detach()).reshape(len(times), -1).all(1)).nonzero()[0, 0])
        raise RuntimeError("non-finite values in the SDE solution at t=%r, dt=%r" % (times[bad], dt))
    if logqp:
        log_ratio = out[..., d]
        return out[..., :d], log_ratio[1:] - log_ratio[:-1], final
    return out, None, final


def as_times(ts: object, y0: torch.Tensor) -> torch.Tensor:
    """ts as a 1-D tensor: a list or tuple of floats becomes one of y0's dtype and device (as
    torchsde does)."""
    if isinstance(ts, (list, tuple)):
        if len(ts) == 0 or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in ts):
            raise ValueError("ts must be a non-empty 1-D tensor or list/tuple of floats, got %r" % (ts,))
        return torch.tensor(ts, dtype=y0.dtype, device=y0.device)
    if not isinstance(ts, torch.Tensor) or ts.dim() != 1 or len(ts) < 1:
        raise ValueError("ts must be a non-empty 1-D tensor or list/tuple of floats")
    return ts


def _check_state_and_times(y0, ts, dt):
    """The output times as floats, once y0, ts and dt are valid."""
    if not isinstance(y0, torch.Tensor) or not torch.is_floating_point(y0):
        raise TypeError("y0 must be a floating point tensor")
    if y0.dim() != 2:
        raise ValueError("y0 must be of shape (batch, d), got %s" % (tuple(y0.shape),))
    if not bool(torch.isfinite(y0).all()):
        raise ValueError("y0 contains NaN or inf")
    times = as_times(ts, y0).detach().tolist()
    if any(not b > a for a, b in zip(times[:-1], times[1:])):
        raise ValueError("ts must be strictly increasing")
    if not (isinstance(dt, (int, float)) and dt > 0 and math.isfinite(dt)):
        raise ValueError("dt must be a positive float, got %r" % (dt,))
    return times


def _positive_number(x, name, allow_zero=False):
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    bad = isinstance(x, bool) or not isinstance(x, (int, float))
    if bad or not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        raise ValueError("%s must be a %s float, got %r" % (name, "non-negative" if allow_zero else "positive", x))
    return float(x)


def _check_tolerances(rtol, atol, dt_min):
    """(rtol, atol, dt_min) of an adaptive solve as floats."""
    return (
        _positive_number(rtol, "rtol", allow_zero=True),
        _positive_number(atol, "atol", allow_zero=True),
        _positive_number(dt_min, "dt_min"),
    )


def _parse_options(options):
    """(backend, max_num_steps, the method's options) from options: odecore's backend and
    max_num_steps, torchsde's grad_free (used by milstein, ignored by the other methods as
    torchsde does)."""
    if options is not None and not isinstance(options, dict):
        raise TypeError("options must be a dict, got %s" % type(options).__name__)
    options = dict(options or {})
    backend = options.pop("backend", None)
    check_backend(backend)
    max_num_steps = options.pop("max_num_steps", MAX_NUM_STEPS)
    if isinstance(max_num_steps, bool) or not isinstance(max_num_steps, int) or max_num_steps < 0:
        raise ValueError("options['max_num_steps'] must be a non-negative int, got %r" % (max_num_steps,))
    method_options = {}
    if "grad_free" in options:
        grad_free = options.pop("grad_free")
        if not isinstance(grad_free, bool):
            raise ValueError("options['grad_free'] must be a bool, got %r" % (grad_free,))
        method_options["grad_free"] = grad_free
    if options:
        raise ValueError("unknown options %s" % sorted(options))
    return backend, max_num_steps, method_options


def default_brownian(system: SDESystem, y0: torch.Tensor, t0: float, t1: float, levy_area: str) -> BrownianInterval:
    """sdeint's Brownian motion when bm is None: a BrownianInterval on [t0, t1] of the size the
    noise needs (f and g are checked at (t0, y0) on the way, where the sde defines g), with the
    Levy area approximation `levy_area` ('none', 'space-time', 'davie' or 'foster')."""
    g0 = None
    if system.has_g:
        start = torch.scalar_tensor(t0, dtype=y0.dtype, device=y0.device)
        f0, g0 = system.f_and_g(start, y0)
        system.check(y0, f0, g0)
    return BrownianInterval(
        t0=t0,
        t1=t1,
        size=system.brownian_size(y0, g0),
        dtype=y0.dtype,
        device=y0.device,
        levy_area_approximation=levy_area,
    )


def _check_levy_area(bm, solver_class):
    levy = getattr(bm, "levy_area_approximation", None)
    if solver_class.levy_areas is not None and levy not in solver_class.levy_areas:
        raise ValueError(
            "method %r needs a Brownian motion with a %s Levy area (levy_area_approximation one of %s), e.g. "
            "BrownianInterval(..., levy_area_approximation=%r); bm has levy_area_approximation=%r"
            % (
                solver_class.name,
                "space-time" if "space-time" in solver_class.levy_areas else "full",
                ", ".join(map(repr, solver_class.levy_areas)),
                solver_class.default_levy_area,
                levy,
            )
        )


def _solve(step, y0, extra, times, dt, max_num_steps, tolerances, trajectory=None):
    """(the states at `times`, stacked; the final extra solver state): fixed steps of dt or,
    with tolerances = (rtol, atol, dt_min), step-doubling attempts; outputs between two steps
    linearly interpolated. Each step is recorded into `trajectory` when given."""
    ys = [y0]
    t, y = times[0], y0
    prev_t, prev_y, prev_i = t, y, 0
    steps = trajectory.steps if trajectory is not None else []
    if trajectory is not None:
        trajectory.outputs.append((0, 0.0, 0, 1.0))
    step_size, prev_ratio = dt, None
    for out_t in times[1:]:
        _check_step_count(t, out_t, step_size, max_num_steps, tolerances)
        steps_here = 0
        while t < out_t:
            if steps_here >= max_num_steps:
                raise RuntimeError("max_num_steps exceeded (%d steps) at t=%r, dt=%r" % (max_num_steps, t, step_size))
            steps_here += 1
            next_t = min(t + step_size, times[-1])
            if tolerances is None:
                if not next_t > t:
                    raise RuntimeError(
                        "step size underflow: t=%r, dt=%r; t + dt == t (dt is too small for the "
                        "magnitude of t)" % (t, step_size)
                    )
                prev_t, prev_y, prev_i = t, y, len(steps)
                y, extra = step(t, next_t, y, extra)
                if trajectory is not None:
                    steps.append((t, next_t))
                t = next_t
                continue
            accepted, step_size, prev_ratio = _attempt(step, t, next_t, y, extra, step_size, prev_ratio, tolerances)
            if accepted is not None:
                prev_t, prev_y, prev_i = t, y, len(steps)
                y, extra = accepted
                if trajectory is not None:
                    steps.extend([(t, 0.5 * (t + next_t)), (0.5 * (t + next_t), next_t)])
                t = next_t
        # torchsde's linear_interp, operation for operation
        if out_t == t:
            ys.append(y)
        else:
            ys.append((t - out_t) / (t - prev_t) * prev_y + (out_t - prev_t) / (t - prev_t) * y)
        if trajectory is not None:
            exact = out_t == t
            w_prev = 0.0 if exact else (t - out_t) / (t - prev_t)
            trajectory.outputs.append((prev_i, w_prev, len(steps), 1.0 if exact else (out_t - prev_t) / (t - prev_t)))
    return torch.stack(ys), extra


def _check_step_count(t, out_t, step_size, max_num_steps, tolerances):
    if tolerances is None and (out_t - t) / step_size > max_num_steps:
        # the fixed steps to this output time would exceed the bound: say so now, not after
        # max_num_steps of them (a tiny dt would otherwise run for hours)
        raise RuntimeError(
            "max_num_steps exceeded (%d steps) at t=%r, dt=%r: about %.3g steps of dt are needed to "
            "reach the output time %r" % (max_num_steps, t, step_size, (out_t - t) / step_size, out_t)
        )


def _attempt(step, t, next_t, y, extra, step_size, prev_ratio, tolerances):
    """torchsde's step doubling: one step of size h against two of h/2 on the same Brownian path,
    the error the RMS over all elements of (y_h - y_h/2) / (rtol max(|y_h|, |y_h/2|) + atol).
    Returns (the two half steps' (y, extra), or None if rejected, the next step size, the ratio
    for the controller's next call). The result is kept when the error is <= 1 or the step is
    at dt_min (with torchsde's warning "Hitting minimum allowed step size")."""
    rtol, atol, dt_min = tolerances
    mid_t = 0.5 * (t + next_t)
    if not t < mid_t < next_t:
        raise RuntimeError("adaptive step size %r underflows at t=%r" % (next_t - t, t))
    y_full, _ = step(t, next_t, y, extra)
    y_mid, extra_mid = step(t, mid_t, y, extra)
    y_half, extra_half = step(mid_t, next_t, y_mid, extra_mid)
    with torch.no_grad():
        error = _error_estimate(y_full, y_half, rtol, atol, t=t, dt=next_t - t)
    step_size, prev_ratio = _next_step_size(error, step_size, prev_ratio)
    if step_size < dt_min:
        warnings.warn("Hitting minimum allowed step size in adaptive time-stepping.")
        step_size, prev_ratio = dt_min, None
    return ((y_half, extra_half) if error <= 1 or step_size <= dt_min else None), step_size, prev_ratio


def _error_estimate(y_full, y_half, rtol, atol, eps=1e-7, t=None, dt=None):
    """torchsde's step-doubling error: RMS over all elements of (y_full - y_half) / tol,
    tol = rtol max(|y_full|, |y_half|) + atol (both floored at eps)."""
    tol = (rtol * torch.max(y_full.abs(), y_half.abs()) + atol).clamp_min(eps)
    err = (((y_full - y_half) / tol) ** 2).sum().div(max(y_full.numel(), 1)).sqrt().clamp_min(eps)
    err = float(err)
    if math.isnan(err):
        raise RuntimeError(
            "non-finite values (NaN or inf) in the adaptive step's error estimate at t=%r, dt=%r; "
            "sde.f or sde.g returned NaN/inf or the solution overflowed" % (t, dt)
        )
    return err


def _next_step_size(error, step_size, prev_ratio, safety=0.9, facmin=0.2, facmax=1.4):
    """torchsde's step size controller (adaptive_stepping.update_step_size): a PI controller
    on the error ratio safety / error, exponents 1/4.5 and 0.13 after an accepted step,
    1/1.5 and 0 after a rejected one; the factor is clamped to [facmin, facmax], and to
    [1, facmax] after an accepted step. Returns (new step size, ratio for the next call)."""
    if math.isinf(error):  # the limit of the formula below (ratio 0): a rejected step, shrunk by facmin
        return step_size * facmin, prev_ratio
    if error > 1:
        pfactor, ifactor = 0.0, 1 / 1.5
    else:
        pfactor, ifactor = 0.13, 1 / 4.5
    ratio = safety / error
    if prev_ratio is None:
        prev_ratio = ratio
    factor = ratio**ifactor * (ratio / prev_ratio) ** pfactor
    if error <= 1:
        prev_ratio = ratio
        facmin = 1.0
    factor = min(facmax, max(facmin, factor))
    return step_size * factor, prev_ratio


def with_logqp(system: SDESystem, sde: object) -> SDESystem:
    """torchsde's logqp: ``sde`` must also have the prior drift ``h(t, y)`` (or
    ``names={'prior_drift': ...}``); the state gets one more coordinate with drift 0.5 |u|^2 and
    no diffusion, u = (f - h) / g (diagonal noise; |g| clamped to >= 1e-7 as torchsde's
    stable_division) or u = pinv(g) (f - h) (scalar, additive, general noise), so that sdeint
    returns (ys, log_ratio), log_ratio of shape (len(ts) - 1, batch) the increments of
    int 0.5 |u|^2 dt over [ts[i], ts[i + 1]]. With diagonal noise torchsde's Brownian motion has
    d + 1 channels (one per augmented coordinate); a motion of d channels is accepted too."""
    h = getattr(sde, system.names.get("prior_drift", "h"), None)
    if not callable(h):
        raise TypeError("logqp=True needs the prior drift h(t, y) as a method of sde (or names={'prior_drift': ...})")
    system.require_g("logqp=True")
    f, g, diagonal = system.f, system.g, system.noise_type == "diagonal"

    def f_and_g_aug(t, y):
        x = y[:, :-1]
        fx, gx, hx = f(t, x), g(t, x), h(t, x)
        if diagonal:
            gs = torch.where(gx.abs().detach() > 1e-7, gx, torch.full_like(gx, 1e-7) * gx.sign())
            u = (fx - hx) / gs
        else:
            u = torch.bmm(gx.pinverse(), (fx - hx).unsqueeze(-1)).squeeze(-1)
        return torch.cat([fx, 0.5 * (u**2).sum(dim=1, keepdim=True)], dim=1), _pad_diffusion(gx, diagonal)

    augmented = copy.copy(system)
    augmented.resolve(
        f=lambda t, y: f_and_g_aug(t, y)[0],
        g=lambda t, y: _pad_diffusion(g(t, y[:, :-1]), diagonal),
        f_and_g=f_and_g_aug,
    )
    return augmented


def _pad_diffusion(gx, diagonal):
    """The diffusion of logqp's augmented state: no noise on the log-ratio coordinate."""
    if diagonal:
        return torch.cat([gx, gx.new_zeros(gx.shape[0], 1)], dim=1)
    return torch.cat([gx, gx.new_zeros(gx.shape[0], 1, gx.shape[-1])], dim=1)


class _PaddedBrownian:
    """logqp with diagonal noise: a motion of the state's d channels padded with a zero channel
    for the log-ratio coordinate, which has no noise."""

    def __init__(self, bm):
        self.bm = bm
        self.levy_area_approximation = getattr(bm, "levy_area_approximation", None)

    def __call__(self, ta, tb, return_U=False):
        out = self.bm(ta, tb, return_U=return_U)

        def pad(x):
            return torch.cat([x, x.new_zeros(*x.shape[:-1], 1)], dim=-1)

        return tuple(pad(x) for x in out) if return_U else pad(out)

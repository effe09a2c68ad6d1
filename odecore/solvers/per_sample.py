"""Per-sample adaptive solving: ``odeint(..., options={'batch_dim': d})``.

Every sample along dimension ``d`` of ``y0`` gets its own time, step size, error norm,
accept/reject decision, step counters and status, inside the same fused kernels as the
shared solve (torchdiffeq solves a batch with one step size, so one stiff or fast sample
forces its step on all the others). The loop is the device-resident one of
`odecore/solvers/adaptive.py` with B control states instead of one:

* the stage ops take one dt per sample (``rk_stage_dt``), the error ratio is one RMS per
  sample (``rk_finish_dt`` / ``rk_error_ratio_dt`` return shape (B,));
* ``rk_control`` decides every sample's attempt and sets up its next one (a sample that has
  passed its last output time, or failed, stays frozen: its later attempts are masked no-ops);
* ``rk_dense_into`` writes each sample's output rows from its own accepted step;
* the host reads two numbers (samples still running, steps left) once every K steps.

The arithmetic per sample is the shared loop's, so on the CPU each sample's solution, step
count and final step are bitwise those of solving that sample alone.

``func(t, y)`` receives ``y`` in the caller's layout and ``t`` with one time per sample: shape
1 everywhere except B along ``batch_dim``, so that it broadcasts against ``y``. ``t`` may be
1-D (output times shared by every sample) or 2-D (B, T) (each sample's own output times; all
strictly monotonic in the same direction). A sample that fails (non-finite values, step-size
underflow, ``max_num_steps``) stops without affecting the others; the solve then raises
`SampleFailure`, which names the samples, their t and dt, and carries the other samples'
solutions (the failed samples' rows after their failure are NaN) and the statistics.

Statistics (``return_stats``): per-sample tensors ``n_steps``, ``n_accepted``, ``n_rejected``,
``final_dt``, ``status`` (0 done, 2 non-finite, 3 underflow, 4 max_num_steps) and
``nfe_per_sample`` (evaluations each sample needed), and the batched ``nfe`` (func calls).
"""

import math

import torch

from .. import _problem
from ..ops import check_backend, get_ops
from ..ops.control import NUM_SLOTS, Slot, Status
from . import SOLVERS, compiled
from .adaptive import DEFAULT_SYNC_EVERY, AdaptiveRKSolver
from .base import CALLBACK_NAMES, RHS

_REASONS = {
    Status.NON_FINITE: "non-finite values (NaN or inf) in the solution or its error estimate",
    Status.UNDERFLOW: "step size underflow (t + dt == t)",
    Status.MAX_STEPS: "max_num_steps exceeded",
}


class SampleFailure(RuntimeError):
    """Some samples of a per-sample solve failed; the others finished.

    Attributes: ``failed`` (indices along batch_dim), ``solution`` (the whole output, NaN
    for the failed samples after their failure), ``stats`` (the per-sample statistics)."""

    def __init__(self, message, failed, solution, stats):
        super().__init__(message)
        self.failed, self.solution, self.stats = failed, solution, stats


def integrate_per_sample(solver, times, sync_every=None):
    """Runs `solver` (an AdaptiveRKSolver built on the flat (B * per,) state with a func that
    takes one time per sample) over `times`: float64 (T,) or (B, T) on the state's device,
    increasing in the solver's time. Returns (out (T, B * per), state (B, NUM_SLOTS))."""
    ops, func = solver.ops, solver.func
    y = solver.y0
    dev, dtype = y.device, y.dtype
    samples = solver.samples
    n = y.numel()
    per = n // samples
    t_first = times[..., 0].expand(samples).contiguous()
    t_last = times[..., -1]
    sign = func.time_sign
    k_sync = DEFAULT_SYNC_EVERY if not sync_every else sync_every
    f = func.call_device_time((sign * t_first).to(dtype), y)
    if torch.is_grad_enabled() and f.requires_grad:
        # the loop runs without autograd: the solution would silently carry no gradient for
        # func's parameters (a loss through it would miss their ODE term)
        raise ValueError(
            "options['batch_dim'] gives no gradients through odeint, but func's output requires grad "
            "(its parameters?): use odeint_adjoint for gradients, or solve under torch.no_grad()"
        )
    evals = 1
    rtol, atol = solver.rtol, solver.atol
    segments = [n]
    with torch.no_grad():
        if solver.first_step is None:
            ones = torch.ones(samples, dtype=torch.float64, device=dev)
            d0 = ops.rk_error_ratio_dt(y, y, [y], [1.0], ones, rtol, atol, segments)
            d1 = ops.rk_error_ratio_dt(y, y, [f], [1.0], ones, rtol, atol, segments)
            h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
            f1 = func.call_device_time((sign * (t_first + h0)).to(dtype), ops.rk_stage_dt(y, [f], [1.0], h0))
            evals += 1
            d2 = ops.rk_error_ratio_dt(y, y, [f1, f], [1.0, -1.0], ones, rtol, atol, segments) / h0
            round_f32 = 1.0 if solver.time_dtype == torch.float32 else 0.0
            dt0 = ops.rk_initial_dt(h0, d1, d2, float(solver.order), round_f32)
        else:
            dt0 = torch.full((samples,), solver.first_step, dtype=torch.float64, device=dev)
    state = torch.zeros(samples, NUM_SLOTS, dtype=torch.float64, device=dev)
    state[:, Slot.T] = t_first
    state[:, Slot.DT] = dt0
    state[:, Slot.NEXT_OUT] = 1.0
    state[:, Slot.FIRST_OUT] = 1.0
    control = solver._device_control(state, times, (samples,))
    out = y.new_empty((times.shape[-1], n))
    out[0] = y
    host_reads = 0
    batch, shortened = k_sync, False
    with torch.no_grad():
        while True:
            for _ in range(batch):
                y1, k = solver._device_attempt(y, f, control, out)
                keep = control.accept.view(samples, 1)
                y = torch.where(keep, y1.view(samples, per), y.view(samples, per)).view(n)
                f = torch.where(keep, k[-1].view(samples, per), f.view(samples, per)).view(n)
                evals += len(solver._stage_plan)
            running = state[:, Slot.STATUS] == Status.RUNNING
            left = torch.where(
                running, (t_last - state[:, Slot.T]) / state[:, Slot.DT], torch.zeros_like(state[:, Slot.T])
            )
            n_running, most_left = torch.stack([running.sum().to(torch.float64), left.max()]).tolist()
            host_reads += 1
            if n_running == 0:
                break
            # near the end, once, a shorter batch so that few attempts are wasted
            if not shortened and most_left < k_sync:
                batch, shortened = max(1, math.ceil(most_left)), True
            else:
                batch = k_sync
    solver.host_reads = host_reads
    solver.batched_evals = evals
    return out, state


def stats_of(solver, state):
    """Per-sample statistics from the final control state."""
    n_steps = state[:, Slot.N_STEPS].to(torch.int64)
    n_accepted = state[:, Slot.N_ACCEPTED].to(torch.int64)
    status = state[:, Slot.STATUS].to(torch.int64)
    status = torch.where(status == Status.DONE, torch.zeros_like(status), status)
    initial = 1 if solver.first_step is not None else 2
    return {
        "nfe": solver.func.nfe,
        "n_steps": n_steps,
        "n_accepted": n_accepted,
        "n_rejected": n_steps - n_accepted,
        "final_dt": state[:, Slot.DT].clone(),
        "status": status,
        "nfe_per_sample": initial + len(solver._stage_plan) * n_steps,
        "loop": "per_sample",
        "host_reads": solver.host_reads,
    }


def failure_message(state, failed, labels):
    """Names the failed samples with the t and dt where each stopped (the first few)."""
    rows = state[failed[:5]].tolist()
    parts = [
        "sample %d: %s at t=%r, dt=%r"
        % (label, _REASONS.get(int(r[Slot.STATUS]), "failed"), r[Slot.ERR_T], r[Slot.ERR_DT])
        for label, r in zip(labels, rows)
    ]
    more = "" if len(failed) <= 5 else " (and %d more)" % (len(failed) - 5)
    return "%d of %d samples failed; the others finished: %s%s" % (len(failed), state.shape[0], "; ".join(parts), more)


class PerSampleProblem:
    """A validated per-sample call: the flat (B * per,) state, func on it (one time per sample),
    the output times in the solver's increasing time, tolerances, method, options, ops."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def to_user(self, flat):
        """The flat state (..., B * per) as the caller's layout, batch along batch_dim."""
        return flat.view(*flat.shape[:-1], self.samples, *self.rest).movedim(
            -1 - len(self.rest), self.batch_dim + flat.dim() - 1
        )


def _check_batch(func, y0, method, options, batch_dim):
    """The checks of a per-sample call that need no times; returns (batch_dim, method)."""
    if not isinstance(y0, torch.Tensor):
        raise TypeError("options['batch_dim'] needs y0 to be one tensor (not a tuple), got %s" % type(y0).__name__)
    _problem.check_y0(y0)
    if y0.is_complex() or y0.dtype not in (torch.float32, torch.float64):
        raise TypeError("options['batch_dim'] supports float32 and float64 states, got %s" % y0.dtype)
    if isinstance(batch_dim, bool) or not isinstance(batch_dim, int) or not -y0.dim() <= batch_dim < y0.dim():
        raise ValueError(
            "options['batch_dim'] must be an int naming a dimension of y0 (shape %s), got %r"
            % (tuple(y0.shape), batch_dim)
        )
    method = _problem.DEFAULT_METHOD if method is None else method
    if method not in SOLVERS or not issubclass(SOLVERS[method], AdaptiveRKSolver):
        adaptive = sorted(name for name, cls in SOLVERS.items() if issubclass(cls, AdaptiveRKSolver))
        raise ValueError(
            "options['batch_dim'] needs an adaptive Runge-Kutta method (%s), got %r" % (", ".join(adaptive), method)
        )
    for key in ("norm", "step_t", "jump_t", "checkpoint"):
        if options.get(key) is not None:
            raise ValueError("options[%r] is not supported together with options['batch_dim']" % key)
    if any(callable(getattr(func, name, None)) for name in CALLBACK_NAMES):
        raise ValueError("step callbacks are not supported together with options['batch_dim']")
    return batch_dim % y0.dim(), method


def _per_sample_times(t, y0, samples):
    """Output times, shared (T,) or per sample (B, T), all in one direction: (float64 times in the
    solver's increasing time, time sign)."""
    if not isinstance(t, torch.Tensor) or not torch.is_floating_point(t):
        raise TypeError("t must be a floating point tensor")
    if t.device != y0.device:
        raise ValueError("t is on %s but y0 is on %s; put them on the same device" % (t.device, y0.device))
    if t.dim() not in (1, 2) or (t.dim() == 2 and t.shape[0] != samples) or t.shape[-1] < 1:
        raise ValueError(
            "with options['batch_dim'], t must have shape (T,) or (batch, T) = (%d, T), got %s"
            % (samples, tuple(t.shape))
        )
    if t.requires_grad and torch.is_grad_enabled():
        raise ValueError("options['batch_dim'] does not support gradients with respect to t")
    times = t.detach().to(torch.float64)
    if not bool(torch.isfinite(times).all()):
        raise ValueError("t contains NaN or inf")
    decreasing = False
    if times.shape[-1] > 1:
        steps = times.diff(dim=-1)
        increasing, decreasing = bool((steps > 0).all()), bool((steps < 0).all())
        if not (increasing or decreasing):
            raise ValueError("t must be strictly increasing or strictly decreasing (every row, in one direction)")
    sign = -1.0 if decreasing else 1.0
    return (sign * times).contiguous(), sign


def _sample_major_func(func, y0, batch_dim, samples, rest):
    """func on the flat sample-major state, taking one time per sample."""
    t_shape = [1] * y0.dim()
    t_shape[batch_dim] = samples

    def flat_func(t_b, y_flat):
        out = func(t_b.reshape(t_shape), y_flat.view(samples, *rest).movedim(0, batch_dim))
        if not isinstance(out, torch.Tensor):
            raise TypeError("func must return a torch.Tensor, got %s" % type(out).__name__)
        if out.shape != y0.shape:
            raise ValueError(
                "func returned a tensor of shape %s, but the state y0 has shape %s"
                % (tuple(out.shape), tuple(y0.shape))
            )
        return out.movedim(batch_dim, 0).reshape(-1)

    return flat_func


def prepare_per_sample(func, y0, t, rtol, atol, method, options):
    """Checks and normalises a per-sample call (see the module docstring)."""
    options = dict(options)
    batch_dim = options.pop("batch_dim")
    return_stats = bool(options.pop("return_stats", False))
    mode = compiled.check_mode(options.pop("compile", False))
    backend = options.pop("backend", None)
    check_backend(backend)
    batch_dim, method = _check_batch(func, y0, method, options, batch_dim)
    ops = get_ops(backend, y0.device)
    if not hasattr(ops, "rk_initial_dt"):
        raise RuntimeError(
            "options['batch_dim'] needs odecore's fused kernels for %s (the extension is not built "
            "for it, or backend='reference' was asked for)" % y0.device.type
        )
    samples = y0.shape[batch_dim]
    if samples == 0 or y0.numel() == 0:
        raise ValueError("options['batch_dim'] needs a non-empty batch, got y0 of shape %s" % (tuple(y0.shape),))
    times, sign = _per_sample_times(t, y0, samples)
    rtol = _problem.tolerance("rtol", rtol, None, y0)
    atol = _problem.tolerance("atol", atol, None, y0)
    if rtol.numel() != 1 or atol.numel() != 1:
        raise ValueError("options['batch_dim'] takes scalar rtol and atol")
    if y0.requires_grad and torch.is_grad_enabled():
        raise ValueError("options['batch_dim'] gives no gradients through odeint; use odeint_adjoint (or detach y0)")
    rest = tuple(s for i, s in enumerate(y0.shape) if i != batch_dim)
    return PerSampleProblem(
        func=_sample_major_func(func, y0, batch_dim, samples, rest),
        y0=y0.detach().movedim(batch_dim, 0).reshape(-1).contiguous(),
        times=times,
        sign=sign,
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
        ops=ops,
        batch_dim=batch_dim,
        samples=samples,
        rest=rest,
        return_stats=return_stats,
        compile=mode,
    )


def _no_steps_stats(samples, device):
    zeros = torch.zeros(samples, dtype=torch.int64, device=device)
    return {
        "nfe": 0,
        "n_steps": zeros,
        "n_accepted": zeros,
        "n_rejected": zeros,
        "final_dt": None,
        "status": zeros,
        "nfe_per_sample": zeros,
        "loop": "per_sample",
        "host_reads": 0,
    }


def raise_failures(p, out, state, solution, stats):
    """Raises SampleFailure when some samples stopped with an error (their rows after it NaN)."""
    failed = (stats["status"] != 0).nonzero().flatten()
    if not len(failed):
        return
    state_user = state.clone()
    state_user[:, Slot.ERR_T] *= p.sign
    rows = state[failed, Slot.NEXT_OUT].to(torch.int64).tolist()
    flat = out.view(out.shape[0], p.samples, -1)
    for b, row in zip(failed.tolist(), rows):
        flat[row:, b] = math.nan
    raise SampleFailure(failure_message(state_user, failed, failed.tolist()), failed.tolist(), solution, stats)


def odeint_per_sample(func, y0, t, rtol, atol, method, options):
    """odeint with options['batch_dim'] (see the module docstring)."""
    p = prepare_per_sample(func, y0, t, rtol, atol, method, options)
    rhs = RHS(p.func, p.y0, time_sign=p.sign)
    solver = SOLVERS[p.method](rhs, p.y0, p.rtol, p.atol, ops=p.ops, segments=[p.y0.numel()], **p.options)
    solver.samples = p.samples
    if p.times.shape[-1] == 1:
        solution = p.to_user(p.y0.unsqueeze(0))
        stats = _no_steps_stats(p.samples, y0.device)
    else:
        ran = compiled.solve_per_sample(solver, p.times, p.compile) if p.compile else None
        out, state = ran[:2] if ran else integrate_per_sample(solver, p.times, solver.sync_every)
        solution = p.to_user(out)
        stats = stats_of(solver, state)
        if ran:
            stats.update(nfe=ran[2], loop="compiled", host_reads=1, compiles=ran[3])
        raise_failures(p, out, state, solution, stats)
    return (solution, stats) if p.return_stats else solution

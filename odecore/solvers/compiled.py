"""The compiled whole solve (``options={'compile': True}``): the loop and func as one native program.

The device-resident loop of the adaptive methods (and the grid loop of the fixed-grid ones) written
in traceable torch ops as the body of torch's ``while_loop``, with the user's func inlined, and
compiled by inductor (C++ on the CPU, Triton on CUDA) into one program: t, dt, the accept/reject
decision, the counters and the status are tensors updated by the one step-control definition
(odecore.ops.control) on the frozen tableau; a rejected attempt is a masked no-op; the output rows an
accepted step covers are written, a window of `WINDOW` rows per iteration, into a preallocated buffer
from the step's own dense output. The host reads the result once, after the program returns, and
raises the uncompiled loop's errors from its status.

A program is made per (func, method, option structure) and kept (`Program`); tensors (the state,
times, tolerances, step-control parameters, func's parameters) are its inputs, so new values of any
of them run the same program. Recompiles (new shapes, dtypes or devices) are counted in the stats.
"""

import functools
import inspect
import math
import types
import warnings
import weakref
from typing import NamedTuple

import torch

from ..ops import control
from ..ops.control import NUM_SLOTS, ControlParams, Slot
from . import SOLVERS
from .adaptive import AdaptiveRKSolver, number_option
from .fixed_grid import FixedGridRKSolver

WINDOW = 4  # output rows written per iteration; a step covering more writes the rest in extra iterations
COMPILE_MODES = (False, True, "strict")


class NotCompilable(RuntimeError):
    """The solve cannot run as a compiled program; the message says why."""


class Settings(NamedTuple):
    """What a program's Python structure depends on (its cache key, with func and the method)."""

    order: float
    time_sign: float
    negate: bool
    round_f32: bool
    segments: tuple
    samples: int  # 1: one solve; B: per-sample (batch) solving
    first_step: bool  # a given first step (else the initial step selection runs in the program)
    window: int
    carry_out: bool  # the output buffer carried through the loop rather than written in place


# -- traceable pieces ------------------------------------------------------------------------


def combine(y, ks, weights):
    """y + sum_j ks[j] * weights[j] as the fused kernels sum it; weights (B, 1) in y's dtype."""
    acc = None
    for k, w in zip(ks, weights):
        term = k * w
        acc = term if acc is None else acc + term
    return y.clone() if acc is None else y + acc


def error_ratio(y0, y1, ks, e, dt, rtol, atol, segments):
    """The fused rk_finish's error ratio per sample (B,): the largest per-segment RMS of
    err / (atol + rtol max(|y0|, |y1|)) in float64, NaN where y1 is not finite."""
    err = combine(torch.zeros_like(y0, dtype=torch.float64), [k.to(torch.float64) for k in ks], [c * dt for c in e])
    scale = atol.view(1, -1) if atol.numel() > 1 else atol
    tol = scale + (rtol.view(1, -1) if rtol.numel() > 1 else rtol) * torch.maximum(y0.abs(), y1.abs()).double()
    sq = torch.where(torch.isfinite(y1), (err / tol) ** 2, torch.full_like(err, math.nan))
    ratio = None
    for length, chunk in zip(segments, torch.split(sq, [abs(n) for n in segments], dim=-1)):
        if length > 0:  # a negative length is left out of the norm (a seminorm)
            rms = chunk.mean(-1).sqrt()
            ratio = rms if ratio is None else torch.maximum(ratio, rms)
    return torch.zeros_like(dt.squeeze(-1)) if ratio is None else ratio


def dense_weights(poly, stages, x, dt):
    """dt * P_j(x) for every stage j (Horner's rule, as rk_interp): x (B, K), dt (B, 1)."""
    degree = len(poly) // stages
    weights = []
    for j in range(stages):
        acc = torch.zeros_like(x)
        for d in range(degree - 1, -1, -1):
            acc = acc * x + poly[j * degree + d]
        weights.append(acc * x * dt)
    return weights


class Rhs:
    """func as the solver calls it, without side effects: time sign, dtype and negation."""

    def __init__(self, func, settings, dtype, time_shape):
        self.func, self.sign, self.negate, self.dtype = func, settings.time_sign, settings.negate, dtype
        self.time_shape = time_shape

    def __call__(self, t, y_rows):
        """func at solver times t (B,) (already times the sign) and the state (B, per)."""
        time = t.to(self.dtype).reshape(self.time_shape)
        out = self.func(time, y_rows.reshape(-1)).reshape(y_rows.shape)
        if self.negate is None:  # the time direction is a tensor (traced inside the caller's program)
            return out * self.sign.to(out.dtype)
        return -out if self.negate else out


# -- the adaptive program ------------------------------------------------------------------


def _params(vector, settings):
    """ControlParams from the program's parameter vector (safety, ifactor, dfactor, min_step,
    max_step, max_num_steps, first_step); indexed inside the loop, as captured views may not alias."""
    return ControlParams(
        order=settings.order,
        safety=vector[0],
        ifactor=vector[1],
        dfactor=vector[2],
        min_step=vector[3],
        max_step=vector[4],
        max_num_steps=vector[5],
        time_sign=settings.time_sign,
        round_f32=float(settings.round_f32),
    )


def _initial_dt(rhs, y0, f0, t0, rtol, atol, p, settings, vector):
    """The initial step (torchdiffeq's selection; or the given first step), clamped as the host
    loop clamps it, and (status, err_t, err_dt) for the errors the selection can meet."""
    nan, zero = torch.full_like(t0, math.nan), torch.zeros_like(t0)
    ones = torch.ones_like(t0).unsqueeze(-1)
    segments = settings.segments
    if settings.first_step:
        dt, status, err_t, err_dt = vector[6].expand_as(t0), zero, nan, nan
    else:
        d0 = error_ratio(y0, y0, [y0], [1.0], ones, rtol, atol, segments)
        d1 = error_ratio(y0, y0, [f0], [1.0], ones, rtol, atol, segments)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
        f1 = rhs((t0 + h0) * settings.time_sign, combine(y0, [f0], [h0.unsqueeze(-1).to(y0.dtype)]))
        d2 = error_ratio(y0, y0, [f1, f0], [1.0, -1.0], ones, rtol, atol, segments) / h0
        dt = control.round_time(control.initial_dt(h0, d1, d2, settings.order, 0.0), p.round_f32)
        first_bad = ~(torch.isfinite(d0) & torch.isfinite(d1))
        second_bad = ~torch.isfinite(d2)
        status = torch.where(
            first_bad | second_bad, control.NON_FINITE, torch.where(h0 > 0, control.RUNNING, control.UNDERFLOW)
        )
        err_t = torch.where(first_bad, t0, torch.where(second_bad, t0 + h0, t0))
        err_dt = torch.where(first_bad, zero, h0)
    dt = torch.where(torch.isfinite(dt), dt, p.min_step)
    dt = control.round_time(control.minimum(control.maximum(dt, p.min_step), p.max_step), p.round_f32)
    return dt, status, err_t, err_dt


def _start(rhs, y0, times, rtol, atol, vector, settings, nodes, dtype):
    """f0, and the control state with the first attempt set up (or the error that stops it)."""
    samples = settings.samples
    t0 = times[..., 0].expand(samples).contiguous()
    f0 = rhs(t0 * settings.time_sign, y0)
    p = _params(vector, settings)
    dt, status, err_t, err_dt = _initial_dt(rhs, y0, f0, t0, rtol, atol, p, settings, vector)
    zero = torch.zeros_like(t0)
    cols = [zero] * NUM_SLOTS
    cols[Slot.T], cols[Slot.DT], cols[Slot.STATUS] = t0, dt, status
    cols[Slot.NEXT_OUT] = cols[Slot.FIRST_OUT] = torch.ones_like(t0)
    cols[Slot.ERR_T], cols[Slot.ERR_DT] = err_t, err_dt
    control.update(cols, zero, times, times.shape[-1], nodes, p._replace(prepare_only=1.0), dtype)
    return f0, torch.stack(cols, -1)


def _write_window(out, times, start, stop, t0, t1, dt, y0, y1, ks, poly, window, in_place):
    """Writes output rows [start, min(start + window, stop)) of the step (t0, t1, dt) from y0 and
    its stages ks (B, per each) into out (T + 1, B, per; row T is scratch), in place or into a copy
    (returned)."""
    n_times = times.shape[-1]
    rows = start.to(torch.int64).unsqueeze(-1) + torch.arange(window, device=start.device)  # (B, K)
    valid = rows < stop.to(torch.int64).unsqueeze(-1)
    rows = torch.where(valid, rows, n_times)
    at = rows.clamp(max=n_times - 1)
    row_t = times[at] if times.dim() == 1 else torch.gather(times, 1, at)
    x = (row_t - t0.unsqueeze(-1)) / (t1 - t0).unsqueeze(-1)
    weights = dense_weights(poly, len(ks), x, dt.unsqueeze(-1))
    values = y0.unsqueeze(1) + sum(w.unsqueeze(-1).to(y0.dtype) * k.unsqueeze(1) for w, k in zip(weights, ks))
    values = torch.where((x == 1.0).unsqueeze(-1), y1.unsqueeze(1), values)  # (B, K, per)
    samples = torch.arange(rows.shape[0], device=rows.device).unsqueeze(-1).expand_as(rows)
    return out.index_put_((rows, samples), values) if in_place else out.index_put((rows, samples), values)


def _attempt(rhs, plan, tab, cols, y, f, rtol, atol, settings, stage_dtype):
    """One attempt from the state the control state describes: (y1, ks, error ratio)."""
    dt = cols[Slot.DT_USED].unsqueeze(-1)
    p_sign = settings.time_sign
    stage_t = control.attempt_times(cols, [c for _, _, c in plan], stage_dtype)
    stopped = cols[Slot.STATUS] != control.RUNNING
    ks, yi = [f], y
    for (idx, coeffs, _), ti in zip(plan, stage_t):
        yi = combine(y, [ks[j] for j in idx], [(a * dt).to(y.dtype) for a in coeffs])
        ks.append(rhs(torch.where(stopped, cols[Slot.T], ti) * p_sign, yi))
    if tab.fsal:
        e_idx, e = tab.e_terms
        return yi, ks, error_ratio(y, yi, [ks[j] for j in e_idx], e, dt, rtol, atol, settings.segments)
    y1 = combine(y, ks, [(b * dt).to(y.dtype) for b in tab.b])
    return y1, ks, error_ratio(y, y1, ks, tab.e, dt, rtol, atol, settings.segments)


def adaptive_program(func, tab, settings, time_shape, dtype):
    """The traceable whole solve of an embedded RK method: run(y0 (B, per), times, rtol, atol,
    vector) -> (out (T, B, per), state (B, NUM_SLOTS), y, f, iterations)."""
    plan = [(idx, coeffs, tab.c[i]) for i, (idx, coeffs) in enumerate(tab.stage_terms) if i > 0]
    nodes = [c for _, _, c in plan]
    poly, window = tab.dense_flat, settings.window

    def run(y0, times, rtol, atol, vector):
        rhs = Rhs(func, settings, dtype, time_shape)
        n_times = times.shape[-1]
        f0, state = _start(rhs, y0, times, rtol, atol, vector, settings, nodes, dtype)
        out = y0.new_zeros((n_times + 1, *y0.shape))
        out[0] = y0
        stages = torch.zeros((tab.stages, *y0.shape), dtype=y0.dtype, device=y0.device)

        def pending(s):
            return s[:, Slot.FIRST_OUT] + window < s[:, Slot.NEXT_OUT]

        def cond(s, y, f, y_step, ks_step, iterations, *buffer):
            return ((s[:, Slot.STATUS] == control.RUNNING) | pending(s)).any()

        def body(s, y, f, y_step, ks_step, iterations, *buffer):
            p = _params(vector, settings)
            cols = list(s.unbind(-1))
            flushing = pending(s)
            y1, ks, ratio = _attempt(rhs, plan, tab, cols, y, f, rtol, atol, settings, dtype)
            accept, _, _ = control.update(cols, ratio, times, n_times, nodes, p, dtype)
            new = torch.where(flushing.unsqueeze(-1), s, torch.stack(cols, -1))
            accept = accept & ~flushing
            ks = torch.stack(ks)
            keep = accept.view(1, -1, 1)
            y_from = torch.where(flushing.unsqueeze(-1), y_step, y)
            ks_from = torch.where(flushing.view(1, -1, 1), ks_step, ks)
            y_to = torch.where(flushing.unsqueeze(-1), y, y1)
            start = torch.where(flushing, s[:, Slot.FIRST_OUT] + window, new[:, Slot.FIRST_OUT])
            written = _write_window(
                buffer[0] if settings.carry_out else out,
                times,
                start,
                new[:, Slot.NEXT_OUT],
                new[:, Slot.OUT_T0],
                new[:, Slot.OUT_T1],
                new[:, Slot.OUT_DT],
                y_from,
                y_to,
                list(ks_from.unbind(0)),
                poly,
                window,
                in_place=not settings.carry_out,
            )
            first = torch.where(flushing, start, new[:, Slot.FIRST_OUT])
            new = torch.cat([new[:, : Slot.FIRST_OUT], first.unsqueeze(-1), new[:, Slot.FIRST_OUT + 1 :]], -1)
            return (
                new,
                torch.where(accept.unsqueeze(-1), y1, y),
                torch.where(accept.unsqueeze(-1), ks[-1], f),
                torch.where(accept.unsqueeze(-1), y, y_step),
                torch.where(keep, ks, ks_step),
                iterations + 1,
            ) + ((written,) if settings.carry_out else ())

        zero = torch.zeros((), dtype=torch.int64, device=y0.device)
        carried = (state, y0, f0, y0.clone(), stages, zero) + ((out,) if settings.carry_out else ())
        state, y, f, _, _, iterations, *buffer = torch._higher_order_ops.while_loop(cond, body, carried)
        return (buffer[0] if settings.carry_out else out)[:n_times], state, y, f, iterations

    return run


# -- the fixed-grid program ------------------------------------------------------------------


class GridSettings(NamedTuple):
    time_sign: float
    negate: bool
    perturb: bool
    cubic: bool
    window: int
    carry_out: bool


def _grid_stages(rhs, tab, settings, y, t0, t1, dtype):
    """One fixed-grid step from (t0, y) to t1: the stages and y1 (FixedGridRKSolver._advance)."""
    dt = (t1 - t0).view(1, 1)
    sign = settings.time_sign

    def at(t, side):  # a time nudged to the side of a possible discontinuity, in the state's dtype
        if not settings.perturb:
            return t
        low = t.to(dtype)
        return torch.nextafter(low, torch.full_like(low, side * math.inf)).to(torch.float64)

    ks = [rhs((at(t0, 1.0) * sign).view(1), y)]
    for i in range(1, tab.stages):
        idx, coeffs = tab.stage_terms[i]
        yi = combine(y, [ks[m] for m in idx], [(a * dt).to(y.dtype) for a in coeffs])
        ti = at(t1, -1.0) if tab.c[i] == 1.0 else t0 + tab.c[i] * (t1 - t0)
        ks.append(rhs((ti * sign).view(1), yi))
    b_idx, b = tab.b_terms
    return ks, combine(y, [ks[m] for m in b_idx], [(w * dt).to(y.dtype) for w in b])


def grid_program(func, solver, settings, dtype):
    """The traceable fixed-grid solve: run(y0 (1, N), times (T,), grid (G,)) -> (out (T, 1, N), y)."""
    tab, window = solver.tableau, settings.window
    poly = solver._hermite if settings.cubic else solver._linear
    n_dense = tab.stages + (1 if settings.cubic else 0)

    def run(y0, times, grid):
        rhs = Rhs(func, settings, dtype, ())
        n_times, last = times.shape[-1], grid.shape[0] - 1
        out = y0.new_zeros((n_times + 1, *y0.shape))
        out[0] = y0
        zero = torch.zeros((), dtype=torch.int64, device=y0.device)
        marks = torch.ones(2, dtype=torch.float64, device=y0.device)  # first_out, next_out
        stages = torch.zeros((n_dense, *y0.shape), dtype=y0.dtype, device=y0.device)

        def cond(i, marks, y, y_step, ks_step, *buffer):
            return (i < last) | (marks[0] + window < marks[1])

        def body(i, marks, y, y_step, ks_step, *buffer):
            flushing = marks[0] + window < marks[1]
            t0, t1 = grid[i.clamp(max=last - 1).view(1)][0], grid[(i + 1).clamp(max=last).view(1)][0]
            ks, y1 = _grid_stages(rhs, tab, settings, y, t0, t1, dtype)
            if settings.cubic:
                ks.append(rhs((t1 * settings.time_sign).view(1), y1))
            ks = torch.stack(ks)
            passed = control.passed_outputs(times, marks[1], t1)
            first = torch.where(flushing, marks[0] + window, marks[1])
            stop = torch.where(flushing, marks[1], passed)
            step_t0 = torch.where(flushing, grid[(i - 1).clamp(min=0).view(1)][0], t0)
            step_t1 = torch.where(flushing, grid[i.clamp(max=last).view(1)][0], t1)
            y_from = torch.where(flushing, y_step, y)
            y_to = torch.where(flushing, y, y1)
            ks_from = torch.where(flushing, ks_step, ks)
            written = _write_window(
                buffer[0] if settings.carry_out else out,
                times,
                first.view(1),
                stop.view(1),
                step_t0.view(1),
                step_t1.view(1),
                (step_t1 - step_t0).view(1),
                y_from,
                y_to,
                list(ks_from.unbind(0)),
                poly,
                window,
                in_place=not settings.carry_out,
            )
            return (
                torch.where(flushing, i, i + 1),
                torch.stack([first, stop]),
                torch.where(flushing, y, y1),
                torch.where(flushing, y_step, y),
                torch.where(flushing, ks_step, ks),
            ) + ((written,) if settings.carry_out else ())

        carried = (zero, marks, y0, y0.clone(), stages) + ((out,) if settings.carry_out else ())
        _, _, y, _, _, *buffer = torch._higher_order_ops.while_loop(cond, body, carried)
        return (buffer[0] if settings.carry_out else out)[:n_times], y

    return run


# -- programs and their cache ----------------------------------------------------------------


class Program:
    """One compiled solve (torch.compile with inductor, the whole graph or an error). Each program
    gets its own copy of the code object, so that dynamo keeps its cache (and its cache-size limit)
    per program rather than across every solve; `compiles` counts its cache entries."""

    def __init__(self, run):
        self.calls = 0
        self.iterations = 0
        self.broken = None  # why the program could not be made, once it failed
        self.host_evaluations = 0
        self._code = run.__code__.replace()
        fresh = types.FunctionType(self._code, run.__globals__, run.__name__, run.__defaults__, run.__closure__)
        self._compiled = torch.compile(fresh, backend=_inductor, fullgraph=True, dynamic=False)

    @property
    def compiles(self):
        """How many times dynamo compiled this program (1, plus the recompiles)."""
        return len(torch._dynamo.eval_frame._debug_get_cache_entry_list(self._code))

    def __call__(self, *args):
        self.calls += 1
        with torch.no_grad():
            return self._compiled(*args)


def _inductor(graph, example_inputs):
    """inductor, with its C++ wrapper on the CPU (the loop then runs without Python per iteration)."""
    from torch._inductor.compile_fx import compile_fx

    cpu = all(not isinstance(x, torch.Tensor) or x.device.type == "cpu" for x in example_inputs)
    return compile_fx(graph, example_inputs, config_patches={"cpp_wrapper": cpu})


_PROGRAMS = weakref.WeakKeyDictionary()  # func (or a bound method's object) -> {key: Program}
_UNHASHABLE = {}


def _owner(func):
    """The object whose life the cached programs of `func` follow (a bound method's object, or the
    one func names as its `compile_owner`)."""
    owner = getattr(func, "compile_owner", None)
    if owner is not None:
        return owner
    return getattr(func, "__self__", None) if isinstance(func, types.MethodType) else func


def program_for(func, key, build):
    """The cached Program of (func, key), made by build() the first time."""
    owner = _owner(func)
    try:
        programs = _PROGRAMS.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: cached while this process runs
        programs = _UNHASHABLE.setdefault(id(owner), {})
    full_key = (getattr(func, "__func__", None), type(func), key)
    if full_key not in programs:
        programs[full_key] = Program(build())
    return programs[full_key]


def _fall_back(mode, error):
    """A solve that cannot be compiled: raised in mode 'strict', else one warning per reason."""
    if mode == "strict":
        raise NotCompilable("options['compile']='strict': the solve cannot be compiled: %s" % error) from None
    _warn_once(str(error))


@functools.cache
def _warn_once(reason):
    warnings.warn("odecore: options['compile'] falls back to the uncompiled solve: %s" % reason)


# -- the solve -------------------------------------------------------------------------------


def check_mode(mode):
    if not (mode is True or mode is False or mode == "strict"):
        raise ValueError("options['compile'] must be True, False or 'strict', got %r" % (mode,))
    return mode


def _check_compilable(solver, y0, f0):
    """Raises NotCompilable with the reason when `solver`'s solve cannot run as a compiled program."""
    if y0.dtype not in (torch.float32, torch.float64):
        raise NotCompilable("the state's dtype must be float32 or float64, got %s" % y0.dtype)
    if bool(solver.func.callbacks):
        raise NotCompilable("step callbacks run on the host loop")
    if _needs_grad(y0, f0):
        raise NotCompilable(
            "gradients through the compiled loop are not available (use odeint_adjoint, whose solves compile)"
        )
    if isinstance(solver, FixedGridRKSolver) and type(solver)._advance is FixedGridRKSolver._advance:
        return
    if not isinstance(solver, AdaptiveRKSolver) or getattr(solver, "complex_segments", None) is not None:
        raise NotCompilable(
            "method %s has no compiled loop (the explicit Runge-Kutta methods have)" % type(solver).__name__
        )
    if solver.time_dtype not in (torch.float32, torch.float64):
        raise NotCompilable("the time dtype must be float32 or float64, got %s" % solver.time_dtype)
    for what, present in (("a user norm", solver.norm is not None), ("step_t/jump_t", solver.step_t or solver.jump_t)):
        if present:
            raise NotCompilable("%s runs on the host loop" % what)


def _needs_grad(y0, f0):
    return torch.is_grad_enabled() and (y0.requires_grad or (f0 is not None and f0.requires_grad))


# outputs few enough to carry the buffer through the loop: a captured buffer written in place cannot
# be combined with torch.func transforms in the loop (the adjoint's VJP), and costs a copy otherwise
CARRIED_OUTPUTS = 8


def _settings(solver, samples, n_times):
    segments = tuple(solver.segments) if samples == 1 else (solver.y0.numel() // samples,)
    return Settings(
        order=float(solver.order),
        time_sign=solver.func.time_sign,
        negate=solver.func.negate,
        round_f32=solver.time_dtype == torch.float32,
        segments=segments,
        samples=samples,
        first_step=solver.first_step is not None,
        window=WINDOW,
        carry_out=n_times <= CARRIED_OUTPUTS,
    )


def _vector(solver, device):
    first = math.nan if solver.first_step is None else solver.first_step
    values = [
        solver.safety,
        solver.ifactor,
        solver.dfactor,
        solver.min_step,
        solver.max_step,
        float(solver.max_num_steps),
        first,
    ]
    return torch.tensor(values, dtype=torch.float64).to(device)


def _call(program, *args):
    """Runs `program`; a failure to trace or compile it (the first time) becomes NotCompilable."""
    if program.broken is not None:
        raise NotCompilable(program.broken)
    try:
        return program(*args)
    except Exception as error:  # a graph break, an unsupported op, a failed compile
        if program.compiles == 0:
            text = str(error).strip()
            program.broken = "%s: %s" % (type(error).__name__, text.splitlines()[0] if text else "")
            raise NotCompilable(program.broken) from error
        raise


def _checked(program, check):
    """Calls check() -- func once on the host, to check its output and whether it records gradients
    -- unless the program ran before and nothing can record gradients now. Returns the evaluations."""
    if program.calls and not torch.is_grad_enabled():
        return 0
    check()
    return 1


def run_adaptive(solver, times, check, samples=1, time_shape=()):
    """Runs `solver`'s solve over float64 `times` ((T,) or (B, T), the solver's increasing time) as
    a compiled program after check() (see `_checked`); returns (out (T, B * per), state (B, NUM_SLOTS),
    program)."""
    y0 = solver.y0
    settings = _settings(solver, samples, times.shape[-1])
    func, state_shape = solver.func.func, y0.shape
    key = (type(solver), settings, tuple(y0.shape), y0.dtype, y0.device, tuple(time_shape))

    def build():
        return adaptive_program(_shaped(func, state_shape), solver.tableau, settings, time_shape, y0.dtype)

    program = program_for(func, key, build)
    program.host_evaluations = _checked(program, check)
    rows = y0.detach().reshape(samples, -1)
    out, state, _, _, iterations = _call(program, rows, times, solver.rtol, solver.atol, _vector(solver, y0.device))
    program.iterations = int(iterations)
    return out.reshape(out.shape[0], -1), state, program


def _shaped(func, shape):
    def shaped(t, y):
        return func(t, y.reshape(shape))

    return shaped


def run_grid(solver, factory, check):
    """The fixed-grid solve as a compiled program; returns (solution (T, *y0.shape), program)."""
    y0 = solver.y0
    grid = solver._grid(factory.t)
    rhs = solver.func
    carry = len(factory.times) <= CARRIED_OUTPUTS
    settings = GridSettings(rhs.time_sign, rhs.negate, solver.perturb, solver.interp == "cubic", WINDOW, carry)
    key = (type(solver), settings, tuple(y0.shape), y0.dtype, y0.device)

    def build():
        return grid_program(_shaped(rhs.func, y0.shape), solver, settings, y0.dtype)

    program = program_for(rhs.func, key, build)
    program.host_evaluations = _checked(program, check)
    device_times = torch.tensor(factory.times, dtype=torch.float64).to(y0.device)
    out, _ = _call(
        program, y0.detach().reshape(1, -1), device_times, torch.tensor(grid, dtype=torch.float64).to(y0.device)
    )
    solver.n_steps = len(grid) - 1
    solver.final_dt = grid[-1] - grid[-2] if len(grid) > 1 else None
    solution = out.reshape(len(factory.times), *y0.shape)
    solver._check_finite(solution, factory.times, grid)
    return solution, program


def solve(factory, y0, mode):
    """The compiled solve of factory's problem from y0 (options['compile'] = mode); falls back to the
    uncompiled solve with one warning (or raises, mode 'strict') when it cannot run compiled."""
    solver = factory(y0)

    def check():
        _check_compilable(solver, y0, solver.func(factory.times[0], y0))  # RHS checks func's output

    try:
        _check_compilable(solver, y0, None)
        if isinstance(solver, FixedGridRKSolver):
            solution, program = run_grid(solver, factory, check)
            stats = solver.stats()
            stats.update(nfe=_grid_nfe(solver, program), loop="compiled", compiles=program.compiles)
            return solution, stats
        times = torch.tensor(factory.times, dtype=torch.float64).to(y0.device)
        out, state, program = run_adaptive(solver, times, check)
    except NotCompilable as error:
        _fall_back(mode, error)
        solver = factory(y0)
        return factory.integrate(solver), solver.stats()
    return _finish(solver, out.reshape(len(factory.times), *y0.shape), state[0], program)


def solve_per_sample(solver, times, mode):
    """A per-sample solve (odecore.solvers.per_sample) as a compiled program: (out (T, B * per),
    state (B, NUM_SLOTS), batched evaluations, compiles), or None when it falls back (mode True)."""
    y0, samples = solver.y0, solver.samples

    def check():
        t_first = times[..., 0].expand(samples).contiguous()
        _check_compilable(solver, y0, solver.func.call_device_time((solver.func.time_sign * t_first).to(y0.dtype), y0))

    try:
        _check_compilable(solver, y0, None)
        out, state, program = run_adaptive(solver, times, check, samples=samples, time_shape=(samples,))
    except NotCompilable as error:
        _fall_back(mode, error)
        return None
    return out, state, _adaptive_nfe(solver, program), program.compiles


def _grid_nfe(solver, program):
    per_step = solver.tableau.stages + (1 if solver.interp == "cubic" else 0)
    return program.host_evaluations + solver.n_steps * per_step


def _adaptive_nfe(solver, program):
    """The host's check (if made), f0 (and f1 of the initial step selection), then the stages."""
    initial = 1 if solver.first_step is not None else 2
    return program.host_evaluations + initial + program.iterations * len(solver._stage_plan)


def _finish(solver, solution, state, program):
    """The solution and statistics of a compiled solve, or the uncompiled loop's error."""
    s = state.tolist()
    stats = {
        "nfe": _adaptive_nfe(solver, program),
        "n_steps": int(s[Slot.N_STEPS]),
        "n_accepted": int(s[Slot.N_ACCEPTED]),
        "n_rejected": int(s[Slot.N_STEPS]) - int(s[Slot.N_ACCEPTED]),
        "final_dt": s[Slot.DT],
        "loop": "compiled",
        "host_reads": 1,
        "compiles": program.compiles,
    }
    if int(s[Slot.STATUS]) != control.DONE:
        solver._raise_status(int(s[Slot.STATUS]), s[Slot.ERR_T], s[Slot.ERR_DT])
    return solution, stats


# -- inside the caller's compiled program ------------------------------------------------------

# the adaptive solvers' option defaults, from their one definition (AdaptiveRKSolver's signature)
_SOLVER_DEFAULTS = {
    name: parameter.default for name, parameter in inspect.signature(AdaptiveRKSolver.__init__).parameters.items()
}
TRACED_OPTIONS = ("first_step", "min_step", "max_step", "safety", "ifactor", "dfactor", "max_num_steps", "dtype")


def _traced_settings(options, order, n, t, grad):
    """Settings and the parameter vector of a solve traced into the caller's program."""
    defaults = {k: _SOLVER_DEFAULTS[k] for k in ("min_step", "max_step", "safety", "ifactor", "dfactor")}
    unknown = set(options) - set(TRACED_OPTIONS)
    if unknown:
        raise ValueError(
            "inside torch.compile odecore takes the options %s, got %s" % (TRACED_OPTIONS, sorted(unknown))
        )
    values = {
        k: number_option(
            k,
            options.get(k, v),
            positive=k != "min_step",
            minimum=0.0 if k == "min_step" else None,
            finite=k != "max_step",
        )
        for k, v in defaults.items()
    }
    steps = options.get("max_num_steps", _SOLVER_DEFAULTS["max_num_steps"])
    first = options.get("first_step")
    first = math.nan if first is None else number_option("first_step", first, positive=True)
    f32 = options.get("dtype", _SOLVER_DEFAULTS["dtype"]) == torch.float32
    sign = torch.where(t[-1] < t[0], -1.0, 1.0).to(torch.float64)
    settings = Settings(order, sign, None, f32, (n,), 1, first == first, WINDOW, grad or t.shape[0] <= CARRIED_OUTPUTS)
    vector = [
        values["safety"],
        values["ifactor"],
        values["dfactor"],
        values["min_step"],
        values["max_step"],
        float(steps),
        first,
    ]
    return settings, torch.tensor(vector, dtype=torch.float64, device=t.device), sign


def _traced_tolerance(tol, y0):
    tol = torch.as_tensor(tol, dtype=torch.float64, device=y0.device)
    return tol.reshape(1) if tol.numel() == 1 else torch.broadcast_to(tol, y0.shape).reshape(-1)


def traced_odeint(func, y0, t, rtol, atol, method, options):
    """odeint while torch.compile traces its caller: the adaptive loop inlined into the caller's
    program, with no host read. Inputs are not checked for NaN or monotonic t there (that needs a
    host read), and a solve that stops early raises from the program without t and dt."""
    method = "dopri5" if method is None else method
    cls = SOLVERS.get(method)
    if cls is None or not issubclass(cls, AdaptiveRKSolver):
        raise NotImplementedError("inside torch.compile odecore solves with the adaptive methods, got %r" % (method,))
    if not isinstance(y0, torch.Tensor) or y0.dtype not in (torch.float32, torch.float64):
        raise NotImplementedError("inside torch.compile odecore solves a float32 or float64 tensor state")
    options = {k: v for k, v in (options or {}).items() if k not in ("compile", "backend", "return_stats")}
    if t.shape[0] == 1:
        return y0.unsqueeze(0)
    grad = torch.is_grad_enabled()
    settings, vector, sign = _traced_settings(options, float(cls.order), y0.numel(), t, grad)
    run = adaptive_program(_shaped(func, y0.shape), cls.tableau, settings, (), y0.dtype)
    times = t.to(torch.float64) * sign
    out, state, _, _, _ = run(
        y0.reshape(1, -1), times, _traced_tolerance(rtol, y0), _traced_tolerance(atol, y0), vector
    )
    if out.requires_grad:
        # torch's while_loop backward differentiates the step-size control too and gives wrong
        # gradients for parameters when the state does not require grad: refuse rather than mislead
        raise NotImplementedError(
            "odecore: gradients through odeint inside torch.compile are not supported; compile the caller for "
            "inference (torch.no_grad()), or train with odecore.odeint_adjoint(..., options={'compile': True}) "
            "called outside torch.compile, which compiles its forward and backward solves"
        )
    torch._assert_async(
        (state[:, Slot.STATUS] == control.DONE).all(),
        "odecore: the solve inside a compiled program stopped early (non-finite values, step-size underflow or "
        "max_num_steps); run it outside torch.compile to see where",
    )
    return out.reshape(t.shape[0], *y0.shape)

"""The adaptive explicit Runge-Kutta loop shared by every embedded method.

Step control follows torchdiffeq 0.2.5 (and Hairer, Norsett & Wanner, "Solving Ordinary
Differential Equations I", section II.4), so the same steps are taken: the same initial
step, error ratio, accept rule and step-size factor. The step arithmetic is the backend's:
each stage is one `rk_stage`, the solution and its error ratio one `rk_finish` (or
`rk_error_ratio` when the last stage already is the solution), and output times one
`rk_interp` per step that holds any.

Two loops run this arithmetic:

* the host loop (`_step`): time lives on the host as Python floats; one host read per step
  (the error ratio) decides acceptance. Every feature runs here. With the fused backend its
  common case (no user norm, step_t/jump_t, callbacks or checkpoint recording) runs as the
  compiled host loop (`odecore._C.host_loop`, csrc/host_loop.cpp): the same loop, operation for
  operation and bitwise, in C++, so that a step costs no Python beyond the user's func.
  `CPP_HOST_LOOP = False` here turns it off (the tests compare the two).
* the device loop (`_integrate_device`, option ``sync_every=K``): t, dt, the accept/reject
  decision, the step counters and the status live in a small float64 tensor on the state's
  device, updated by the fused `rk_control` op; the stages take dt as a device tensor
  (`rk_stage_dt`, ...), a rejected step becomes a masked no-op (`torch.where`), and output
  rows are written in place by `rk_dense_into`. The host reads the control state once every
  K steps to see whether the solve is done or failed. The arithmetic is the host loop's,
  operation for operation, so the results are the same (bitwise on the CPU). Used by
  default on CUDA (K = 16) when nothing records gradients and the solve needs no host-side
  feature (a user `norm`, `step_t`/`jump_t`, checkpoint recording); up to K - 1 attempts
  after the end are wasted (their evaluations count in nfe, not in the step counts).
"""

import bisect
import math

import torch

from ..ops import control
from ..ops.control import NUM_SLOTS, ControlParams, Slot, Status
from .base import Perturb, check_finite_ratio, warn_unused

_KNOWN = {
    "first_step",
    "step_t",
    "jump_t",
    "min_step",
    "max_step",
    "safety",
    "ifactor",
    "dfactor",
    "max_num_steps",
    "dtype",
    "norm",
    "sync_every",
}

# Whether the host loop's common case runs in C++ (odecore._C.host_loop) where the ops have it.
CPP_HOST_LOOP = True

# Default K of the device loop on CUDA: one host read per 16 steps.
DEFAULT_SYNC_EVERY = 16


def rms_segments(x, segments):
    """The largest RMS over consecutive segments of the flattened `x` (float64); a segment
    of negative length -L covers L elements left out of the norm (a seminorm)."""
    x = x.reshape(-1).to(torch.float64)
    chunks = [
        chunk
        for length, chunk in zip(segments, torch.split(x, [abs(n) for n in segments]))
        if length > 0 and chunk.numel()
    ]
    if not chunks:
        return 0.0
    # the same reduction per segment as torchdiffeq's RMS norm, one host read for all
    return max(torch.stack([chunk.pow(2).mean() for chunk in chunks]).sqrt().tolist())


def number_option(name, value, positive=False, minimum=None, finite=True):
    """options[name] as a float, checked; the error names the option."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        and not (isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex())
    ):
        raise TypeError("options[%r] must be a real number, got %r" % (name, value))
    value = float(value)
    if (
        value != value
        or (finite and math.isinf(value))
        or (positive and not value > 0)
        or (minimum is not None and not value >= minimum)
    ):
        raise ValueError(
            "options[%r] must be a %s number, got %r"
            % (name, "positive" if positive else "non-negative" if minimum == 0.0 else "finite", value)
        )
    return value


class _DeviceControl:
    """The device loops' control tensors: the state (one row per solve), the output times,
    the accept flags, this step's stage times and dt, and rk_control's nodes and params."""

    def __init__(self, state, times, nodes, params, accept, stage_t, dt):
        self.state, self.times, self.nodes, self.params = state, times, nodes, params
        self.accept, self.stage_t, self.dt = accept, stage_t, dt


class AdaptiveRKSolver:
    """Base of the embedded RK methods; a subclass sets `tableau` and `order`."""

    tableau = None
    order = None

    def __init__(
        self,
        func,
        y0,
        rtol,
        atol,
        *,
        ops,
        segments,
        norm=None,
        first_step=None,
        step_t=None,
        jump_t=None,
        min_step=0.0,
        max_step=math.inf,
        safety=0.9,
        ifactor=10.0,
        dfactor=0.2,
        max_num_steps=2**31 - 1,
        dtype=torch.float64,
        sync_every=None,
        **unused,
    ):
        warn_unused(type(self), unused)
        self.func = func
        self.y0 = y0
        self.ops = ops
        self.segments = segments
        self.norm = norm
        self.rtol, self.atol = rtol, atol
        if y0.numel() and not bool((rtol > 0).any()) and not bool((atol > 0).any()):
            raise ValueError(
                "rtol and atol are both zero: the error tolerance atol + rtol * |y| vanishes where y does; "
                "give atol > 0 (or rtol > 0 for a state that never crosses zero)"
            )
        self.first_step = None if first_step is None else number_option("first_step", first_step, positive=True)
        self.min_step = number_option("min_step", min_step, minimum=0.0)
        self.max_step = number_option("max_step", max_step, positive=True, finite=False)
        self.safety = number_option("safety", safety, positive=True)
        self.ifactor = number_option("ifactor", ifactor, positive=True)
        self.dfactor = number_option("dfactor", dfactor, positive=True)
        if (
            isinstance(max_num_steps, bool)
            or not isinstance(max_num_steps, (int, float))
            or not (max_num_steps == max_num_steps and 1 <= max_num_steps < math.inf)
        ):
            raise ValueError("options['max_num_steps'] must be a positive integer, got %r" % (max_num_steps,))
        self.max_num_steps = int(max_num_steps)
        if norm is not None and not callable(norm):
            raise TypeError("options['norm'] must be callable, got %s" % type(norm).__name__)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
            raise TypeError("options['dtype'] must be a real floating point torch.dtype, got %r" % (dtype,))
        self.time_dtype = torch.promote_types(dtype, y0.dtype)
        # the step bounds are times too (torchdiffeq makes them tensors of the time dtype): a
        # float32 max_step of 0.05 is 0.0500000007, and a dt rounded to it must not exceed it
        self.min_step, self.max_step = self._round(self.min_step), self._round(self.max_step)
        self.step_t = self._sorted_times("step_t", step_t)
        self.jump_t = self._sorted_times("jump_t", jump_t)
        if set(self.step_t) & set(self.jump_t):
            raise ValueError("`step_t` and `jump_t` must not have any repeated elements between them.")
        if sync_every is not None and (
            isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 0
        ):
            raise ValueError(
                "options['sync_every'] must be a non-negative int (0: read the error ratio on the host "
                "every step), got %r" % (sync_every,)
            )
        self.sync_every = sync_every
        self.n_steps = self.n_accepted = 0
        self.host_reads = 0
        self.loop = "host"
        self._params = self._control_params()
        tab = self.tableau
        self._stage_plan = [(idx, coeffs, tab.c[i]) for i, (idx, coeffs) in enumerate(tab.stage_terms) if i > 0]

    @staticmethod
    def _sorted_times(name, times):
        if times is None:
            return []
        try:
            values = torch.as_tensor(times).detach().reshape(-1).to(torch.float64).tolist()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError("options[%r] must be a 1-D tensor or sequence of times, got %r" % (name, times)) from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError("options[%r] contains NaN or inf" % name)
        return sorted(values)

    def _round(self, value):
        """Time-like values carry the precision of `dtype` (float64 unless asked otherwise)."""
        if self.time_dtype == torch.float64:
            return value
        return torch.tensor(value, dtype=self.time_dtype).item()

    # -- the error norm ---------------------------------------------------------------
    def _norm(self, x):
        return rms_segments(x, self.segments) if self.norm is None else float(self.norm(x))

    def _error_ratio(self, y0, y1, k, dt):
        """Error ratio with a user-supplied norm: computed with plain torch ops."""
        e_idx, e = self.tableau.e_terms
        err = sum(k[j] * (ej * dt) for j, ej in zip(e_idx, e))
        tol = self.atol.view(-1) + self.rtol.view(-1) * torch.max(y0.abs(), y1.abs()).reshape(-1)
        ratio = float(abs(self.norm((err.reshape(-1) / tol).view_as(y0))))
        if not torch.isfinite(y1).all():
            return math.nan
        return ratio

    def _initial_step(self, t0, y0, f0):
        if self.norm is None:
            return self._initial_step_fused(t0, y0, f0)
        return self._initial_step_by_norm(t0, y0, f0)

    def _tolerance_scale(self, y0):
        """atol + rtol |y0| per element, the initial step's scale."""
        return self.atol.view(-1) + y0.abs().reshape(-1).to(torch.float64) * self.rtol.view(-1)

    def _scaled_norm(self, x, scale):
        return abs(self._norm((x.reshape(-1) / scale).view_as(x)))

    def _initial_step_by_norm(self, t0, y0, f0):
        """torchdiffeq's initial step selection with the solver's own norm."""
        with torch.no_grad():
            scale = self._tolerance_scale(y0)
            d0, d1 = self._scaled_norm(y0, scale), self._scaled_norm(f0, scale)
            h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
            f1 = self.func(t0 + h0, y0 + h0 * f0)
            d2 = self._scaled_norm(f1 - f0, scale) / h0
        return self._round(control.initial_dt(h0, d1, d2, float(self.order), 0.0))

    def _initial_step_fused(self, t0, y0, f0):
        """torchdiffeq's initial step with the three scaled norms as fused error-ratio ops:
        rms(x / (atol + rtol |y0|)) per segment is the ratio of an error x at y1 = y0."""
        ops, rtol, atol, segments = self.ops, self.rtol, self.atol, self.segments
        with torch.no_grad():
            d0 = ops.rk_error_ratio(y0, y0, [y0], [1.0], 1.0, rtol, atol, segments).item()
            d1 = ops.rk_error_ratio(y0, y0, [f0], [1.0], 1.0, rtol, atol, segments).item()
            self._check_initial(d0, d1, t0, 0.0)
            h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
            if not h0 > 0.0:
                self._underflow(t0, h0)
            f1 = self.func(t0 + h0, ops.rk_stage(y0, [f0], [1.0], h0))
            d2 = ops.rk_error_ratio(y0, y0, [f1, f0], [1.0, -1.0], 1.0, rtol, atol, segments).item() / h0
            self._check_initial(d2, d2, t0 + h0, h0)
        return self._round(control.initial_dt(h0, d1, d2, float(self.order), 0.0))

    def _check_initial(self, a, b, t, dt):
        """The initial step's norms: NaN or inf there is a non-finite solution or func."""
        if not (math.isfinite(a) and math.isfinite(b)):
            check_finite_ratio(math.nan, self.func.time_sign * t, dt)

    def _underflow(self, t, dt):
        raise RuntimeError(
            "step size underflow: t=%r, dt=%r; t + dt == t (the problem may be stiff or "
            "its solution may blow up here)" % (self.func.time_sign * t, dt)
        )

    # -- the loop ---------------------------------------------------------------------
    def integrate(self, t, recorder=None):
        """Solves over the increasing float times `t`; returns (len(t), *y0.shape).

        A `recorder` (see odecore.checkpoint) is told of every accepted step and of the
        output times emitted after it, so that `replay` can redo the solve exactly.
        """
        self.recorder = recorder
        y0 = self.y0
        self.t, self.y = t[0], y0
        self.f = self.func(t[0], y0)
        dt = self._initial_step(t[0], y0, self.f) if self.first_step is None else self.first_step
        # torchdiffeq clamps dt to [min_step, max_step] (a non-finite one to min_step) before
        # every step; later steps are clamped when their dt is chosen, so only the first here
        self.dt = self._round(min(max(dt if math.isfinite(dt) else self.min_step, self.min_step), self.max_step))
        self.next_step_index = min(bisect.bisect(self.step_t, t[0]), len(self.step_t) - 1)
        self.next_jump_index = min(bisect.bisect(self.jump_t, t[0]), len(self.jump_t) - 1)
        sync_every = self._device_sync_every(recorder)
        if sync_every and len(t) > 1:
            return self._integrate_device(t, sync_every)
        if len(t) > 1 and self._compiled_loop_ok(recorder):
            return self._integrate_compiled(t)
        chunks = [y0.unsqueeze(0)]
        j, steps_here = 1, 0
        while j < len(t):
            if t[j] > self.t:
                if steps_here >= self.max_num_steps:
                    self._raise_status(Status.MAX_STEPS, self.t, self.dt)
                self._step()
                steps_here += 1
                continue
            first = j
            while j < len(t) and t[j] <= self.t:
                j += 1
            chunks.extend(self._dense_output(t[first:j]))
            if recorder is not None:
                recorder.outputs(t[first:j])
            steps_here = 0
        return torch.cat(chunks)

    # -- the compiled host loop ----------------------------------------------------------
    def _compiled_loop_ok(self, recorder):
        """Whether `_integrate_compiled` can run this solve: the fused ops have it and the
        solve needs nothing that only the Python loop does."""
        cls = type(self)
        return (
            CPP_HOST_LOOP
            and hasattr(self.ops, "host_loop")
            and recorder is None
            and self.norm is None
            and not self.step_t
            and not self.jump_t
            and not self.func.callbacks
            and self.y0.dtype in (torch.float32, torch.float64)
            and self.time_dtype in (torch.float32, torch.float64)
            and all(
                getattr(cls, name) is getattr(AdaptiveRKSolver, name)
                for name in ("_step", "_attempt", "_accept", "_dense_output", "_next_dt", "_round")
            )
            and not torch.compiler.is_compiling()
        )

    def _integrate_compiled(self, t):
        """The host loop over the increasing float times `t` (len(t) > 1) in one call of
        odecore._C.host_loop; sets the solver's state as the Python loop leaves it."""
        tab, func = self.tableau, self.func
        plan = self._stage_plan
        e_idx, e = tab.e_terms if tab.fsal else ((), tab.e)  # rk_finish takes every stage
        out, status, self.t, self.dt, self.y, self.f, self.n_steps, self.n_accepted, reads, err_t, err_dt, last = (
            self.ops.host_loop(
                func,
                self.y,
                self.f,
                t,
                self.t,
                self.dt,
                [list(idx) for idx, _, _ in plan],
                [list(a) for _, a, _ in plan],
                [c for _, _, c in plan],
                tab.fsal,
                list(e_idx),
                list(e),
                list(tab.b),
                list(tab.dense_flat),
                self.rtol,
                self.atol,
                list(self.segments),
                self._control_params(),
                func.negate,
            )
        )
        self.host_reads += reads
        if last is not None:
            self.last_step = last[:2] + (list(last[2]), last[3])
        if status != Status.DONE:
            self._raise_status(status, err_t, err_dt)
        return out

    # -- the device loop -----------------------------------------------------------------
    def _device_sync_every(self, recorder):
        """K for the device loop, or 0 for the host loop (see the module docstring)."""
        k = self.sync_every
        if k == 0:
            return 0
        ops = self.ops
        eligible = (
            hasattr(ops, "rk_control")
            and recorder is None
            and self.norm is None
            and not self.step_t
            and not self.jump_t
            and not self.func.callbacks  # callbacks run on the host, at every step
            and self.y0.dtype in (torch.float32, torch.float64)
            and self.time_dtype in (torch.float32, torch.float64)
            and not (torch.is_grad_enabled() and (self.y0.requires_grad or self.f.requires_grad))
            and len(self.tableau.dense_flat) <= 192
        )
        if not eligible:
            return 0
        if k is None:
            return DEFAULT_SYNC_EVERY if self.y0.is_cuda else 0
        return k

    def _integrate_device(self, t, sync_every):
        """The device loop over the increasing float times `t` (len(t) > 1)."""
        y, f = self.y0, self.f
        dev = y.device
        t0, dt = self.t, self.dt
        # made on the device with fills (a blocking host-to-device copy would synchronise)
        state = torch.zeros(NUM_SLOTS, dtype=torch.float64, device=dev)
        state[Slot.T], state[Slot.DT], state[Slot.NEXT_OUT], state[Slot.FIRST_OUT] = t0, dt, 1, 1
        times = torch.tensor(t, dtype=torch.float64)
        times = times.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else times
        loop = self._device_control(state, times, ())
        out = y.new_empty((len(t), *y.shape))
        out[0] = y
        self.loop = "device"
        batch, shortened = sync_every, False
        while True:
            for _ in range(batch):
                y1, k = self._device_attempt(y, f, loop, out)
                y = torch.where(loop.accept, y1, y)
                f = torch.where(loop.accept, k[-1], f)
            s = state.tolist()
            self.host_reads += 1
            self.t, self.dt = s[Slot.T], s[Slot.DT]
            self.n_steps, self.n_accepted = int(s[Slot.N_STEPS]), int(s[Slot.N_ACCEPTED])
            status = int(s[Slot.STATUS])
            if status == Status.DONE:
                break
            if status != Status.RUNNING:
                self._raise_status(status, s[Slot.ERR_T], s[Slot.ERR_DT])
            # near the end, once, a shorter batch so that few attempts are wasted
            left = (t[-1] - s[Slot.T]) / s[Slot.DT] if s[Slot.DT] > 0 else math.inf
            if not shortened and left < sync_every:
                batch, shortened = max(1, math.ceil(left)), True
            else:
                batch = sync_every
        self.y, self.f = y, f
        return out

    def _device_control(self, state, times, batch_shape):
        """The device loops' control tensors for `state` (one row per solve), with the first
        attempt (or the error that stops it) set up where the state lives."""
        dev = state.device
        nodes = [c for _, _, c in self._stage_plan]
        params = self._control_params()
        loop = _DeviceControl(
            state,
            times,
            nodes,
            list(params),
            accept=torch.zeros(batch_shape, dtype=torch.bool, device=dev),
            stage_t=torch.empty(*batch_shape, len(nodes), dtype=self.y0.dtype, device=dev),
            dt=torch.empty(batch_shape or (1,), dtype=torch.float64, device=dev),
        )
        first_attempt = list(params._replace(prepare_only=1.0))
        self.ops.rk_control(state, loop.accept, loop.stage_t, loop.dt, loop.dt, times, nodes, first_attempt)
        return loop

    def _device_attempt(self, y, f, loop, out):
        """One attempt of the device loops from (y, f = func(t, y)): the stages at dt
        `loop.dt`, the error ratio, rk_control (deciding it and setting up the next one)
        and the output rows it covers. Returns (y1, k); the caller keeps y1 where accepted.

        func gets views of this step's own time tensor: rk_control writes the next step's
        times into a fresh one, so a time func keeps never changes."""
        ops, tab, func, c = self.ops, self.tableau, self.func, loop
        stage_times = c.stage_t.t().contiguous().unbind(0) if c.stage_t.dim() > 1 else c.stage_t.unbind(0)
        c.stage_t = torch.empty_like(c.stage_t)
        k = [f]
        yi = y
        for (idx, coeffs, _), ti in zip(self._stage_plan, stage_times):
            yi = ops.rk_stage_dt(y, [k[j] for j in idx], coeffs, c.dt)
            k.append(func.call_device_time(ti, yi))
        if tab.fsal:
            e_idx, e = tab.e_terms
            y1 = yi
            ratio = ops.rk_error_ratio_dt(y, yi, [k[j] for j in e_idx], e, c.dt, self.rtol, self.atol, self.segments)
        else:
            y1, ratio = ops.rk_finish_dt(y, k, tab.b, tab.e, c.dt, self.rtol, self.atol, self.segments)
        ops.rk_control(c.state, c.accept, c.stage_t, c.dt, ratio, c.times, c.nodes, c.params)
        ops.rk_dense_into(out, c.times, c.state, y, y1, k, tab.dense_flat)
        return y1, k

    def _control_params(self):
        """rk_control's parameters (csrc/include/odecore/rk_math.h, ControlParams) for this
        solve: the compiled loop's step control too."""
        return ControlParams(
            order=float(self.order),
            safety=self.safety,
            ifactor=self.ifactor,
            dfactor=self.dfactor,
            min_step=self.min_step,
            max_step=self.max_step,
            max_num_steps=float(self.max_num_steps),
            time_sign=self.func.time_sign,
            round_f32=1.0 if self.time_dtype == torch.float32 else 0.0,
        )

    def _raise_status(self, status, t, dt):
        """Raises the error of a loop that stopped with `status` (rk_control's codes) at
        solver time t with step dt."""
        if status == Status.NON_FINITE:
            check_finite_ratio(math.nan, self.func.time_sign * t, dt)
        if status == Status.UNDERFLOW:
            self._underflow(t, dt)
        raise RuntimeError(
            "max_num_steps exceeded (%d steps) at t=%r, dt=%r" % (self.max_num_steps, self.func.time_sign * t, dt)
        )

    # -- the host loop -------------------------------------------------------------------
    def _step(self):
        t0, y0, f0, dt = self.t, self.y, self.f, self.dt
        callbacks = self.func.callbacks
        if callbacks:
            self.func.callback("callback_step", t0, y0, dt, self.time_dtype)
        t1 = self._round(control.step_end(t0, dt, self._params))
        if not t1 > t0:  # in the time dtype, as torchdiffeq's `t0 + dt <= t0` (float32 times stop here too)
            self._underflow(t0, dt)
        on_step_t = on_jump_t = False
        if self.step_t:
            next_t = self.step_t[self.next_step_index]
            on_step_t = t0 < next_t < t1
            if on_step_t:
                t1, dt = next_t, self._round(next_t - t0)
        if self.jump_t:
            next_t = self.jump_t[self.next_jump_index]
            on_jump_t = t0 < next_t < t0 + dt
            if on_jump_t:
                on_step_t = False
                t1, dt = next_t, self._round(next_t - t0)

        k, y1, ratio = self._attempt(t0, y0, f0, dt, t1)
        self.host_reads += 1
        check_finite_ratio(ratio, self.func.time_sign * t0, dt)

        accept = control.accepts(ratio, dt, self._params)
        if accept and math.isinf(ratio):
            check_finite_ratio(math.nan, self.func.time_sign * t0, dt)
        self.n_steps += 1
        if accept:
            self.n_accepted += 1
            if self.recorder is not None:
                self.recorder.step((t0, dt, t1, on_jump_t), y0, f0)
            if on_step_t and self.next_step_index != len(self.step_t) - 1:
                self.next_step_index += 1
            if on_jump_t and self.next_jump_index != len(self.jump_t) - 1:
                self.next_jump_index += 1
            if callbacks:
                self.func.callback("callback_accept_step", t0, y0, dt, self.time_dtype)
            self._accept(t0, y0, k, dt, t1, y1, on_jump_t)
        elif callbacks:
            self.func.callback("callback_reject_step", t0, y0, dt, self.time_dtype)
        self.dt = self._next_dt(dt, ratio)

    def _attempt(self, t0, y0, f0, dt, t1):
        """The stages of one step from (t0, y0) with f0 = f(t0, y0); returns (k, y1, ratio)."""
        tab, func, ops = self.tableau, self.func, self.ops
        rk_stage = ops.rk_stage
        k = [f0]
        yi = y0
        t_end = func.nudge(t1, Perturb.PREV)  # stages at the end run just before it, in case of discontinuities
        times = func.time_tensors([t_end if c == 1.0 else t0 + c * dt for _, _, c in self._stage_plan])
        for (idx, coeffs, _), ti in zip(self._stage_plan, times):
            yi = rk_stage(y0, [k[j] for j in idx], coeffs, dt)
            k.append(func.call_device_time(ti, yi))
        if self.norm is not None:
            y1 = yi if tab.fsal else ops.rk_stage(y0, k, tab.b, dt)
            return k, y1, self._error_ratio(y0, y1, k, dt)
        if tab.fsal:
            e_idx, e = tab.e_terms
            ratio = ops.rk_error_ratio(y0, yi, [k[j] for j in e_idx], e, dt, self.rtol, self.atol, self.segments)
            return k, yi, ratio.tolist()
        y1, ratio = ops.rk_finish(y0, k, tab.b, tab.e, dt, self.rtol, self.atol, self.segments)
        return k, y1, ratio.tolist()

    def _accept(self, t0, y0, k, dt, t1, y1, on_jump_t):
        self.last_step = (t0, y0, k, dt)
        self.t, self.y = t1, y1
        # past a discontinuity of f, take f from the side we are now on
        self.f = self.func(t1, y1, Perturb.NEXT) if on_jump_t else k[-1]

    def replay(self, y, f, steps, emits):
        """Redoes recorded accepted `steps` from state y (with f = f(t, y)), emitting the
        recorded output times after each; returns (output chunks, y, f) at the end."""
        chunks = []
        for (t0, dt, t1, on_jump_t), times in zip(steps, emits):
            k, y1, _ = self._attempt(t0, y, f, dt, t1)
            self._accept(t0, y, k, dt, t1, y1, on_jump_t)
            if times:
                chunks.extend(self._dense_output(times))
            y, f = self.y, self.f
        return chunks, y, f

    def _next_dt(self, dt, ratio):
        return self._round(control.next_dt(dt, ratio, self._params))

    def _dense_output(self, times):
        """Outputs at `times`, all inside the last accepted step; one op for the interior ones."""
        t0, y0, k, dt = self.last_step
        span = self.t - t0
        pieces, pending = [], []
        for time in times:
            x = (time - t0) / span
            if x == 1.0:
                self._flush(pieces, pending, y0, k, dt)
                pieces.append(self.y.unsqueeze(0))
            else:
                pending.append(x)
        self._flush(pieces, pending, y0, k, dt)
        return pieces

    def _flush(self, pieces, pending, y0, k, dt):
        if pending:
            pieces.append(self.ops.rk_interp(y0, k, self.tableau.dense_flat, dt, list(pending)))
            pending.clear()

    def stats(self):
        return {
            "nfe": self.func.nfe,
            "n_steps": self.n_steps,
            "n_accepted": self.n_accepted,
            "n_rejected": self.n_steps - self.n_accepted,
            "final_dt": getattr(self, "dt", None),
            "loop": self.loop,
            "host_reads": self.host_reads,
        }

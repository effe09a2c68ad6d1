"""Step control of the adaptive loops: status codes, the control-state layout and the rule itself.

This is the one Python definition. The Python host loop calls it on floats, the reference
``rk_control`` on the floats of each sample, and the compiled whole solve on tensors inside a traced
loop (every function takes Python floats or float64 tensors alike). The fused kernels and the C++
host loop use its mirror in ``csrc/include/odecore/rk_math.h``, whose constants odecore._C exports so
that the tests can hold the two together.

The rule is torchdiffeq 0.2.5's (Hairer, Norsett & Wanner, "Solving Ordinary Differential Equations
I", section II.4), so that the same steps are taken: an attempt is accepted when its error ratio is at
most 1 (never above ``max_step``, always at ``min_step``); the next step is the last one times
``safety / ratio**(1/order)``, clipped to ``[dfactor, ifactor]`` (to ``[1, ifactor]`` after an accepted
step), clamped to ``[min_step, max_step]`` and rounded to the time dtype.
"""

import enum
import math
from typing import NamedTuple

import torch

NUM_SLOTS = 20  # the control state's length (a few slots spare)


class Status(enum.IntEnum):
    """What a loop's control state says of its solve (state[Slot.STATUS])."""

    RUNNING = 0
    DONE = 1
    NON_FINITE = 2  # NaN/inf in the solution or its error estimate
    UNDERFLOW = 3  # t + dt == t in the time dtype
    MAX_STEPS = 4  # max_num_steps attempts without passing an output time


# plain floats of the codes for the rule's comparisons: a traced loop (torch.compile) must not compare
# tensors with enum members (dynamo folds such a comparison to a constant)
RUNNING, DONE, NON_FINITE, UNDERFLOW, MAX_STEPS = (float(code) for code in Status)


class Slot:
    """Slots of the float64 control state (one row of NUM_SLOTS per solve). Plain ints, not an enum:
    a traced loop (torch.compile) cannot index with enum members."""

    T = 0  # current time (end of the last accepted step)
    DT = 1  # the next step size
    STATUS = 2
    N_STEPS = 3  # attempted steps
    N_ACCEPTED = 4
    STEPS_HERE = 5  # attempts since the last output time was passed (max_num_steps)
    NEXT_OUT = 6  # index of the first output time not yet written
    FIRST_OUT = 7  # first output row the last step wrote (rows [FIRST_OUT, NEXT_OUT))
    T0 = 8  # start of the attempt being made
    T1 = 9  # its end
    DT_USED = 10  # its step size
    RATIO = 11  # error ratio of the last attempt
    ERR_T = 12  # t and dt where the solve stopped with an error
    ERR_DT = 13
    OUT_T0 = 14  # the last accepted step (t0, t1, dt), for its output rows
    OUT_T1 = 15
    OUT_DT = 16

    @classmethod
    def items(cls) -> dict:
        return {name: index for name, index in vars(cls).items() if name.isupper()}


class ControlParams(NamedTuple):
    """The rule's parameters, in the order of rk_control's ``params`` argument."""

    order: float
    safety: float
    ifactor: float
    dfactor: float
    min_step: float
    max_step: float
    max_num_steps: float
    time_sign: float
    round_f32: float  # 1.0: time-like values carry float32 precision (options dtype=float32)
    prepare_only: float = 0.0  # 1.0: only set up the first attempt from state[T], state[DT]


# -- float-or-tensor primitives ------------------------------------------------------------


def where(cond, a, b):
    """``a if cond else b`` for a bool, elementwise for a tensor `cond` (float64 where both are floats)."""
    if not isinstance(cond, torch.Tensor):
        return a if cond else b
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and not isinstance(a, bool):
        a = torch.full_like(cond, a, dtype=torch.float64)
    return torch.where(cond, a, b)


def minimum(a, b):
    """Python's ``min(a, b)``: `a` unless ``b < a``."""
    return where(b < a, b, a)


def maximum(a, b):
    """Python's ``max(a, b)``: `a` unless ``b > a``."""
    return where(b > a, b, a)


def divide(a, b):
    """``a / b`` with IEEE semantics for floats too (inf or NaN, not ZeroDivisionError, at b = 0)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) or b != 0:
        return a / b
    if a != a or a == 0:
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def negate(x):
    """Logical not of a bool or a bool tensor."""
    return ~x if isinstance(x, torch.Tensor) else not x


def is_inf(x):
    return (x == math.inf) | (x == -math.inf)


def round_time(value, round_f32):
    """A time-like value rounded to the time dtype (float32 when `round_f32`, else float64)."""
    if isinstance(round_f32, torch.Tensor):
        return where(round_f32 != 0, value.to(torch.float32).to(torch.float64), value)
    if not round_f32:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(torch.float32).to(torch.float64)
    return float(torch.tensor(value, dtype=torch.float32).item())


def time_before(t, dtype):
    """The time just before `t` in `dtype` (the state's; Perturb.PREV of the host loop), as float64."""
    if isinstance(t, torch.Tensor):
        low = t.to(dtype)
        return torch.nextafter(low, torch.full_like(low, float("-inf"))).to(torch.float64)
    low = torch.tensor(t, dtype=dtype)
    return float(torch.nextafter(low, torch.tensor(float("-inf"), dtype=dtype)).item())


# -- the rule ------------------------------------------------------------------------------


def step_end(t0, dt, p: ControlParams):
    """The end of a step of size dt from t0 in the time dtype; not after t0 means underflow."""
    return round_time(t0 + dt, p.round_f32)


def accepts(ratio, dt, p: ControlParams):
    """Whether an attempt of size dt with error ratio `ratio` is accepted."""
    ok = where(dt > p.max_step, False, ratio <= 1.0)
    return where(dt <= p.min_step, True, ok)


def step_factor(ratio, p: ControlParams):
    """safety / ratio^(1/order), clipped to [dfactor, ifactor] ([1, ifactor] once accepted)."""
    dfactor = where(ratio >= 1.0, p.dfactor, 1.0)
    factor = minimum(p.ifactor, maximum(divide(p.safety, ratio ** (1.0 / p.order)), dfactor))
    return where(ratio == 0.0, p.ifactor, factor)


def next_dt(dt, ratio, p: ControlParams):
    """The step size after an attempt of size dt, clamped to [min_step, max_step] and rounded."""
    return round_time(minimum(maximum(dt * step_factor(ratio, p), p.min_step), p.max_step), p.round_f32)


def initial_dt(h0, d1, d2, order, round_f32):
    """The end of torchdiffeq's initial step selection: min(100 h0, (0.01 / max(d1, d2))^(1/order)),
    from h0 and the norms d1 = |f0|, d2 = |f1 - f0| / h0 (scaled by the tolerances)."""
    flat = (d1 <= 1e-15) & (d2 <= 1e-15) if isinstance(d1, torch.Tensor) else d1 <= 1e-15 and d2 <= 1e-15
    h1 = where(flat, maximum(1e-6, h0 * 1e-3), divide(0.01, maximum(d1, d2)) ** (1.0 / order))
    return round_time(minimum(100 * h0, h1), round_f32)


def passed_outputs(times, first, t1):
    """The index of the first output time after t1, searching from index `first` (times increase;
    a NaN t1 passes none): `times` a list of floats, or a (T,) or (B, T) float64 tensor."""
    if isinstance(t1, torch.Tensor):
        passed = (times <= t1.unsqueeze(-1)).sum(-1)
        return torch.maximum(first, passed.to(torch.float64))
    index = int(first)
    while index < len(times) and times[index] <= t1:
        index += 1
    return float(index)


# -- the transition of one attempt (rk_control) --------------------------------------------
#
# `s` is the control state as a list of NUM_SLOTS values: floats for one solve, or tensors (one
# value per solve) for many; every update is masked, so rows that are not running do not change.


def update(s: list, ratio, times, n_times: int, c, p: ControlParams, stage_dtype: torch.dtype):
    """Decides the attempt s describes from its error ratio and sets up the next one, in place (with
    ``p.prepare_only``: sets up the first attempt instead). Returns (accept, the next attempt's stage
    times times time_sign, its dt); once a solve has stopped its stage times are its current time.
    Output rows [s[FIRST_OUT], s[NEXT_OUT]) fall in an accepted step (s[OUT_T0..OUT_DT])."""
    _stop_on_foreign_index(s, n_times)
    if p.prepare_only:
        accept = s[Slot.STATUS] != s[Slot.STATUS]  # False, in the state's kind
        s[Slot.FIRST_OUT] = s[Slot.NEXT_OUT]
        _prepare(s, s[Slot.STATUS] == RUNNING, p)
    else:
        accept = _decide(s, ratio, times, n_times, p)
    stopped = s[Slot.STATUS] != RUNNING
    stage = [where(stopped, s[Slot.T], ti) * p.time_sign for ti in attempt_times(s, c, stage_dtype)]
    return accept, stage, s[Slot.DT_USED]


def _stop_on_foreign_index(s, n_times):
    """A state whose output index is not an index of the times (corrupted or foreign) stops the
    solve instead of reading out of bounds."""
    index = s[Slot.NEXT_OUT]
    bad = (s[Slot.STATUS] == RUNNING) & negate((index >= 0.0) & (index <= float(n_times)))
    _fail(s, bad, NON_FINITE, s[Slot.T], s[Slot.DT])
    s[Slot.NEXT_OUT] = where(bad, float(n_times), s[Slot.NEXT_OUT])


def _fail(s, mask, status, t, dt):
    s[Slot.STATUS] = where(mask, status if isinstance(status, torch.Tensor) else float(status), s[Slot.STATUS])
    s[Slot.ERR_T] = where(mask, t, s[Slot.ERR_T])
    s[Slot.ERR_DT] = where(mask, dt, s[Slot.ERR_DT])


def _prepare(s, active, p):
    """Sets up the attempt from s[T] with step s[DT] where `active`, or stops with the reason it
    cannot be taken (max_num_steps, underflow)."""
    t0, dt = s[Slot.T], s[Slot.DT]
    t1 = step_end(t0, dt, p)
    reason = where(
        s[Slot.STEPS_HERE] >= p.max_num_steps,
        MAX_STEPS,
        where(t1 > t0, RUNNING, UNDERFLOW),
    )
    stops = active & (reason != RUNNING)
    _fail(s, stops, reason, t0, dt)
    ok = active & (reason == RUNNING)
    s[Slot.T0] = where(ok, t0, s[Slot.T0])
    s[Slot.T1] = where(ok, t1, s[Slot.T1])
    s[Slot.DT_USED] = where(ok, dt, s[Slot.DT_USED])


def _decide(s, ratio, times, n_times, p):
    s[Slot.FIRST_OUT] = s[Slot.NEXT_OUT]
    running = s[Slot.STATUS] == RUNNING
    dt = s[Slot.DT_USED]
    s[Slot.RATIO] = where(running, ratio, s[Slot.RATIO])
    ok = accepts(ratio, dt, p)
    bad = (ratio != ratio) | (ok & is_inf(ratio))
    _fail(s, running & bad, NON_FINITE, s[Slot.T0], dt)
    going = running & negate(bad)
    s[Slot.N_STEPS] = where(going, s[Slot.N_STEPS] + 1.0, s[Slot.N_STEPS])
    s[Slot.STEPS_HERE] = where(going, s[Slot.STEPS_HERE] + 1.0, s[Slot.STEPS_HERE])
    accept = going & ok
    _accept(s, accept, times, dt)
    s[Slot.DT] = where(going, next_dt(dt, ratio, p), s[Slot.DT])
    done = going & (s[Slot.NEXT_OUT] >= n_times)
    s[Slot.STATUS] = where(done, DONE, s[Slot.STATUS])
    _prepare(s, going & negate(done), p)
    return accept


def _accept(s, accept, times, dt):
    """Moves to the end of an accepted step and past the output times it covers."""
    s[Slot.OUT_T0] = where(accept, s[Slot.T0], s[Slot.OUT_T0])
    s[Slot.OUT_T1] = where(accept, s[Slot.T1], s[Slot.OUT_T1])
    s[Slot.OUT_DT] = where(accept, dt, s[Slot.OUT_DT])
    s[Slot.N_ACCEPTED] = where(accept, s[Slot.N_ACCEPTED] + 1.0, s[Slot.N_ACCEPTED])
    s[Slot.T] = where(accept, s[Slot.T1], s[Slot.T])
    first = s[Slot.NEXT_OUT]
    passed = where(accept, passed_outputs(times, first, s[Slot.T1]), first)
    s[Slot.STEPS_HERE] = where(accept & (passed != first), 0.0, s[Slot.STEPS_HERE])
    s[Slot.NEXT_OUT] = passed


def attempt_times(s, c, dtype):
    """The times of stages 1.. of the attempt set up in s (the last one just before its end)."""
    t0, dt, t1 = s[Slot.T0], s[Slot.DT_USED], s[Slot.T1]
    return [time_before(t1, dtype) if ci == 1.0 else t0 + ci * dt for ci in c]

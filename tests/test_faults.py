"""Numerical faults (issue #9): every solve that cannot go on stops with an error naming t
and dt (and, per sample, the sample), and every loop is bounded by ``max_num_steps``.

Faults: stiffness or a blow-up that drives the step size to underflow, a func that returns
NaN after a while, a solution that overflows to inf. Loops: odeint's host loop, its
device-resident loop (``sync_every``), the per-sample loop (``batch_dim``), odeint_adjoint's
backward solves, sdeint (fixed and adaptive steps) and the event search of odeint_event.
"""

import math
import re

import pytest
import torch
from torch import nn

import odecore
from odecore.solvers.per_sample import SampleFailure

from .problems import blowup

F64 = torch.float64
LOOPS = {"host": {"sync_every": 0}, "device": {"sync_every": 4}}


def t_and_dt(message):
    """(t, dt) as the error message gives them."""
    number = r"([-+0-9.e]+|nan|inf|-inf)"
    match = re.search(r"\bt=%s[^;]*?\bdt=%s" % (number, number), message)
    assert match, "no t=..., dt=... in %r" % message
    return float(match.group(1)), float(match.group(2))


class Counting:
    """func(t, y) that counts its calls and turns NaN from t > t_nan on."""

    def __init__(self, f, t_nan=math.inf):
        self.f, self.t_nan, self.calls = f, t_nan, 0

    def __call__(self, t, y):
        self.calls += 1
        out = self.f(t, y)
        return out * math.nan if float(t) > self.t_nan else out


def stiff(t, y):  # a fast mode at -1e9: an explicit method needs dt ~ 1e-9
    return -1e9 * (y - torch.cos(t))


# -- odeint: the host loop and the device loop ----------------------------------------- #
@pytest.mark.fused
@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_blowup_underflows_with_t_and_dt(loop, method):
    y0 = torch.ones(2, dtype=F64)
    with pytest.raises(RuntimeError, match="step size underflow") as info:
        odecore.odeint(blowup, y0, torch.tensor([0.0, 2.0], dtype=F64), method=method, options=LOOPS[loop])
    t, dt = t_and_dt(str(info.value))
    assert 0.99 < t < 1.01 and 0 <= dt < 1e-12  # at the singularity, dt below t's resolution


@pytest.mark.fused
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_stiffness_is_stopped_by_max_num_steps(loop):
    func = Counting(stiff)
    with pytest.raises(RuntimeError, match=r"max_num_steps exceeded \(50 steps\)") as info:
        odecore.odeint(
            func,
            torch.zeros(2, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            options=dict(LOOPS[loop], max_num_steps=50),
        )
    t, dt = t_and_dt(str(info.value))
    assert 0 <= t < 1e-4 and 0 < dt < 1e-6
    # the bound holds: 50 attempts of 6 evaluations (+ the initial ones and, in the device
    # loop, up to sync_every - 1 wasted attempts)
    assert func.calls <= 2 + 6 * (50 + 4)


@pytest.mark.fused
@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_nan_after_a_while_names_t_and_dt(loop, direction):
    func = Counting(lambda t, y: -y, t_nan=0.5) if direction > 0 else Counting(lambda t, y: -y)
    if direction < 0:
        func.f = lambda t, y: -y if float(t) > -0.5 else y * math.nan
    t = torch.tensor([0.0, direction * 1.0], dtype=F64)
    with pytest.raises(RuntimeError, match="non-finite values") as info:
        odecore.odeint(func, torch.ones(3, dtype=F64), t, options=LOOPS[loop])
    t_err, dt = t_and_dt(str(info.value))
    # t just before the NaN region; dt > 0 the step that met it (the sign of t in reverse
    # time: test_known_reverse_time_error_reports_solver_time)
    assert 0.0 <= abs(t_err) <= 0.5 and dt > 0


@pytest.mark.fused
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_known_reverse_time_error_reports_solver_time(loop):
    func = Counting(lambda t, y: -y if float(t) > -0.5 else y * math.nan)
    with pytest.raises(RuntimeError, match="non-finite") as info:
        odecore.odeint(func, torch.ones(3, dtype=F64), torch.tensor([0.0, -1.0], dtype=F64), options=LOOPS[loop])
    assert -0.5 <= t_and_dt(str(info.value))[0] <= 0.0


@pytest.mark.fused
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_overflow_to_inf_names_t_and_dt(loop):
    # y' = 1e300 y: finite for a step or two, then inf
    with pytest.raises(RuntimeError, match="non-finite|underflow") as info:
        odecore.odeint(
            lambda t, y: 1e300 * y,
            torch.ones(2, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            options=dict(LOOPS[loop], first_step=1e-3, max_num_steps=1000),
        )
    t_and_dt(str(info.value))


@pytest.mark.parametrize("method", ["euler", "rk4", "midpoint", "explicit_adams", "implicit_adams"])
def test_fixed_grid_nan_and_overflow_name_t_and_dt(method):
    t = torch.linspace(0, 1, 5, dtype=F64)
    with pytest.raises(RuntimeError, match="non-finite") as info:
        odecore.odeint(
            Counting(lambda t, y: -y, t_nan=0.4),
            torch.ones(2, dtype=F64),
            t,
            method=method,
            options={"step_size": 0.05},
        )
    t_err, dt = t_and_dt(str(info.value))
    assert 0.4 <= t_err <= 1.0 and dt == pytest.approx(0.05)
    with pytest.raises(RuntimeError, match="non-finite"):
        odecore.odeint(
            lambda t, y: 1e200 * y * y, torch.ones(2, dtype=F64), t, method=method, options={"step_size": 0.05}
        )


@pytest.mark.parametrize("method", ["implicit_euler", "gl4", "radauIIA3"])
def test_implicit_newton_failure_names_t_and_dt(method):
    with pytest.raises(RuntimeError, match="t=.*dt="):
        odecore.odeint(
            Counting(lambda t, y: -y, t_nan=0.3),
            torch.ones(2, dtype=F64),
            torch.linspace(0, 1, 3, dtype=F64),
            method=method,
            options={"step_size": 0.1},
        )


# -- per-sample solves ------------------------------------------------------------------ #
@pytest.mark.fused
@pytest.mark.parametrize("sync_every", [1, 4, 16])
def test_per_sample_failures_name_sample_t_and_dt(sync_every):
    """Sample 1 blows up (underflow), sample 2 turns NaN, sample 3 is stiff (max_num_steps):
    each is named with its t and dt; samples 0 and 4 finish."""
    y0 = torch.tensor([[0.2], [1.0], [0.3], [0.0], [0.5]], dtype=F64)
    kind = torch.tensor([[0], [1], [2], [3], [0]])

    def func(t, y):
        out = torch.where(kind == 1, y * y, -y)
        out = torch.where((kind == 2) & (t > 0.6), out * math.nan, out)
        return torch.where(kind == 3, -1e9 * (y - torch.cos(t)), out)

    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64)
    with pytest.raises(SampleFailure) as info:
        odecore.odeint(func, y0, t, options={"batch_dim": 0, "max_num_steps": 1000, "sync_every": sync_every})
    failure = info.value
    message = str(failure)
    assert sorted(failure.failed) == [1, 2, 3], message
    parts = dict(re.findall(r"sample (\d+): ([^;]*)", message))
    assert "underflow" in parts["1"] and "non-finite" in parts["2"] and "max_num_steps" in parts["3"], message
    for part in parts.values():
        t_and_dt(part)
    assert 0.99 < t_and_dt(parts["1"])[0] < 1.01
    assert t_and_dt(parts["2"])[0] <= 0.6
    solution = failure.solution
    assert bool(torch.isfinite(solution[:, [0, 4]]).all())
    expected = y0[[0, 4]] * torch.exp(-t).view(-1, 1, 1)
    assert torch.allclose(solution[:, [0, 4]], expected, rtol=1e-5)
    assert failure.stats["status"].tolist() == [0, 3, 2, 4, 0]


@pytest.mark.fused
def test_per_sample_max_num_steps_bounds_the_loop():
    calls = []

    def func(t, y):
        calls.append(1)
        return -1e9 * (y - torch.cos(t))

    with pytest.raises(SampleFailure, match="max_num_steps"):
        odecore.odeint(
            func,
            torch.zeros(3, 2, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            options={"batch_dim": 0, "max_num_steps": 30, "sync_every": 8},
        )
    assert len(calls) <= 2 + 6 * (30 + 8)  # one batched evaluation per stage of every attempt


@pytest.mark.fused
def test_per_sample_refuses_to_drop_parameter_gradients():
    """The per-sample loop runs without autograd: with func's parameters requiring grad it
    would silently give them no gradient through the solution, so it refuses."""
    func = nn.Linear(2, 2).double()
    y0 = torch.ones(3, 2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match="odeint_adjoint"):
        odecore.odeint(lambda t, y: func(y), y0, t, options={"batch_dim": 0})
    with torch.no_grad():
        assert bool(torch.isfinite(odecore.odeint(lambda t, y: func(y), y0, t, options={"batch_dim": 0})).all())


# -- odeint_adjoint's backward pass --------------------------------------------------- #
class Decay(nn.Module):
    def __init__(self, rate=-1.0, nan_in_backward_after=None):
        super().__init__()
        self.rate = nn.Parameter(torch.tensor(rate, dtype=F64))
        self.nan_after = nan_in_backward_after
        self.backward_calls = 0

    def forward(self, t, y):
        if torch.is_grad_enabled():  # the backward pass evaluates func with grad enabled
            self.backward_calls += 1
            if self.nan_after is not None and self.backward_calls > self.nan_after:
                return self.rate * y * math.nan
        return self.rate * y


@pytest.mark.fused
def test_adjoint_backward_max_num_steps():
    func = Decay(rate=-50.0)
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    out = odecore.odeint_adjoint(
        func,
        y0,
        torch.tensor([0.0, 1.0], dtype=F64),
        rtol=1e-3,
        atol=1e-6,
        adjoint_rtol=1e-12,
        adjoint_atol=1e-14,
        adjoint_options={"max_num_steps": 5},
    )
    with pytest.raises(RuntimeError, match=r"max_num_steps exceeded \(5 steps\)") as info:
        out.sum().backward()
    t, dt = t_and_dt(str(info.value))
    assert 0.0 < abs(t) <= 1.0 and dt > 0  # (abs: test_known_reverse_time_error_reports_solver_time)
    assert func.backward_calls <= 2 + 6 * 5


@pytest.mark.fused
def test_adjoint_backward_nan_names_t_and_dt():
    func = Decay(nan_in_backward_after=10)
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    out = odecore.odeint_adjoint(func, y0, torch.tensor([0.0, 1.0], dtype=F64))
    with pytest.raises(RuntimeError, match="non-finite") as info:
        out.sum().backward()
    t, dt = t_and_dt(str(info.value))
    assert 0.0 <= abs(t) <= 1.0 and dt > 0


# -- sdeint ------------------------------------------------------------------------------ #
class SDE:
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, drift=lambda t, y: -y, diffusion=0.1):
        self.drift, self.diffusion, self.calls = drift, diffusion, 0

    def f(self, t, y):
        self.calls += 1
        return self.drift(t, y)

    def g(self, t, y):
        return torch.full_like(y, self.diffusion)


@pytest.mark.parametrize("method", ["euler", "milstein", "srk"])
def test_sdeint_nan_and_overflow_name_t_and_dt(method):
    y0 = torch.ones(2, 3, dtype=F64)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    with pytest.raises(RuntimeError, match="non-finite") as info:
        odecore.sdeint(SDE(lambda t, y: -y if float(t) < 0.3 else y * math.nan), y0, ts, method=method, dt=0.05)
    t_and_dt(str(info.value))
    with pytest.raises(RuntimeError, match="non-finite") as info:
        odecore.sdeint(SDE(lambda t, y: 1e200 * y * y), y0, ts, method=method, dt=0.05)
    t_and_dt(str(info.value))


def test_sdeint_adaptive_nan_names_t_and_dt():
    with pytest.raises(RuntimeError, match="non-finite") as info:
        odecore.sdeint(
            SDE(lambda t, y: -y if float(t) < 0.3 else y * math.nan),
            torch.ones(2, 3, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            dt=0.05,
            adaptive=True,
        )
    t, dt = t_and_dt(str(info.value))
    assert 0.0 <= t <= 0.3 + 0.2 and dt > 0


@pytest.mark.parametrize("adaptive", [False, True])
def test_sdeint_max_num_steps_bounds_the_loop(adaptive):
    sde = SDE(lambda t, y: -1e4 * y, diffusion=1.0)  # adaptive: a tight tolerance needs tiny steps
    with pytest.raises(RuntimeError, match=r"max_num_steps exceeded \(20 steps\)") as info:
        odecore.sdeint(
            sde,
            torch.ones(2, 2, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            dt=1e-3,
            adaptive=adaptive,
            rtol=1e-8,
            atol=1e-8,
            dt_min=1e-12,
            options={"max_num_steps": 20},
        )
    t_and_dt(str(info.value))
    assert sde.calls <= 3 * 20 + 2  # an adaptive attempt is 3 steps (one of h, two of h / 2)


def test_sdeint_tiny_dt_is_refused_at_once():
    sde = SDE()
    with pytest.raises(RuntimeError, match="max_num_steps") as info:
        odecore.sdeint(sde, torch.ones(2, 2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), dt=1e-300)
    assert sde.calls <= 2 and "dt=1e-300" in str(info.value)
    with pytest.raises(RuntimeError, match="step size underflow") as info:  # t + dt == t
        odecore.sdeint(
            sde,
            torch.ones(2, 2, dtype=F64),
            torch.tensor([1e6, 1e6 + 1], dtype=F64),
            dt=1e-12,
            options={"max_num_steps": 10**13},
        )
    t_and_dt(str(info.value))


def test_sdeint_adjoint_max_num_steps():
    class Module(nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.tensor(-1.0, dtype=F64))

        def f(self, t, y):
            return self.a * y

        def g(self, t, y):
            return torch.full_like(y, 0.1)

    y0 = torch.ones(2, 2, dtype=F64, requires_grad=True)
    out = odecore.sdeint_adjoint(
        Module(), y0, torch.tensor([0.0, 1.0], dtype=F64), dt=0.01, adjoint_options={"max_num_steps": 10}
    )
    with pytest.raises(RuntimeError, match="max_num_steps"):
        out.sum().backward()


# -- event root finding ----------------------------------------------------------------- #
pytestmark_event = pytest.mark.skipif(
    not hasattr(odecore, "odeint_event"), reason="odecore.odeint_event does not exist"
)


@pytestmark_event
@pytest.mark.fused
def test_event_search_bounded_by_max_num_steps():
    func = Counting(lambda t, y: -y)
    with pytest.raises(RuntimeError, match="max_num_steps") as info:
        odecore.odeint_event(
            func,
            torch.ones(2, dtype=F64),
            torch.tensor(0.0, dtype=F64),
            event_fn=lambda t, y: y[0] + 1.0,
            options={"max_num_steps": 40},
        )  # never crosses
    assert "t=" in str(info.value)
    assert func.calls <= 2 + 7 * 40


@pytestmark_event
@pytest.mark.fused
def test_event_nan_in_func_or_event_fn_names_t():
    with pytest.raises(RuntimeError, match="t="):
        odecore.odeint_event(
            Counting(lambda t, y: -y, t_nan=0.2),
            torch.ones(2, dtype=F64),
            torch.tensor(0.0, dtype=F64),
            event_fn=lambda t, y: y[0] - 0.1,
            options={"max_num_steps": 200},
        )
    with pytest.raises(RuntimeError, match="event_fn returned NaN at t="):
        odecore.odeint_event(
            lambda t, y: -y,
            torch.ones(2, dtype=F64),
            torch.tensor(0.0, dtype=F64),
            event_fn=lambda t, y: y[0] - 0.5 if float(t) < 0.3 else y[0] * math.nan,
        )


@pytestmark_event
@pytest.mark.fused
def test_event_root_finder_is_bounded():
    """An event function that jumps (no root to converge to): bisection's bound still ends it."""
    from odecore import events

    calls = []

    def event_fn(t, y):
        calls.append(1)
        return torch.where(t < 0.3, torch.tensor(1.0, dtype=F64), torch.tensor(-1.0, dtype=F64))

    event_t, _ = odecore.odeint_event(
        lambda t, y: -y, torch.ones(2, dtype=F64), torch.tensor(0.0, dtype=F64), event_fn=event_fn
    )
    assert abs(float(event_t) - 0.3) < 1e-12
    assert len(calls) < 200 + events.MAX_ROOT_ITERS

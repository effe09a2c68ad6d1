"""The compiled host loop (odecore._C.host_loop, csrc/host_loop.cpp): the Python host loop's
results, bitwise, with the same statistics, errors and gradients; and the cases it leaves
to the Python loop."""

import math

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import odecore
from odecore import adjoint as adjoint_mod
from odecore.solvers import adaptive as adaptive_mod
from odecore.solvers.base import RHS
from odecore.solvers.per_sample import SampleFailure

from .problems import blowup, van_der_pol
from .problems import forced_rotation as forced
from .testing import ADAPTIVE_METHODS as ADAPTIVE

try:
    from odecore.ops import fused
except ImportError:  # the extension is not built: every test here skips
    fused = None

pytestmark = pytest.mark.fused


def count_calls(monkeypatch, name):
    """The list that grows by one at every call of odecore.ops.fused.<name>."""
    calls = []
    inner = getattr(fused, name)

    def counting(*args):
        calls.append(1)
        return inner(*args)

    monkeypatch.setattr(fused, name, counting)
    return calls


@pytest.fixture
def loop_calls(monkeypatch):
    """Counts the calls of the compiled loop."""
    return count_calls(monkeypatch, "host_loop")


vdp = van_der_pol(2.0, dim=-1)


def run(compiled, fn, *args, **kwargs):
    saved = adaptive_mod.CPP_HOST_LOOP
    adaptive_mod.CPP_HOST_LOOP = compiled
    try:
        return fn(*args, **kwargs)
    finally:
        adaptive_mod.CPP_HOST_LOOP = saved


def solve(func, y0, t, method="dopri5", rtol=1e-5, atol=1e-6, **options):
    return odecore.odeint(func, y0, t, method=method, rtol=rtol, atol=atol, options=dict(options, return_stats=True))


def assert_same(a, b):
    (ya, sa), (yb, sb) = a, b
    ya, yb = (ya, yb) if isinstance(ya, tuple) else ((ya,), (yb,))
    for u, v in zip(ya, yb):
        assert u.dtype == v.dtype and u.shape == v.shape
        assert torch.equal(u, v), (u - v).abs().max()
    for key in ("nfe", "n_steps", "n_accepted", "n_rejected", "final_dt", "host_reads", "loop"):
        assert sa[key] == sb[key], (key, sa[key], sb[key])


@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_compiled_loop_equals_python_loop(method, dtype, reverse, loop_calls):
    torch.manual_seed(0)
    y0 = torch.randn(16, 2, dtype=dtype)
    t = torch.linspace(0, 3, 9, dtype=dtype)
    func = vdp
    if reverse:
        t, func = t.flip(0), forced
    python = run(False, solve, func, y0, t, method)
    assert not loop_calls
    compiled = run(True, solve, func, y0, t, method)
    assert loop_calls == [1]
    assert python[1]["n_rejected"] > 0 or method in ("dopri8",)  # the rejection path runs too
    assert_same(python, compiled)


@pytest.mark.parametrize(
    "options",
    [
        {"max_step": 0.05},
        {"min_step": 0.2},
        {"first_step": 1e-3},
        {"dtype": torch.float32},
        {"safety": 0.7, "ifactor": 3.0, "dfactor": 0.5},
        {"max_step": 0.3, "min_step": 0.1},
    ],
    ids=["max_step", "min_step", "first_step", "float32_time", "factors", "min_max"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_loop_options(options, dtype, loop_calls):
    y0 = torch.tensor([[2.0, 0.0], [0.5, -1.0]], dtype=dtype)
    t = torch.linspace(0, 4, 6, dtype=dtype)
    assert_same(run(False, solve, vdp, y0, t, **options), run(True, solve, vdp, y0, t, **options))
    assert loop_calls == [1]


def test_compiled_loop_outputs_at_step_ends_and_inside():
    # many output times (several per step, some exactly at a step's end: t = 0 ... 1 with a
    # max_step that divides it) and a non-contiguous, tuple state
    def func(t, y):
        a, b = y
        return -b, a * torch.cos(t)

    y0 = (torch.randn(5, 3, dtype=torch.float64).t(), torch.randn(3, 5, dtype=torch.float64))
    t = torch.linspace(0, 1, 41, dtype=torch.float64)
    python = run(False, solve, func, y0, t, max_step=0.125)
    compiled = run(True, solve, func, y0, t, max_step=0.125)
    assert_same(python, compiled)


def test_compiled_loop_gradients_equal():
    torch.manual_seed(1)
    lin = torch.nn.Linear(3, 3).double()
    y0 = torch.randn(4, 3, dtype=torch.float64)

    def grads(compiled):
        p0 = y0.clone().requires_grad_()
        ys, st = run(compiled, solve, lambda t, y: torch.tanh(lin(y)), p0, torch.linspace(0, 2, 7, dtype=torch.float64))
        gs = torch.autograd.grad(ys.pow(2).sum(), [p0, *lin.parameters()])
        return ys, st, gs

    (ya, sa, ga), (yb, sb, gb) = grads(False), grads(True)
    assert_same((ya, sa), (yb, sb))
    for u, v in zip(ga, gb):
        assert torch.equal(u, v)


def test_compiled_loop_adjoint_equal():
    torch.manual_seed(2)
    func = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    wrapped = lambda_module(func)
    y0 = torch.randn(3, 2, dtype=torch.float64)
    t = torch.linspace(0, 1, 5, dtype=torch.float64)

    def grads(compiled):
        p0 = y0.clone().requires_grad_()
        ys = run(compiled, odecore.odeint_adjoint, wrapped, p0, t, rtol=1e-6, atol=1e-8)
        return (ys, *torch.autograd.grad(ys.sum(), [p0, *func.parameters()]))

    for u, v in zip(grads(False), grads(True)):
        assert torch.equal(u, v)


def lambda_module(net):
    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y)

    return F()


def errors(compiled, *args, **kwargs):
    with pytest.raises(Exception) as info:
        run(compiled, solve, *args, **kwargs)
    return type(info.value), str(info.value)


def test_compiled_loop_errors_match():
    y0 = torch.ones(2, dtype=torch.float64)
    t = torch.tensor([0.0, 10.0], dtype=torch.float64)
    # max_num_steps, with t and dt
    a = errors(False, vdp, y0, t, max_num_steps=3)
    assert a == errors(True, vdp, y0, t, max_num_steps=3) and "max_num_steps exceeded" in a[1]

    # NaN after a while
    def nan_later(t, y):
        return torch.where(t > 0.5, torch.full_like(y, math.nan), -y)

    a = errors(False, nan_later, y0, t)
    assert a == errors(True, nan_later, y0, t) and "non-finite" in a[1] and "t=" in a[1]

    # blow-up: step-size underflow (or non-finite), reversed time
    tb = torch.tensor([0.0, -2.0], dtype=torch.float64)
    a = errors(False, blowup, -y0, tb)
    assert a == errors(True, blowup, -y0, tb) and ("underflow" in a[1] or "non-finite" in a[1])


@pytest.mark.parametrize("bad", ["shape", "dtype", "type"])
def test_compiled_loop_checks_every_output(bad):
    calls = []

    def func(t, y):
        calls.append(1)
        if len(calls) < 4:
            return -y
        return {"shape": lambda: -y[:1], "dtype": lambda: (-y).float(), "type": lambda: 1.0}[bad]()

    y0 = torch.ones(3, dtype=torch.float64)
    with pytest.raises((TypeError, ValueError), match="func returned|func must return"):
        run(True, solve, func, y0, torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_compiled_loop_func_exception_propagates_and_counts():
    class Boom(Exception):
        pass

    calls = []

    def func(t, y):
        calls.append(1)
        if len(calls) == 9:
            raise Boom("from func")
        return -y

    seen = []
    orig = RHS.__init__

    def init(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        seen.append(self)

    RHS.__init__ = init
    try:
        with pytest.raises(Boom, match="from func"):
            run(True, solve, func, torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 5.0], dtype=torch.float64))
    finally:
        RHS.__init__ = orig
    assert seen[-1].nfe == 8  # the calls that returned


def test_compiled_loop_not_used_for_python_only_features(loop_calls):
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    solve(vdp, y0, t, norm=lambda x: x.abs().max())
    solve(vdp, y0, t, step_t=[0.3])
    solve(vdp, y0, t, jump_t=[0.3])
    solve(vdp, y0, t, backend="reference")
    assert not loop_calls
    solve(vdp, y0, t)
    assert loop_calls == [1]


def test_compiled_loop_reports_host_reads_per_step():
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    _, st = solve(vdp, y0, torch.linspace(0, 5, 11, dtype=torch.float64))
    assert st["host_reads"] == st["n_steps"] and st["loop"] == "host"


# -- odeint_adjoint's augmented dynamics in C++ (odecore._C.AdjointDynamics) ---------------


class _MLP(torch.nn.Module):
    def __init__(self, dim=3, hidden=8, time=False):
        super().__init__()
        self.l1, self.l2 = torch.nn.Linear(dim, hidden), torch.nn.Linear(hidden, dim)
        self.unused = torch.nn.Parameter(torch.ones(2))
        self.time = time

    def forward(self, t, y):
        h = torch.tanh(self.l1(y))
        return self.l2(h * (1 + t) if self.time else h)


def adjoint_grads(native, func, y0, t, compiled=True, **kwargs):
    saved = adjoint_mod.NATIVE_DYNAMICS, adaptive_mod.CPP_HOST_LOOP
    adjoint_mod.NATIVE_DYNAMICS, adaptive_mod.CPP_HOST_LOOP = native, compiled
    try:
        y0 = y0.clone().requires_grad_()
        t = t.clone().requires_grad_()
        ys = odecore.odeint_adjoint(func, y0, t, rtol=1e-6, atol=1e-8, **kwargs)
        loss = ys.pow(2).sum() + ys[-1, 0].sum()
        params = [q for q in func.parameters()]
        return (ys, *torch.autograd.grad(loss, [y0, t, *params]))
    finally:
        adjoint_mod.NATIVE_DYNAMICS, adaptive_mod.CPP_HOST_LOOP = saved


@pytest.mark.parametrize("time", [False, True], ids=["autonomous", "time_dependent"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("compiled", [False, True], ids=["python_loop", "compiled_loop"])
def test_native_adjoint_dynamics_equal_python(time, dtype, compiled):
    torch.manual_seed(3)
    func = _MLP(time=time).to(dtype)
    y0 = torch.randn(5, 3, dtype=dtype)
    t = torch.linspace(0, 1.5, 4, dtype=dtype)
    python = adjoint_grads(False, func, y0, t, compiled)
    native = adjoint_grads(True, func, y0, t, compiled)
    for u, v in zip(python, native):
        assert torch.equal(u, v), (u - v).abs().max()
    unused = [name for name, _ in func.named_parameters()].index("unused")
    assert torch.equal(native[3 + unused], torch.zeros(2, dtype=dtype))  # the unused parameter: zeros, not None


def test_native_adjoint_dynamics_is_used(monkeypatch):
    made = count_calls(monkeypatch, "AdjointDynamics")
    adjoint_grads(
        True, _MLP().double(), torch.randn(2, 3, dtype=torch.float64), torch.linspace(0, 1, 3, dtype=torch.float64)
    )
    assert len(made) == 1  # one per backward pass, made after the first evaluation's checks
    made.clear()
    adjoint_grads(
        True,
        _MLP().double(),
        torch.randn(2, 3, dtype=torch.float64),
        torch.linspace(0, 1, 3, dtype=torch.float64),
        adjoint_options={"backend": "reference"},
    )
    assert not made  # the reference backend stays pure PyTorch


def test_native_adjoint_dynamics_against_reference_backend():
    torch.manual_seed(4)
    func = _MLP(time=True).double()
    y0 = torch.randn(4, 3, dtype=torch.float64)
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    fused_ = adjoint_grads(True, func, y0, t)
    ref = adjoint_grads(True, func, y0, t, options={"backend": "reference"}, adjoint_options={"backend": "reference"})
    for u, v in zip(fused_, ref):
        assert torch.allclose(u, v, rtol=1e-9, atol=1e-12), (u - v).abs().max()


def test_native_adjoint_dynamics_python_autograd_function_and_hooks():
    # func uses a Python autograd.Function (its backward needs the GIL, which the C++
    # dynamics release around the engine) and a parameter hook
    class Cube(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x**3

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x**2 * g

    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64))
            self.unused = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

        def forward(self, t, y):
            return Cube.apply(y) @ self.w

    seen = []
    func = F()
    func.w.register_hook(lambda g: seen.append(1))
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    python = adjoint_grads(False, func, y0, t)
    n_python = len(seen)
    native = adjoint_grads(True, func, y0, t)
    assert len(seen) == 2 * n_python > 0  # the hook ran at every evaluation, both ways
    for u, v in zip(python, native):
        assert torch.equal(u, v)


def test_native_adjoint_dynamics_errors():
    calls = []

    class Bad(torch.nn.Module):
        def __init__(self, bad):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2).double()
            self.bad = bad

        def forward(self, t, y):
            calls.append(torch.is_grad_enabled())
            if sum(calls) > 3:  # a few backward evaluations in: the C++ dynamics make this call
                if self.bad == "raise":
                    raise KeyError("from func in the backward pass")
                return self.lin(y)[..., :1]
            return self.lin(y)

    y0 = torch.ones(3, 2, dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    ys = odecore.odeint_adjoint(Bad("raise"), y0, t)
    with pytest.raises(KeyError, match="from func in the backward pass"):
        ys.sum().backward()
    calls.clear()
    ys = odecore.odeint_adjoint(Bad("shape"), y0, t)
    # the Python dynamics' message, word for word (the C++ dynamics ask it for the error)
    with pytest.raises(
        ValueError,
        match=r"^odeint_adjoint: func returned torch.Size\(\[3, 1\]\) during the backward "
        r"pass, expected a tensor of shape \(3, 2\) and dtype torch.float64$",
    ):
        ys.sum().backward()


LOOPS = [{"sync_every": 0, "compiled": False}, {}, {"sync_every": 4}, {"batch_dim": 0}]
LOOP_IDS = ["python_loop", "compiled_loop", "device_loop", "per_sample"]


def _loop_options(loop, monkeypatch):
    loop = dict(loop)
    if not loop.pop("compiled", True):
        monkeypatch.setattr(adaptive_mod, "CPP_HOST_LOOP", False)
    return loop


@pytest.mark.parametrize("loop", LOOPS, ids=LOOP_IDS)
def test_float32_step_bounds_are_rounded_like_torchdiffeq(loop, monkeypatch):
    """min_step/max_step are times of the time dtype (torchdiffeq makes them tensors of it):
    a float32 max_step of 0.05 is 0.0500000007, the dt clamped to it. Compared in float64
    instead, every step after the clamp was rejected as dt > max_step, forever (found by the
    differential fuzz test below, which hung)."""
    y0 = torch.tensor([[2.0, 0.0], [0.5, -1.0]])
    t = torch.linspace(0, 3, 4)
    options = dict(
        _loop_options(loop, monkeypatch), max_step=0.05, dtype=torch.float32, max_num_steps=10000, return_stats=True
    )
    ys, stats = odecore.odeint(vdp, y0, t, rtol=1e-5, atol=1e-6, options=options)
    assert torch.isfinite(ys).all()
    nfe = stats["nfe_per_sample"].max().item() if "batch_dim" in loop else stats["nfe"]
    assert nfe == 368  # torchdiffeq 0.2.5: 368 (test_float32_step_bounds_match_torchdiffeq)


def test_float32_step_bounds_match_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    calls = []

    def counted(t, y):
        calls.append(1)
        return vdp(t, y)

    y0 = torch.tensor([[2.0, 0.0], [0.5, -1.0]])
    torchdiffeq.odeint(
        counted, y0, torch.linspace(0, 3, 4), rtol=1e-5, atol=1e-6, options=dict(max_step=0.05, dtype=torch.float32)
    )
    assert len(calls) == 368


@pytest.mark.parametrize("loop", LOOPS, ids=LOOP_IDS)
def test_float32_time_that_stops_moving_is_an_underflow(loop, monkeypatch):
    """With float32 times a step can round to t1 == t0 although t0 + dt > t0 in float64: that
    is a step-size underflow (torchdiffeq checks t0 + dt <= t0 in the time dtype and stops at
    dt = 5.5e-8 here). Checked in float64, time stood still while the state moved on, until dt
    reached float64's underflow at 1e-16."""
    options = dict(_loop_options(loop, monkeypatch), dtype=torch.float32, max_num_steps=100000)
    error = SampleFailure if "batch_dim" in loop else RuntimeError
    with pytest.raises(error, match="underflow") as info:
        odecore.odeint(
            lambda t, y: y * y,
            torch.ones(2),
            torch.tensor([0.0, 2.0]),
            method="dopri5",
            rtol=1e-6,
            atol=1e-6,
            options=options,
        )
    dt = float(str(info.value).split("dt=")[1].split(";")[0].split(",")[0].split(")")[0].strip())
    assert 1e-8 < dt < 1e-6, str(info.value)


# -- differential fuzzing: compiled loop vs Python loop ------------------------------------


def _outcome(compiled, func, y0, t, method, rtol, atol, options):
    """(solution, stats) or (exception type, message) of one solve."""
    try:
        return run(
            compiled,
            odecore.odeint,
            func,
            y0,
            t,
            rtol=rtol,
            atol=atol,
            method=method,
            options=dict(options, return_stats=True),
        )
    except (RuntimeError, ValueError, TypeError) as err:
        return type(err), str(err)


_FIELDS = {
    "linear": lambda t, y: -0.7 * y + torch.sin(2.0 * t) * y.flip(-1),
    "vdp": vdp,
    "cubic": lambda t, y: -(y**3) + 0.1 * y.flip(-1),
    "blowup": blowup,
}


@pytest.mark.slow
@settings(
    max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    method=st.sampled_from(ADAPTIVE),
    field=st.sampled_from(sorted(_FIELDS)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    n_times=st.integers(2, 9),
    span=st.sampled_from([0.3, 1.0, 4.0, -1.0, -3.0]),
    tol=st.sampled_from([(1e-3, 1e-4), (1e-6, 1e-8), (1e-9, 1e-10), (0.0, 1e-5), (1e-5, 0.0)]),
    options=st.fixed_dictionaries(
        {},
        optional={
            "max_step": st.sampled_from([0.05, 0.25, 1.0]),
            "min_step": st.sampled_from([0.0, 0.01, 0.3]),
            "first_step": st.sampled_from([1e-4, 0.1]),
            "safety": st.sampled_from([0.5, 0.95]),
            "ifactor": st.sampled_from([2.0, 10.0]),
            "dfactor": st.sampled_from([0.1, 0.5]),
            "max_num_steps": st.integers(1, 40),
            "dtype": st.sampled_from([torch.float32, torch.float64]),
        },
    ),
    seed=st.integers(0, 3),
)
def test_fuzz_compiled_loop_equals_python_loop(method, field, dtype, n_times, span, tol, options, seed):
    g = torch.Generator().manual_seed(seed)
    y0 = (torch.rand(3, 2, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    t = torch.linspace(0.0, span, n_times, dtype=dtype)
    func = _FIELDS[field]
    python = _outcome(False, func, y0, t, method, *tol, options)
    compiled = _outcome(True, func, y0, t, method, *tol, options)
    if isinstance(python[0], type):  # both raised the same error, word for word
        event("error: " + python[1].split(" ")[0])
        assert compiled == python
    else:
        event("solved")
        assert not isinstance(compiled[0], type), compiled
        assert_same(python, compiled)


@settings(
    max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    method=st.sampled_from(ADAPTIVE),
    field=st.sampled_from(sorted(_FIELDS)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    n_times=st.integers(2, 7),
    span=st.sampled_from([0.5, 2.0, -1.5]),
    tol=st.sampled_from([(1e-3, 1e-4), (1e-6, 1e-8), (0.0, 1e-5)]),
    options=st.fixed_dictionaries(
        {},
        optional={
            "max_step": st.sampled_from([0.05, 0.3]),
            "min_step": st.sampled_from([0.0, 0.02]),
            "first_step": st.sampled_from([1e-4, 0.1]),
            "max_num_steps": st.integers(1, 30),
            "dtype": st.sampled_from([torch.float32, torch.float64]),
        },
    ),
    sync_every=st.integers(1, 6),
)
def test_fuzz_device_loop_equals_host_loop(method, field, dtype, n_times, span, tol, options, sync_every):
    """The device-resident loop (sync_every=K) against the host loop: the same solution,
    steps and final dt, or the same error word for word."""
    g = torch.Generator().manual_seed(0)
    y0 = (torch.rand(4, 2, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    t = torch.linspace(0.0, span, n_times, dtype=dtype)
    func = _FIELDS[field]
    host = _outcome(True, func, y0, t, method, *tol, dict(options, sync_every=0))
    device = _outcome(True, func, y0, t, method, *tol, dict(options, sync_every=sync_every))
    if isinstance(host[0], type):
        event("error: " + host[1].split(" ")[0])
        assert device == host
    else:
        event("solved")
        assert not isinstance(device[0], type), device
        (ya, sa), (yb, sb) = host, device
        assert torch.equal(ya, yb), (ya - yb).abs().max()
        assert sb["loop"] == "device"
        for key in ("n_steps", "n_accepted", "final_dt"):
            assert sa[key] == sb[key], (key, sa[key], sb[key])

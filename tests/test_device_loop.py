"""The device-resident loop (options={'sync_every': K}): the host loop's results without a
host read per step, and its ops (rk_stage_dt, rk_finish_dt, rk_error_ratio_dt, rk_control,
rk_dense_into) against their reference twins."""

import math

import pytest
import torch

import odecore
from odecore.ops import control, reference
from odecore.ops.control import Slot, Status
from odecore.solvers.adaptive import AdaptiveRKSolver
from odecore.solvers.dopri5 import Dopri5

from .problems import blowup, forced_rotation, van_der_pol
from .testing import ADAPTIVE_METHODS

try:
    from odecore.ops import fused
except ImportError:  # the extension is not built: every test here skips
    fused = None

pytestmark = pytest.mark.fused

_van_der_pol = van_der_pol(2.0, dim=-1)


def vdp(t, y):
    return _van_der_pol(t, y) + 0 * t  # depends on the time the loop passes, not only on y


def solve(func, y0, t, sync_every, method="dopri5", backend=None, **options):
    options = dict(options, return_stats=True, sync_every=sync_every)
    if backend is not None:
        options["backend"] = backend
    return odecore.odeint(func, y0, t, method=method, rtol=1e-5, atol=1e-6, options=options)


def assert_same_solve(a, b):
    (ya, sa), (yb, sb) = a, b
    assert torch.equal(ya, yb), (ya - yb).abs().max()
    for key in ("n_steps", "n_accepted", "final_dt"):
        assert sa[key] == sb[key], key


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_device_loop_equals_host_loop(method, dtype, reverse):
    torch.manual_seed(0)
    y0 = torch.randn(16, 2, dtype=dtype)
    t = torch.linspace(0, 3, 9, dtype=dtype)
    func = vdp
    if reverse:
        t, func = t.flip(0), forced_rotation
    host = solve(func, y0, t, 0, method)
    device = solve(func, y0, t, 4, method)
    assert host[1]["loop"] == "host" and device[1]["loop"] == "device"
    assert_same_solve(host, device)
    assert device[1]["nfe"] >= host[1]["nfe"]  # wasted attempts after the end count as evaluations


@pytest.mark.parametrize(
    "options",
    [
        {"max_step": 0.05},
        {"min_step": 0.2},
        {"first_step": 1e-3},
        {"dtype": torch.float32},
        {"safety": 0.7, "ifactor": 3.0, "dfactor": 0.5},
    ],
    ids=["max_step", "min_step", "first_step", "float32_time", "factors"],
)
def test_device_loop_options(options):
    y0 = torch.tensor([[2.0, 0.0], [0.5, -1.0]], dtype=torch.float32)
    t = torch.linspace(0, 4, 6)
    assert_same_solve(solve(vdp, y0, t, 0, **options), solve(vdp, y0, t, 3, **options))


def test_device_loop_tuple_state_and_many_outputs():
    def func(t, y):
        a, b = y
        return -b, a * torch.cos(t)

    y0 = (torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    t = torch.linspace(0, 2, 57, dtype=torch.float64)  # several output times per step, and steps with none
    outs = [odecore.odeint(func, y0, t, options={"sync_every": k}) for k in (0, 5)]
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("k", [1, 4, 8, 16])
def test_host_reads_at_most_steps_over_k(k):
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64).repeat(8, 1)
    t = torch.linspace(0, 10, 5, dtype=torch.float64)
    _, stats = solve(vdp, y0, t, k)
    _, host = solve(vdp, y0, t, 0)
    assert host["host_reads"] == host["n_steps"]
    assert stats["n_steps"] > 40
    # one read per K attempts, and one extra for the shortened batch near the end
    assert stats["host_reads"] <= math.ceil(stats["n_steps"] / k) + 2, stats


def test_no_host_reads_inside_the_loop(monkeypatch):
    """Counted below the dispatcher: apart from the control state read once per batch,
    nothing in the stepping loop reads a value back (no .item() / bool(tensor))."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        reads = 0
        armed = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if self.armed and func is torch.ops.aten._local_scalar_dense.default:
                Count.reads += 1
            return func(*args, **(kwargs or {}))

    original = AdaptiveRKSolver._integrate_device

    def counted(self, t, k):
        mode.armed = True
        try:
            return original(self, t, k)
        finally:
            mode.armed = False

    monkeypatch.setattr(AdaptiveRKSolver, "_integrate_device", counted)
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    with Count() as mode:
        _, stats = solve(vdp, y0, torch.linspace(0, 6, 4, dtype=torch.float64), 8)
    assert stats["loop"] == "device" and stats["n_steps"] > 20
    assert Count.reads == 0


def test_reference_backend_device_loop():
    y0 = torch.randn(4, 2, dtype=torch.float64)
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    ref_host = solve(vdp, y0, t, 0, backend="reference")
    ref_device = solve(vdp, y0, t, 4, backend="reference")
    fused_device = solve(vdp, y0, t, 4)
    assert ref_device[1]["loop"] == "device"
    assert_same_solve(ref_host, ref_device)
    torch.testing.assert_close(ref_device[0], fused_device[0], rtol=1e-12, atol=1e-12)


# -- errors: the host loop's messages, with the t and dt where the solve stopped ----------


def _error(func, y0, t, k, **options):
    with pytest.raises(RuntimeError) as info:
        odecore.odeint(func, y0, t, options=dict(options, sync_every=k))
    return str(info.value)


@pytest.mark.parametrize("k", [3, 16])
def test_device_loop_errors_match_host_loop(k):
    y0 = torch.ones(3, dtype=torch.float64)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)

    def nan_later(t, y):
        return torch.where(t > 0.7, torch.full_like(y, math.nan), -y)

    host = _error(nan_later, y0, t, 0)
    assert "non-finite" in host and "t=" in host and "dt=" in host
    assert _error(nan_later, y0, t, k) == host

    host = _error(blowup, y0, t, 0)
    assert "underflow" in host or "non-finite" in host
    assert _error(blowup, y0, t, k) == host

    host = _error(
        vdp,
        torch.tensor([2.0, 0.0], dtype=torch.float64),
        torch.tensor([0.0, 50.0], dtype=torch.float64),
        0,
        max_num_steps=7,
    )
    assert "max_num_steps" in host
    assert (
        _error(
            vdp,
            torch.tensor([2.0, 0.0], dtype=torch.float64),
            torch.tensor([0.0, 50.0], dtype=torch.float64),
            k,
            max_num_steps=7,
        )
        == host
    )


def test_device_loop_falls_back_to_the_host_loop():
    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    cases = [
        {"norm": lambda x: x.abs().max()},
        {"step_t": torch.tensor([0.5])},
        {"jump_t": torch.tensor([0.5])},
    ]
    for options in cases:
        _, stats = odecore.odeint(vdp, y0, t, options=dict(options, sync_every=4, return_stats=True))
        assert stats["loop"] == "host", options
    # recording gradients: the host loop (the *_dt ops have no autograd)
    y0g = y0.clone().requires_grad_()
    y, stats = odecore.odeint(vdp, y0g, t, options={"sync_every": 4, "return_stats": True})
    assert stats["loop"] == "host"
    y.sum().backward()
    assert y0g.grad is not None
    with torch.no_grad():
        _, stats = odecore.odeint(vdp, y0g, t, options={"sync_every": 4, "return_stats": True})
    assert stats["loop"] == "device"
    # default on the CPU: the host loop
    _, stats = odecore.odeint(vdp, y0, t, options={"return_stats": True})
    assert stats["loop"] == "host"


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4"])
def test_sync_every_validated(bad):
    with pytest.raises(ValueError, match="sync_every"):
        odecore.odeint(vdp, torch.ones(1, 2), torch.linspace(0, 1, 2), options={"sync_every": bad})


# -- the ops ----------------------------------------------------------------------------


def _stages(dtype, n=37, m=4, contiguous=True):
    g = torch.Generator().manual_seed(3)
    make = (
        (lambda: torch.randn(n, generator=g, dtype=dtype))
        if contiguous
        else (lambda: torch.randn(2 * n, generator=g, dtype=dtype)[::2])
    )
    return make(), [make() for _ in range(m)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("contiguous", [True, False])
def test_dt_ops_equal_float_dt_ops(dtype, contiguous):
    y0, k = _stages(dtype, contiguous=contiguous)
    dt = 0.0371
    dt_t = torch.tensor(dt, dtype=torch.float64)
    a = [0.1, -0.3, 0.25, 0.5]
    e = [0.01, -0.02, 0.005, 0.005]
    rtol, atol = torch.tensor(1e-4, dtype=torch.float64), torch.tensor(1e-6, dtype=torch.float64)
    for ops in (fused, reference):
        assert torch.equal(ops.rk_stage_dt(y0, k, a, dt_t), ops.rk_stage(y0, k, a, dt))
        y1, r = ops.rk_finish_dt(y0, k, a, e, dt_t, rtol, atol, [37])
        y1f, rf = ops.rk_finish(y0, k, a, e, dt, rtol, atol, [37])
        assert torch.equal(y1, y1f) and torch.equal(r, rf)
        assert torch.equal(
            ops.rk_error_ratio_dt(y0, y1, k, e, dt_t, rtol, atol, [20, -17]),
            ops.rk_error_ratio(y0, y1, k, e, dt, rtol, atol, [20, -17]),
        )
    torch.testing.assert_close(fused.rk_stage_dt(y0, k, a, dt_t), reference.rk_stage_dt(y0, k, a, dt_t))


def test_dt_ops_reject_bad_dt():
    y0, k = _stages(torch.float64)
    with pytest.raises(TypeError, match="rk_stage_dt: dt must be a float64 tensor"):
        fused.rk_stage_dt(y0, k, [1.0] * 4, torch.tensor(0.1, dtype=torch.float32))
    with pytest.raises(ValueError, match="rk_stage_dt: dt must have one element, or one per sample"):
        fused.rk_stage_dt(y0, k, [1.0] * 4, torch.ones(2, dtype=torch.float64))  # 2 does not divide 37


@pytest.mark.parametrize("samples", [1, 37], ids=["one_dt", "per_sample"])
def test_dt_ops_name_themselves_in_errors(samples):
    """The _dt ops report errors under their own names, also with one dt (where they share
    the scalar ops' kernels)."""
    y0, k = _stages(torch.float64)
    bad = k[:3] + [k[3][:-1]]  # one stage tensor of the wrong shape
    dt = torch.full((samples,), 0.1, dtype=torch.float64)
    rtol = atol = torch.tensor([1e-6], dtype=torch.float64)
    a = [0.1, 0.2, 0.3, 0.4]
    with pytest.raises(ValueError, match=r"^rk_stage_dt: k\[3\] has shape"):
        fused.rk_stage_dt(y0, bad, a, dt)
    with pytest.raises(ValueError, match=r"^rk_finish_dt: k\[3\] has shape"):
        fused.rk_finish_dt(y0, bad, a, [0.1, -0.1, 0.0, 0.0], dt, rtol, atol, [37])
    with pytest.raises(ValueError, match=r"^rk_finish_dt: b has 4 coefficients but e has 3"):
        fused.rk_finish_dt(y0, k, a, [0.1, -0.1, 0.0], dt, rtol, atol, [37])
    with pytest.raises(ValueError, match=r"^rk_error_ratio_dt: y1 has shape"):
        fused.rk_error_ratio_dt(y0, y0[:-1], k, a, dt, rtol, atol, [37])


def _control_args(dtype, n_times=6, ratio=0.5):
    state = torch.zeros(control.NUM_SLOTS, dtype=torch.float64)
    state[Slot.T], state[Slot.DT] = 0.0, 0.25
    state[Slot.T0], state[Slot.T1], state[Slot.DT_USED] = 0.0, 0.25, 0.25
    state[Slot.NEXT_OUT] = 1
    times = torch.linspace(0, 1, n_times, dtype=torch.float64)
    return (
        state,
        torch.zeros((), dtype=torch.bool),
        torch.zeros(3, dtype=dtype),
        torch.zeros(1, dtype=torch.float64),
        torch.tensor(ratio, dtype=torch.float64),
        times,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rk_control_matches_reference_over_a_sequence(dtype):
    """Random error ratios (accepting and rejecting, zero, NaN at the end) drive the fused and
    the reference control through the same states."""
    c = [0.2, 0.5, 1.0]
    params = [5.0, 0.9, 10.0, 0.2, 0.0, 0.3, 1e9, -1.0, 0.0, 0.0]
    g = torch.Generator().manual_seed(0)
    status = []
    ratios = (torch.rand(40, generator=g, dtype=torch.float64) * 2.2).tolist()
    ratios[5] = 0.0
    ratios[25] = math.nan
    fa, ra = _control_args(dtype), _control_args(dtype)
    for r in ratios:
        fa[4].fill_(r)
        ra[4].fill_(r)
        fused.rk_control(*fa, c, params)
        reference.rk_control(*ra, c, params)
        torch.testing.assert_close(fa[0], ra[0], rtol=0, atol=0, equal_nan=True)
        assert torch.equal(fa[1], ra[1]) and torch.equal(fa[2], ra[2]) and torch.equal(fa[3], ra[3])
        status.append(int(fa[0][Slot.STATUS]))
    assert status[0] == Status.RUNNING and status[-1] in (Status.DONE, Status.NON_FINITE)


def test_rk_control_statuses():
    c, dtype = [0.5, 1.0, 1.0], torch.float64
    params = [5.0, 0.9, 10.0, 0.2, 0.0, math.inf, 1e9, 1.0, 0.0, 0.0]
    state, accept, stage_t, dt, ratio, times = _control_args(dtype)
    fused.rk_control(state, accept, stage_t, dt, ratio, times, c, params)
    assert bool(accept) and state[Slot.T] == 0.25 and state[Slot.N_ACCEPTED] == 1
    assert state[Slot.NEXT_OUT] == 2  # the output time 0.2 fell in [0, 0.25]
    assert stage_t[1].item() == math.nextafter(state[Slot.T1].item(), -math.inf)
    ratio.fill_(math.inf)  # an infinite ratio is rejected, not an error
    fused.rk_control(state, accept, stage_t, dt, ratio, times, c, params)
    assert not bool(accept) and state[Slot.STATUS] == Status.RUNNING
    ratio.fill_(math.nan)
    fused.rk_control(state, accept, stage_t, dt, ratio, times, c, params)
    assert state[Slot.STATUS] == Status.NON_FINITE
    frozen = state.clone()
    ratio.fill_(0.1)
    fused.rk_control(state, accept, stage_t, dt, ratio, times, c, params)
    assert not bool(accept)
    torch.testing.assert_close(state, frozen, rtol=0, atol=0, equal_nan=True)


def test_rk_control_rejects_bad_arguments():
    state, accept, stage_t, dt, ratio, times = _control_args(torch.float64)
    params = [5.0, 0.9, 10.0, 0.2, 0.0, 1.0, 1e9, 1.0, 0.0, 0.0]
    with pytest.raises(
        ValueError, match=r"rk_control: state must be a contiguous tensor of shape \(20,\) or \(B, 20\)"
    ):
        fused.rk_control(state[:10], accept, stage_t, dt, ratio, times, [0.5, 1.0, 1.0], params)
    with pytest.raises(ValueError, match="one element per node"):
        fused.rk_control(state, accept, stage_t, dt, ratio, times, [0.5], params)
    with pytest.raises(ValueError, match="params must hold 10"):
        fused.rk_control(state, accept, stage_t, dt, ratio, times, [0.5, 1.0, 1.0], params[:5])
    with pytest.raises(TypeError, match="accept must be a bool"):
        fused.rk_control(state, accept.double(), stage_t, dt, ratio, times, [0.5, 1.0, 1.0], params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rk_dense_into_matches_reference(dtype):
    tab = Dopri5.tableau
    y0, k = _stages(dtype, m=tab.stages)
    y1 = fused.rk_stage(y0, k, list(tab.b), 0.3)
    times = torch.tensor([0.0, 0.05, 0.1, 0.2, 0.3, 0.5], dtype=torch.float64)
    state = torch.zeros(control.NUM_SLOTS, dtype=torch.float64)
    state[Slot.FIRST_OUT], state[Slot.NEXT_OUT] = 1, 5
    state[14], state[15], state[16] = 0.0, 0.3, 0.3  # the accepted step [0, 0.3], dt 0.3
    outs = []
    for ops in (fused, reference):
        out = torch.full((6, *y0.shape), -7.0, dtype=dtype)
        ops.rk_dense_into(out, times, state, y0, y1, k, tab.dense_flat)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][4], y1)  # x == 1: the solution itself
    assert (outs[0][0] == -7).all() and (outs[0][5] == -7).all()  # rows outside untouched
    expected = fused.rk_interp(y0, k, tab.dense_flat, 0.3, [1 / 6, 1 / 3, 2 / 3])
    torch.testing.assert_close(outs[0][1:4], expected, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=1e-6)


def test_new_ops_opcheck():
    y0, k = _stages(torch.float64)
    dt = torch.tensor(0.1, dtype=torch.float64)
    rtol, atol = torch.tensor(1e-4, dtype=torch.float64), torch.tensor(1e-6, dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.odecore.rk_stage_dt.default,
        (y0, k, [0.1, 0.2, 0.3, 0.4], dt),
        test_utils=("test_schema", "test_faketensor"),
    )
    torch.library.opcheck(
        torch.ops.odecore.rk_finish_dt.default,
        (y0, k, [0.1] * 4, [0.01] * 4, dt, rtol, atol, [37]),
        test_utils=("test_schema", "test_faketensor"),
    )
    per_sample = torch.linspace(0.05, 0.1, 37, dtype=torch.float64)  # ratios of shape (37,)
    torch.library.opcheck(
        torch.ops.odecore.rk_finish_dt.default,
        (y0, k, [0.1] * 4, [0.01] * 4, per_sample, rtol, atol, [37]),
        test_utils=("test_schema", "test_faketensor"),
    )
    torch.library.opcheck(
        torch.ops.odecore.rk_error_ratio_dt.default,
        (y0, y0 * 1.1, k, [0.01] * 4, per_sample, rtol, atol, [37]),
        test_utils=("test_schema", "test_faketensor"),
    )
    state, accept, stage_t, dt, ratio, times = _control_args(torch.float64)
    torch.library.opcheck(
        torch.ops.odecore.rk_control.default,
        (
            state,
            accept,
            stage_t,
            dt,
            ratio,
            times,
            [0.2, 0.5, 1.0],
            [5.0, 0.9, 10.0, 0.2, 0.0, 1.0, 1e9, 1.0, 0.0, 0.0],
        ),
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.parametrize("k", [0, 4])
def test_times_func_keeps_never_change(k):
    """func may keep its time argument: neither loop writes into it afterwards."""
    seen = []

    def func(t, y):
        seen.append((t, t.item()))
        return -y * torch.cos(t)

    odecore.odeint(
        func,
        torch.ones(3, dtype=torch.float64),
        torch.linspace(0, 3, 4, dtype=torch.float64),
        options={"sync_every": k},
    )
    assert len(seen) > 20
    assert all(t.item() == value for t, value in seen)

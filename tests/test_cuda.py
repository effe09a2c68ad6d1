"""CUDA kernels: fused ops vs the CUDA reference vs CPU, full solves vs CPU float64,
opcheck and gradcheck on the device. Skipped without a GPU and CUDA kernels."""

import warnings

import pytest
import torch
from torch.library import opcheck

import odecore
from odecore import adjoint as adjoint_mod
from odecore.ops import get_ops
from odecore.ops.control import NUM_SLOTS, Slot
from odecore.solvers import adaptive as adaptive_mod
from odecore.solvers.dopri5 import Dopri5

from .problems import van_der_pol
from .testing import ADAPTIVE_METHODS, EXPLICIT_RK_METHODS, dtypes, make_noncontiguous, product

try:
    from odecore.ops import fused
except ImportError:  # the extension is not built: every test here skips
    fused = None

pytestmark = pytest.mark.cuda

FIXED_OPTIONS = {"step_size": 0.01}


def _inputs(dtype, contiguous, n_terms=4, shape=(33, 7)):
    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    k = [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(n_terms)]
    if not contiguous:
        y0, k = make_noncontiguous(y0), [make_noncontiguous(kj) for kj in k]
    return y0, k


def _to(x, device, contiguous=True):
    """x on `device`, made non-contiguous there when asked (`.to` would compact it)."""
    move = (lambda t: t.to(device)) if contiguous else (lambda t: make_noncontiguous(t.contiguous().to(device)))
    return [move(t) for t in x] if isinstance(x, list) else move(x)


@pytest.mark.parametrize("dtype,contiguous", product(dtypes, [True, False]))
def test_ops_cuda_vs_reference_vs_cpu(dtype, contiguous):
    fused, ref = get_ops("fused", "cuda"), get_ops("reference")
    y0, k = _inputs(dtype, contiguous)
    a, e, dt = [0.1, -0.3, 0.25, 0.7], [0.01, -0.02, 0.015, -0.005], 0.37
    rtol = torch.tensor([1e-4], dtype=torch.float64)
    atol = torch.full((y0.numel(),), 1e-6, dtype=torch.float64)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    cuda_args = (_to(y0, "cuda", contiguous), _to(k, "cuda", contiguous))

    stage_gpu = fused.rk_stage(*cuda_args, a, dt)
    torch.testing.assert_close(stage_gpu.cpu(), get_ops("fused").rk_stage(y0, k, a, dt), **tol)
    torch.testing.assert_close(stage_gpu, ref.rk_stage(*cuda_args, a, dt), **tol)

    for segments in ([y0.numel()], [100, y0.numel() - 100]):
        y1_gpu, ratio_gpu = fused.rk_finish(*cuda_args, a, e, dt, rtol.cuda(), atol.cuda(), segments)
        y1_ref, ratio_ref = ref.rk_finish(y0, k, a, e, dt, rtol, atol, segments)
        torch.testing.assert_close(y1_gpu.cpu(), y1_ref, **tol)
        torch.testing.assert_close(ratio_gpu.cpu(), ratio_ref, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)
        ratio_known = fused.rk_error_ratio(
            cuda_args[0], y1_gpu, cuda_args[1], e, dt, rtol.cuda(), atol.cuda(), segments
        )
        assert ratio_known.item() == pytest.approx(ratio_gpu.item(), rel=1e-12)

    poly = [0.1 * (i + 1) for i in range(4 * 3)]
    dense = fused.rk_interp(*cuda_args, poly, dt, [0.0, 0.3, 1.0])
    torch.testing.assert_close(dense.cpu(), ref.rk_interp(y0, k, poly, dt, [0.0, 0.3, 1.0]), **tol)


def test_ratio_nan_on_cuda():
    y0, k = _inputs(torch.float32, True)
    k[1][3, 2] = float("nan")
    one = torch.ones(1, dtype=torch.float64, device="cuda")
    _, ratio = get_ops("fused", "cuda").rk_finish(
        y0.cuda(), _to(k, "cuda"), [0.25] * 4, [0.1, -0.1, 0.0, 0.0], 0.1, one, one, [y0.numel()]
    )
    assert torch.isnan(ratio).item()


def test_opcheck_cuda(dtype):
    y0, k = _inputs(dtype, True)
    y0 = _to(y0, "cuda", False).detach().requires_grad_()
    k = [kj.detach().requires_grad_() for kj in _to(k, "cuda", False)]
    r = torch.tensor([1e-3], dtype=torch.float64, device="cuda")
    a = torch.tensor([1e-4], dtype=torch.float64, device="cuda")
    ops = torch.ops.odecore
    opcheck(ops.rk_stage.default, (y0, k, [0.1, 0.2, 0.3, 0.4], 0.5))
    opcheck(ops.rk_finish.default, (y0, k, [0.1, 0.2, 0.3, 0.4], [0.1, -0.2, 0.05, 0.05], 0.5, r, a, [y0.numel()]))
    opcheck(
        ops.rk_error_ratio.default,
        (y0, y0.detach() * 1.1, k, [0.1, -0.2, 0.05, 0.05], 0.5, r, a, [10, y0.numel() - 10]),
    )
    opcheck(ops.rk_interp.default, (y0, k, [0.1] * 8, 0.5, [0.2, 0.9]))


@pytest.mark.parametrize("method,dtype", product(EXPLICIT_RK_METHODS, dtypes))
def test_solve_cuda_matches_cpu_float64(method, dtype):
    func = van_der_pol(2.0)
    y0 = torch.tensor([[2.0, 1.0, 0.5], [0.0, -1.0, 0.3]], dtype=torch.float64)  # (x, v) rows, 3 samples
    t = torch.linspace(0.0, 3.0, 7, dtype=torch.float64)
    options = None if method in ADAPTIVE_METHODS else FIXED_OPTIONS
    tol = 1e-8 if dtype == torch.float64 else 1e-5
    truth = odecore.odeint(func, y0, t, rtol=tol, atol=tol, method=method, options=options)
    got = odecore.odeint(
        func, y0.to("cuda", dtype), t.to("cuda", dtype), rtol=tol, atol=tol, method=method, options=options
    )
    assert got.device.type == "cuda" and got.dtype == dtype
    torch.testing.assert_close(got.cpu().double(), truth, rtol=0, atol=1e-10 if dtype == torch.float64 else 2e-3)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4"])
def test_gradcheck_cuda(method):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 3, generator=g, dtype=torch.float64).cuda().requires_grad_()
    y0 = torch.randn(2, 3, generator=g, dtype=torch.float64).cuda().requires_grad_()
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64, device="cuda")
    options = {"step_size": 0.05} if method == "rk4" else None

    def solve(y0, w):
        return odecore.odeint(
            lambda t, y: torch.tanh(y @ w), y0, t, rtol=1e-10, atol=1e-10, method=method, options=options
        )

    assert torch.autograd.gradcheck(solve, (y0, w))


# -- the device-resident loop (options={'sync_every': K}, default on CUDA) ----------------


def _vdp_batch(n, dtype, device):
    g = torch.Generator().manual_seed(2)
    return (torch.rand(n, 2, generator=g, dtype=torch.float64) * 4 - 2).to(device, dtype)


_vdp = van_der_pol(2.0, dim=-1)


@pytest.mark.parametrize("method,dtype", product(ADAPTIVE_METHODS, dtypes))
def test_device_loop_cuda_matches_host_loop(method, dtype):
    """Same steps and, up to the last bits of pow() on the device, the same values as the host loop on
    the same device; the CUDA default is the device loop."""
    y0 = _vdp_batch(64, dtype, "cuda")
    t = torch.linspace(0, 4, 9, dtype=dtype, device="cuda")
    host, hs = odecore.odeint(
        _vdp, y0, t, rtol=1e-6, atol=1e-6, method=method, options={"sync_every": 0, "return_stats": True}
    )
    dev, ds = odecore.odeint(_vdp, y0, t, rtol=1e-6, atol=1e-6, method=method, options={"return_stats": True})
    assert hs["loop"] == "host" and ds["loop"] == "device"
    assert abs(hs["n_steps"] - ds["n_steps"]) <= 1
    torch.testing.assert_close(
        dev, host, rtol=1e-9 if dtype == torch.float64 else 1e-4, atol=1e-9 if dtype == torch.float64 else 1e-4
    )


@pytest.mark.parametrize("k", [8, 16])
def test_device_loop_cuda_sync_count(k):
    """Synchronising host reads during a whole odeint call (validation, initial step and the
    loop): at most steps / K plus a small constant."""
    y0 = _vdp_batch(4096, torch.float64, "cuda")
    t = torch.linspace(0, 10, 5, dtype=torch.float64, device="cuda")
    odecore.odeint(_vdp, y0, t, options={"sync_every": k})  # warm up (first-call allocations)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, stats = odecore.odeint(_vdp, y0, t, options={"sync_every": k, "return_stats": True})
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message).lower() for w in caught)
    assert stats["n_steps"] > 50
    assert stats["host_reads"] <= -(-stats["n_steps"] // k) + 2
    # the constant: input checks (y0, t, rtol, atol), the initial step's three norms, the
    # tolerance tensors' copies, one extra read for the shortened last batch
    assert syncs <= stats["n_steps"] / k + 20, (syncs, stats)


def test_device_loop_ops_cuda_vs_cpu():
    c = [0.2, 0.3, 0.8, 8 / 9, 1.0, 1.0]
    params = [5.0, 0.9, 10.0, 0.2, 0.0, 0.4, 1e9, 1.0, 0.0, 0.0]
    states = []
    for device in ("cpu", "cuda"):
        state = torch.zeros(NUM_SLOTS, dtype=torch.float64)
        state[Slot.DT], state[Slot.T1], state[Slot.DT_USED], state[Slot.NEXT_OUT] = 0.1, 0.1, 0.1, 1
        state = state.to(device)
        accept = torch.zeros((), dtype=torch.bool, device=device)
        stage_t = torch.zeros(len(c), dtype=torch.float64, device=device)
        dt = torch.zeros(1, dtype=torch.float64, device=device)
        times = torch.linspace(0, 2, 7, dtype=torch.float64, device=device)
        trace = []
        for r in [0.3, 1.7, 0.9, 0.0, 0.5, 2.5, 0.99, 0.2] * 3:
            fused.rk_control(
                state, accept, stage_t, dt, torch.tensor(r, dtype=torch.float64, device=device), times, c, params
            )
            trace.append((state.cpu().clone(), bool(accept), stage_t.cpu().clone()))
        states.append(trace)
    for (sa, aa, ta), (sb, ab, tb) in zip(*states):
        torch.testing.assert_close(sa, sb, rtol=1e-15, atol=0, equal_nan=True)  # pow() may differ in the last bit
        assert aa == ab
        torch.testing.assert_close(ta, tb, rtol=1e-15, atol=0)


def test_dt_ops_cuda_equal_float_dt(dtype):
    y0, k = _inputs(dtype, True)
    y0, k = _to(y0, "cuda"), _to(k, "cuda")
    dt = torch.tensor(0.37, dtype=torch.float64, device="cuda")
    a, e = [0.1, -0.3, 0.25, 0.5], [0.01, -0.02, 0.005, 0.005]
    r = torch.tensor(1e-3, dtype=torch.float64, device="cuda")
    assert torch.equal(fused.rk_stage_dt(y0, k, a, dt), fused.rk_stage(y0, k, a, 0.37))
    y1, ratio = fused.rk_finish_dt(y0, k, a, e, dt, r, r, [y0.numel()])
    y1f, ratiof = fused.rk_finish(y0, k, a, e, 0.37, r, r, [y0.numel()])
    assert torch.equal(y1, y1f) and torch.equal(ratio, ratiof)
    assert torch.equal(
        fused.rk_error_ratio_dt(y0, y1, k, e, dt, r, r, [10, -(y0.numel() - 10)]),
        fused.rk_error_ratio(y0, y1, k, e, 0.37, r, r, [10, -(y0.numel() - 10)]),
    )
    opcheck(torch.ops.odecore.rk_stage_dt.default, (y0, k, a, dt), test_utils=("test_schema", "test_faketensor"))


def test_dense_into_cuda_vs_cpu():
    tab = Dopri5.tableau
    y0, k = _inputs(torch.float64, True, n_terms=tab.stages)
    y1 = fused.rk_stage(y0, k, list(tab.b), 0.3)
    times = torch.tensor([0.0, 0.05, 0.1, 0.2, 0.3, 0.5], dtype=torch.float64)
    state = torch.zeros(NUM_SLOTS, dtype=torch.float64)
    state[Slot.FIRST_OUT], state[Slot.NEXT_OUT] = 1, 5
    state[14], state[15], state[16] = 0.0, 0.3, 0.3
    outs = []
    for device in ("cpu", "cuda"):
        out = torch.full((6, *y0.shape), -7.0, dtype=torch.float64, device=device)
        fused.rk_dense_into(
            out, times.to(device), state.to(device), y0.to(device), y1.to(device), _to(k, device), tab.dense_flat
        )
        outs.append(out.cpu())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-14, atol=1e-14)
    assert torch.equal(outs[1][4], y1) and (outs[1][5] == -7).all()


# -- per-sample solving (options={'batch_dim': 0}) on CUDA -------------------------------


@pytest.mark.parametrize("method,dtype", product(["dopri5", "tsit5", "bosh3", "dopri8"], dtypes))
def test_per_sample_cuda_matches_cpu(method, dtype):
    mu = torch.linspace(1, 20, 32, dtype=torch.float64)

    y0 = _vdp_batch(32, torch.float64, "cpu")
    t = torch.linspace(0, 3, 7, dtype=torch.float64)
    cpu, cs = odecore.odeint(
        van_der_pol(mu, dim=-1),
        y0,
        t,
        rtol=1e-6,
        atol=1e-6,
        method=method,
        options={"batch_dim": 0, "return_stats": True},
    )
    gpu, gs = odecore.odeint(
        van_der_pol(mu.to("cuda", dtype), dim=-1),
        y0.to("cuda", dtype),
        t.to("cuda", dtype),
        rtol=1e-6,
        atol=1e-6,
        method=method,
        options={"batch_dim": 0, "return_stats": True},
    )
    assert gs["loop"] == "per_sample"
    assert (gs["n_steps"].cpu() - cs["n_steps"]).abs().max() <= (1 if dtype == torch.float64 else 3)
    torch.testing.assert_close(gpu.cpu().double(), cpu, rtol=0, atol=1e-8 if dtype == torch.float64 else 2e-3)


def test_per_sample_cuda_sync_count():
    mu = torch.linspace(1, 25, 4096, dtype=torch.float64, device="cuda")
    y0 = _vdp_batch(4096, torch.float64, "cuda")
    t = torch.linspace(0, 10, 5, dtype=torch.float64, device="cuda")

    vdp = van_der_pol(mu, dim=-1)

    odecore.odeint(vdp, y0, t, options={"batch_dim": 0})
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, stats = odecore.odeint(vdp, y0, t, options={"batch_dim": 0, "return_stats": True, "sync_every": 16})
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message).lower() for w in caught)
    most = int(stats["n_steps"].max())
    assert most > 50
    assert syncs <= most / 16 + 20, (syncs, most)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_compiled_loop_cuda_equals_python_loop(method, monkeypatch):
    """The compiled host loop (with gradients, so the host loop runs on CUDA) against the
    Python host loop on the GPU: same solution, gradient and statistics, bitwise."""
    lin = torch.nn.Linear(2, 2).double().cuda()
    y0 = torch.randn(64, 2, dtype=torch.float64, device="cuda")
    t = torch.linspace(0, 2, 7, dtype=torch.float64, device="cuda")

    def run(compiled):
        monkeypatch.setattr(adaptive_mod, "CPP_HOST_LOOP", compiled)
        p0 = y0.clone().requires_grad_()
        ys, stats = odecore.odeint(
            lambda tt, y: torch.tanh(lin(y)) * torch.cos(tt),
            p0,
            t,
            method=method,
            rtol=1e-6,
            atol=1e-8,
            options={"return_stats": True},
        )
        return ys, torch.autograd.grad(ys.pow(2).sum(), [p0, *lin.parameters()]), stats

    (ya, ga, sa), (yb, gb, sb) = run(False), run(True)
    assert sa["loop"] == sb["loop"] == "host" and sa["n_steps"] == sb["n_steps"] and sa["nfe"] == sb["nfe"]
    assert torch.equal(ya, yb)
    for u, v in zip(ga, gb):
        assert torch.equal(u, v)


def test_native_adjoint_dynamics_cuda_equal_python(monkeypatch):
    """odeint_adjoint's C++ augmented dynamics on CUDA (the autograd engine runs its device
    thread with the GIL released) against the Python dynamics."""
    torch.manual_seed(0)
    func = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double().cuda()

    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = func

        def forward(self, t, y):
            return self.net(y)

    f = F()
    y0 = torch.randn(8, 3, dtype=torch.float64, device="cuda")
    t = torch.linspace(0, 1, 4, dtype=torch.float64, device="cuda")

    def grads(native):
        monkeypatch.setattr(adjoint_mod, "NATIVE_DYNAMICS", native)
        p0 = y0.clone().requires_grad_()
        ys = odecore.odeint_adjoint(f, p0, t, rtol=1e-6, atol=1e-8)
        return torch.autograd.grad(ys.pow(2).sum(), [p0, *f.parameters()])

    for u, v in zip(grads(False), grads(True)):
        assert torch.equal(u, v)

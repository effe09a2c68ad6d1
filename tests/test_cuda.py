"""CUDA kernels: fused ops vs the CUDA reference vs CPU, full solves vs CPU float64,
opcheck and gradcheck on the device. Skipped without a GPU and CUDA kernels."""
import pytest
import torch
from torch.library import opcheck

import odecore
from odecore.ops import get_ops

from .testing import ADAPTIVE_METHODS, METHODS, dtypes, make_noncontiguous, product, require_cuda, van_der_pol

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
    require_cuda()
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
        ratio_known = fused.rk_error_ratio(cuda_args[0], y1_gpu, cuda_args[1], e, dt, rtol.cuda(), atol.cuda(), segments)
        assert ratio_known.item() == pytest.approx(ratio_gpu.item(), rel=1e-12)

    poly = [0.1 * (i + 1) for i in range(4 * 3)]
    dense = fused.rk_interp(*cuda_args, poly, dt, [0.0, 0.3, 1.0])
    torch.testing.assert_close(dense.cpu(), ref.rk_interp(y0, k, poly, dt, [0.0, 0.3, 1.0]), **tol)


def test_ratio_nan_on_cuda():
    require_cuda()
    y0, k = _inputs(torch.float32, True)
    k[1][3, 2] = float("nan")
    one = torch.ones(1, dtype=torch.float64, device="cuda")
    _, ratio = get_ops("fused", "cuda").rk_finish(y0.cuda(), _to(k, "cuda"), [0.25] * 4, [0.1, -0.1, 0.0, 0.0], 0.1, one, one, [y0.numel()])
    assert torch.isnan(ratio).item()


@pytest.mark.parametrize("dtype", dtypes)
def test_opcheck_cuda(dtype):
    require_cuda()
    y0, k = _inputs(dtype, True)
    y0 = _to(y0, "cuda", False).detach().requires_grad_()
    k = [kj.detach().requires_grad_() for kj in _to(k, "cuda", False)]
    r = torch.tensor([1e-3], dtype=torch.float64, device="cuda")
    a = torch.tensor([1e-4], dtype=torch.float64, device="cuda")
    ops = torch.ops.odecore
    opcheck(ops.rk_stage.default, (y0, k, [0.1, 0.2, 0.3, 0.4], 0.5))
    opcheck(ops.rk_finish.default, (y0, k, [0.1, 0.2, 0.3, 0.4], [0.1, -0.2, 0.05, 0.05], 0.5, r, a, [y0.numel()]))
    opcheck(ops.rk_error_ratio.default, (y0, y0.detach() * 1.1, k, [0.1, -0.2, 0.05, 0.05], 0.5, r, a, [10, y0.numel() - 10]))
    opcheck(ops.rk_interp.default, (y0, k, [0.1] * 8, 0.5, [0.2, 0.9]))


@pytest.mark.parametrize("method,dtype", product(METHODS, dtypes))
def test_solve_cuda_matches_cpu_float64(method, dtype):
    require_cuda()
    func = van_der_pol(2.0)
    y0 = torch.tensor([[2.0, 1.0, 0.5], [0.0, -1.0, 0.3]], dtype=torch.float64)  # (x, v) rows, 3 samples
    t = torch.linspace(0.0, 3.0, 7, dtype=torch.float64)
    options = None if method in ADAPTIVE_METHODS else FIXED_OPTIONS
    tol = 1e-8 if dtype == torch.float64 else 1e-5
    truth = odecore.odeint(func, y0, t, rtol=tol, atol=tol, method=method, options=options)
    got = odecore.odeint(func, y0.to("cuda", dtype), t.to("cuda", dtype), rtol=tol, atol=tol, method=method, options=options)
    assert got.device.type == "cuda" and got.dtype == dtype
    torch.testing.assert_close(got.cpu().double(), truth, rtol=0, atol=1e-10 if dtype == torch.float64 else 2e-3)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4"])
def test_gradcheck_cuda(method):
    require_cuda()
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 3, generator=g, dtype=torch.float64).cuda().requires_grad_()
    y0 = torch.randn(2, 3, generator=g, dtype=torch.float64).cuda().requires_grad_()
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64, device="cuda")
    options = {"step_size": 0.05} if method == "rk4" else None

    def solve(y0, w):
        return odecore.odeint(lambda t, y: torch.tanh(y @ w), y0, t, rtol=1e-10, atol=1e-10, method=method, options=options)

    assert torch.autograd.gradcheck(solve, (y0, w))

"""Autograd through odeint: gradcheck (float64) w.r.t. y0 and a parameter of
func, tuple states, no_grad behaviour, and the gradient w.r.t. the output
times t."""

import pytest
import torch
from torch.autograd import gradcheck

import odecore

from .problems import make_func
from .testing import GRAD_METHODS, backends, dtypes, method_options, product, require_backend


@pytest.mark.parametrize("method,backend", product(GRAD_METHODS, backends))
def test_gradcheck_y0_and_parameter(method, backend):
    require_backend(backend)
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    p = torch.tensor([0.7, -0.3], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)

    def fn(y0, p):
        return odecore.odeint(
            make_func(p), y0, t, rtol=1e-10, atol=1e-10, method=method, options=method_options(method, backend)
        )

    assert gradcheck(fn, (y0, p))


@pytest.mark.parametrize("method,backend", product(GRAD_METHODS, backends))
def test_gradcheck_backward_in_time(method, backend):
    require_backend(backend)
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    p = torch.tensor([0.7, -0.3], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 0.4, -0.2], dtype=torch.float64)

    def fn(y0, p):
        return odecore.odeint(
            make_func(p), y0, t, rtol=1e-10, atol=1e-10, method=method, options=method_options(method, backend)
        )

    assert gradcheck(fn, (y0, p))


@pytest.mark.parametrize("method", GRAD_METHODS)
def test_gradcheck_tuple_state(method):
    a0 = torch.tensor([[1.0, -0.5]], dtype=torch.float64, requires_grad=True)
    b0 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)  # 0-d element
    w = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.6, 1.2], dtype=torch.float64)

    def fn(a0, b0, w):
        def f(t, y):
            a, b = y
            return (-a * w + b, (a * a).sum() * torch.cos(t) - b)

        out = odecore.odeint(
            f, (a0, b0), t, rtol=1e-10, atol=1e-10, method=method, options=method_options(method, "reference")
        )
        assert isinstance(out, tuple) and out[0].shape == (3, 1, 2) and out[1].shape == (3,)
        return out

    assert gradcheck(fn, (a0, b0, w))


def test_gradient_through_module_parameters():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    y0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5], dtype=torch.float64)
    out = odecore.odeint(lambda t, y: net(y), y0, t, rtol=1e-9, atol=1e-9)
    out[-1].pow(2).sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)
    # check one entry by central differences
    p = net[0].weight
    g = p.grad[0, 1].item()
    eps = 1e-6
    with torch.no_grad():
        p[0, 1] += eps
        lp = odecore.odeint(lambda t, y: net(y), y0, t, rtol=1e-12, atol=1e-12)[-1].pow(2).sum().item()
        p[0, 1] -= 2 * eps
        lm = odecore.odeint(lambda t, y: net(y), y0, t, rtol=1e-12, atol=1e-12)[-1].pow(2).sum().item()
        p[0, 1] += eps
    assert abs(g - (lp - lm) / (2 * eps)) <= 1e-5 * max(1.0, abs(g))


@pytest.mark.parametrize("method,dtype", product(["dopri5", "bosh3", "rk4", "euler"], dtypes))
def test_no_grad_output_has_no_graph(method, dtype):
    y0 = torch.tensor([1.0, 0.5], dtype=dtype, requires_grad=True)
    p = torch.tensor([0.7, -0.3], dtype=dtype, requires_grad=True)
    t = torch.tensor([0.0, 0.5], dtype=dtype)
    opts = dict(step_size=0.1) if method in ("rk4", "euler") else {}
    with torch.no_grad():
        out = odecore.odeint(make_func(p), y0, t, method=method, options=opts)
        tup = odecore.odeint(lambda t, y: (make_func(p)(t, y[0]), -y[1]), (y0, p), t, method=method, options=opts)
    assert out.grad_fn is None and not out.requires_grad
    assert all(o.grad_fn is None and not o.requires_grad for o in tup)
    # ... whereas with grad enabled there is a graph
    out = odecore.odeint(make_func(p), y0, t, method=method, options=opts)
    assert out.requires_grad and out.grad_fn is not None


# --------------------------------------------------------------------------- #
# Gradient w.r.t. the output times
# --------------------------------------------------------------------------- #

A = torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=torch.float64)


@pytest.mark.parametrize("method,backend", product(["dopri5", "tsit5"], backends))
def test_gradient_wrt_t_linear(method, backend):
    """y' = A y: dL/dt_j = <dL/dy_j, A y_j> for j >= 1 and
    dL/dt_0 = -sum_j <dL/dy_j, expm(A (t_j - t_0)) A y_0>."""
    require_backend(backend)
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    t = torch.tensor([0.0, 0.7, 1.3, 2.0], dtype=torch.float64, requires_grad=True)
    out = odecore.odeint(
        lambda t, y: A @ y, y0, t, rtol=1e-10, atol=1e-10, method=method, options=dict(backend=backend)
    )
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (g,) = torch.autograd.grad((w * out).sum(), t)
    y = out.detach()
    td = t.detach()
    expected = [-sum((w[j] * (torch.linalg.matrix_exp(A * (td[j] - td[0])) @ (A @ y0))).sum() for j in range(1, 4))]
    expected += [(w[j] * (A @ y[j])).sum() for j in range(1, 4)]
    expected = torch.stack(expected)
    torch.testing.assert_close(g, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_gradient_wrt_t_non_autonomous(method):
    """y' = cos(t) y: y(t) = y0 exp(sin t - sin t0);
    dy_j/dt_j = cos(t_j) y_j and dy_j/dt_0 = -cos(t_0) y_j."""
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    t = torch.tensor([0.2, 0.9, 1.6], dtype=torch.float64, requires_grad=True)
    out = odecore.odeint(lambda t, y: torch.cos(t) * y, y0, t, rtol=1e-10, atol=1e-10, method=method)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (g,) = torch.autograd.grad((w * out).sum(), t)
    y, td = out.detach(), t.detach()
    expected = [sum((w[j] * (-torch.cos(td[0]) * y[j])).sum() for j in range(1, 3))]
    expected += [(w[j] * torch.cos(td[j]) * y[j]).sum() for j in range(1, 3)]
    torch.testing.assert_close(g, torch.stack(expected), rtol=1e-6, atol=1e-6)


def test_gradient_wrt_t_and_y0_together():
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    out = odecore.odeint(lambda t, y: A @ y, y0, t, rtol=1e-10, atol=1e-10)
    gy0, gt = torch.autograd.grad(out[-1].sum(), (y0, t))
    Phi = torch.linalg.matrix_exp(A)
    torch.testing.assert_close(gy0, Phi.t() @ torch.ones(2, dtype=torch.float64), rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(gt[1], (A @ out[-1].detach()).sum(), rtol=1e-6, atol=1e-6)

"""Whole solves with options={'backend': 'fused'} vs {'backend': 'reference'}:
the solver loop is shared, so both must take exactly the same steps (identical
stats) and produce the same values up to rounding; the fused path must not be
less accurate; and the backend selection (per call and global) really decides
whether the fused kernels run."""

import pytest
import torch
from torch.profiler import profile

import odecore

from .problems import get_problem, van_der_pol
from .testing import (
    ADAPTIVE_METHODS,
    EXPLICIT_RK_METHODS,
    FIXED_METHODS,
    backends,
    devices,
    dtypes,
    max_abs_err,
    product,
    require_fused,
    time_grid,
)

STEP = {"euler": 0.01, "midpoint": 0.02, "heun2": 0.02, "heun3": 0.05, "rk4": 0.05}


def options_for(method, backend, **extra):
    opts = dict(backend=backend, return_stats=True, **extra)
    if method in FIXED_METHODS:
        opts["step_size"] = STEP[method]
    return opts


def tol_for(method, dtype):
    if dtype == torch.float32:
        return 1e-5
    return 1e-6 if method in ("adaptive_heun", "fehlberg2") else 1e-8


def value_kw(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)


def odecore_ops_used(fn):
    """Names of torch.ops.odecore.* operators that ran inside fn()."""
    with profile() as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("odecore::")}


@pytest.fixture
def restore_backend():
    old = odecore.get_backend()
    yield
    odecore.set_backend(old)


@pytest.mark.parametrize("method,dtype,device", product(EXPLICIT_RK_METHODS, dtypes, devices))
def test_fused_and_reference_take_the_same_steps(method, dtype, device):
    require_fused(device)
    f = van_der_pol(1.0)
    y0 = torch.tensor([2.0, 0.0], dtype=dtype, device=device)
    t = torch.linspace(0.0, 3.0, 7, dtype=dtype, device=device)
    tol = tol_for(method, dtype)
    results = {}
    for backend in backends:
        results[backend] = odecore.odeint(
            f, y0, t, rtol=tol, atol=tol, method=method, options=options_for(method, backend)
        )
    (out_f, st_f), (out_r, st_r) = results["fused"], results["reference"]
    for key in ("nfe", "n_steps", "n_accepted", "n_rejected"):
        assert st_f[key] == st_r[key], (key, st_f, st_r)
    assert st_f["n_steps"] > 1
    torch.testing.assert_close(out_f, out_r, **value_kw(dtype))


@pytest.mark.parametrize("method,dtype", product(ADAPTIVE_METHODS, dtypes))
@pytest.mark.fused
def test_fused_and_reference_tuple_state_elementwise_tolerances(method, dtype):
    """Tuple state (mixed norm -> several segments) with per-tuple tolerances."""

    def f(t, y):
        a, b = y
        return (-0.5 * a + torch.sin(t) * b.sum(), torch.stack([b[1], -b[0]]))

    y0 = (torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=dtype), torch.tensor([1.0, 0.0], dtype=dtype))
    t = torch.linspace(0.0, 2.0, 5, dtype=dtype)
    base = tol_for(method, dtype)
    results = {}
    for backend in backends:
        results[backend] = odecore.odeint(
            f,
            y0,
            t,
            rtol=(base, 10 * base),
            atol=(10 * base, base),
            method=method,
            options=options_for(method, backend),
        )
    (out_f, st_f), (out_r, st_r) = results["fused"], results["reference"]
    assert isinstance(out_f, tuple) and len(out_f) == 2
    for key in ("nfe", "n_steps", "n_accepted", "n_rejected"):
        assert st_f[key] == st_r[key], (key, st_f, st_r)
    for a, b in zip(out_f, out_r):
        torch.testing.assert_close(a, b, **value_kw(dtype))


@pytest.mark.parametrize("method,dtype", product(EXPLICIT_RK_METHODS, dtypes))
@pytest.mark.fused
def test_fused_not_less_accurate(method, dtype):
    """Error of the fused path vs the float64 exact solution is at most 2x that
    of the reference path (plus a few ulps)."""
    prob = get_problem("linear")
    y0 = prob.y0(dtype)
    t = time_grid("forward", dtype)
    exact = prob.exact(t, y0)
    tol = tol_for(method, dtype)
    errs = {}
    for backend in backends:
        out, _ = odecore.odeint(
            prob.func, y0, t, rtol=tol, atol=tol, method=method, options=options_for(method, backend)
        )
        errs[backend] = max_abs_err(out, exact)
    slack = 8 * torch.finfo(dtype).eps * exact.abs().max().item()
    assert errs["fused"] <= 2 * errs["reference"] + slack, errs


@pytest.mark.parametrize("method,dtype", product(["dopri5", "tsit5", "rk4"], dtypes))
@pytest.mark.fused
def test_fused_and_reference_gradients_agree(method, dtype):
    grads = {}
    for backend in backends:
        y0 = torch.tensor([2.0, 0.0], dtype=dtype, requires_grad=True)
        mu = torch.tensor(1.3, dtype=dtype, requires_grad=True)
        f = van_der_pol(mu)
        t = torch.linspace(0.0, 1.0, 3, dtype=dtype)
        out, _ = odecore.odeint(
            f,
            y0,
            t,
            rtol=tol_for(method, dtype),
            atol=tol_for(method, dtype),
            method=method,
            options=options_for(method, backend),
        )
        grads[backend] = torch.autograd.grad((out**2).sum(), [y0, mu])
    for a, b in zip(grads["fused"], grads["reference"]):
        torch.testing.assert_close(
            a, b, rtol=1e-10 if dtype == torch.float64 else 1e-4, atol=1e-10 if dtype == torch.float64 else 1e-4
        )


# --------------------------------------------------------------------------- #
# Which kernels actually run
# --------------------------------------------------------------------------- #


def _solve(method="dopri5", backend=None, grad=False):
    f = van_der_pol(1.0)
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64, requires_grad=grad)
    t = torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64)
    options = {} if backend is None else {"backend": backend}
    if method in FIXED_METHODS:
        options["step_size"] = 0.05
    # short and loose: the profiler is slow
    out = odecore.odeint(f, y0, t, rtol=1e-3, atol=1e-3, method=method, options=options)
    if grad:
        out.sum().backward()
    return out


@pytest.mark.parametrize("method", EXPLICIT_RK_METHODS)
@pytest.mark.fused
def test_per_call_backend_selects_kernels(method):
    assert odecore_ops_used(lambda: _solve(method, "fused")), "fused backend ran no odecore:: op"
    assert odecore_ops_used(lambda: _solve(method, "reference")) == set()
    # with autograd too
    assert odecore_ops_used(lambda: _solve(method, "reference", grad=True)) == set()
    assert odecore_ops_used(lambda: _solve(method, "fused", grad=True))


@pytest.mark.fused
def test_global_backend(restore_backend):
    odecore.set_backend("reference")
    assert odecore.get_backend() == "reference"
    assert odecore_ops_used(lambda: _solve()) == set()
    # a per-call option overrides the global setting
    assert odecore_ops_used(lambda: _solve(backend="fused"))

    odecore.set_backend("fused")
    assert odecore.get_backend() == "fused"
    assert odecore_ops_used(lambda: _solve())
    assert odecore_ops_used(lambda: _solve(backend="reference")) == set()


def test_global_backend_reference_same_result(restore_backend):
    ref = _solve(backend="reference")
    odecore.set_backend("reference")
    assert torch.equal(_solve(), ref)


def test_set_backend_rejects_unknown(restore_backend):
    before = odecore.get_backend()
    with pytest.raises(ValueError):
        odecore.set_backend("no-such-backend")
    assert odecore.get_backend() == before


def test_backend_option_is_not_an_unexpected_argument(recwarn):
    for method in ("dopri5", "rk4"):
        _ = odecore.odeint(
            van_der_pol(),
            torch.tensor([1.0, 0.0]),
            torch.tensor([0.0, 0.5]),
            method=method,
            options=dict(backend="reference", return_stats=True, **({"step_size": 0.1} if method == "rk4" else {})),
        )
    assert not [w for w in recwarn.list if "Unexpected arguments" in str(w.message)]

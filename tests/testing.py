"""Shared helpers for the odecore test-suite (the problems themselves: tests/problems.py).

The parametrisation lists (dtypes, backends, devices, methods by kind), the gates that skip
a test without the fused or CUDA kernels, tolerances, a counting func, and small independent
oracles for the fused operators.

Tests parametrise with ``itertools.product`` over these lists (pytorch_scatter
style), e.g.::

    @pytest.mark.parametrize('method,dtype', product(EXPLICIT_RK_METHODS, dtypes))
"""

import itertools
import os
from collections.abc import Callable

import pytest
import torch

import odecore
from odecore.solvers import (
    AdamsBashforthMoulton,
    AdaptiveRKSolver,
    FixedGridImplicitRKSolver,
    FixedGridRKSolver,
    ScipyWrapperODESolver,
)
from odecore.solvers.fixed_grid_increment import FixedGridIncrementSolver

from .problems import VectorField, van_der_pol

# --------------------------------------------------------------------------- #
# Parametrisation lists
# --------------------------------------------------------------------------- #


def product(*iterables):
    """itertools.product as a list (pytest wants a collection)."""
    return list(itertools.product(*iterables))


dtypes = [torch.float32, torch.float64]
backends = ["reference", "fused"]


def registered_methods(is_kind: Callable[[type], bool]) -> list[str]:
    """The names in odecore.SOLVERS whose solver class passes ``is_kind``, in registry order."""
    return [name for name, cls in odecore.SOLVERS.items() if is_kind(cls)]


# Each kind is tested on its own class, so that test_every_method_is_of_exactly_one_kind
# catches a solver that falls into none of them or into two.
ADAPTIVE_METHODS = registered_methods(lambda cls: issubclass(cls, AdaptiveRKSolver))
# fixed-grid explicit Runge-Kutta; Adams and the implicit methods step on the same grid
# through FixedGridIncrementSolver
FIXED_METHODS = registered_methods(
    lambda cls: issubclass(cls, FixedGridRKSolver) and not issubclass(cls, FixedGridIncrementSolver)
)
ADAMS_METHODS = registered_methods(lambda cls: issubclass(cls, AdamsBashforthMoulton))
IMPLICIT_METHODS = registered_methods(lambda cls: issubclass(cls, FixedGridImplicitRKSolver))
SCIPY_SOLVER_METHODS = registered_methods(lambda cls: issubclass(cls, ScipyWrapperODESolver))
METHOD_KINDS = {
    "adaptive explicit Runge-Kutta": ADAPTIVE_METHODS,
    "fixed-grid explicit Runge-Kutta": FIXED_METHODS,
    "Adams": ADAMS_METHODS,
    "fixed-grid implicit Runge-Kutta": IMPLICIT_METHODS,
    "scipy_solver": SCIPY_SOLVER_METHODS,
}
EXPLICIT_RK_METHODS = ADAPTIVE_METHODS + FIXED_METHODS
ALL_METHODS = list(odecore.SOLVERS)

# Written out rather than read from the classes: the registry tests check the classes' own.
ORDERS = {
    "dopri5": 5,
    "dopri8": 8,
    "tsit5": 5,
    "bosh3": 3,
    "fehlberg2": 2,
    "adaptive_heun": 2,
    "euler": 1,
    "midpoint": 2,
    "heun2": 2,
    "heun3": 3,
    "rk4": 4,
    "implicit_euler": 1,
    "implicit_midpoint": 2,
    "trapezoid": 2,
    "gl4": 4,
    "gl6": 6,
    "radauIIA3": 3,
    "radauIIA5": 5,
    "sdirk2": 2,
    "trbdf2": 2,
}

# Environment switch used by CI: fused kernels *must* be present.
REQUIRE_EXTENSION = os.environ.get("ODECORE_REQUIRE_EXTENSION", "") == "1"


def _cuda_available() -> bool:
    try:
        return bool(torch.cuda.is_available() and odecore.backend_info()["cuda"])
    except Exception:  # pragma: no cover - backend_info itself is tested elsewhere
        return False


devices = ["cpu"] + (["cuda"] if _cuda_available() else [])

# --------------------------------------------------------------------------- #
# Gates (the `fused` and `cuda` markers apply them to whole tests: tests/conftest.py)
# --------------------------------------------------------------------------- #


def require_fused(device: str | torch.device = "cpu") -> None:
    """Skip (or, with ODECORE_REQUIRE_EXTENSION=1, fail) when the fused kernels
    for ``device`` are not importable."""
    key = "cuda" if str(device).startswith("cuda") else "cpu"
    if not odecore.backend_info()[key]:
        msg = "odecore fused {} kernels are not available".format(key)
        if REQUIRE_EXTENSION:
            pytest.fail(msg + " but ODECORE_REQUIRE_EXTENSION=1")
        pytest.skip(msg)


def require_backend(backend: str, device: str | torch.device = "cpu") -> None:
    """Gate for tests parametrised over ``backends``."""
    assert backend in backends, backend
    if backend == "fused":
        require_fused(device)


def require_cuda() -> None:
    if "cuda" not in devices:
        pytest.skip("CUDA not available")


# --------------------------------------------------------------------------- #
# Output times, tolerances, errors
# --------------------------------------------------------------------------- #


def time_grid(direction: str, dtype: torch.dtype, device: str = "cpu", n: int = 4, a: float = 0.3, b: float = 1.8):
    """Output times: forward [a..b] or backward [b..a]."""
    t = torch.linspace(a, b, n, dtype=dtype, device=device)
    return t if direction == "forward" else t.flip(0)


def solver_tol(dtype):
    """rtol=atol used for adaptive solves in the analytic tests."""
    return 1e-8 if dtype == torch.float64 else 1e-5


def max_abs_err(a, b):
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def max_rel_err(a, b, floor=1.0):
    """max |a-b| / max(|b|, floor)"""
    a = a.detach().double().cpu()
    b = b.detach().double().cpu()
    return ((a - b).abs() / b.abs().clamp_min(floor)).max().item()


class CountingFunc:
    """Wraps a func, counting evaluations and recording the times it saw."""

    def __init__(self, f):
        self.f = f
        self.nfe = 0
        self.ts = []
        self.t_dtypes = []
        self.t_shapes = []

    def __call__(self, t, y):
        self.nfe += 1
        self.ts.append(t.detach().clone())
        self.t_dtypes.append(t.dtype)
        self.t_shapes.append(tuple(t.shape))
        return self.f(t, y)

    def times(self):
        return [float(t) for t in self.ts]


# --------------------------------------------------------------------------- #
# Independent oracles for the fused operators (plain float64 loops).
# --------------------------------------------------------------------------- #


def oracle_stage(y0, k, a, dt):
    out = y0.double().clone()
    for a_j, k_j in zip(a, k):
        out = out + dt * a_j * k_j.double()
    return out


def oracle_ratio(y0, y1, err, rtol, atol, segments):
    y0 = y0.detach().double().reshape(-1)
    y1 = y1.detach().double().reshape(-1)
    err = err.detach().double().reshape(-1)
    rtol = rtol.detach().double().reshape(-1)
    atol = atol.detach().double().reshape(-1)
    tol = atol + rtol * torch.maximum(y0.abs(), y1.abs())
    r = err / tol
    ratios = []
    start = 0
    for n in segments:
        seg = r[start : start + n]
        ratios.append(seg.pow(2).mean().sqrt().item())
        start += n
    return max(ratios)


def oracle_finish(y0, k, b, e, dt, rtol, atol, segments):
    y1 = oracle_stage(y0, k, b, dt)
    err = oracle_stage(torch.zeros_like(y0), k, e, dt)
    return y1, oracle_ratio(y0, y1, err, rtol, atol, segments)


def oracle_interp(y0, k, poly, dt, x):
    D = len(poly) // len(k)
    outs = []
    for xn in x:
        out = y0.double().clone()
        for j, k_j in enumerate(k):
            p = sum(poly[j * D + d] * xn ** (d + 1) for d in range(D))
            out = out + dt * p * k_j.double()
        outs.append(out)
    return torch.stack(outs) if outs else torch.empty(0, *y0.shape, dtype=torch.float64)


def make_noncontiguous(x):
    """Same values as ``x``, but a non-contiguous view (strided slice)."""
    big = torch.empty(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device) if x.dim() else None
    if big is None:
        return x
    big[..., ::2] = x
    big[..., 1::2] = float("nan")  # garbage in the gaps must never be read
    out = big[..., ::2]
    assert out.shape == x.shape
    if x.numel() > 1:
        assert not out.is_contiguous()
    return out


def transposed(x2d):
    """Same values as the 2-D tensor ``x2d`` but stored transposed."""
    out = x2d.t().contiguous().t()
    if x2d.numel() > 1 and min(x2d.shape) > 1:
        assert not out.is_contiguous()
    return out


# --------------------------------------------------------------------------- #
# Gradient tests (direct backprop and adjoint)
# --------------------------------------------------------------------------- #

GRAD_METHODS = ["dopri5", "tsit5", "rk4"]


def method_options(method, backend, step_size=0.1):
    opts = dict(backend=backend)
    if method == "rk4":
        opts["step_size"] = step_size
    return opts


# tests/test_compiled_solve.py, being written beside this refactor, still imports this name:
# remove it once that file calls problems.van_der_pol(mu, dim=-1) itself.
def van_der_pol_batched(mu: float | torch.Tensor = 1.0) -> VectorField:
    return van_der_pol(mu, dim=-1)

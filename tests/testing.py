"""Shared helpers for the odecore test-suite.

Everything that more than one test module needs lives here: the parametrisation
lists (dtypes, backends, devices, methods), the "fused kernels available?"
gate, analytic problems with closed-form solutions, and small independent
oracles for the fused operators.

Tests parametrise with ``itertools.product`` over these lists (pytorch_scatter
style), e.g.::

    @pytest.mark.parametrize('method,dtype', product(METHODS, dtypes))
"""

import itertools
import math
import os

import pytest
import torch

import odecore

# --------------------------------------------------------------------------- #
# Parametrisation lists
# --------------------------------------------------------------------------- #


def product(*iterables):
    """itertools.product as a list (pytest wants a collection)."""
    return list(itertools.product(*iterables))


dtypes = [torch.float32, torch.float64]
backends = ["reference", "fused"]

ADAPTIVE_METHODS = ["dopri5", "dopri8", "tsit5", "bosh3", "fehlberg2", "adaptive_heun"]
FIXED_METHODS = ["euler", "midpoint", "heun2", "heun3", "rk4"]
METHODS = ADAPTIVE_METHODS + FIXED_METHODS
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
}
# Methods that also exist in torchdiffeq 0.2.5 (tsit5 does not).
TORCHDIFFEQ_METHODS = [m for m in METHODS if m != "tsit5"]

# Environment switch used by CI: fused kernels *must* be present.
REQUIRE_EXTENSION = os.environ.get("ODECORE_REQUIRE_EXTENSION", "") == "1"


def _cuda_available():
    try:
        return bool(torch.cuda.is_available() and odecore.backend_info()["cuda"])
    except Exception:  # pragma: no cover - backend_info itself is tested elsewhere
        return False


devices = ["cpu"] + (["cuda"] if _cuda_available() else [])


def require_fused(device="cpu"):
    """Skip (or, with ODECORE_REQUIRE_EXTENSION=1, fail) when the fused kernels
    for ``device`` are not importable."""
    key = "cuda" if str(device).startswith("cuda") else "cpu"
    if not odecore.backend_info()[key]:
        msg = "odecore fused {} kernels are not available".format(key)
        if REQUIRE_EXTENSION:
            pytest.fail(msg + " but ODECORE_REQUIRE_EXTENSION=1")
        pytest.skip(msg)


def require_backend(backend, device="cpu"):
    """Gate for tests parametrised over ``backends``."""
    assert backend in backends, backend
    if backend == "fused":
        require_fused(device)


def require_cuda():
    if "cuda" not in devices:
        pytest.skip("CUDA not available")


# --------------------------------------------------------------------------- #
# Tolerances
# --------------------------------------------------------------------------- #


def solver_tol(dtype):
    """rtol=atol used for adaptive solves in the analytic tests."""
    return 1e-8 if dtype == torch.float64 else 1e-5


def eps(dtype):
    return torch.finfo(dtype).eps


def max_abs_err(a, b):
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def max_rel_err(a, b, floor=1.0):
    """max |a-b| / max(|b|, floor)"""
    a = a.detach().double().cpu()
    b = b.detach().double().cpu()
    return ((a - b).abs() / b.abs().clamp_min(floor)).max().item()


# --------------------------------------------------------------------------- #
# Analytic problems.  Each problem has a closed-form solution valid for any
# t0 and any direction of time, so they serve for forward and backward solves.
# --------------------------------------------------------------------------- #


class Problem:
    name = None

    def func(self, t, y):
        raise NotImplementedError

    def y0(self, dtype, device="cpu"):
        raise NotImplementedError

    def exact(self, t, y0):
        """Closed-form solution at every element of ``t`` (float64),
        starting from ``y0`` at ``t[0]``."""
        raise NotImplementedError


class Constant(Problem):
    """y' = c"""

    name = "constant"

    def __init__(self):
        self.c = torch.tensor([1.5, -0.5, 0.25], dtype=torch.float64)

    def func(self, t, y):
        return self.c.to(y) + 0 * y

    def y0(self, dtype, device="cpu"):
        return torch.tensor([0.5, 1.0, -2.0], dtype=dtype, device=device)

    def exact(self, t, y0):
        t = t.double().cpu()
        y0 = y0.double().cpu()
        return y0[None] + self.c[None] * (t - t[0])[:, None]


class Exponential(Problem):
    """y' = lam * y, elementwise, y of shape (2, 3)"""

    name = "exponential"

    def __init__(self):
        self.lam = torch.tensor([[-1.0, -0.5, 0.3], [0.8, -2.0, 0.1]], dtype=torch.float64)

    def func(self, t, y):
        return self.lam.to(y) * y

    def y0(self, dtype, device="cpu"):
        return torch.tensor([[1.0, 2.0, -1.0], [0.5, 1.5, 3.0]], dtype=dtype, device=device)

    def exact(self, t, y0):
        t = t.double().cpu()
        y0 = y0.double().cpu()
        dt = (t - t[0]).view(-1, 1, 1)
        return y0[None] * torch.exp(self.lam[None] * dt)


class Sine(Problem):
    """y' = a * cos(t)  (non-autonomous)"""

    name = "sine"

    def __init__(self):
        self.a = torch.tensor([1.0, -2.0], dtype=torch.float64)

    def func(self, t, y):
        return self.a.to(y) * torch.cos(t)

    def y0(self, dtype, device="cpu"):
        return torch.tensor([0.0, 1.0], dtype=dtype, device=device)

    def exact(self, t, y0):
        t = t.double().cpu()
        y0 = y0.double().cpu()
        return y0[None] + self.a[None] * (torch.sin(t) - torch.sin(t[0]))[:, None]


class Linear(Problem):
    """y' = A y, solution via the matrix exponential."""

    name = "linear"

    def __init__(self):
        self.A = torch.tensor([[-0.5, 1.0, 0.0], [-1.0, -0.3, 0.4], [0.2, 0.0, -0.8]], dtype=torch.float64)

    def func(self, t, y):
        return self.A.to(y) @ y

    def y0(self, dtype, device="cpu"):
        return torch.tensor([1.0, 0.5, -0.7], dtype=dtype, device=device)

    def exact(self, t, y0):
        t = t.double().cpu()
        y0 = y0.double().cpu()
        return torch.stack([torch.linalg.matrix_exp(self.A * (ti - t[0])) @ y0 for ti in t])


PROBLEMS = [Constant(), Exponential(), Sine(), Linear()]
PROBLEM_NAMES = [p.name for p in PROBLEMS]


def get_problem(name):
    return {p.name: p for p in PROBLEMS}[name]


def time_grid(direction, dtype, device="cpu", n=4, a=0.3, b=1.8):
    """Output times: forward [a..b] or backward [b..a]."""
    t = torch.linspace(a, b, n, dtype=dtype, device=device)
    return t if direction == "forward" else t.flip(0)


# Non-linear problems (no closed form; scipy is the truth there).


def van_der_pol(mu=1.0):
    def f(t, y):
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    return f


def van_der_pol_batched(mu=1.0):
    """Van der Pol on a batch of states (..., 2) (van_der_pol takes (2, ...): rows x, v)."""

    def f(t, y):
        return torch.stack([y[..., 1], mu * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)

    return f


def forced_rotation(t, y):
    """A rotation forced in time, on states (..., 2)."""
    return torch.stack([y[..., 1], -y[..., 0]], -1) + 0.3 * torch.sin(3 * t)


def lotka_volterra(a=1.5, b=1.0, c=3.0, d=1.0):
    def f(t, y):
        return torch.stack([a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]])

    return f


def spiral():
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)

    def f(t, y):
        return (A.to(y) @ (y**3).unsqueeze(-1)).squeeze(-1)

    return f


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


def sqrt_mean_square(x):
    return math.sqrt(float((x.double() ** 2).mean()))


# --------------------------------------------------------------------------- #
# Gradient tests (direct backprop and adjoint)
# --------------------------------------------------------------------------- #

GRAD_METHODS = ["dopri5", "tsit5", "rk4"]


def method_options(method, backend, step_size=0.1):
    opts = dict(backend=backend)
    if method == "rk4":
        opts["step_size"] = step_size
    return opts


def make_func(p):
    """A small non-linear, non-autonomous system with a parameter vector p."""

    def f(t, y):
        return torch.stack([p[0] * y[1], -y[0] + p[1] * torch.sin(y[1]) * y[0] + 0.1 * torch.cos(t)])

    return f

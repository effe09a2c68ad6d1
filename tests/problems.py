"""The test-suite's ODE problems, each defined once.

Analytic problems carry their closed-form solution (the truth for every method, in either
direction of time); the non-linear ones (Van der Pol, Lotka-Volterra, the spiral of
torchdiffeq's examples/ode_demo.py) have scipy or a tight solve as their truth.
"""

from collections.abc import Callable

import torch
from torch import nn

VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# --------------------------------------------------------------------------- #
# Analytic problems.  Each problem has a closed-form solution valid for any
# t0 and any direction of time, so they serve for forward and backward solves.
# --------------------------------------------------------------------------- #


class Problem:
    name: str

    def func(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def y0(self, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
        raise NotImplementedError

    def exact(self, t: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
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
    A = torch.tensor([[-0.5, 1.0, 0.0], [-1.0, -0.3, 0.4], [0.2, 0.0, -0.8]], dtype=torch.float64)

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


def get_problem(name: str) -> Problem:
    return {p.name: p for p in PROBLEMS}[name]


class LinearODE(nn.Module):
    """The linear problem's y' = A y on a batch of states (y @ A^T), A a parameter."""

    def __init__(self):
        super().__init__()
        self.A = nn.Parameter(Linear.A.clone())

    def forward(self, t, y):
        return y @ self.A.t()


# --------------------------------------------------------------------------- #
# Non-linear problems (no closed form; scipy is the truth there).
# --------------------------------------------------------------------------- #


def van_der_pol(mu: float | torch.Tensor = 1.0, dim: int = 0) -> VectorField:
    """Van der Pol's x'' = mu (1 - x^2) x' - x on y = (x, x') along ``dim``: 0 for rows
    (x, v) of any shape, -1 for a batch of states (..., 2). A tensor mu broadcasts against x
    (one mu per sample)."""

    def f(t, y):
        x, v = y.select(dim, 0), y.select(dim, 1)
        return torch.stack([v, mu * (1 - x**2) * v - x], dim)

    return f


def forced_rotation(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A rotation forced in time, on states (..., 2)."""
    return torch.stack([y[..., 1], -y[..., 0]], -1) + 0.3 * torch.sin(3 * t)


def lotka_volterra(a: float = 1.5, b: float = 1.0, c: float = 3.0, d: float = 1.0) -> VectorField:
    def f(t, y):
        return torch.stack([a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]])

    return f


def spiral() -> VectorField:
    """torchdiffeq examples/ode_demo.py's true dynamics: y' = A y^3 (elementwise cube)."""
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)

    def f(t, y):
        return (A.to(y) @ (y**3).unsqueeze(-1)).squeeze(-1)

    return f


def robertson(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Robertson's chemical kinetics, Hairer & Wanner's stiff test problem (rates 0.04, 1e4, 3e7)."""
    r1 = 0.04 * y[0]
    r2 = 1e4 * y[1] * y[2]
    r3 = 3e7 * y[1] ** 2
    return torch.stack([-r1 + r2, r1 - r2 - r3, r3])


def blowup(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y' = y^2, y(0) = 1: y = 1 / (1 - t), infinite at t = 1."""
    return y * y


class SpiralMLP(nn.Module):
    """torchdiffeq examples/ode_demo.py's ODEFunc, Linear(2,50)-Tanh-Linear(50,2) on y**3, in
    float64 from torch.manual_seed(seed). ode_demo's init is weight_std=0.1 and zero biases;
    ``forcing`` adds forcing * sin(t)."""

    def __init__(self, seed: int = 0, weight_std: float = 0.1, bias_std: float = 0.0, forcing: float = 0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2)).double()
        self.forcing = forcing
        for m in self.net.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0, std=weight_std)
                # zero biases draw nothing: the global generator stays where ode_demo leaves it
                if bias_std:
                    nn.init.normal_(m.bias, mean=0, std=bias_std)
                else:
                    nn.init.constant_(m.bias, val=0)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.net(y**3)
        return out + self.forcing * torch.sin(t) if self.forcing else out


def make_func(p: torch.Tensor) -> VectorField:
    """A small non-linear, non-autonomous system with a parameter vector p."""

    def f(t, y):
        return torch.stack([p[0] * y[1], -y[0] + p[1] * torch.sin(y[1]) * y[0] + 0.1 * torch.cos(t)])

    return f

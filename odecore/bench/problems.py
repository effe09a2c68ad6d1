"""The benchmark problems: recipes that build a vector field, an initial state and output times.

Three sets: ``PROBLEMS`` (the solve suite), ``GPU_FAMILIES`` (the GPU suite: each family at
several batch / ensemble sizes) and ``ADJOINT_PROBLEMS`` (forward + backward through
``odeint_adjoint``; their builders also return the loss). Every builder is seeded, so a problem
is the same state on every run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import odecore
from odecore.nn import ODEFunc, SpiralFunc


@dataclass
class Instance:
    """A concrete problem on a device/dtype, ready to hand to ``odeint``."""

    name: str
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    y0: torch.Tensor
    t: torch.Tensor
    method: str
    rtol: float
    atol: float
    options: dict[str, Any] = field(default_factory=dict)
    # options passed to odecore only (e.g. ``sync_every``), not to the peers
    odecore_options: dict[str, Any] = field(default_factory=dict)

    def odeint_kwargs(self) -> dict[str, Any]:
        return dict(rtol=self.rtol, atol=self.atol, method=self.method, options=dict(self.options))


@dataclass
class Problem:
    """A benchmark problem: a recipe that builds an :class:`Instance`."""

    name: str
    description: str
    method: str
    rtol: float
    atol: float
    options: dict[str, Any]
    _build: Callable[..., tuple]
    seed: int = 0
    family: str | None = None  # GPU suite: the family name (e.g. "lorenz_rk4"); else the problem name
    size: int | None = None  # GPU suite: batch / ensemble size the builder gets

    def make(self, device="cpu", dtype=torch.float64, seed: int | None = None, batch: int | None = None) -> Instance:
        """``batch`` (default: the problem's own) is the leading dimension of y0."""
        device = torch.device(device)
        seed = self.seed if seed is None else seed
        batch = batch or self.size
        func, y0, t = self._build(device, dtype, seed, **({"batch": int(batch)} if batch else {}))
        return Instance(self.name, func, y0, t, self.method, self.rtol, self.atol, dict(self.options))


def prepare_y0(inst: Instance | AdjointInstance, grad: bool) -> torch.Tensor:
    """A fresh leaf copy of the instance's initial state for one solve (requiring grad if asked)."""
    y0 = inst.y0.detach().clone()
    if grad:
        y0.requires_grad_(True)
    return y0


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


class VanDerPol(nn.Module):
    """x' = v, v' = mu (1 - x^2) v - x, state (..., 2)."""

    def __init__(self, mu: float = 2.0):
        super().__init__()
        self.mu = mu

    def forward(self, t, y):
        x = y[..., 0]
        v = y[..., 1]
        return torch.stack([v, self.mu * (1 - x * x) * v - x], dim=-1)


class CubicSpiral(nn.Module):
    """y' = (y ** 3) @ A (the torchdiffeq ode_demo dynamics)."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.register_buffer("A", A)

    def forward(self, t, y):
        return (y**3) @ self.A


class MLPField(nn.Module):
    """Autonomous neural vector field: Linear -> tanh -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t, y):
        return self.net(y)


def _build_vdp(device, dtype, seed, batch=256):
    g = _generator(seed)
    x0 = torch.rand(batch, generator=g, dtype=torch.float64) * 4.0 - 2.0  # x in [-2, 2]
    v0 = torch.rand(batch, generator=g, dtype=torch.float64) * 4.0 - 2.0  # v in [-2, 2]
    y0 = torch.stack([x0, v0], dim=-1).to(device=device, dtype=dtype)
    t = torch.linspace(0.0, 8.2, 200, dtype=dtype, device=device)
    return VanDerPol(2.0).to(device), y0, t


def _build_spiral(device, dtype, seed, batch=1024):
    g = _generator(seed)
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=dtype, device=device)
    # Points on a ring around the ode_demo start point [2, 0].
    r = 0.5 + 1.5 * torch.rand(batch, generator=g, dtype=torch.float64)  # radius in [0.5, 2]
    th = 2 * math.pi * torch.rand(batch, generator=g, dtype=torch.float64)
    y0 = torch.stack([r * torch.cos(th), r * torch.sin(th)], dim=-1).to(device=device, dtype=dtype)
    t = torch.linspace(0.0, 25.0, 100, dtype=dtype, device=device)
    return CubicSpiral(A).to(device), y0, t


def _make_mlp(dim, hidden, seed, out_scale, in_scale=1.0):
    torch.manual_seed(seed)  # nn.Linear init uses the global generator
    f = MLPField(dim, hidden)
    with torch.no_grad():
        f.net[0].weight.mul_(in_scale)
        f.net[2].weight.mul_(out_scale)
        f.net[2].bias.mul_(out_scale)
    return f


def _build_small_node(device, dtype, seed, batch=64):
    # Fixed-seed 4-32-4 tanh MLP, first-layer weights x2, so that a dopri5
    # solve on [0, 100] at 1e-6 takes ~130 steps, a handful of them rejected
    # (torchdiffeq: 133 steps, 21 rejected, nfe 800 in float64).
    f = _make_mlp(4, 32, seed + 3, out_scale=1.0, in_scale=2.0)
    f = f.to(device=device, dtype=dtype)
    g = _generator(seed)
    y0 = torch.randn(batch, 4, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    t = torch.linspace(0.0, 100.0, 101, dtype=dtype, device=device)
    return f, y0, t


def _build_mlp(device, dtype, seed, batch=512):
    # Weights scaled (first layer x4, second x16) so the dopri5 solve takes
    # ~18 steps rather than 3 (torchdiffeq: nfe 110 in float64).
    f = _make_mlp(64, 256, seed + 2, out_scale=16.0, in_scale=4.0).to(device=device, dtype=dtype)
    g = _generator(seed)
    y0 = torch.randn(batch, 64, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    t = torch.linspace(0.0, 1.0, 11, dtype=dtype, device=device)
    return f, y0, t


PROBLEMS: dict[str, Problem] = {
    p.name: p
    for p in [
        Problem("vdp", "Van der Pol mu=2, batch 256, t in [0, 8.2] (200 points)", "dopri5", 1e-5, 1e-5, {}, _build_vdp),
        Problem(
            "spiral", "y' = (y**3) @ A, batch 1024, t in [0, 25] (100 points)", "dopri5", 1e-7, 1e-9, {}, _build_spiral
        ),
        Problem(
            "small_node",
            "MLP 4-32-4 tanh, batch 64, t in [0, 100] (101 points)",
            "dopri5",
            1e-6,
            1e-6,
            {},
            _build_small_node,
        ),
        Problem("mlp", "MLP 64-256-64 tanh, batch 512, t in [0, 1] (11 points)", "dopri5", 1e-5, 1e-5, {}, _build_mlp),
        Problem(
            "mlp_rk4",
            "MLP 64-256-64 tanh, batch 512, t in [0, 1] (11 points), rk4 h=0.01",
            "rk4",
            1e-5,
            1e-5,
            {"step_size": 0.01},
            _build_mlp,
        ),
    ]
}


def get_problem(name: str) -> Problem:
    try:
        return PROBLEMS[name]
    except KeyError:
        raise ValueError(f"unknown problem {name!r}; choose from {sorted(PROBLEMS)}") from None


# --------------------------------------------------------------------------
# GPU suite (issue #3 item 6): Van der Pol, Lorenz ensemble, ODE-Net block
# --------------------------------------------------------------------------


class Lorenz(nn.Module):
    """Lorenz ensemble: one (x, y, z) per member, each with its own rho (state (N, 3))."""

    def __init__(self, rho: torch.Tensor, sigma: float = 10.0, beta: float = 8.0 / 3.0):
        super().__init__()
        self.register_buffer("rho", rho)
        self.sigma = sigma
        self.beta = beta

    def forward(self, t, u):
        x, y, z = u.unbind(-1)
        return torch.stack([self.sigma * (y - x), x * (self.rho - z) - y, x * y - self.beta * z], dim=-1)


def _build_lorenz(device, dtype, seed, batch=1024):
    # rho = linspace(0, 21, N), u0 = (1, 0, 0) for every member, t in [0, 1] (DiffEqGPU's ensemble)
    rho = torch.linspace(0.0, 21.0, batch, dtype=dtype, device=device)
    u0 = torch.tensor([1.0, 0.0, 0.0], dtype=dtype, device=device).expand(batch, 3).contiguous()
    t = torch.tensor([0.0, 1.0], dtype=dtype, device=device)
    return Lorenz(rho).to(device), u0, t


def _build_odenet_block(device, dtype, seed, batch=128):
    # The ODE block of the MNIST ODE-Net (Chen et al. 2018): odecore.nn.ODEFunc(64) =
    # GroupNorm-ReLU-ConcatConv2d-GroupNorm-ReLU-ConcatConv2d-GroupNorm on a 64x6x6 state.
    torch.manual_seed(seed + 5)  # the layers' init uses the global generator
    f = ODEFunc(64).to(device=device, dtype=dtype)
    g = _generator(seed)
    y0 = torch.randn(batch, 64, 6, 6, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    t = torch.tensor([0.0, 1.0], dtype=dtype, device=device)
    return f, y0, t


@dataclass
class Family:
    """A GPU-suite problem at several sizes (batch / ensemble members)."""

    name: str
    description: str
    method: str
    rtol: float
    atol: float
    options: dict[str, Any]
    build: Callable[..., tuple]
    full: Sequence[int]
    small: Sequence[int]

    def problem(self, size: int) -> Problem:
        return Problem(
            f"{self.name}_{size}",
            f"{self.description}, N = {size}",
            self.method,
            self.rtol,
            self.atol,
            dict(self.options),
            self.build,
            family=self.name,
            size=int(size),
        )


GPU_FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            "gpu_vdp",
            "Van der Pol mu=2, t in [0, 8.2] (200 points)",
            "dopri5",
            1e-5,
            1e-5,
            {},
            _build_vdp,
            full=(256, 4096, 65536),
            small=(16, 64, 256),
        ),
        Family(
            "lorenz_rk4",
            "Lorenz ensemble, rho = linspace(0, 21, N), u0 = (1, 0, 0), t in [0, 1], rk4 dt 1e-3",
            "rk4",
            1e-6,
            1e-6,
            {"step_size": 1e-3},
            _build_lorenz,
            full=(2**10, 2**14, 2**20),
            small=(16, 64, 256),
        ),
        Family(
            "lorenz_tsit5",
            "Lorenz ensemble, rho = linspace(0, 21, N), u0 = (1, 0, 0), t in [0, 1], tsit5",
            "tsit5",
            1e-6,
            1e-6,
            {},
            _build_lorenz,
            full=(2**10, 2**14, 2**20),
            small=(16, 64, 256),
        ),
        Family(
            "odenet_block",
            "ODE-Net block (Chen et al.): ODEFunc(64) on 64x6x6, t in [0, 1]",
            "dopri5",
            1e-3,
            1e-3,
            {},
            _build_odenet_block,
            full=(128,),
            small=(4,),
        ),
    ]
}

SIZES = ("auto", "small", "full")


def _explicit_sizes(sizes: str) -> list[int] | None:
    """The integers of a ``--sizes`` value like '8,16' (None for 'small' / 'full')."""
    if sizes in ("small", "full"):
        return None
    try:
        explicit = [int(x) for x in str(sizes).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--sizes must be one of {', '.join(SIZES)} or integers, got {sizes!r}") from None
    if not explicit or min(explicit) < 1:
        raise ValueError(f"--sizes must be one of {', '.join(SIZES)} or positive integers, got {sizes!r}")
    return explicit


def gpu_problems(names: Sequence[str] | None = None, sizes: str = "small", device="cpu") -> list[Problem]:
    """The GPU-suite problems: every family in ``names`` (default all) at ``sizes`` --
    'small' (a CPU smoke run), 'full' (the issue's sizes, up to 2^20 Lorenz members),
    'auto' (full on CUDA, small elsewhere) or comma-separated integers. A name may also be
    one concrete problem, e.g. ``lorenz_rk4_1024`` (any size)."""
    if sizes == "auto":
        sizes = "full" if torch.device(device).type == "cuda" else "small"
    explicit = _explicit_sizes(sizes)
    out: list[Problem] = []
    for name in list(names) if names else list(GPU_FAMILIES):
        if name in GPU_FAMILIES:
            fam = GPU_FAMILIES[name]
            for n in explicit or (fam.full if sizes == "full" else fam.small):
                out.append(fam.problem(n))
            continue
        fam_name, _, n = name.rpartition("_")
        if fam_name in GPU_FAMILIES and n.isdigit() and int(n) > 0:
            out.append(GPU_FAMILIES[fam_name].problem(int(n)))
            continue
        raise ValueError(
            f"unknown GPU-suite problem {name!r}; choose from {sorted(GPU_FAMILIES)} "
            f"(or one size of one, e.g. lorenz_rk4_1024)"
        )
    return out


# --------------------------------------------------------------------------
# Adjoint suite: forward + backward through odeint_adjoint
# --------------------------------------------------------------------------


@dataclass
class AdjointInstance:
    """A concrete adjoint problem: ``loss(odeint_adjoint(func, y0, t, ...))`` to differentiate."""

    name: str
    func: nn.Module
    y0: torch.Tensor
    t: torch.Tensor
    loss: Callable[[torch.Tensor], torch.Tensor]
    method: str
    rtol: float
    atol: float
    options: dict[str, Any] = field(default_factory=dict)

    def odeint_kwargs(self) -> dict[str, Any]:
        return dict(rtol=self.rtol, atol=self.atol, method=self.method, options=dict(self.options))

    def leaves(self, y0: torch.Tensor) -> list[torch.Tensor]:
        return [y0] + [p for p in self.func.parameters() if p.requires_grad]


@dataclass
class AdjointProblem(Problem):
    """A forward+backward benchmark: its builder also returns the loss."""

    def make(self, device="cpu", dtype=torch.float64, seed: int | None = None) -> AdjointInstance:
        device = torch.device(device)
        seed = self.seed if seed is None else seed
        func, y0, t, loss = self._build(device, dtype, seed)
        return AdjointInstance(self.name, func, y0, t, loss, self.method, self.rtol, self.atol, dict(self.options))


def ODEDemoFunc() -> nn.Module:
    """The model of torchdiffeq's examples/ode_demo.py (odecore.nn.SpiralFunc)."""
    return SpiralFunc()


def _build_adjoint_small_node(device, dtype, seed):
    # the `small_node` solve problem's model, state and times; loss on every output
    func, y0, t = _build_small_node(device, dtype, seed)
    return func, y0, t, lambda sol: sol.pow(2).mean()


def _build_adjoint_spiral(device, dtype, seed):
    # torchdiffeq examples/ode_demo.py: data of 1000 points on t in [0, 25] from y0 = [2, 0]
    # under y' = (y**3) @ A; one training step's loss on a batch of 20 windows of 10
    # consecutive points (L1 loss, as the demo).
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=dtype, device=device)
    true_y0 = torch.tensor([[2.0, 0.0]], dtype=dtype, device=device)
    t_data = torch.linspace(0.0, 25.0, 1000, dtype=dtype, device=device)
    with torch.no_grad():
        true_y = odecore.odeint(CubicSpiral(A), true_y0, t_data, method="dopri5")  # (1000, 1, 2)
    data_size, batch_time, batch_size = 1000, 10, 20
    s = torch.randperm(data_size - batch_time, generator=_generator(seed))[:batch_size].to(device)
    y0 = true_y[s]  # (20, 1, 2)
    t = t_data[:batch_time]  # (10,)
    batch_y = torch.stack([true_y[s + i] for i in range(batch_time)], 0)  # (10, 20, 1, 2)
    torch.manual_seed(seed)  # nn.init uses the global generator
    func = ODEDemoFunc().to(device=device, dtype=dtype)
    return func, y0, t, lambda sol: (sol - batch_y).abs().mean()


ADJOINT_PROBLEMS: dict[str, AdjointProblem] = {
    p.name: p
    for p in [
        AdjointProblem(
            "adjoint_small_node",
            "small_node's MLP 4-32-4 tanh, batch 64, t in [0, 100] (101 points), loss mean(y**2)",
            "dopri5",
            1e-6,
            1e-6,
            {},
            _build_adjoint_small_node,
        ),
        AdjointProblem(
            "adjoint_spiral",
            "ode_demo: Linear(2,50)-tanh-Linear(50,2) on y**3, batch 20 windows of 10 points, L1 loss",
            "dopri5",
            1e-7,
            1e-9,
            {},
            _build_adjoint_spiral,
        ),
    ]
}


def get_adjoint_problem(name: str) -> AdjointProblem:
    try:
        return ADJOINT_PROBLEMS[name]
    except KeyError:
        raise ValueError(f"unknown adjoint problem {name!r}; choose from {sorted(ADJOINT_PROBLEMS)}") from None

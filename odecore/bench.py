"""Side-by-side solver benchmarks for odecore.

Importable without pytest; also the engine behind ``python -m odecore bench``
and ``benchmarks/test_bench.py``.

For every problem and every solver implementation that is installed, one
process measures:

* ``solve`` -- wall time of one full ``odeint`` call (best and median of
  ``repeats`` runs after ``warmup`` untimed runs);
* ``nfe`` -- number of calls of the vector field (counted with a wrapper, and
  cross-checked against odecore's ``return_stats``);
* ``steps`` -- solver loop iterations (accepted + rejected steps);
* ``func`` -- time of one vector-field call on the initial state (median of
  many calls);
* ``loop per step = (solve - nfe * func) / steps`` -- the time the solver spends
  per step *outside* the user's function: the step arithmetic (stage
  combinations, error norm, step-size control, interpolation) and Python
  overhead.  This is what odecore's fused ops are meant to shrink.

Also for one solve per case (not timed): ``solver ops/step`` -- ATen and
``odecore::`` ops dispatched by the solver (everything outside the user's
``func``; counted below autograd with a ``TorchDispatchMode``, so a fused op
is one ``odecore.rk_stage.default`` etc.) per step, and ``host reads/step`` --
the solver's device-to-host reads per step (``aten._local_scalar_dense``:
``.item()``/``float()``/``bool(tensor)``; ``Tensor.tolist()``; copies from a
device to the CPU; ops whose output size depends on data, e.g. ``nonzero``).
On CUDA, one more solve under ``torch.profiler`` counts the kernels per step,
and ``torch.cuda.set_sync_debug_mode('warn')`` counts the synchronizing calls.
See :class:`OpCounter` and :func:`count_kernels`.

``--suite gpu`` runs the GPU problems (Van der Pol at batch 256/4096/65536, a
Lorenz ensemble of 2^10/2^14/2^20 members with rk4 and tsit5, the ODE-Net block
of Chen et al.); ``--sizes small`` shrinks them for a CPU smoke run, and
``--case-budget S`` caps the time one implementation may take on one problem
(over it: skipped, with a note, and so at the larger sizes of the same family).

A second suite (``--adjoint``, or adjoint problem names in ``--problems``)
times forward + backward through ``odeint_adjoint`` (odecore fused/reference
against torchdiffeq) and reports the backward nfe/steps and the backward loop
time per step = (backward time - backward nfe * VJP time) / backward steps; see
the "Adjoint benchmarks" section below.

Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "PROBLEMS",
    "IMPLEMENTATIONS",
    "Problem",
    "Instance",
    "Implementation",
    "available_implementations",
    "get_problem",
    "get_implementation",
    "count_solve",
    "OpCounter",
    "BudgetExceeded",
    "count_kernels",
    "GPU_FAMILIES",
    "gpu_problems",
    "Lorenz",
    "time_func",
    "time_solve",
    "bench_one",
    "run",
    "ADJOINT_PROBLEMS",
    "ADJOINT_IMPLEMENTATIONS",
    "AdjointProblem",
    "AdjointInstance",
    "get_adjoint_problem",
    "count_adjoint",
    "time_forward_backward",
    "run_adjoint",
    "format_adjoint_table",
    "format_table",
    "main",
]


# --------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------


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
    from .nn.odefunc import ODEFunc

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


def gpu_problems(names: Sequence[str] | None = None, sizes: str = "small", device="cpu") -> list[Problem]:
    """The GPU-suite problems: every family in ``names`` (default all) at ``sizes`` --
    'small' (a CPU smoke run), 'full' (the issue's sizes, up to 2^20 Lorenz members),
    'auto' (full on CUDA, small elsewhere) or comma-separated integers. A name may also be
    one concrete problem, e.g. ``lorenz_rk4_1024`` (any size)."""
    if sizes == "auto":
        sizes = "full" if torch.device(device).type == "cuda" else "small"
    explicit = None
    if sizes not in ("small", "full"):
        try:
            explicit = [int(x) for x in str(sizes).split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--sizes must be one of {', '.join(SIZES)} or integers, got {sizes!r}") from None
        if not explicit or min(explicit) < 1:
            raise ValueError(f"--sizes must be one of {', '.join(SIZES)} or positive integers, got {sizes!r}")
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
# Counting wrapper
# --------------------------------------------------------------------------


class BudgetExceeded(Exception):
    """Raised from inside ``func`` when a solve runs past its deadline (``--case-budget``)."""


# Ops that read device memory on the host: .item() / float() / bool(tensor) all end in
# _local_scalar_dense; the others have an output whose size depends on the data (a sync on CUDA).
_HOST_READ_OPS = frozenset(
    {
        "aten._local_scalar_dense",
        "aten.nonzero",
        "aten.masked_select",
        "aten._unique2",
        "aten.unique_dim",
        "aten.unique_consecutive",
        "aten.equal",
        "aten.nonzero_static",
    }
)
_COPY_OPS = frozenset({"aten._to_copy", "aten.copy_"})


def _is_device_to_host(name, args, out) -> bool:
    if name == "aten._to_copy":
        src, dst = (args[0] if args else None), out
    else:  # copy_(dst, src)
        dst, src = (args[0] if args else None), (args[1] if len(args) > 1 else None)
    return (
        isinstance(src, torch.Tensor)
        and isinstance(dst, torch.Tensor)
        and src.device.type not in ("cpu", "meta")
        and dst.device.type == "cpu"
    )


class OpCounter(TorchDispatchMode):
    """Counts the ops dispatched (ATen and custom ``odecore::`` ops, below autograd) and the
    host reads, in two buckets: ``"func"`` while inside :meth:`in_func` (the user's vector
    field; :class:`CountingFunc` enters it around every call) and ``"solver"`` otherwise.

    A host read is one ``aten._local_scalar_dense`` (``.item()``, ``float()``, ``bool()`` of a
    tensor), one ``Tensor.tolist()`` call (patched while the counter is active: on the CPU it
    dispatches nothing), one copy from a device to the CPU, or one op whose output size depends
    on the data (``nonzero``, ``masked_select``, ``unique``, ``equal``). On CUDA each is a
    device-to-host synchronisation; on the CPU they are the reads that would be.

    Usage::

        with OpCounter() as c:
            ...
        c.ops["solver"]       # Counter {'aten.mul.Tensor': 3, 'odecore.rk_stage.default': 6, ...}
        c.n_ops("solver"), c.host_reads["solver"]
    """

    def __init__(self):
        super().__init__()
        self.ops: dict[str, Counter] = {"solver": Counter(), "func": Counter()}
        self.host_reads: dict[str, int] = {"solver": 0, "func": 0}
        self.host_read_ops: dict[str, Counter] = {"solver": Counter(), "func": Counter()}
        self.where = "solver"
        self._paused = 0
        self._saved_tolist = None

    def n_ops(self, where: str = "solver") -> int:
        return sum(self.ops[where].values())

    def _host_read(self, what: str):
        self.host_reads[self.where] += 1
        self.host_read_ops[self.where][what] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self._paused:
            self.ops[self.where][str(func)] += 1
            name = str(func.overloadpacket)
            if name in _HOST_READ_OPS:
                self._host_read(str(func))
            elif name in _COPY_OPS and _is_device_to_host(name, args, out):
                self._host_read(str(func) + " (device to host)")
        return out

    @contextlib.contextmanager
    def in_func(self):
        """Ops and reads inside this block go to the ``"func"`` bucket."""
        prev, self.where = self.where, "func"
        try:
            yield
        finally:
            self.where = prev

    def __enter__(self):
        counter = self
        had_own = "tolist" in torch.Tensor.__dict__
        original = torch.Tensor.tolist

        def tolist(tensor, *a, **k):
            counter._host_read("Tensor.tolist")
            counter._paused += 1  # its own copy to the CPU is the same read
            try:
                return original(tensor, *a, **k)
            finally:
                counter._paused -= 1

        self._saved_tolist = (had_own, torch.Tensor.__dict__.get("tolist"))
        torch.Tensor.tolist = tolist
        try:
            return super().__enter__()
        except BaseException:
            self._restore_tolist()
            raise

    def _restore_tolist(self):
        had_own, orig = self._saved_tolist
        if had_own:
            torch.Tensor.tolist = orig
        else:
            del torch.Tensor.tolist
        self._saved_tolist = None

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._restore_tolist()

    def summary(self, steps: int | None, nfe: int | None, top: int = 12) -> dict[str, Any]:
        """Totals, per-step and per-evaluation figures, and the most frequent solver ops."""
        solver, func = self.n_ops("solver"), self.n_ops("func")
        hr_s, hr_f = self.host_reads["solver"], self.host_reads["func"]

        def per(x, n):
            return None if not n else x / n

        return dict(
            solver_ops=solver,
            func_ops=func,
            solver_ops_per_step=per(solver, steps),
            func_ops_per_eval=per(func, nfe),
            host_reads=hr_s,
            func_host_reads=hr_f,
            host_reads_per_step=per(hr_s, steps),
            custom_ops_per_step=per(sum(v for k, v in self.ops["solver"].items() if not k.startswith("aten.")), steps),
            top_solver_ops=dict(self.ops["solver"].most_common(top)),
            host_read_ops=dict(self.host_read_ops["solver"]),
        )


class CountingFunc(nn.Module):
    """Counts vector-field calls and (torchdiffeq-style) step callbacks.  With a
    ``counter`` (:class:`OpCounter`) each call runs in its ``"func"`` bucket; with a
    ``deadline`` (``time.perf_counter()`` value) a call past it raises :class:`BudgetExceeded`."""

    def __init__(self, func, counter: OpCounter | None = None, deadline: float | None = None):
        super().__init__()
        self.func = func
        self.counter = counter
        self.deadline = deadline
        self.nfe = 0
        self.n_step_callbacks = 0
        self.n_accept_callbacks = 0
        self.n_reject_callbacks = 0

    def forward(self, t, y):
        self.nfe += 1
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise BudgetExceeded(f"solve still running after its time budget ({self.nfe} evaluations)")
        if self.counter is None:
            return self.func(t, y)
        with self.counter.in_func():
            return self.func(t, y)

    # torchdiffeq callbacks (odecore, as a drop-in, may call them too).
    def callback_step(self, t0, y0, dt):
        self.n_step_callbacks += 1

    def callback_accept_step(self, t0, y0, dt):
        self.n_accept_callbacks += 1

    def callback_reject_step(self, t0, y0, dt):
        self.n_reject_callbacks += 1


# --------------------------------------------------------------------------
# Implementations
# --------------------------------------------------------------------------


def _module_available(name: str) -> bool:
    import importlib

    try:
        importlib.import_module(name)
        return True
    except Exception:
        return False


class Implementation:
    """One solver implementation.  ``prepare`` returns a zero-argument callable
    that runs one full solve and returns the solution as a (T, *y0.shape)
    tensor."""

    name = "?"
    module = "?"

    def available(self) -> bool:
        return _module_available(self.module)

    def applicable(self, inst: Instance) -> bool:
        return True

    def prepare(self, inst: Instance, func, y0) -> Callable[[], torch.Tensor]:
        raise NotImplementedError

    def why_not(self, inst: Instance) -> str:
        """Why ``applicable`` is false (for the table's note)."""
        return f"{self.name} does not support this problem"

    def count(
        self, inst: Instance, y0, cf: CountingFunc | None = None, counter: OpCounter | None = None
    ) -> dict[str, Any]:
        """One solve with a counting wrapper ``cf`` (default: a plain one), the solve itself
        (only) inside ``counter`` when given; returns nfe/step statistics and the solution."""
        raise NotImplementedError


def _within(counter):
    return counter if counter is not None else contextlib.nullcontext()


def _odecore_has(name: str) -> bool:
    try:
        import odecore

        return hasattr(odecore, name)
    except Exception:
        return False


class OdecoreImpl(Implementation):
    module = "odecore"

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"odecore-{backend}"

    def available(self) -> bool:
        return _odecore_has("odeint")

    def _kwargs(self, inst: Instance, stats: bool = False):
        kw = inst.odeint_kwargs()
        kw["options"].update(inst.odecore_options)
        kw["options"]["backend"] = self.backend
        if stats:
            kw["options"]["return_stats"] = True
        return kw

    def prepare(self, inst, func, y0):
        import odecore

        kw = self._kwargs(inst)
        t = inst.t
        return lambda: odecore.odeint(func, y0, t, **kw)

    def count(self, inst, y0, cf=None, counter=None):
        import odecore

        cf = cf if cf is not None else CountingFunc(inst.func)
        kw = self._kwargs(inst, stats=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not support callbacks.*")
            with _within(counter):
                # a plain function in front of cf: odecore reports its steps in stats, so it needs
                # none of cf's step callbacks (they would add their tensors to the op counts)
                sol, stats = odecore.odeint(lambda t, y: cf(t, y), y0, inst.t, **kw)
        stats = {k: (v.item() if torch.is_tensor(v) and v.numel() == 1 else v) for k, v in stats.items()}
        return dict(
            nfe=cf.nfe,
            steps=stats.get("n_steps"),
            n_accepted=stats.get("n_accepted"),
            n_rejected=stats.get("n_rejected"),
            stats_nfe=stats.get("nfe"),
            final_dt=stats.get("final_dt"),
            callback_steps=cf.n_step_callbacks,
            callback_accepts=cf.n_accept_callbacks,
            callback_rejects=cf.n_reject_callbacks,
            solution=sol,
        )


class TorchdiffeqImpl(Implementation):
    name = "torchdiffeq"
    module = "torchdiffeq"

    def prepare(self, inst, func, y0):
        import torchdiffeq

        kw = inst.odeint_kwargs()
        t = inst.t
        return lambda: torchdiffeq.odeint(func, y0, t, **kw)

    def applicable(self, inst):
        try:
            from torchdiffeq._impl.odeint import SOLVERS
        except Exception:
            return True
        return inst.method in SOLVERS

    def why_not(self, inst):
        return f"torchdiffeq has no {inst.method}"

    def count(self, inst, y0, cf=None, counter=None):
        import torchdiffeq

        cf = cf if cf is not None else CountingFunc(inst.func)
        kw = inst.odeint_kwargs()
        with warnings.catch_warnings():
            # fixed-grid solvers only support callback_step
            warnings.filterwarnings("ignore", message=".*does not support callbacks.*")
            with _within(counter):
                sol = torchdiffeq.odeint(cf, y0, inst.t, **kw)
        steps = cf.n_step_callbacks
        adaptive = cf.n_accept_callbacks + cf.n_reject_callbacks > 0
        return dict(
            nfe=cf.nfe,
            steps=steps,
            n_accepted=cf.n_accept_callbacks if adaptive else steps,
            n_rejected=cf.n_reject_callbacks if adaptive else 0,
            solution=sol,
        )


class TorchodeImpl(Implementation):
    """torchode (eager, AutoDiffAdjoint + IntegralController), dopri5 or tsit5.

    Note: torchode controls the step size *per batch element* (per-sample RMS
    error norm), so its nfe/steps are not the same quantities as torchdiffeq's
    global-norm solve; ``steps`` here is the number of loop iterations
    (max over the batch of per-sample steps), and the table notes when they differ
    from torchdiffeq's.  Only 2-D states (batch, features) and adaptive dopri5/tsit5
    are wired up (torchode 1.0 has no rk4, and gives ``func`` one time per sample).
    """

    name = "torchode"
    module = "torchode"
    _METHODS = {"dopri5": "Dopri5", "tsit5": "Tsit5"}

    def applicable(self, inst):
        return inst.method in self._METHODS and inst.y0.ndim == 2

    def why_not(self, inst):
        if inst.method not in self._METHODS:
            return f"torchode has no {inst.method}"
        return "torchode here takes (batch, features) states only"

    def _solver(self, inst, f):
        import torchode as to

        term = to.ODETerm(f)
        step = getattr(to, self._METHODS[inst.method])(term=term)
        ctrl = to.IntegralController(atol=inst.atol, rtol=inst.rtol, term=term)
        return to.AutoDiffAdjoint(step, ctrl)

    def prepare(self, inst, func, y0):
        import torchode as to

        solver = self._solver(inst, func)
        t_eval = inst.t.expand(y0.shape[0], -1)

        def run():
            sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval))
            return sol.ys.transpose(0, 1)

        return run

    def count(self, inst, y0, cf=None, counter=None):
        import torchode as to

        cf = cf if cf is not None else CountingFunc(inst.func)
        solver = self._solver(inst, cf)
        t_eval = inst.t.expand(y0.shape[0], -1)
        with _within(counter):
            sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval))
            ys = sol.ys.transpose(0, 1)
        n_steps = sol.stats["n_steps"]
        n_acc = sol.stats["n_accepted"]
        return dict(
            nfe=cf.nfe,
            steps=int(n_steps.max()),
            n_accepted=None,
            n_rejected=None,
            per_sample_steps_mean=float(n_steps.double().mean()),
            per_sample_accepted_mean=float(n_acc.double().mean()),
            status_ok=bool((sol.status == 0).all()),
            solution=ys,
        )


IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl for impl in [OdecoreImpl("fused"), OdecoreImpl("reference"), TorchdiffeqImpl(), TorchodeImpl()]
}

BASELINE = "torchdiffeq"


def get_implementation(name: str) -> Implementation:
    try:
        return IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown implementation {name!r}; choose from {sorted(IMPLEMENTATIONS)}") from None


def available_implementations() -> list[str]:
    return [name for name, impl in IMPLEMENTATIONS.items() if impl.available()]


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _grad_context(grad: bool):
    return torch.enable_grad() if grad else torch.no_grad()


def _prepare_y0(inst: Instance, grad: bool) -> torch.Tensor:
    y0 = inst.y0.detach().clone()
    if grad:
        y0.requires_grad_(True)
    return y0


def _func_samples(
    inst: Instance, y0: torch.Tensor, *, grad: bool, min_calls: int, max_calls: int, budget_s: float, warmup: int = 3
) -> list[float]:
    device = y0.device
    t0 = inst.t[0]
    times: list[float] = []
    with _grad_context(grad):
        for _ in range(warmup):
            inst.func(t0, y0)
        _sync(device)
        start = time.perf_counter()
        while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - start < budget_s):
            a = time.perf_counter()
            inst.func(t0, y0)
            _sync(device)
            times.append(time.perf_counter() - a)
    return times


def time_func(
    inst: Instance,
    y0: torch.Tensor,
    *,
    grad: bool = False,
    min_calls: int = 30,
    max_calls: int = 2000,
    budget_s: float = 0.25,
) -> dict[str, float]:
    """Median (and min) wall time in seconds of one ``func(t0, y0)`` call."""
    times = _func_samples(inst, y0, grad=grad, min_calls=min_calls, max_calls=max_calls, budget_s=budget_s)
    return dict(median=statistics.median(times), min=min(times), calls=len(times))


def time_solve(
    run: Callable[[], Any], device: torch.device, *, grad: bool = False, repeats: int = 5, warmup: int = 1
) -> list[float]:
    """Wall times in seconds of ``repeats`` calls of ``run`` after ``warmup`` calls."""
    times = []
    with _grad_context(grad):
        for _ in range(warmup):
            run()
        _sync(device)
        for _ in range(repeats):
            a = time.perf_counter()
            run()
            _sync(device)
            times.append(time.perf_counter() - a)
    return times


def _syncs_recorded(log) -> int:
    return sum(1 for w in log if "synchroniz" in str(w.message))


class _CudaSyncWarnings:
    """``torch.cuda.set_sync_debug_mode('warn')`` for a block, counting the warnings
    (each one a synchronising CUDA call); other warnings are re-emitted on exit."""

    def __init__(self):
        self.count: int | None = None
        self.ok = False
        self._cm = None
        self._log = None
        self._prev = None

    def __enter__(self):
        self._cm = warnings.catch_warnings(record=True)
        self._log = self._cm.__enter__()
        warnings.simplefilter("always")
        try:
            self._prev = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
            self.ok = True
        except Exception:  # a torch without it: no count
            self.ok = False
        return self

    def mark(self) -> int:
        return len(self._log)

    def syncs_since(self, mark: int) -> int:
        return _syncs_recorded(self._log[mark:])

    def __exit__(self, *exc):
        if self.ok:
            torch.cuda.set_sync_debug_mode(self._prev)
        log = list(self._log)
        self._cm.__exit__(*exc)
        self.count = _syncs_recorded(log) if self.ok else None
        for w in log:
            if "synchroniz" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return False


class _CountingWindow:
    """The block one counted solve runs in: the OpCounter and, on CUDA, the sync warnings."""

    def __init__(self, counter: OpCounter | None, cuda_syncs: _CudaSyncWarnings | None):
        self.counter, self.cuda_syncs = counter, cuda_syncs
        self._stack = None

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        if self.cuda_syncs is not None:
            self._stack.enter_context(self.cuda_syncs)
        if self.counter is not None:
            self._stack.enter_context(self.counter)
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)


class _SyncSplittingFunc(CountingFunc):
    """CountingFunc that also attributes CUDA sync warnings raised inside ``func`` to it."""

    def __init__(self, func, counter, deadline, cuda_syncs):
        super().__init__(func, counter=counter, deadline=deadline)
        self.cuda_syncs = cuda_syncs
        self.func_cuda_syncs = 0

    def forward(self, t, y):
        mark = self.cuda_syncs.mark() if self.cuda_syncs._log is not None else None
        try:
            return super().forward(t, y)
        finally:
            if mark is not None and self.cuda_syncs._log is not None:
                self.func_cuda_syncs += self.cuda_syncs.syncs_since(mark)


def _per(x, n):
    return None if x is None or not n else x / n


def count_solve(
    impl: Implementation,
    inst: Instance,
    *,
    grad: bool = False,
    count_ops: bool = True,
    deadline: float | None = None,
    cuda_syncs: bool | None = None,
) -> dict[str, Any]:
    """One solve with a counting wrapper: nfe, steps, accepted/rejected, solution.

    With ``count_ops`` (default) the solve runs inside an :class:`OpCounter`: adds
    ``solver_ops``/``solver_ops_per_step`` (ops outside ``func``), ``func_ops``/``func_ops_per_eval``,
    ``host_reads``/``host_reads_per_step`` (the solver's), ``func_host_reads``,
    ``custom_ops_per_step`` (non-ATen ops, e.g. ``odecore::``), ``top_solver_ops``.
    ``cuda_syncs`` (default: y0 on CUDA) also counts the synchronising calls that
    ``torch.cuda.set_sync_debug_mode('warn')`` flags outside ``func``: ``cuda_syncs_per_step``.
    ``deadline``: a ``time.perf_counter()`` value past which ``func`` raises BudgetExceeded.
    """
    y0 = _prepare_y0(inst, grad)
    if cuda_syncs is None:
        cuda_syncs = y0.device.type == "cuda"
    counter = OpCounter() if count_ops else None
    syncs = _CudaSyncWarnings() if cuda_syncs else None
    if syncs is not None:
        cf = _SyncSplittingFunc(inst.func, counter, deadline, syncs)
    else:
        cf = CountingFunc(inst.func, counter=counter, deadline=deadline)
    window = _CountingWindow(counter, syncs) if (counter is not None or syncs is not None) else None
    with _grad_context(grad):
        res = impl.count(inst, y0, cf=cf, counter=window)
    steps = res.get("steps")
    if counter is not None:
        res.update(counter.summary(steps, res.get("nfe")))
    if syncs is not None and syncs.count is not None:
        n = syncs.count - cf.func_cuda_syncs
        res.update(cuda_syncs=n, cuda_syncs_per_step=_per(n, steps), func_cuda_syncs=cf.func_cuda_syncs)
    return res


def count_kernels(run: Callable[[], Any], device, *, grad: bool = False) -> dict[str, Any]:
    """One call of ``run`` under ``torch.profiler``: device kernels, memcpys and memsets, and
    the CUDA runtime's kernel-launch and synchronise calls (counts for the whole call; the
    synchronise calls include the one or two at the end of the profiled block).
    On the CPU only ``cpu_ops`` (profiled top-level and nested op events) is meaningful."""
    from torch.profiler import ProfilerActivity

    device = torch.device(device)
    if device.type == "cuda":
        # CUDA activity only (kernels, memcpys and the runtime calls): CPU op events would
        # multiply the trace and its processing time on the long solves. Should a profiler
        # record no kernels that way, once more with the CPU activity too.
        res = _profile_counts(run, device, grad, [ProfilerActivity.CUDA])
        if res["kernels"] == 0:
            res = _profile_counts(run, device, grad, [ProfilerActivity.CPU, ProfilerActivity.CUDA])
        return res
    return _profile_counts(run, device, grad, [ProfilerActivity.CPU])


def _profile_counts(run, device, grad, acts) -> dict[str, Any]:
    from torch.profiler import profile

    with _grad_context(grad):
        _sync(device)
        with profile(activities=acts) as prof:
            run()
            _sync(device)
    res = dict(kernels=0, memcpys=0, memsets=0, launch_calls=0, sync_calls=0, cpu_ops=0)
    results = prof.profiler.kineto_results
    if results is None:
        raise RuntimeError("the profiler returned no results")
    device_events = 0
    for e in results.events():
        kind = str(e.activity_type()).lower()
        name = e.name()
        try:
            device_events += e.device_type() != torch.autograd.DeviceType.CPU and "annotation" not in kind
        except Exception:
            pass
        if "memcpy" in kind:
            res["memcpys"] += 1
        elif "memset" in kind:
            res["memsets"] += 1
        elif "kernel" in kind:
            res["kernels"] += 1
        elif "runtime" in kind or "driver" in kind:
            if "LaunchKernel" in name or "cuLaunch" in name:
                res["launch_calls"] += 1
            if "Synchronize" in name:
                res["sync_calls"] += 1
        elif kind == "cpu_op":
            res["cpu_ops"] += 1
    if res["kernels"] == 0 and device_events > res["memcpys"] + res["memsets"]:
        # a profiler that names the activity differently: every other device event is a kernel
        res["kernels"] = device_events - res["memcpys"] - res["memsets"]
    return res


_SYNC_EVERY_SUPPORT: dict[tuple, tuple] = {}


def sync_every_support(inst: Instance, k: int) -> tuple:
    """(supported, why not): whether this odecore takes ``options={'sync_every': k}`` for
    ``inst``'s method and options (a tiny solve; no error and no 'Unexpected arguments' warning)."""
    key = (inst.method, tuple(sorted(inst.options)), str(inst.y0.device), int(k))
    if key in _SYNC_EVERY_SUPPORT:
        return _SYNC_EVERY_SUPPORT[key]
    try:
        import odecore

        y0 = torch.ones(3, dtype=inst.y0.dtype, device=inst.y0.device)
        t = torch.tensor([0.0, 0.5], dtype=inst.y0.dtype, device=inst.y0.device)
        opts = dict(inst.options, sync_every=int(k))
        if "step_size" in opts:
            opts["step_size"] = 0.125
        with warnings.catch_warnings(record=True) as log:
            warnings.simplefilter("always")
            odecore.odeint(lambda tt, y: -y, y0, t, method=inst.method, options=opts)
        bad = [str(w.message) for w in log if "sync_every" in str(w.message)]
        out = (False, bad[0]) if bad else (True, "")
    except Exception as e:  # ValueError/TypeError from an odecore without the option
        out = (False, f"{type(e).__name__}: {e}")
    _SYNC_EVERY_SUPPORT[key] = out
    return out


def _max_abs_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    if not (torch.is_tensor(a) and torch.is_tensor(b)):
        return None
    a = a.detach().to("cpu", torch.float64)
    b = b.detach().to("cpu", torch.float64)
    if a.shape != b.shape:
        return float("nan")
    return float((a - b).abs().max())


def loop_per_step(solve_s: float, nfe: int | None, func_s: float, steps: int | None) -> float | None:
    """(solve - nfe * func) / steps, in seconds; None when not computable."""
    if nfe is None or not steps:
        return None
    return (solve_s - nfe * func_s) / steps


def _result(
    problem: Problem,
    impl: Implementation,
    inst: Instance,
    device,
    dtype,
    grad,
    counts: dict[str, Any],
    func_times: Sequence[float],
    times: Sequence[float],
) -> dict[str, Any]:
    func_med = statistics.median(func_times)
    best, med = min(times), statistics.median(times)
    nfe, steps = counts.get("nfe"), counts.get("steps")
    res = dict(
        problem=problem.name,
        impl=impl.name,
        method=inst.method,
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        grad=grad,
        batch=int(inst.y0.shape[0]),
        **counts,
        func_us=func_med * 1e6,
        func_us_min=min(func_times) * 1e6,
        func_calls_timed=len(func_times),
        solve_ms=best * 1e3,
        solve_ms_median=med * 1e3,
        solve_ms_all=[x * 1e3 for x in times],
    )
    lp = loop_per_step(best, nfe, func_med, steps)
    lpm = loop_per_step(med, nfe, func_med, steps)
    res["loop_us_per_step"] = None if lp is None else lp * 1e6
    res["loop_us_per_step_median"] = None if lpm is None else lpm * 1e6
    return res


def bench_one(
    problem: Problem,
    impl: Implementation,
    *,
    device="cpu",
    dtype=torch.float64,
    grad: bool = False,
    repeats: int = 5,
    warmup: int = 1,
    count_ops: bool = True,
) -> dict[str, Any]:
    """Benchmark one (problem, implementation) pair on its own (no interleaving)."""
    device = torch.device(device)
    inst = problem.make(device, dtype)
    y0 = _prepare_y0(inst, grad)
    ft = _func_samples(inst, y0, grad=grad, min_calls=30, max_calls=2000, budget_s=0.25)
    counts = count_solve(impl, inst, grad=grad, count_ops=count_ops)
    counts.pop("solution", None)
    run_ = impl.prepare(inst, inst.func, y0)
    times = time_solve(run_, device, grad=grad, repeats=repeats, warmup=warmup)
    return _result(problem, impl, inst, device, dtype, grad, counts, ft, times)


def _consistency_notes(counts: dict[str, Any]) -> list[str]:
    """Disagreements between the counting wrapper and a library's own statistics."""
    notes = []
    if counts.get("stats_nfe") is not None and counts["stats_nfe"] != counts.get("nfe"):
        notes.append(f"stats nfe {counts['stats_nfe']} != counted nfe {counts.get('nfe')}")
    acc, rej, steps = counts.get("n_accepted"), counts.get("n_rejected"), counts.get("steps")
    if None not in (acc, rej, steps) and acc + rej != steps:
        notes.append(f"n_accepted {acc} + n_rejected {rej} != n_steps {steps}")
    return notes


def _base_row(problem, iname, inst, device, dtype, grad):
    return dict(
        problem=problem.name,
        impl=iname,
        method=inst.method,
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        grad=grad,
        batch=int(inst.y0.shape[0]),
    )


def _error_row(problem, iname, inst, device, dtype, grad, e):
    return dict(_base_row(problem, iname, inst, device, dtype, grad), error=f"{type(e).__name__}: {e}")


def _skip_row(problem, iname, inst, device, dtype, grad, why):
    return dict(_base_row(problem, iname, inst, device, dtype, grad), skipped=why, notes=[why])


def _over_budget(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, BudgetExceeded) or "BudgetExceeded" in type(e).__name__:
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _resolve_problem(p) -> Problem:
    return p if isinstance(p, Problem) else get_problem(p)


_PER_STEP_KERNEL_KEYS = ("kernels", "memcpys", "memsets", "launch_calls", "sync_calls")


def _good(row):
    return row is not None and "error" not in row and "skipped" not in row


def run(
    problems: Sequence[Any] | None = None,
    impls: Sequence[str] | None = None,
    *,
    device="cpu",
    dtype=torch.float64,
    grad: bool = False,
    repeats: int = 5,
    warmup: int = 1,
    verbose: bool = False,
    batch: int | None = None,
    count_ops: bool = True,
    kernels: bool | None = None,
    case_budget_s: float | None = None,
    sync_every: int | None = None,
    suite: str = "solve",
    on_problem: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Benchmark every problem x available implementation.

    ``problems``: names in ``PROBLEMS`` or :class:`Problem` objects (e.g. ``gpu_problems()``).
    Per problem: one counting solve (nfe, steps, and with ``count_ops`` the op and host-read
    counts), ``warmup`` untimed solves per implementation and, with ``kernels`` (default: on
    CUDA), one profiled solve (kernels per step); then ``repeats`` rounds; each round times a
    batch of func calls and then one solve of every implementation (rotating the order), so
    that all implementations see the same machine load -- this matters on a shared machine.

    ``case_budget_s``: the counting solve of one implementation on one problem is stopped
    after this many seconds (the row is skipped with a note, and so is that implementation at
    the later sizes of the same family); the repeats are cut to fit the budget.
    ``sync_every``: passed to odecore as ``options['sync_every']`` where this odecore takes it.
    ``batch``: overrides every problem's batch size. ``on_problem(results so far)`` is called
    after each problem (e.g. to save partial results).

    Adds ``loop_speedup_vs_torchdiffeq``/``_vs_reference`` and ``max_abs_diff_vs_torchdiffeq``/
    ``_vs_reference`` to every row, and ``notes`` (e.g. step counts that differ from the peers').
    """
    device = torch.device(device)
    plist = [_resolve_problem(p) for p in (problems if problems else list(PROBLEMS))]
    if impls:
        impl_names = list(impls)
        for n in impl_names:
            get_implementation(n)
    else:
        impl_names = list(IMPLEMENTATIONS)
    if kernels is None:
        kernels = device.type == "cuda"

    def log(msg):
        if verbose:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

    results: list[dict[str, Any]] = []
    over_budget: dict[tuple, str] = {}
    for problem in plist:
        pname = problem.name
        inst = problem.make(device, dtype, batch=batch)
        y0 = _prepare_y0(inst, grad)
        family = problem.family or pname
        odecore_notes: list[str] = []
        if sync_every:
            ok, why = sync_every_support(inst, sync_every)
            if ok:
                inst.odecore_options["sync_every"] = int(sync_every)
            else:
                odecore_notes.append(f"sync_every ignored: {why[:100]}")
                log(f"{pname}: --sync-every not taken by this odecore ({why[:100]})")
        rows: dict[str, dict[str, Any]] = {}
        cases = []
        for iname in impl_names:
            impl = IMPLEMENTATIONS[iname]
            if not impl.available():
                log(f"{pname}/{iname}: not installed, skipped")
                continue
            if not impl.applicable(inst):
                rows[iname] = _skip_row(problem, iname, inst, device, dtype, grad, impl.why_not(inst))
                log(f"{pname}/{iname}: not applicable, skipped")
                continue
            if (family, iname) in over_budget:
                rows[iname] = _skip_row(
                    problem,
                    iname,
                    inst,
                    device,
                    dtype,
                    grad,
                    f"skipped: over the {case_budget_s:g} s budget at {over_budget[family, iname]}",
                )
                log(f"{pname}/{iname}: {rows[iname]['skipped']}")
                continue
            log(f"{pname}/{iname}: count + warm-up")
            start = time.perf_counter()
            deadline = None if case_budget_s is None else start + case_budget_s
            try:
                counts = count_solve(impl, inst, grad=grad, count_ops=count_ops, deadline=deadline)
                t_count = time.perf_counter() - start
                solution = counts.pop("solution", None)
                notes = list(odecore_notes) if iname.startswith("odecore") else []
                if iname.startswith("odecore") and "sync_every" in inst.odecore_options:
                    counts["sync_every"] = inst.odecore_options["sync_every"]
                for note in _consistency_notes(counts):
                    log(f"{pname}/{iname}: WARNING {note}")
                    notes.append(note)
                run_ = impl.prepare(inst, inst.func, y0)
                n_warm = warmup
                if case_budget_s is not None and n_warm and t_count > case_budget_s / 4:
                    n_warm = 0  # the counting solve was the warm-up
                warm_times = []
                with _grad_context(grad):
                    for _ in range(n_warm):
                        a = time.perf_counter()
                        run_()
                        _sync(device)
                        warm_times.append(time.perf_counter() - a)
                reps = repeats
                if case_budget_s is not None:
                    est = min(warm_times) if warm_times else t_count
                    left = case_budget_s - (time.perf_counter() - start)
                    reps = max(1, min(repeats, int(left / max(est, 1e-9))))
                    if reps < repeats:
                        notes.append(f"{reps} of {repeats} repeats (--case-budget {case_budget_s:g} s)")
                steps = counts.get("steps")
                for key in _PER_STEP_KERNEL_KEYS:
                    counts[f"{key}_per_step"] = None
                if kernels:
                    try:
                        kc = count_kernels(run_, device, grad=grad)
                        counts["profile"] = kc
                        if device.type == "cuda":
                            for key in _PER_STEP_KERNEL_KEYS:
                                counts[f"{key}_per_step"] = _per(kc[key], steps)
                            if not kc["kernels"]:
                                notes.append("the profiler saw no CUDA kernels")
                                counts["kernels_per_step"] = None
                    except Exception as e:
                        notes.append(f"profiler failed: {type(e).__name__}: {str(e)[:80]}")
                cases.append(
                    dict(impl=impl, counts=counts, solution=solution, run=run_, times=[], reps=reps, notes=notes)
                )
            except Exception as e:  # keep going; report the failure in the table
                if _over_budget(e):
                    over_budget[family, iname] = pname
                    rows[iname] = _skip_row(
                        problem,
                        iname,
                        inst,
                        device,
                        dtype,
                        grad,
                        f"skipped: one solve > {case_budget_s:g} s (--case-budget)",
                    )
                    log(f"{pname}/{iname}: {rows[iname]['skipped']}")
                else:
                    rows[iname] = _error_row(problem, iname, inst, device, dtype, grad, e)
                    log(f"{pname}/{iname} FAILED: {rows[iname]['error']}")

        func_times: list[float] = []
        for r in range(repeats):
            live = [c for c in cases if r < c["reps"] and c["impl"].name not in rows]
            if not live and func_times:
                break
            func_times += _func_samples(inst, y0, grad=grad, min_calls=20, max_calls=1000, budget_s=0.05, warmup=2)
            k = r % max(1, len(live))
            for case in live[k:] + live[:k]:
                impl, run_, times = case["impl"], case["run"], case["times"]
                try:
                    with _grad_context(grad):
                        a = time.perf_counter()
                        run_()
                        _sync(device)
                        times.append(time.perf_counter() - a)
                except Exception as e:
                    rows[impl.name] = _error_row(problem, impl.name, inst, device, dtype, grad, e)
            log(f"{pname}: round {r + 1}/{repeats} done")

        solutions = {}
        for case in cases:
            impl = case["impl"]
            if impl.name in rows:
                continue
            row = _result(problem, impl, inst, device, dtype, grad, case["counts"], func_times, case["times"])
            row["notes"] = case["notes"]
            rows[impl.name] = row
            solutions[impl.name] = case["solution"]
        ordered = [rows[n] for n in impl_names if n in rows]
        base = rows.get(BASELINE) if _good(rows.get(BASELINE)) else None
        ref = rows.get("odecore-reference") if _good(rows.get("odecore-reference")) else None
        for r in ordered:
            r["suite"] = suite
            if problem.family:
                r["family"], r["size"] = problem.family, problem.size
            r.setdefault("notes", [])
            for key in (
                "loop_speedup_vs_torchdiffeq",
                "loop_speedup_vs_reference",
                "max_abs_diff_vs_torchdiffeq",
                "max_abs_diff_vs_reference",
            ):
                r[key] = None
            if not _good(r):
                continue
            for other, tag in ((base, "torchdiffeq"), (ref, "reference")):
                if other is None:
                    continue
                bl, rl = other.get("loop_us_per_step"), r.get("loop_us_per_step")
                if bl is not None and rl is not None and rl > 0:
                    r[f"loop_speedup_vs_{tag}"] = bl / rl
                r[f"max_abs_diff_vs_{tag}"] = _max_abs_diff(solutions.get(r["impl"]), solutions.get(other["impl"]))
            other = base or ref
            if other is not None and other is not r and r.get("steps") != other.get("steps"):
                why = " (per-sample step control)" if r["impl"] == "torchode" else ""
                r["notes"].append(f"steps differ from {other['impl']}: {r.get('steps')} vs {other.get('steps')}{why}")
        results.extend(ordered)
        if on_problem is not None:
            on_problem(list(results))
    return results


# --------------------------------------------------------------------------
# Adjoint benchmarks: forward + backward through odeint_adjoint
# --------------------------------------------------------------------------
#
# One "run" here is a training step's worth of work: ``odeint_adjoint`` forward,
# the loss, and ``loss.backward()`` (which solves the augmented adjoint system
# backwards in time, one vector-Jacobian product of ``func`` per evaluation).
# Measured per implementation:
#
# * ``fb`` -- forward + backward wall time (best and median of the repeats);
#   ``fwd`` and ``bwd`` -- the two parts (each its best over the repeats);
# * forward nfe/steps and backward nfe/steps (backward nfe counted with a
#   wrapper as the calls of ``func`` during ``.backward()``; backward steps from
#   odecore's ``return_stats`` and from torchdiffeq's ``callback_*_adjoint`` hooks);
# * ``vjp`` -- time of one VJP evaluation: ``func(t, y)`` under a graph and the
#   autograd engine run w.r.t. (y, *params) (``_engine_run_backward``, what
#   ``autograd.grad`` calls) -- the user-function part of one backward evaluation,
#   the same for every implementation;
# * ``bwd loop per step = (bwd - bwd_nfe * vjp) / bwd_steps``.


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


def ODEDemoFunc():
    """The model of torchdiffeq's examples/ode_demo.py (odecore.demos.SpiralFunc)."""
    from .nn import SpiralFunc

    return SpiralFunc()


def _build_adjoint_small_node(device, dtype, seed):
    # the `small_node` solve problem's model, state and times; loss on every output
    func, y0, t = _build_small_node(device, dtype, seed)
    return func, y0, t, lambda sol: sol.pow(2).mean()


def _build_adjoint_spiral(device, dtype, seed):
    # torchdiffeq examples/ode_demo.py: data of 1000 points on t in [0, 25] from y0 = [2, 0]
    # under y' = (y**3) @ A; one training step's loss on a batch of 20 windows of 10
    # consecutive points (L1 loss, as the demo).
    import odecore

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


class AdjointCountingFunc(CountingFunc):
    """CountingFunc that also counts torchdiffeq's backward-pass step callbacks."""

    def __init__(self, func):
        super().__init__(func)
        self.n_step_callbacks_adjoint = 0
        self.n_accept_callbacks_adjoint = 0
        self.n_reject_callbacks_adjoint = 0

    def callback_step_adjoint(self, t0, y0, dt):
        self.n_step_callbacks_adjoint += 1

    def callback_accept_step_adjoint(self, t0, y0, dt):
        self.n_accept_callbacks_adjoint += 1

    def callback_reject_step_adjoint(self, t0, y0, dt):
        self.n_reject_callbacks_adjoint += 1


class AdjointImplementation:
    """``solve(inst, func, y0, stats)`` runs one ``odeint_adjoint`` forward pass and returns
    (solution, stats dict or None)."""

    name = "?"
    module = "?"

    def available(self) -> bool:
        return _module_available(self.module)

    def solve(self, inst: AdjointInstance, func, y0, stats: bool = False):
        raise NotImplementedError


class OdecoreAdjointImpl(AdjointImplementation):
    module = "odecore"

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"odecore-{backend}"

    def available(self) -> bool:
        return _odecore_has("odeint_adjoint")

    def solve(self, inst, func, y0, stats=False):
        import odecore

        kw = inst.odeint_kwargs()
        kw["options"]["backend"] = self.backend
        if stats:
            kw["options"]["return_stats"] = True
            return odecore.odeint_adjoint(func, y0, inst.t, **kw)
        return odecore.odeint_adjoint(func, y0, inst.t, **kw), None


class TorchdiffeqAdjointImpl(AdjointImplementation):
    name = "torchdiffeq"
    module = "torchdiffeq"

    def solve(self, inst, func, y0, stats=False):
        import torchdiffeq

        return torchdiffeq.odeint_adjoint(func, y0, inst.t, **inst.odeint_kwargs()), None


ADJOINT_IMPLEMENTATIONS: dict[str, AdjointImplementation] = {
    impl.name: impl for impl in [OdecoreAdjointImpl("fused"), OdecoreAdjointImpl("reference"), TorchdiffeqAdjointImpl()]
}


def _zero_grads(tensors):
    for x in tensors:
        x.grad = None


def count_adjoint(impl: AdjointImplementation, inst: AdjointInstance) -> dict[str, Any]:
    """One forward + backward with a counting wrapper: nfe and steps of both passes, and the
    gradients (y0 first, then the parameters of func)."""
    cf = AdjointCountingFunc(inst.func)
    y0 = _prepare_y0(inst, True)
    leaves = inst.leaves(y0)
    _zero_grads(leaves)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not support callbacks.*")
        sol, stats = impl.solve(inst, cf, y0, stats=True)
        fwd_nfe = cf.nfe
        inst.loss(sol).backward()
    grads = [None if x.grad is None else x.grad.detach().clone() for x in leaves]
    _zero_grads(leaves)
    res = dict(fwd_nfe=fwd_nfe, bwd_nfe=cf.nfe - fwd_nfe, grads=grads)
    if stats is not None:
        res.update(
            fwd_steps=stats.get("n_steps"),
            fwd_accepted=stats.get("n_accepted"),
            fwd_rejected=stats.get("n_rejected"),
            bwd_steps=stats.get("backward_n_steps"),
            bwd_accepted=stats.get("backward_n_accepted"),
            bwd_rejected=stats.get("backward_n_rejected"),
            stats_fwd_nfe=stats.get("nfe"),
            stats_bwd_nfe=stats.get("backward_nfe"),
        )
    else:
        res.update(
            fwd_steps=cf.n_step_callbacks,
            fwd_accepted=cf.n_accept_callbacks,
            fwd_rejected=cf.n_reject_callbacks,
            bwd_steps=cf.n_step_callbacks_adjoint,
            bwd_accepted=cf.n_accept_callbacks_adjoint,
            bwd_rejected=cf.n_reject_callbacks_adjoint,
        )
    return res


def _vjp_samples(
    inst: AdjointInstance, *, min_calls: int, max_calls: int, budget_s: float, warmup: int = 3
) -> list[float]:
    """Wall times of one VJP evaluation: func(t0, y) with a graph, then the autograd engine
    run w.r.t. (y, *params) as directly as Python can call it (the call under
    torch.autograd.grad, without its argument checks) -- what each backward evaluation
    spends in the user's function."""
    device = inst.y0.device
    t0 = inst.t[0]
    params = tuple(p for p in inst.func.parameters() if p.requires_grad)
    y_base = inst.y0.detach()
    neg_a = -torch.ones_like(y_base)
    from .adjoint import (
        vector_jacobian_product,  # the engine call under torch.autograd.grad, without its argument checks
    )

    def vjp():
        with torch.enable_grad():
            y = y_base.detach().requires_grad_(True)
            vector_jacobian_product(inst.func(t0, y), (y,) + params, neg_a)

    for _ in range(warmup):
        vjp()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - start < budget_s):
        t_a = time.perf_counter()
        vjp()
        _sync(device)
        times.append(time.perf_counter() - t_a)
    return times


def time_forward_backward(impl: AdjointImplementation, inst: AdjointInstance) -> tuple:
    """One timed forward + backward: (forward seconds, backward seconds)."""
    device = inst.y0.device
    y0 = _prepare_y0(inst, True)
    _zero_grads(inst.leaves(y0))
    _sync(device)
    a = time.perf_counter()
    sol, _ = impl.solve(inst, inst.func, y0)
    loss = inst.loss(sol)
    _sync(device)
    b = time.perf_counter()
    loss.backward()
    _sync(device)
    c = time.perf_counter()
    return b - a, c - b


def _max_rel_grad_diff(grads, ref) -> float | None:
    """max over tensors of max|g - g_ref| / max|g_ref|."""
    if grads is None or ref is None:
        return None
    worst = 0.0
    for g, r in zip(grads, ref):
        if g is None or r is None:
            if (g is None) != (r is None):
                return float("nan")
            continue
        g = g.detach().to("cpu", torch.float64)
        r = r.detach().to("cpu", torch.float64)
        worst = max(worst, float((g - r).abs().max()) / max(float(r.abs().max()), 1e-300))
    return worst


def adjoint_loop_per_step(bwd_s: float, bwd_nfe: int | None, vjp_s: float, bwd_steps: int | None) -> float | None:
    """(backward time - backward nfe * VJP time) / backward steps, in seconds."""
    return loop_per_step(bwd_s, bwd_nfe, vjp_s, bwd_steps)


def run_adjoint(
    problems: Sequence[str] | None = None,
    impls: Sequence[str] | None = None,
    *,
    device="cpu",
    dtype=torch.float64,
    repeats: int = 5,
    warmup: int = 1,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Benchmark forward + backward of ``odeint_adjoint`` for every adjoint problem x available
    implementation (odecore fused/reference, torchdiffeq), interleaved in rounds as ``run``.
    ``impls`` names outside ``ADJOINT_IMPLEMENTATIONS`` (e.g. torchode) are skipped."""
    device = torch.device(device)
    problems = list(problems) if problems else list(ADJOINT_PROBLEMS)
    for pname in problems:
        get_adjoint_problem(pname)
    impl_names = [n for n in (impls or ADJOINT_IMPLEMENTATIONS) if n in ADJOINT_IMPLEMENTATIONS]

    def log(msg):
        if verbose:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

    results: list[dict[str, Any]] = []
    for pname in problems:
        problem = get_adjoint_problem(pname)
        inst = problem.make(device, dtype)
        rows: dict[str, dict[str, Any]] = {}
        cases = []  # [impl, counts, fwd times, bwd times]
        for iname in impl_names:
            impl = ADJOINT_IMPLEMENTATIONS[iname]
            if not impl.available():
                log(f"{pname}/{iname}: not installed, skipped")
                continue
            log(f"{pname}/{iname}: count + warm-up")
            try:
                counts = count_adjoint(impl, inst)
                for _ in range(warmup):
                    time_forward_backward(impl, inst)
                cases.append([impl, counts, [], []])
            except Exception as e:  # keep going; report the failure in the table
                rows[iname] = dict(
                    problem=pname,
                    impl=iname,
                    suite="adjoint",
                    method=inst.method,
                    device=str(device),
                    dtype=str(dtype).replace("torch.", ""),
                    error=f"{type(e).__name__}: {e}",
                )
                log(f"{pname}/{iname} FAILED: {rows[iname]['error']}")

        vjp_times: list[float] = []
        for r in range(repeats):
            vjp_times += _vjp_samples(inst, min_calls=20, max_calls=1000, budget_s=0.05, warmup=2)
            k = r % max(1, len(cases))
            for case in cases[k:] + cases[:k]:
                impl, _, fwd, bwd = case
                if impl.name in rows:
                    continue
                try:
                    f_s, b_s = time_forward_backward(impl, inst)
                    fwd.append(f_s)
                    bwd.append(b_s)
                except Exception as e:
                    rows[impl.name] = dict(
                        problem=pname, impl=impl.name, suite="adjoint", error=f"{type(e).__name__}: {e}"
                    )
            log(f"{pname}: round {r + 1}/{repeats} done")

        vjp = statistics.median(vjp_times)
        grads = {}
        for impl, counts, fwd, bwd in cases:
            if impl.name in rows:
                continue
            grads[impl.name] = counts.pop("grads")
            fb = [a + b for a, b in zip(fwd, bwd)]
            row = dict(
                problem=pname,
                impl=impl.name,
                suite="adjoint",
                method=inst.method,
                rtol=inst.rtol,
                atol=inst.atol,
                device=str(device),
                dtype=str(dtype).replace("torch.", ""),
                batch=int(inst.y0.shape[0]),
                **counts,
                vjp_us=vjp * 1e6,
                vjp_us_min=min(vjp_times) * 1e6,
                vjp_calls_timed=len(vjp_times),
                fwd_ms=min(fwd) * 1e3,
                bwd_ms=min(bwd) * 1e3,
                bwd_ms_median=statistics.median(bwd) * 1e3,
                fb_ms=min(fb) * 1e3,
                fb_ms_median=statistics.median(fb) * 1e3,
                fb_ms_all=[x * 1e3 for x in fb],
            )
            lp = adjoint_loop_per_step(min(bwd), counts.get("bwd_nfe"), vjp, counts.get("bwd_steps"))
            row["bwd_loop_us_per_step"] = None if lp is None else lp * 1e6
            rows[impl.name] = row
        ordered = [rows[n] for n in impl_names if n in rows]
        base = rows.get(BASELINE)
        if base is not None and "error" in base:
            base = None
        for r in ordered:
            for key in (
                "fb_speedup_vs_torchdiffeq",
                "bwd_loop_speedup_vs_torchdiffeq",
                "bwd_nfe_ratio_vs_torchdiffeq",
                "max_rel_grad_diff_vs_torchdiffeq",
            ):
                r[key] = None
            if base is None or "error" in r:
                continue
            r["fb_speedup_vs_torchdiffeq"] = base["fb_ms"] / r["fb_ms"]
            bl, rl = base.get("bwd_loop_us_per_step"), r.get("bwd_loop_us_per_step")
            if bl is not None and rl is not None and rl > 0:
                r["bwd_loop_speedup_vs_torchdiffeq"] = bl / rl
            if base.get("bwd_nfe"):
                r["bwd_nfe_ratio_vs_torchdiffeq"] = r["bwd_nfe"] / base["bwd_nfe"]
            r["max_rel_grad_diff_vs_torchdiffeq"] = _max_rel_grad_diff(grads.get(r["impl"]), grads.get(BASELINE))
        results.extend(ordered)
    return results


def format_adjoint_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table of ``run_adjoint()`` results."""
    head = [
        "problem",
        "impl",
        "fwd nfe",
        "bwd nfe",
        "bwd steps (acc/rej)",
        "VJP µs",
        "fwd ms",
        "bwd ms",
        "fwd+bwd ms (best / median)",
        "bwd loop µs/step",
        "fwd+bwd speedup vs torchdiffeq",
        "bwd loop speedup",
        "max rel \\|Δgrad\\| vs torchdiffeq",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['problem']} | {r['impl']} | error: {r['error'][:80]} |" + " |" * (len(head) - 3))
            continue
        if r.get("bwd_accepted") is not None and r.get("bwd_rejected") is not None:
            steps = f"{r['bwd_steps']} ({r['bwd_accepted']}/{r['bwd_rejected']})"
        else:
            steps = _fmt(r.get("bwd_steps"), "d")
        fb_sp, lp_sp = r.get("fb_speedup_vs_torchdiffeq"), r.get("bwd_loop_speedup_vs_torchdiffeq")
        lines.append(
            "| "
            + " | ".join(
                [
                    r["problem"],
                    r["impl"],
                    _fmt(r.get("fwd_nfe"), "d"),
                    _fmt(r.get("bwd_nfe"), "d"),
                    steps,
                    _fmt(r.get("vjp_us"), ".1f"),
                    _fmt(r.get("fwd_ms"), ".1f"),
                    _fmt(r.get("bwd_ms"), ".1f"),
                    f"{_fmt(r.get('fb_ms'), '.1f')} / {_fmt(r.get('fb_ms_median'), '.1f')}",
                    _fmt(r.get("bwd_loop_us_per_step"), ".1f"),
                    "–" if fb_sp is None else f"{fb_sp:.2f}×",
                    "–" if lp_sp is None else f"{lp_sp:.1f}×",
                    _fmt(r.get("max_rel_grad_diff_vs_torchdiffeq"), ".1e"),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def _fmt(x, spec):
    if x is None:
        return "–"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return format(x, spec)


def _cell_notes(notes) -> str:
    return "; ".join(str(n) for n in (notes or [])).replace("|", "/")


def format_table(results: Sequence[dict[str, Any]], *, kernels: bool | None = None) -> str:
    """Markdown table of ``run()`` results.  The op/host-read columns appear when counted, the
    kernels column for the GPU suite or CUDA rows (``kernels`` forces it on/off; 'n/a' on the
    CPU), the CUDA syncs column for CUDA rows, and a notes column when a row has notes."""
    gpu = any(r.get("suite") == "gpu" for r in results)
    cuda = any(str(r.get("device", "")).startswith("cuda") for r in results)
    show_kernels = (gpu or cuda) if kernels is None else kernels
    has_ops = any(r.get("solver_ops_per_step") is not None for r in results)
    has_notes = any(r.get("notes") for r in results)
    diff_key, diff_head = (
        ("max_abs_diff_vs_reference", "max \\|Δy\\| vs reference")
        if gpu
        else ("max_abs_diff_vs_torchdiffeq", "max \\|Δy\\| vs torchdiffeq")
    )
    head = [
        "problem",
        "impl",
        "nfe",
        "steps (acc/rej)",
        "func µs",
        "solve ms (best / median)",
        "loop µs/step",
        "loop speedup vs torchdiffeq",
    ]
    if gpu:
        head.append("loop speedup vs reference")
    if has_ops:
        head += ["solver ops/step", "host reads/step"]
    if cuda:
        head.append("CUDA syncs/step")
    if show_kernels:
        head.append("kernels/step")
    head.append(diff_head)
    if has_notes:
        head.append("notes")
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2 - has_notes) + ["---"] * has_notes) + "|",
    ]
    for r in results:
        if "error" in r or "skipped" in r:
            text = (
                f"error: {r['error'][:80]}"
                if "error" in r
                else f"skipped: {r['skipped']}".replace("skipped: skipped:", "skipped:")
            )
            lines.append(f"| {r['problem']} | {r['impl']} | {text.replace('|', '/')} |" + " |" * (len(head) - 3))
            continue
        if r.get("n_accepted") is not None:
            steps = f"{r['steps']} ({r['n_accepted']}/{r['n_rejected']})"
        else:
            steps = f"{r['steps']}"
        sp = r.get("loop_speedup_vs_torchdiffeq")
        cells = [
            r["problem"],
            r["impl"],
            _fmt(r.get("nfe"), "d"),
            steps,
            _fmt(r.get("func_us"), ".1f"),
            f"{_fmt(r.get('solve_ms'), '.1f')} / {_fmt(r.get('solve_ms_median'), '.1f')}",
            _fmt(r.get("loop_us_per_step"), ".1f"),
            "–" if sp is None else f"{sp:.1f}×",
        ]
        if gpu:
            spr = r.get("loop_speedup_vs_reference")
            cells.append("–" if spr is None else f"{spr:.1f}×")
        if has_ops:
            cells += [_fmt(r.get("solver_ops_per_step"), ".1f"), _fmt(r.get("host_reads_per_step"), ".2f")]
        on_cuda = str(r.get("device", "")).startswith("cuda")
        if cuda:
            cells.append(_fmt(r.get("cuda_syncs_per_step"), ".2f") if on_cuda else "n/a")
        if show_kernels:
            cells.append(_fmt(r.get("kernels_per_step"), ".1f") if on_cuda else "n/a")
        cells.append(_fmt(r.get(diff_key), ".1e"))
        if has_notes:
            cells.append(_cell_notes(r.get("notes")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABLE_FOOTER = (
    "loop µs/step = (best solve time - nfe × median func time) / steps; "
    "speedup = the other's loop / this row's loop. solver ops/step = ATen + odecore:: ops "
    "dispatched outside func in one solve (setup included) / steps; host reads/step = the "
    "solver's device-to-host reads (.item(), bool(tensor), .tolist(), D2H copies, nonzero...) / steps."
)
TABLE_FOOTER_CUDA = (
    "CUDA syncs/step: synchronising calls flagged by torch.cuda.set_sync_debug_mode('warn') "
    "outside func / steps; kernels/step: CUDA kernels in one profiled solve (func's included) / steps."
)


def _environment(device, dtype, grad) -> dict[str, Any]:
    env = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        python=platform.python_version(),
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        grad=grad,
    )
    for mod in ("odecore", "torchdiffeq", "torchode"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", "installed")
            if mod == "odecore" and not hasattr(m, "odeint"):
                env[mod] = None
        except Exception:
            env[mod] = None
    try:
        import odecore

        env["odecore_backend_info"] = {
            k: (v if isinstance(v, (bool, int, float, str, type(None))) else str(v))
            for k, v in odecore.backend_info().items()
        }
    except Exception:
        pass
    return env


# --threads above this is refused (torch accepts any count; far more abort the process)
MAX_THREADS = 1024

_DTYPES = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32, "float": torch.float32}


def _parse_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="odecore bench",
        description="Benchmark odecore (fused and reference backends) against torchdiffeq "
        "and torchode side by side. Loop time per step = "
        "(solve time - nfe * func time) / steps; solver ops and host reads per step "
        "are counted in one extra solve.",
    )
    p.add_argument(
        "--suite",
        choices=("solve", "gpu"),
        default="solve",
        help="solve (default): the problems below; gpu: Van der Pol at batch 256/4096/65536, "
        f"a Lorenz ensemble (rk4 dt 1e-3, tsit5 1e-6) of 2^10/2^14/2^20 members and the "
        f"ODE-Net block ({','.join(GPU_FAMILIES)}); see --sizes",
    )
    p.add_argument(
        "--problems",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"subset of problems (space- or comma-separated); default all: {','.join(PROBLEMS)}; "
        f"adjoint problems ({','.join(ADJOINT_PROBLEMS)}) run the adjoint suite; with --suite gpu: "
        f"families ({','.join(GPU_FAMILIES)}) or single sizes (e.g. lorenz_rk4_1024)",
    )
    p.add_argument(
        "--sizes",
        default="auto",
        metavar="auto|small|full|N,N",
        help="GPU suite sizes: full = the issue's (up to 2^20 Lorenz members), small = a CPU smoke run, "
        "auto (default) = full on CUDA, small elsewhere; or integers for every family",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="override the batch size of every problem of the solve suite (GPU suite: --sizes)",
    )
    p.add_argument(
        "--impls",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"subset of implementations; default all installed: {','.join(IMPLEMENTATIONS)}",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed solves per case (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up solves per case (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float64", choices=sorted(_DTYPES), help="default float64")
    p.add_argument(
        "--grad", action="store_true", help="autograd recording: y0 requires grad and the graph is built (no backward)"
    )
    p.add_argument(
        "--adjoint",
        action="store_true",
        help="run the adjoint suite: forward + backward through odeint_adjoint (all adjoint problems "
        "unless some are named in --problems); solve problems run only when named in --problems",
    )
    p.add_argument(
        "--case-budget",
        type=float,
        default=None,
        metavar="S",
        help="seconds one implementation may spend on one problem: a longer solve is stopped and "
        "skipped (with a note; also at that family's larger sizes), repeats are cut to fit; "
        "default: none, 60 with --suite gpu; 0 = none",
    )
    p.add_argument(
        "--sync-every",
        type=int,
        default=None,
        metavar="K",
        help="pass options={'sync_every': K} to odecore (where this odecore takes it; else a note)",
    )
    p.add_argument("--no-ops", action="store_true", help="skip the op / host-read counting solve")
    p.add_argument("--no-kernels", action="store_true", help="skip the profiled solve (kernels/step on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before running")
    p.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="also write results + environment as JSON (rewritten after every problem)",
    )
    p.add_argument(
        "--markdown",
        metavar="PATH",
        default=None,
        help="also write the tables as Markdown (rewritten after every problem)",
    )
    p.add_argument(
        "--from-json",
        metavar="PATH",
        default=None,
        help="print the tables of a JSON written by --json (even a partial one) and exit",
    )
    p.add_argument("--list", action="store_true", help="list problems and implementations and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _print_tables(results: Sequence[dict[str, Any]], out=None) -> None:
    out = out or sys.stdout
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r.get("suite") or "solve", []).append(r)
    first = True
    for suite in ("solve", "gpu", "adjoint"):
        rows = groups.get(suite)
        if not rows:
            continue
        if not first:
            print(file=out)
        first = False
        if suite == "adjoint":
            print(format_adjoint_table(rows), file=out)
            print(
                "\nadjoint: one run = odeint_adjoint forward + loss + loss.backward(); fwd/bwd/fwd+bwd ms = best "
                "of the repeats; bwd loop µs/step = (best bwd time - bwd nfe × median VJP time) / bwd steps; "
                "fwd+bwd speedup = torchdiffeq fwd+bwd / impl fwd+bwd.",
                file=out,
            )
            continue
        print(format_table(rows), file=out)
        print("\n" + TABLE_FOOTER, file=out)
        if any(str(r.get("device", "")).startswith("cuda") for r in rows):
            print(TABLE_FOOTER_CUDA, file=out)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json:
        try:
            with open(args.from_json) as fh:
                data = json.load(fh)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            print(f"odecore bench: --from-json {args.from_json}: cannot read it ({e})", file=sys.stderr)
            return 2
        env = data.get("environment", {})
        print(
            f"device={env.get('device')} dtype={env.get('dtype')} torch={env.get('torch')} "
            f"argv={' '.join(data.get('argv', []))}{' (partial)' if data.get('partial') else ''}"
        )
        _print_tables(data.get("results", []))
        return 0
    if args.list:
        for p in PROBLEMS.values():
            print(f"{p.name:12s} {p.method:7s} rtol={p.rtol:g} atol={p.atol:g} {p.options or ''}  {p.description}")
        for name, impl in IMPLEMENTATIONS.items():
            print(f"{name:20s} {'available' if impl.available() else 'not installed'}")
        print("adjoint problems (--adjoint; forward + backward through odeint_adjoint):")
        for p in ADJOINT_PROBLEMS.values():
            print(f"{p.name:18s} {p.method:7s} rtol={p.rtol:g} atol={p.atol:g} {p.options or ''}  {p.description}")
        print("GPU suite (--suite gpu; sizes full / small):")
        for f in GPU_FAMILIES.values():
            print(
                f"{f.name:14s} {f.method:7s} rtol={f.rtol:g} atol={f.atol:g} {f.options or ''}  {f.description}; "
                f"N = {'/'.join(map(str, f.full))} / {'/'.join(map(str, f.small))}"
            )
        return 0
    problems = [x for s in (args.problems or []) for x in _parse_list(s)] or None
    impls = [x for s in (args.impls or []) for x in _parse_list(s)] or None
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        print(f"odecore bench: --device {args.device!r} is not a device ({e})", file=sys.stderr)
        return 2
    if device.type not in ("cpu", "cuda"):
        print(f"odecore bench: --device must be cpu or cuda, got {args.device!r}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print("odecore bench: --device cuda requested but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("odecore bench: --repeats must be >= 1", file=sys.stderr)
        return 2
    if args.batch is not None and args.batch < 1:
        print("odecore bench: --batch must be >= 1", file=sys.stderr)
        return 2
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        # torch takes any count, and far more threads than this abort the process
        print(f"odecore bench: --threads must be between 1 and {MAX_THREADS}", file=sys.stderr)
        return 2
    if args.warmup < 0:
        print("odecore bench: --warmup must be >= 0", file=sys.stderr)
        return 2
    if args.case_budget is not None and math.isnan(args.case_budget):
        print("odecore bench: --case-budget must be a number of seconds", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = _DTYPES[args.dtype]
    budget = args.case_budget
    if budget is None and args.suite == "gpu":
        budget = 60.0
    if budget is not None and budget <= 0:
        budget = None
    solve_problems, adjoint_problems = problems, None
    try:
        if args.suite == "gpu":
            solve_problems = gpu_problems(problems, args.sizes, device)
            run_solve, run_adj = True, args.adjoint
        else:
            if problems is not None:
                unknown = [n for n in problems if n not in PROBLEMS and n not in ADJOINT_PROBLEMS]
                if unknown:
                    print(
                        f"odecore bench: unknown problem {unknown[0]!r}; choose from "
                        f"{sorted(PROBLEMS) + sorted(ADJOINT_PROBLEMS)}",
                        file=sys.stderr,
                    )
                    return 2
                solve_problems = [n for n in problems if n in PROBLEMS]
                adjoint_problems = [n for n in problems if n in ADJOINT_PROBLEMS] or None
            run_solve = bool(solve_problems) or (problems is None and not args.adjoint)
            run_adj = args.adjoint or adjoint_problems is not None
    except ValueError as e:
        print(f"odecore bench: {e}", file=sys.stderr)
        return 2
    env = _environment(device, dtype, args.grad)
    argv_list = list(argv) if argv is not None else sys.argv[1:]

    def save(res, partial):
        if args.json:
            tmp = args.json + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(
                    dict(
                        environment=env,
                        argv=argv_list,
                        partial=partial,
                        suite=args.suite,
                        case_budget_s=budget,
                        results=res,
                    ),
                    fh,
                    indent=2,
                    default=str,
                )
            os.replace(tmp, args.json)
        if args.markdown:
            buf = io.StringIO()
            print(
                f"`odecore bench {' '.join(argv_list)}`: device={env['device']} dtype={env['dtype']} "
                f"grad={env['grad']} torch={env['torch']} threads={torch.get_num_threads()}"
                f"{' (partial: interrupted or still running)' if partial else ''}\n",
                file=buf,
            )
            _print_tables(res, out=buf)
            tmp = args.markdown + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(buf.getvalue())
            os.replace(tmp, args.markdown)

    if args.suite == "gpu" and not args.quiet:
        print(
            f"[bench] GPU suite: {', '.join(p.name for p in solve_problems)}"
            f"{'' if budget is None else f'; case budget {budget:g} s'}",
            file=sys.stderr,
            flush=True,
        )
    results: list[dict[str, Any]] = []
    adjoint_results: list[dict[str, Any]] = []
    try:
        if run_solve:
            results = run(
                solve_problems,
                impls,
                device=device,
                dtype=dtype,
                grad=args.grad,
                repeats=args.repeats,
                warmup=args.warmup,
                verbose=not args.quiet,
                batch=args.batch if args.suite == "solve" else None,
                count_ops=not args.no_ops,
                kernels=(False if args.no_kernels else None),
                case_budget_s=budget,
                sync_every=args.sync_every,
                suite=args.suite,
                on_problem=lambda res: save(res, True),
            )
        if run_adj:
            adjoint_results = run_adjoint(
                adjoint_problems,
                impls,
                device=device,
                dtype=dtype,
                repeats=args.repeats,
                warmup=args.warmup,
                verbose=not args.quiet,
            )
    except ValueError as e:
        print(f"odecore bench: {e}", file=sys.stderr)
        return 2
    env["torch_threads"] = torch.get_num_threads()
    print(
        f"device={env['device']} dtype={env['dtype']} grad={env['grad']} torch={env['torch']} "
        f"threads={env['torch_threads']} repeats={args.repeats}"
    )
    _print_tables(results + adjoint_results)
    results = results + adjoint_results
    save(results, False)
    for path in (args.json, args.markdown):
        if path:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

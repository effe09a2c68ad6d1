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

A second suite (``--adjoint``, or adjoint problem names in ``--problems``)
times forward + backward through ``odeint_adjoint`` (odecore fused/reference
against torchdiffeq) and reports the backward nfe/steps and the backward loop
time per step = (backward time - backward nfe * VJP time) / backward steps; see
the "Adjoint benchmarks" section below.

Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

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
    options: Dict[str, Any] = field(default_factory=dict)

    def odeint_kwargs(self) -> Dict[str, Any]:
        return dict(rtol=self.rtol, atol=self.atol, method=self.method,
                    options=dict(self.options))


@dataclass
class Problem:
    """A benchmark problem: a recipe that builds an :class:`Instance`."""

    name: str
    description: str
    method: str
    rtol: float
    atol: float
    options: Dict[str, Any]
    _build: Callable[[torch.device, torch.dtype, int], tuple]
    seed: int = 0

    def make(self, device="cpu", dtype=torch.float64, seed: Optional[int] = None) -> Instance:
        device = torch.device(device)
        seed = self.seed if seed is None else seed
        func, y0, t = self._build(device, dtype, seed)
        return Instance(self.name, func, y0, t, self.method, self.rtol, self.atol,
                        dict(self.options))


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
        return (y ** 3) @ self.A


class MLPField(nn.Module):
    """Autonomous neural vector field: Linear -> tanh -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t, y):
        return self.net(y)


def _build_vdp(device, dtype, seed):
    g = _generator(seed)
    batch = 256
    x0 = torch.rand(batch, generator=g, dtype=torch.float64) * 4.0 - 2.0   # x in [-2, 2]
    v0 = torch.rand(batch, generator=g, dtype=torch.float64) * 4.0 - 2.0   # v in [-2, 2]
    y0 = torch.stack([x0, v0], dim=-1).to(device=device, dtype=dtype)
    t = torch.linspace(0.0, 8.2, 200, dtype=dtype, device=device)
    return VanDerPol(2.0).to(device), y0, t


def _build_spiral(device, dtype, seed):
    g = _generator(seed)
    batch = 1024
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=dtype, device=device)
    # Points on a ring around the ode_demo start point [2, 0].
    r = 0.5 + 1.5 * torch.rand(batch, generator=g, dtype=torch.float64)   # radius in [0.5, 2]
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


def _build_small_node(device, dtype, seed):
    # Fixed-seed 4-32-4 tanh MLP, first-layer weights x2, so that a dopri5
    # solve on [0, 100] at 1e-6 takes ~130 steps, a handful of them rejected
    # (torchdiffeq: 133 steps, 21 rejected, nfe 800 in float64).
    f = _make_mlp(4, 32, seed + 3, out_scale=1.0, in_scale=2.0)
    f = f.to(device=device, dtype=dtype)
    g = _generator(seed)
    y0 = torch.randn(64, 4, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    t = torch.linspace(0.0, 100.0, 101, dtype=dtype, device=device)
    return f, y0, t


def _build_mlp(device, dtype, seed):
    # Weights scaled (first layer x4, second x16) so the dopri5 solve takes
    # ~18 steps rather than 3 (torchdiffeq: nfe 110 in float64).
    f = _make_mlp(64, 256, seed + 2, out_scale=16.0, in_scale=4.0).to(device=device, dtype=dtype)
    g = _generator(seed)
    y0 = torch.randn(512, 64, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    t = torch.linspace(0.0, 1.0, 11, dtype=dtype, device=device)
    return f, y0, t


PROBLEMS: Dict[str, Problem] = {
    p.name: p
    for p in [
        Problem("vdp", "Van der Pol mu=2, batch 256, t in [0, 8.2] (200 points)",
                "dopri5", 1e-5, 1e-5, {}, _build_vdp),
        Problem("spiral", "y' = (y**3) @ A, batch 1024, t in [0, 25] (100 points)",
                "dopri5", 1e-7, 1e-9, {}, _build_spiral),
        Problem("small_node", "MLP 4-32-4 tanh, batch 64, t in [0, 100] (101 points)",
                "dopri5", 1e-6, 1e-6, {}, _build_small_node),
        Problem("mlp", "MLP 64-256-64 tanh, batch 512, t in [0, 1] (11 points)",
                "dopri5", 1e-5, 1e-5, {}, _build_mlp),
        Problem("mlp_rk4", "MLP 64-256-64 tanh, batch 512, t in [0, 1] (11 points), rk4 h=0.01",
                "rk4", 1e-5, 1e-5, {"step_size": 0.01}, _build_mlp),
    ]
}


def get_problem(name: str) -> Problem:
    try:
        return PROBLEMS[name]
    except KeyError:
        raise ValueError(f"unknown problem {name!r}; choose from {sorted(PROBLEMS)}") from None


# --------------------------------------------------------------------------
# Counting wrapper
# --------------------------------------------------------------------------


class CountingFunc(nn.Module):
    """Counts vector-field calls and (torchdiffeq-style) step callbacks."""

    def __init__(self, func):
        super().__init__()
        self.func = func
        self.nfe = 0
        self.n_step_callbacks = 0
        self.n_accept_callbacks = 0
        self.n_reject_callbacks = 0

    def forward(self, t, y):
        self.nfe += 1
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

    def count(self, inst: Instance, y0) -> Dict[str, Any]:
        """One solve with a counting wrapper; returns nfe/step statistics and the solution."""
        raise NotImplementedError


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
        kw["options"]["backend"] = self.backend
        if stats:
            kw["options"]["return_stats"] = True
        return kw

    def prepare(self, inst, func, y0):
        import odecore
        kw = self._kwargs(inst)
        t = inst.t
        return lambda: odecore.odeint(func, y0, t, **kw)

    def count(self, inst, y0):
        import odecore
        cf = CountingFunc(inst.func)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not support callbacks.*")
            sol, stats = odecore.odeint(cf, y0, inst.t, **self._kwargs(inst, stats=True))
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

    def count(self, inst, y0):
        import torchdiffeq
        cf = CountingFunc(inst.func)
        with warnings.catch_warnings():
            # fixed-grid solvers only support callback_step
            warnings.filterwarnings("ignore", message=".*does not support callbacks.*")
            sol = torchdiffeq.odeint(cf, y0, inst.t, **inst.odeint_kwargs())
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
    """torchode (eager, AutoDiffAdjoint + IntegralController).

    Note: torchode controls the step size *per batch element* (per-sample RMS
    error norm), so its nfe/steps are not the same quantities as torchdiffeq's
    global-norm solve; ``steps`` here is the number of loop iterations
    (max over the batch of per-sample steps).  Only 2-D states and adaptive
    dopri5 are wired up (torchode 1.0 has no rk4).
    """

    name = "torchode"
    module = "torchode"

    def applicable(self, inst):
        return inst.method == "dopri5" and inst.y0.ndim == 2

    def _solver(self, inst, f):
        import torchode as to
        term = to.ODETerm(f)
        step = to.Dopri5(term=term)
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

    def count(self, inst, y0):
        import torchode as to
        cf = CountingFunc(inst.func)
        solver = self._solver(inst, cf)
        sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=inst.t.expand(y0.shape[0], -1)))
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
            solution=sol.ys.transpose(0, 1),
        )


IMPLEMENTATIONS: Dict[str, Implementation] = {
    impl.name: impl
    for impl in [OdecoreImpl("fused"), OdecoreImpl("reference"), TorchdiffeqImpl(), TorchodeImpl()]
}

BASELINE = "torchdiffeq"


def get_implementation(name: str) -> Implementation:
    try:
        return IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown implementation {name!r}; choose from {sorted(IMPLEMENTATIONS)}") from None


def available_implementations() -> List[str]:
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


def _func_samples(inst: Instance, y0: torch.Tensor, *, grad: bool, min_calls: int,
                  max_calls: int, budget_s: float, warmup: int = 3) -> List[float]:
    device = y0.device
    t0 = inst.t[0]
    times: List[float] = []
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


def time_func(inst: Instance, y0: torch.Tensor, *, grad: bool = False,
              min_calls: int = 30, max_calls: int = 2000, budget_s: float = 0.25) -> Dict[str, float]:
    """Median (and min) wall time in seconds of one ``func(t0, y0)`` call."""
    times = _func_samples(inst, y0, grad=grad, min_calls=min_calls, max_calls=max_calls,
                          budget_s=budget_s)
    return dict(median=statistics.median(times), min=min(times), calls=len(times))


def time_solve(run: Callable[[], Any], device: torch.device, *, grad: bool = False,
               repeats: int = 5, warmup: int = 1) -> List[float]:
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


def count_solve(impl: Implementation, inst: Instance, *, grad: bool = False) -> Dict[str, Any]:
    """One solve with a counting wrapper: nfe, steps, accepted/rejected, solution."""
    y0 = _prepare_y0(inst, grad)
    with _grad_context(grad):
        return impl.count(inst, y0)


def _max_abs_diff(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[float]:
    if a is None or b is None:
        return None
    if not (torch.is_tensor(a) and torch.is_tensor(b)):
        return None
    a = a.detach().to("cpu", torch.float64)
    b = b.detach().to("cpu", torch.float64)
    if a.shape != b.shape:
        return float("nan")
    return float((a - b).abs().max())


def loop_per_step(solve_s: float, nfe: Optional[int], func_s: float, steps: Optional[int]) -> Optional[float]:
    """(solve - nfe * func) / steps, in seconds; None when not computable."""
    if nfe is None or not steps:
        return None
    return (solve_s - nfe * func_s) / steps


def _result(problem: Problem, impl: Implementation, inst: Instance, device, dtype, grad,
            counts: Dict[str, Any], func_times: Sequence[float], times: Sequence[float]) -> Dict[str, Any]:
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


def bench_one(problem: Problem, impl: Implementation, *, device="cpu", dtype=torch.float64,
              grad: bool = False, repeats: int = 5, warmup: int = 1) -> Dict[str, Any]:
    """Benchmark one (problem, implementation) pair on its own (no interleaving)."""
    device = torch.device(device)
    inst = problem.make(device, dtype)
    y0 = _prepare_y0(inst, grad)
    ft = _func_samples(inst, y0, grad=grad, min_calls=30, max_calls=2000, budget_s=0.25)
    counts = count_solve(impl, inst, grad=grad)
    counts.pop("solution", None)
    run_ = impl.prepare(inst, inst.func, y0)
    times = time_solve(run_, device, grad=grad, repeats=repeats, warmup=warmup)
    return _result(problem, impl, inst, device, dtype, grad, counts, ft, times)


def _consistency_notes(counts: Dict[str, Any]) -> List[str]:
    """Disagreements between the counting wrapper and a library's own statistics."""
    notes = []
    if counts.get("stats_nfe") is not None and counts["stats_nfe"] != counts.get("nfe"):
        notes.append(f"stats nfe {counts['stats_nfe']} != counted nfe {counts.get('nfe')}")
    acc, rej, steps = counts.get("n_accepted"), counts.get("n_rejected"), counts.get("steps")
    if None not in (acc, rej, steps) and acc + rej != steps:
        notes.append(f"n_accepted {acc} + n_rejected {rej} != n_steps {steps}")
    return notes


def _error_row(pname, iname, inst, device, dtype, grad, e):
    return dict(problem=pname, impl=iname, method=inst.method, device=str(device),
                dtype=str(dtype).replace("torch.", ""), grad=grad,
                error=f"{type(e).__name__}: {e}")


def run(problems: Optional[Sequence[str]] = None, impls: Optional[Sequence[str]] = None, *,
        device="cpu", dtype=torch.float64, grad: bool = False, repeats: int = 5,
        warmup: int = 1, verbose: bool = False) -> List[Dict[str, Any]]:
    """Benchmark every problem x available implementation.

    Per problem: one counting solve and ``warmup`` untimed solves per
    implementation, then ``repeats`` rounds; each round times a batch of
    func calls and then one solve of every implementation (rotating the
    order), so that all implementations see the same machine load -- this
    matters on a shared machine.  Adds ``loop_speedup_vs_torchdiffeq`` and
    ``max_abs_diff_vs_torchdiffeq`` to every row.
    """
    device = torch.device(device)
    problems = list(problems) if problems else list(PROBLEMS)
    for pname in problems:
        get_problem(pname)
    if impls:
        impl_names = list(impls)
        for n in impl_names:
            get_implementation(n)
    else:
        impl_names = list(IMPLEMENTATIONS)

    def log(msg):
        if verbose:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

    results: List[Dict[str, Any]] = []
    for pname in problems:
        problem = get_problem(pname)
        inst = problem.make(device, dtype)
        y0 = _prepare_y0(inst, grad)
        rows: Dict[str, Dict[str, Any]] = {}
        cases = []  # (impl, counts, solution, run)
        for iname in impl_names:
            impl = IMPLEMENTATIONS[iname]
            if not impl.available():
                log(f"{pname}/{iname}: not installed, skipped")
                continue
            if not impl.applicable(inst):
                log(f"{pname}/{iname}: not applicable, skipped")
                continue
            log(f"{pname}/{iname}: count + warm-up")
            try:
                counts = count_solve(impl, inst, grad=grad)
                solution = counts.pop("solution", None)
                for note in _consistency_notes(counts):
                    log(f"{pname}/{iname}: WARNING {note}")
                run_ = impl.prepare(inst, inst.func, y0)
                with _grad_context(grad):
                    for _ in range(warmup):
                        run_()
                _sync(device)
                cases.append([impl, counts, solution, run_, []])
            except Exception as e:  # keep going; report the failure in the table
                rows[iname] = _error_row(pname, iname, inst, device, dtype, grad, e)
                log(f"{pname}/{iname} FAILED: {rows[iname]['error']}")

        func_times: List[float] = []
        for r in range(repeats):
            func_times += _func_samples(inst, y0, grad=grad, min_calls=20, max_calls=1000,
                                        budget_s=0.05, warmup=2)
            k = r % max(1, len(cases))
            for case in cases[k:] + cases[:k]:
                impl, _, _, run_, times = case
                if impl.name in rows:  # failed earlier
                    continue
                try:
                    with _grad_context(grad):
                        a = time.perf_counter()
                        run_()
                        _sync(device)
                        times.append(time.perf_counter() - a)
                except Exception as e:
                    rows[impl.name] = _error_row(pname, impl.name, inst, device, dtype, grad, e)
            log(f"{pname}: round {r + 1}/{repeats} done")

        solutions = {}
        for impl, counts, solution, _, times in cases:
            if impl.name in rows:
                continue
            rows[impl.name] = _result(problem, impl, inst, device, dtype, grad, counts, func_times, times)
            solutions[impl.name] = solution
        ordered = [rows[n] for n in impl_names if n in rows]
        base = rows.get(BASELINE)
        if base is not None and "error" in base:
            base = None
        for r in ordered:
            r["loop_speedup_vs_torchdiffeq"] = None
            r["max_abs_diff_vs_torchdiffeq"] = None
            if base is None or "error" in r:
                continue
            bl, rl = base.get("loop_us_per_step"), r.get("loop_us_per_step")
            if bl is not None and rl is not None and rl > 0:
                r["loop_speedup_vs_torchdiffeq"] = bl / rl
            r["max_abs_diff_vs_torchdiffeq"] = _max_abs_diff(solutions.get(r["impl"]),
                                                             solutions.get(BASELINE))
        results.extend(ordered)
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
# * ``vjp`` -- time of one VJP evaluation: ``func(t, y)`` under a graph and
#   ``autograd.grad`` w.r.t. (y, *params) -- the user-function part of one
#   backward evaluation, the same for every implementation;
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
    options: Dict[str, Any] = field(default_factory=dict)

    def odeint_kwargs(self) -> Dict[str, Any]:
        return dict(rtol=self.rtol, atol=self.atol, method=self.method, options=dict(self.options))

    def leaves(self, y0: torch.Tensor) -> List[torch.Tensor]:
        return [y0] + [p for p in self.func.parameters() if p.requires_grad]


@dataclass
class AdjointProblem(Problem):
    """A forward+backward benchmark: its builder also returns the loss."""

    def make(self, device="cpu", dtype=torch.float64, seed: Optional[int] = None) -> AdjointInstance:
        device = torch.device(device)
        seed = self.seed if seed is None else seed
        func, y0, t, loss = self._build(device, dtype, seed)
        return AdjointInstance(self.name, func, y0, t, loss, self.method, self.rtol, self.atol, dict(self.options))


def ODEDemoFunc():
    """The model of torchdiffeq's examples/ode_demo.py (odecore.demos.SpiralFunc)."""
    from .demos import SpiralFunc

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
        true_y = odecore.odeint(CubicSpiral(A), true_y0, t_data, method="dopri5")   # (1000, 1, 2)
    data_size, batch_time, batch_size = 1000, 10, 20
    s = torch.randperm(data_size - batch_time, generator=_generator(seed))[:batch_size].to(device)
    y0 = true_y[s]                                                        # (20, 1, 2)
    t = t_data[:batch_time]                                               # (10,)
    batch_y = torch.stack([true_y[s + i] for i in range(batch_time)], 0)  # (10, 20, 1, 2)
    torch.manual_seed(seed)  # nn.init uses the global generator
    func = ODEDemoFunc().to(device=device, dtype=dtype)
    return func, y0, t, lambda sol: (sol - batch_y).abs().mean()


ADJOINT_PROBLEMS: Dict[str, AdjointProblem] = {
    p.name: p
    for p in [
        AdjointProblem("adjoint_small_node",
                       "small_node's MLP 4-32-4 tanh, batch 64, t in [0, 100] (101 points), loss mean(y**2)",
                       "dopri5", 1e-6, 1e-6, {}, _build_adjoint_small_node),
        AdjointProblem("adjoint_spiral",
                       "ode_demo: Linear(2,50)-tanh-Linear(50,2) on y**3, batch 20 windows of 10 points, L1 loss",
                       "dopri5", 1e-7, 1e-9, {}, _build_adjoint_spiral),
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


ADJOINT_IMPLEMENTATIONS: Dict[str, AdjointImplementation] = {
    impl.name: impl
    for impl in [OdecoreAdjointImpl("fused"), OdecoreAdjointImpl("reference"), TorchdiffeqAdjointImpl()]
}


def _zero_grads(tensors):
    for x in tensors:
        x.grad = None


def count_adjoint(impl: AdjointImplementation, inst: AdjointInstance) -> Dict[str, Any]:
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
        res.update(fwd_steps=stats.get("n_steps"), fwd_accepted=stats.get("n_accepted"),
                   fwd_rejected=stats.get("n_rejected"), bwd_steps=stats.get("backward_n_steps"),
                   bwd_accepted=stats.get("backward_n_accepted"), bwd_rejected=stats.get("backward_n_rejected"),
                   stats_fwd_nfe=stats.get("nfe"), stats_bwd_nfe=stats.get("backward_nfe"))
    else:
        res.update(fwd_steps=cf.n_step_callbacks, fwd_accepted=cf.n_accept_callbacks,
                   fwd_rejected=cf.n_reject_callbacks, bwd_steps=cf.n_step_callbacks_adjoint,
                   bwd_accepted=cf.n_accept_callbacks_adjoint, bwd_rejected=cf.n_reject_callbacks_adjoint)
    return res


def _vjp_samples(inst: AdjointInstance, *, min_calls: int, max_calls: int, budget_s: float,
                 warmup: int = 3) -> List[float]:
    """Wall times of one VJP evaluation: func(t0, y) with a graph, then autograd.grad of it
    w.r.t. (y, *params) -- what each backward evaluation spends in the user's function."""
    device = inst.y0.device
    t0 = inst.t[0]
    params = tuple(p for p in inst.func.parameters() if p.requires_grad)
    y_base = inst.y0.detach()
    a = torch.ones_like(y_base)

    def vjp():
        with torch.enable_grad():
            y = y_base.detach().requires_grad_(True)
            f = inst.func(t0, y)
            torch.autograd.grad(f, (y,) + params, -a, allow_unused=True)

    for _ in range(warmup):
        vjp()
    _sync(device)
    times: List[float] = []
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


def _max_rel_grad_diff(grads, ref) -> Optional[float]:
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


def adjoint_loop_per_step(bwd_s: float, bwd_nfe: Optional[int], vjp_s: float,
                          bwd_steps: Optional[int]) -> Optional[float]:
    """(backward time - backward nfe * VJP time) / backward steps, in seconds."""
    return loop_per_step(bwd_s, bwd_nfe, vjp_s, bwd_steps)


def run_adjoint(problems: Optional[Sequence[str]] = None, impls: Optional[Sequence[str]] = None, *,
                device="cpu", dtype=torch.float64, repeats: int = 5, warmup: int = 1,
                verbose: bool = False) -> List[Dict[str, Any]]:
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

    results: List[Dict[str, Any]] = []
    for pname in problems:
        problem = get_adjoint_problem(pname)
        inst = problem.make(device, dtype)
        rows: Dict[str, Dict[str, Any]] = {}
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
                rows[iname] = dict(problem=pname, impl=iname, suite="adjoint", method=inst.method,
                                   device=str(device), dtype=str(dtype).replace("torch.", ""),
                                   error=f"{type(e).__name__}: {e}")
                log(f"{pname}/{iname} FAILED: {rows[iname]['error']}")

        vjp_times: List[float] = []
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
                    rows[impl.name] = dict(problem=pname, impl=impl.name, suite="adjoint",
                                           error=f"{type(e).__name__}: {e}")
            log(f"{pname}: round {r + 1}/{repeats} done")

        vjp = statistics.median(vjp_times)
        grads = {}
        for impl, counts, fwd, bwd in cases:
            if impl.name in rows:
                continue
            grads[impl.name] = counts.pop("grads")
            fb = [a + b for a, b in zip(fwd, bwd)]
            row = dict(problem=pname, impl=impl.name, suite="adjoint", method=inst.method,
                       rtol=inst.rtol, atol=inst.atol, device=str(device),
                       dtype=str(dtype).replace("torch.", ""), batch=int(inst.y0.shape[0]), **counts,
                       vjp_us=vjp * 1e6, vjp_us_min=min(vjp_times) * 1e6, vjp_calls_timed=len(vjp_times),
                       fwd_ms=min(fwd) * 1e3, bwd_ms=min(bwd) * 1e3, bwd_ms_median=statistics.median(bwd) * 1e3,
                       fb_ms=min(fb) * 1e3, fb_ms_median=statistics.median(fb) * 1e3,
                       fb_ms_all=[x * 1e3 for x in fb])
            lp = adjoint_loop_per_step(min(bwd), counts.get("bwd_nfe"), vjp, counts.get("bwd_steps"))
            row["bwd_loop_us_per_step"] = None if lp is None else lp * 1e6
            rows[impl.name] = row
        ordered = [rows[n] for n in impl_names if n in rows]
        base = rows.get(BASELINE)
        if base is not None and "error" in base:
            base = None
        for r in ordered:
            for key in ("fb_speedup_vs_torchdiffeq", "bwd_loop_speedup_vs_torchdiffeq",
                        "bwd_nfe_ratio_vs_torchdiffeq", "max_rel_grad_diff_vs_torchdiffeq"):
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


def format_adjoint_table(results: Sequence[Dict[str, Any]]) -> str:
    """Markdown table of ``run_adjoint()`` results."""
    head = ["problem", "impl", "fwd nfe", "bwd nfe", "bwd steps (acc/rej)", "VJP µs", "fwd ms", "bwd ms",
            "fwd+bwd ms (best / median)", "bwd loop µs/step", "fwd+bwd speedup vs torchdiffeq",
            "bwd loop speedup", "max rel \\|Δgrad\\| vs torchdiffeq"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['problem']} | {r['impl']} | error: {r['error'][:80]} |" + " |" * (len(head) - 3))
            continue
        if r.get("bwd_accepted") is not None and r.get("bwd_rejected") is not None:
            steps = f"{r['bwd_steps']} ({r['bwd_accepted']}/{r['bwd_rejected']})"
        else:
            steps = _fmt(r.get("bwd_steps"), "d")
        fb_sp, lp_sp = r.get("fb_speedup_vs_torchdiffeq"), r.get("bwd_loop_speedup_vs_torchdiffeq")
        lines.append("| " + " | ".join([
            r["problem"], r["impl"], _fmt(r.get("fwd_nfe"), "d"), _fmt(r.get("bwd_nfe"), "d"), steps,
            _fmt(r.get("vjp_us"), ".1f"), _fmt(r.get("fwd_ms"), ".1f"), _fmt(r.get("bwd_ms"), ".1f"),
            f"{_fmt(r.get('fb_ms'), '.1f')} / {_fmt(r.get('fb_ms_median'), '.1f')}",
            _fmt(r.get("bwd_loop_us_per_step"), ".1f"),
            "–" if fb_sp is None else f"{fb_sp:.2f}×",
            "–" if lp_sp is None else f"{lp_sp:.1f}×",
            _fmt(r.get("max_rel_grad_diff_vs_torchdiffeq"), ".1e"),
        ]) + " |")
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


def format_table(results: Sequence[Dict[str, Any]]) -> str:
    """Markdown table of ``run()`` results."""
    head = ["problem", "impl", "nfe", "steps (acc/rej)", "func µs", "solve ms (best / median)",
            "loop µs/step", "loop speedup vs torchdiffeq", "max \\|Δy\\| vs torchdiffeq"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['problem']} | {r['impl']} | error: {r['error'][:80]} |" + " |" * (len(head) - 3))
            continue
        if r.get("n_accepted") is not None:
            steps = f"{r['steps']} ({r['n_accepted']}/{r['n_rejected']})"
        else:
            steps = f"{r['steps']}"
        sp = r.get("loop_speedup_vs_torchdiffeq")
        lines.append("| " + " | ".join([
            r["problem"], r["impl"], _fmt(r.get("nfe"), "d"), steps,
            _fmt(r.get("func_us"), ".1f"),
            f"{_fmt(r.get('solve_ms'), '.1f')} / {_fmt(r.get('solve_ms_median'), '.1f')}",
            _fmt(r.get("loop_us_per_step"), ".1f"),
            "–" if sp is None else f"{sp:.1f}×",
            _fmt(r.get("max_abs_diff_vs_torchdiffeq"), ".1e"),
        ]) + " |")
    return "\n".join(lines)


def _environment(device, dtype, grad) -> Dict[str, Any]:
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
        env["odecore_backend_info"] = {k: (v if isinstance(v, (bool, int, float, str, type(None))) else str(v))
                                       for k, v in odecore.backend_info().items()}
    except Exception:
        pass
    return env


_DTYPES = {"float64": torch.float64, "double": torch.float64,
           "float32": torch.float32, "float": torch.float32}


def _parse_list(s: str) -> List[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="odecore bench",
        description="Benchmark odecore (fused and reference backends) against torchdiffeq "
                    "and torchode side by side. Loop time per step = "
                    "(solve time - nfe * func time) / steps.")
    p.add_argument("--problems", nargs="+", default=None, metavar="NAME",
                   help=f"subset of problems (space- or comma-separated); default all: {','.join(PROBLEMS)}; "
                        f"adjoint problems ({','.join(ADJOINT_PROBLEMS)}) run the adjoint suite")
    p.add_argument("--impls", nargs="+", default=None, metavar="NAME",
                   help=f"subset of implementations; default all installed: {','.join(IMPLEMENTATIONS)}")
    p.add_argument("--repeats", type=int, default=5, help="timed solves per case (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up solves per case (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", default="float64", choices=sorted(_DTYPES), help="default float64")
    p.add_argument("--grad", action="store_true",
                   help="autograd recording: y0 requires grad and the graph is built (no backward)")
    p.add_argument("--adjoint", action="store_true",
                   help="run the adjoint suite: forward + backward through odeint_adjoint (all adjoint problems "
                        "unless some are named in --problems); solve problems run only when named in --problems")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before running")
    p.add_argument("--json", metavar="PATH", default=None, help="also write results + environment as JSON")
    p.add_argument("--list", action="store_true", help="list problems and implementations and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for p in PROBLEMS.values():
            print(f"{p.name:12s} {p.method:7s} rtol={p.rtol:g} atol={p.atol:g} {p.options or ''}  {p.description}")
        for name, impl in IMPLEMENTATIONS.items():
            print(f"{name:20s} {'available' if impl.available() else 'not installed'}")
        print("adjoint problems (--adjoint; forward + backward through odeint_adjoint):")
        for p in ADJOINT_PROBLEMS.values():
            print(f"{p.name:18s} {p.method:7s} rtol={p.rtol:g} atol={p.atol:g} {p.options or ''}  {p.description}")
        return 0
    problems = [x for s in (args.problems or []) for x in _parse_list(s)] or None
    impls = [x for s in (args.impls or []) for x in _parse_list(s)] or None
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("odecore bench: --device cuda requested but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("odecore bench: --repeats must be >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = _DTYPES[args.dtype]
    solve_problems, adjoint_problems = problems, None
    if problems is not None:
        unknown = [n for n in problems if n not in PROBLEMS and n not in ADJOINT_PROBLEMS]
        if unknown:
            print(f"odecore bench: unknown problem {unknown[0]!r}; choose from "
                  f"{sorted(PROBLEMS) + sorted(ADJOINT_PROBLEMS)}", file=sys.stderr)
            return 2
        solve_problems = [n for n in problems if n in PROBLEMS]
        adjoint_problems = [n for n in problems if n in ADJOINT_PROBLEMS] or None
    run_solve = bool(solve_problems) or (problems is None and not args.adjoint)
    run_adj = args.adjoint or adjoint_problems is not None
    results: List[Dict[str, Any]] = []
    adjoint_results: List[Dict[str, Any]] = []
    try:
        if run_solve:
            results = run(solve_problems, impls, device=device, dtype=dtype, grad=args.grad,
                          repeats=args.repeats, warmup=args.warmup, verbose=not args.quiet)
        if run_adj:
            adjoint_results = run_adjoint(adjoint_problems, impls, device=device, dtype=dtype,
                                          repeats=args.repeats, warmup=args.warmup, verbose=not args.quiet)
    except ValueError as e:
        print(f"odecore bench: {e}", file=sys.stderr)
        return 2
    env = _environment(device, dtype, args.grad)
    print(f"device={env['device']} dtype={env['dtype']} grad={env['grad']} torch={env['torch']} "
          f"threads={env['torch_threads']} repeats={args.repeats}")
    if run_solve:
        print(format_table(results))
        print("\nloop µs/step = (best solve time - nfe × median func time) / steps; "
              "speedup = torchdiffeq loop / impl loop.")
    if run_adj:
        if run_solve:
            print()
        print(format_adjoint_table(adjoint_results))
        print("\nadjoint: one run = odeint_adjoint forward + loss + loss.backward(); fwd/bwd/fwd+bwd ms = best of "
              "the repeats; bwd loop µs/step = (best bwd time - bwd nfe × median VJP time) / bwd steps; "
              "fwd+bwd speedup = torchdiffeq fwd+bwd / impl fwd+bwd.")
        results = results + adjoint_results
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(environment=env, argv=list(argv) if argv is not None else sys.argv[1:],
                           results=results), fh, indent=2, default=str)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The adjoint suite: forward + backward through ``odeint_adjoint``, odecore against torchdiffeq.

One run is a training step's worth of work: ``odeint_adjoint`` forward, the loss and
``loss.backward()`` (the augmented adjoint system solved backwards in time, one vector-Jacobian
product of ``func`` per evaluation). Per implementation: forward / backward / total wall times,
nfe and steps of both passes, the time of one VJP evaluation (the user-function part of one
backward evaluation, the same for every implementation) and the backward loop time per step
= (backward time - backward nfe * VJP time) / backward steps. Columns: benchmarks/README.md.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from odecore.adjoint import vector_jacobian_product

from .counting import AdjointCountingFunc
from .impls import ADJOINT_IMPLEMENTATIONS, BASELINE, CALLBACK_WARNING, AdjointImplementation
from .problems import ADJOINT_PROBLEMS, AdjointInstance, get_adjoint_problem, prepare_y0
from .runner import dtype_name, progress_logger
from .timing import loop_per_step, sample_call_times, synchronize


def _zero_grads(tensors):
    for x in tensors:
        x.grad = None


def count_adjoint(impl: AdjointImplementation, inst: AdjointInstance) -> dict[str, Any]:
    """One forward + backward with a counting wrapper: nfe and steps of both passes, and the
    gradients (y0 first, then the parameters of func)."""
    cf = AdjointCountingFunc(inst.func)
    y0 = prepare_y0(inst, True)
    leaves = inst.leaves(y0)
    _zero_grads(leaves)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CALLBACK_WARNING)
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


def vjp_samples(
    inst: AdjointInstance, *, min_calls: int, max_calls: int, budget_s: float, warmup: int = 3
) -> list[float]:
    """Wall times of one VJP evaluation: func(t0, y) with a graph, then the autograd engine
    run w.r.t. (y, *params) as directly as Python can call it (the call under
    torch.autograd.grad, without its argument checks) -- what each backward evaluation
    spends in the user's function."""
    t0 = inst.t[0]
    params = tuple(p for p in inst.func.parameters() if p.requires_grad)
    y_base = inst.y0.detach()
    neg_a = -torch.ones_like(y_base)

    def vjp():
        with torch.enable_grad():
            y = y_base.detach().requires_grad_(True)
            vector_jacobian_product(inst.func(t0, y), (y,) + params, neg_a)

    return sample_call_times(
        vjp, (), inst.y0.device, min_calls=min_calls, max_calls=max_calls, budget_s=budget_s, warmup=warmup
    )


def time_forward_backward(impl: AdjointImplementation, inst: AdjointInstance) -> tuple:
    """One timed forward + backward: (forward seconds, backward seconds)."""
    device = inst.y0.device
    y0 = prepare_y0(inst, True)
    _zero_grads(inst.leaves(y0))
    synchronize(device)
    a = time.perf_counter()
    sol, _ = impl.solve(inst, inst.func, y0)
    loss = inst.loss(sol)
    synchronize(device)
    b = time.perf_counter()
    loss.backward()
    synchronize(device)
    c = time.perf_counter()
    return b - a, c - b


def max_rel_grad_diff(grads, ref) -> float | None:
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


@dataclass
class _AdjointCase:
    """One implementation on one adjoint problem, counted and warmed up, collecting its timings."""

    impl: AdjointImplementation
    counts: dict[str, Any]
    fwd: list[float] = field(default_factory=list)
    bwd: list[float] = field(default_factory=list)


_COMPARISON_KEYS = (
    "fb_speedup_vs_torchdiffeq",
    "bwd_loop_speedup_vs_torchdiffeq",
    "bwd_nfe_ratio_vs_torchdiffeq",
    "max_rel_grad_diff_vs_torchdiffeq",
)


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
    log = progress_logger(verbose)
    results: list[dict[str, Any]] = []
    for pname in problems:
        inst = get_adjoint_problem(pname).make(device, dtype)
        where = dict(device=str(device), dtype=dtype_name(dtype))
        results.extend(_bench_adjoint_problem(inst, where, impl_names, repeats, warmup, log))
    return results


def _bench_adjoint_problem(
    inst: AdjointInstance, where: dict[str, str], impl_names, repeats: int, warmup: int, log
) -> list[dict[str, Any]]:
    """The rows of one adjoint problem, in the order of ``impl_names``; ``where``: the rows'
    device and dtype columns."""
    rows: dict[str, dict[str, Any]] = {}
    cases: list[_AdjointCase] = []
    for iname in impl_names:
        impl = ADJOINT_IMPLEMENTATIONS[iname]
        if not impl.available():
            log(f"{inst.name}/{iname}: not installed, skipped")
            continue
        log(f"{inst.name}/{iname}: count + warm-up")
        try:
            counts = count_adjoint(impl, inst)
            for _ in range(warmup):
                time_forward_backward(impl, inst)
            cases.append(_AdjointCase(impl, counts))
        except Exception as e:  # keep going; report the failure in the table
            rows[iname] = dict(
                problem=inst.name,
                impl=iname,
                suite="adjoint",
                method=inst.method,
                **where,
                error=f"{type(e).__name__}: {e}",
            )
            log(f"{inst.name}/{iname} FAILED: {rows[iname]['error']}")
    vjp_times = _timed_adjoint_rounds(inst, cases, rows, repeats, log)
    grads = {}
    for case in cases:
        if case.impl.name in rows:
            continue
        grads[case.impl.name] = case.counts.pop("grads")
        rows[case.impl.name] = _adjoint_row(inst, where, case, vjp_times)
    ordered = [rows[n] for n in impl_names if n in rows]
    _compare_with_torchdiffeq(ordered, rows, grads)
    return ordered


def _timed_adjoint_rounds(inst: AdjointInstance, cases: list[_AdjointCase], rows, repeats: int, log) -> list[float]:
    """The timed rounds: VJP calls, then one forward + backward of every case in rotating order.
    Returns the VJP times; a case that fails gets its error row in ``rows``."""
    vjp_times: list[float] = []
    for r in range(repeats):
        vjp_times += vjp_samples(inst, min_calls=20, max_calls=1000, budget_s=0.05, warmup=2)
        k = r % max(1, len(cases))
        for case in cases[k:] + cases[:k]:
            if case.impl.name in rows:
                continue
            try:
                f_s, b_s = time_forward_backward(case.impl, inst)
                case.fwd.append(f_s)
                case.bwd.append(b_s)
            except Exception as e:
                rows[case.impl.name] = dict(
                    problem=inst.name, impl=case.impl.name, suite="adjoint", error=f"{type(e).__name__}: {e}"
                )
        log(f"{inst.name}: round {r + 1}/{repeats} done")
    return vjp_times


def _adjoint_row(
    inst: AdjointInstance, where: dict[str, str], case: _AdjointCase, vjp_times: Sequence[float]
) -> dict[str, Any]:
    vjp = statistics.median(vjp_times)
    counts, fwd, bwd = case.counts, case.fwd, case.bwd
    fb = [a + b for a, b in zip(fwd, bwd)]
    row = dict(
        problem=inst.name,
        impl=case.impl.name,
        suite="adjoint",
        method=inst.method,
        rtol=inst.rtol,
        atol=inst.atol,
        **where,
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
    return row


def _compare_with_torchdiffeq(ordered, rows, grads) -> None:
    """Adds the speed-ups, the backward nfe ratio and the gradient difference vs torchdiffeq."""
    base = rows.get(BASELINE)
    if base is not None and "error" in base:
        base = None
    for r in ordered:
        for key in _COMPARISON_KEYS:
            r[key] = None
        if base is None or "error" in r:
            continue
        r["fb_speedup_vs_torchdiffeq"] = base["fb_ms"] / r["fb_ms"]
        bl, rl = base.get("bwd_loop_us_per_step"), r.get("bwd_loop_us_per_step")
        if bl is not None and rl is not None and rl > 0:
            r["bwd_loop_speedup_vs_torchdiffeq"] = bl / rl
        if base.get("bwd_nfe"):
            r["bwd_nfe_ratio_vs_torchdiffeq"] = r["bwd_nfe"] / base["bwd_nfe"]
        r["max_rel_grad_diff_vs_torchdiffeq"] = max_rel_grad_diff(grads.get(r["impl"]), grads.get(BASELINE))

"""The solve suite's runner: every problem x installed implementation, measured side by side.

Per case one counted solve (nfe, steps, op and host-read counts), the warm-up solves and, on
CUDA, one profiled solve; then rounds that each time a batch of ``func`` calls and one solve of
every implementation in rotating order, so that all of them see the same machine load. The
result rows carry the loop time per step = (solve - nfe * func) / steps (the compile time of a
whole-program implementation instead) and the comparison with torchdiffeq and odecore's
reference path (see benchmarks/README.md). Nothing here asserts on timings.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import odecore

from .counting import (
    BudgetExceeded,
    CountingFunc,
    CountingWindow,
    CudaSyncWarnings,
    OpCounter,
    SyncSplittingFunc,
    count_kernels,
    per,
)
from .impls import BASELINE, IMPLEMENTATIONS, Implementation, default_implementations, get_implementation
from .problems import PROBLEMS, Instance, Problem, get_problem, prepare_y0
from .timing import func_samples, grad_context, loop_per_step, time_solve, timed_call


def dtype_name(dtype: torch.dtype) -> str:
    """'float64' for torch.float64 (as the tables and the JSON write it)."""
    return str(dtype).replace("torch.", "")


def progress_logger(verbose: bool) -> Callable[[str], None]:
    """A function printing ``[bench] message`` progress lines on stderr (a no-op unless verbose)."""

    def log(msg: str) -> None:
        if verbose:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

    return log


def count_solve(
    impl: Implementation,
    inst: Instance,
    *,
    grad: bool = False,
    count_ops: bool = True,
    deadline: float | None = None,
    cuda_syncs: bool | None = None,
) -> dict[str, Any]:
    """One solve with a counting wrapper: nfe, steps, accepted/rejected, solution. (A whole-program
    implementation counts nothing itself: nfe and steps come from its statistics, no ops.)

    With ``count_ops`` (default) the solve runs inside an :class:`OpCounter`: adds
    ``solver_ops``/``solver_ops_per_step`` (ops outside ``func``), ``func_ops``/``func_ops_per_eval``,
    ``host_reads``/``host_reads_per_step`` (the solver's), ``func_host_reads``,
    ``custom_ops_per_step`` (non-ATen ops, e.g. ``odecore::``), ``top_solver_ops``.
    ``cuda_syncs`` (default: y0 on CUDA) also counts the synchronising calls that
    ``torch.cuda.set_sync_debug_mode('warn')`` flags outside ``func``: ``cuda_syncs_per_step``.
    ``deadline``: a ``time.perf_counter()`` value past which ``func`` raises BudgetExceeded.
    """
    y0 = prepare_y0(inst, grad)
    if cuda_syncs is None:
        cuda_syncs = y0.device.type == "cuda"
    if impl.whole_program:  # the dispatcher sees one program, not the solver's ops
        count_ops = cuda_syncs = False
    counter = OpCounter() if count_ops else None
    syncs = CudaSyncWarnings() if cuda_syncs else None
    if syncs is not None:
        cf = SyncSplittingFunc(inst.func, counter, deadline, syncs)
    else:
        cf = CountingFunc(inst.func, counter=counter, deadline=deadline)
    window = CountingWindow(counter, syncs) if (counter is not None or syncs is not None) else None
    with grad_context(grad):
        res = impl.count(inst, y0, cf=cf, counter=window)
    steps = res.get("steps")
    if counter is not None:
        res.update(counter.summary(steps, res.get("nfe")))
    if syncs is not None and syncs.count is not None:
        n = syncs.count - cf.func_cuda_syncs
        res.update(cuda_syncs=n, cuda_syncs_per_step=per(n, steps), func_cuda_syncs=cf.func_cuda_syncs)
    return res


_SYNC_EVERY_SUPPORT: dict[tuple, tuple] = {}


def sync_every_support(inst: Instance, k: int) -> tuple:
    """(supported, why not): whether this odecore takes ``options={'sync_every': k}`` for
    ``inst``'s method and options (a tiny solve; no error and no 'Unexpected arguments' warning)."""
    key = (inst.method, tuple(sorted(inst.options)), str(inst.y0.device), int(k))
    if key in _SYNC_EVERY_SUPPORT:
        return _SYNC_EVERY_SUPPORT[key]
    try:
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


def max_abs_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    """max |a - b| over two solutions (on the CPU, in float64); nan when their shapes differ."""
    if a is None or b is None:
        return None
    if not (torch.is_tensor(a) and torch.is_tensor(b)):
        return None
    a = a.detach().to("cpu", torch.float64)
    b = b.detach().to("cpu", torch.float64)
    if a.shape != b.shape:
        return float("nan")
    return float((a - b).abs().max())


@dataclass
class _Settings:
    """What every case of one ``run`` shares."""

    device: torch.device
    dtype: torch.dtype
    grad: bool
    repeats: int = 5
    warmup: int = 1
    count_ops: bool = True
    kernels: bool = False
    case_budget_s: float | None = None
    suite: str = "solve"


@dataclass
class _Case:
    """One implementation on one problem, counted and warmed up, collecting its timed solves."""

    impl: Implementation
    counts: dict[str, Any]
    solution: torch.Tensor | None
    run: Callable[[], Any]
    reps: int
    notes: list[str]
    times: list[float] = field(default_factory=list)


def _base_row(problem: Problem, impl_name: str, inst: Instance, settings: _Settings) -> dict[str, Any]:
    return dict(
        problem=problem.name,
        impl=impl_name,
        method=inst.method,
        device=str(settings.device),
        dtype=dtype_name(settings.dtype),
        grad=settings.grad,
        batch=int(inst.y0.shape[0]),
    )


def _error_row(problem, impl_name, inst, settings, e) -> dict[str, Any]:
    return dict(_base_row(problem, impl_name, inst, settings), error=f"{type(e).__name__}: {e}")


def _skip_row(problem, impl_name, inst, settings, why) -> dict[str, Any]:
    return dict(_base_row(problem, impl_name, inst, settings), skipped=why, notes=[why])


def first_call(impl: Implementation, run_: Callable[[], Any], device: torch.device, grad: bool) -> float | None:
    """Seconds of the first call of a whole-program implementation's solve (it compiles; the
    first of its warm-up calls); None for the others, whose first call is nothing special."""
    if not impl.whole_program:
        return None
    with grad_context(grad):
        return timed_call(run_, device)


def _result(
    problem: Problem,
    impl: Implementation,
    inst: Instance,
    settings: _Settings,
    counts: dict[str, Any],
    func_times: Sequence[float],
    times: Sequence[float],
) -> dict[str, Any]:
    func_med = statistics.median(func_times)
    best, med = min(times), statistics.median(times)
    nfe, steps = counts.get("nfe"), counts.get("steps")
    res = dict(
        _base_row(problem, impl.name, inst, settings),
        **counts,
        func_us=func_med * 1e6,
        func_us_min=min(func_times) * 1e6,
        func_calls_timed=len(func_times),
        solve_ms=best * 1e3,
        solve_ms_median=med * 1e3,
        solve_ms_all=[x * 1e3 for x in times],
    )
    if impl.whole_program:  # func runs inside the program: its time has no loop / func split
        res["loop_us_per_step"] = res["loop_us_per_step_median"] = None
        first = counts.get("first_call_s")
        res["compile_s"] = None if first is None else first - best
        return res
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
    y0 = prepare_y0(inst, grad)
    ft = func_samples(inst, y0, grad=grad, min_calls=30, max_calls=2000, budget_s=0.25)
    run_ = impl.prepare(inst, inst.func, y0)
    first = first_call(impl, run_, device, grad)
    counts = count_solve(impl, inst, grad=grad, count_ops=count_ops)
    counts.pop("solution", None)
    if first is not None:
        counts["first_call_s"] = first
    times = time_solve(run_, device, grad=grad, repeats=repeats, warmup=warmup)
    return _result(problem, impl, inst, _Settings(device, dtype, grad), counts, ft, times)


def _consistency_notes(counts: dict[str, Any]) -> list[str]:
    """Disagreements between the counting wrapper and a library's own statistics."""
    notes = []
    if counts.get("stats_nfe") is not None and counts["stats_nfe"] != counts.get("nfe"):
        notes.append(f"stats nfe {counts['stats_nfe']} != counted nfe {counts.get('nfe')}")
    acc, rej, steps = counts.get("n_accepted"), counts.get("n_rejected"), counts.get("steps")
    if None not in (acc, rej, steps) and acc + rej != steps:
        notes.append(f"n_accepted {acc} + n_rejected {rej} != n_steps {steps}")
    if counts.get("compiles") not in (None, 1):
        notes.append(f"{counts['compiles']} compiles of its program (recompiled)")
    return notes


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

_COMPARISON_KEYS = (
    "loop_speedup_vs_torchdiffeq",
    "loop_speedup_vs_reference",
    "solve_speedup_vs_torchdiffeq",
    "solve_speedup_vs_reference",
    "max_abs_diff_vs_torchdiffeq",
    "max_abs_diff_vs_reference",
)


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
    """Benchmark every problem x available implementation (``impls``; default: all but the
    whole-program ones, see :func:`default_implementations`).

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

    Adds ``loop_speedup_vs_torchdiffeq``/``_vs_reference``, ``solve_speedup_vs_torchdiffeq``/
    ``_vs_reference`` and ``max_abs_diff_vs_torchdiffeq``/``_vs_reference`` to every row, and
    ``notes`` (e.g. step counts that differ from the peers'). A whole-program implementation's row
    has ``first_call_s`` (its first, compiling call) and ``compile_s`` (that minus the best solve)
    instead of a loop time.
    """
    device = torch.device(device)
    plist = [_resolve_problem(p) for p in (problems if problems else list(PROBLEMS))]
    if impls:
        impl_names = list(impls)
        for n in impl_names:
            get_implementation(n)
    else:
        impl_names = default_implementations()
    kernels = device.type == "cuda" if kernels is None else kernels
    settings = _Settings(device, dtype, grad, repeats, warmup, count_ops, kernels, case_budget_s, suite)
    log = progress_logger(verbose)
    results: list[dict[str, Any]] = []
    over_budget: dict[tuple, str] = {}  # (family, impl) -> the problem it ran out of budget on
    for problem in plist:
        results.extend(_bench_problem(problem, impl_names, settings, batch, sync_every, over_budget, log))
        if on_problem is not None:
            on_problem(list(results))
    return results


def _bench_problem(problem, impl_names, settings, batch, sync_every, over_budget, log) -> list[dict[str, Any]]:
    """The rows of one problem, in the order of ``impl_names``."""
    inst = problem.make(settings.device, settings.dtype, batch=batch)
    y0 = prepare_y0(inst, settings.grad)
    odecore_notes = _apply_sync_every(inst, sync_every, log)
    rows: dict[str, dict[str, Any]] = {}
    cases: list[_Case] = []
    for iname in impl_names:
        outcome = _prepare_case(problem, IMPLEMENTATIONS[iname], inst, y0, settings, odecore_notes, over_budget, log)
        if isinstance(outcome, _Case):
            cases.append(outcome)
        elif outcome is not None:
            rows[iname] = outcome
    func_times = _timed_rounds(problem, inst, y0, settings, cases, rows, log)
    solutions = {}
    for case in cases:
        if case.impl.name in rows:
            continue
        row = _result(problem, case.impl, inst, settings, case.counts, func_times, case.times)
        row["notes"] = case.notes
        rows[case.impl.name] = row
        solutions[case.impl.name] = case.solution
    ordered = [rows[n] for n in impl_names if n in rows]
    _compare_with_peers(problem, ordered, rows, solutions, settings.suite)
    return ordered


def _apply_sync_every(inst: Instance, sync_every: int | None, log) -> list[str]:
    """Sets odecore's ``sync_every`` option on ``inst`` where this odecore takes it; else the note."""
    if not sync_every:
        return []
    ok, why = sync_every_support(inst, sync_every)
    if ok:
        inst.odecore_options["sync_every"] = int(sync_every)
        return []
    log(f"{inst.name}: --sync-every not taken by this odecore ({why[:100]})")
    return [f"sync_every ignored: {why[:100]}"]


def _prepare_case(problem, impl, inst, y0, settings, odecore_notes, over_budget, log) -> _Case | dict[str, Any] | None:
    """The case of one implementation on one problem: counted and warmed up (a :class:`_Case`),
    or its skipped / error row, or None when the library is not installed."""
    pname, iname = problem.name, impl.name
    family = problem.family or pname
    if not impl.available():
        log(f"{pname}/{iname}: not installed, skipped")
        return None
    if not impl.applicable(inst):
        log(f"{pname}/{iname}: not applicable, skipped")
        return _skip_row(problem, iname, inst, settings, impl.why_not(inst))
    if (family, iname) in over_budget:
        why = f"skipped: over the {settings.case_budget_s:g} s budget at {over_budget[family, iname]}"
        log(f"{pname}/{iname}: {why}")
        return _skip_row(problem, iname, inst, settings, why)
    log(f"{pname}/{iname}: count + warm-up")
    try:
        return _count_and_warm_up(problem, impl, inst, y0, settings, odecore_notes, log)
    except Exception as e:  # keep going; report the failure in the table
        if _over_budget(e):
            over_budget[family, iname] = pname
            why = f"skipped: one solve > {settings.case_budget_s:g} s (--case-budget)"
            log(f"{pname}/{iname}: {why}")
            return _skip_row(problem, iname, inst, settings, why)
        row = _error_row(problem, iname, inst, settings, e)
        log(f"{pname}/{iname} FAILED: {row['error']}")
        return row


def _count_and_warm_up(problem, impl, inst, y0, settings, odecore_notes, log) -> _Case:
    start = time.perf_counter()
    deadline = None if settings.case_budget_s is None else start + settings.case_budget_s
    run_ = impl.prepare(inst, inst.func, y0)
    first = first_call(impl, run_, settings.device, settings.grad)
    count_start = time.perf_counter()
    counts = count_solve(impl, inst, grad=settings.grad, count_ops=settings.count_ops, deadline=deadline)
    t_count = time.perf_counter() - count_start
    solution = counts.pop("solution", None)
    if first is not None:
        counts["first_call_s"] = first
    is_odecore = impl.name.startswith("odecore")
    notes = list(odecore_notes) if is_odecore else []
    if is_odecore and "sync_every" in inst.odecore_options:
        counts["sync_every"] = inst.odecore_options["sync_every"]
    for note in _consistency_notes(counts):
        log(f"{problem.name}/{impl.name}: WARNING {note}")
        notes.append(note)
    n_warm = settings.warmup
    if settings.case_budget_s is not None and n_warm and t_count > settings.case_budget_s / 4:
        n_warm = 0  # the counting solve was the warm-up
    with grad_context(settings.grad):
        warm_times = [timed_call(run_, settings.device) for _ in range(n_warm)]
    reps = settings.repeats
    if settings.case_budget_s is not None:
        est = min(warm_times) if warm_times else t_count
        left = settings.case_budget_s - (time.perf_counter() - start)
        reps = max(1, min(settings.repeats, int(left / max(est, 1e-9))))
        if reps < settings.repeats:
            notes.append(f"{reps} of {settings.repeats} repeats (--case-budget {settings.case_budget_s:g} s)")
    _count_kernels_per_step(run_, settings, counts, notes)
    return _Case(impl, counts, solution, run_, reps, notes)


def _count_kernels_per_step(run_, settings: _Settings, counts: dict[str, Any], notes: list[str]) -> None:
    """With ``settings.kernels``, one profiled solve: its counts in ``counts['profile']`` and, on CUDA,
    ``kernels_per_step`` etc. (None elsewhere or when not profiled)."""
    steps = counts.get("steps")
    for key in _PER_STEP_KERNEL_KEYS:
        counts[f"{key}_per_step"] = None
    if not settings.kernels:
        return
    try:
        kc = count_kernels(run_, settings.device, grad=settings.grad)
        counts["profile"] = kc
        if settings.device.type == "cuda":
            for key in _PER_STEP_KERNEL_KEYS:
                counts[f"{key}_per_step"] = per(kc[key], steps)
            if not kc["kernels"]:
                notes.append("the profiler saw no CUDA kernels")
                counts["kernels_per_step"] = None
    except Exception as e:
        notes.append(f"profiler failed: {type(e).__name__}: {str(e)[:80]}")


def _timed_rounds(problem, inst, y0, settings: _Settings, cases: list[_Case], rows, log) -> list[float]:
    """The timed rounds: func calls, then one solve of every live case in rotating order.
    Returns the func times; a case whose solve fails gets its error row in ``rows``."""
    func_times: list[float] = []
    for r in range(settings.repeats):
        live = [c for c in cases if r < c.reps and c.impl.name not in rows]
        if not live and func_times:
            break
        func_times += func_samples(inst, y0, grad=settings.grad, min_calls=20, max_calls=1000, budget_s=0.05, warmup=2)
        k = r % max(1, len(live))
        for case in live[k:] + live[:k]:
            try:
                with grad_context(settings.grad):
                    case.times.append(timed_call(case.run, settings.device))
            except Exception as e:
                rows[case.impl.name] = _error_row(problem, case.impl.name, inst, settings, e)
        log(f"{problem.name}: round {r + 1}/{settings.repeats} done")
    return func_times


def _compare_with_peers(problem: Problem, ordered, rows, solutions, suite: str) -> None:
    """Adds the suite, family and comparison columns (vs torchdiffeq and odecore's reference
    path) and notes on differing step counts to every row of one problem."""
    base = rows.get(BASELINE) if _good(rows.get(BASELINE)) else None
    ref = rows.get("odecore-reference") if _good(rows.get("odecore-reference")) else None
    for r in ordered:
        r["suite"] = suite
        if problem.family:
            r["family"], r["size"] = problem.family, problem.size
        r.setdefault("notes", [])
        for key in _COMPARISON_KEYS:
            r[key] = None
        if not _good(r):
            continue
        for other, tag in ((base, "torchdiffeq"), (ref, "reference")):
            if other is None:
                continue
            bl, rl = other.get("loop_us_per_step"), r.get("loop_us_per_step")
            if bl is not None and rl is not None and rl > 0:
                r[f"loop_speedup_vs_{tag}"] = bl / rl
            r[f"solve_speedup_vs_{tag}"] = other["solve_ms"] / r["solve_ms"] if r["solve_ms"] > 0 else None
            r[f"max_abs_diff_vs_{tag}"] = max_abs_diff(solutions.get(r["impl"]), solutions.get(other["impl"]))
        other = base or ref
        if other is not None and other is not r and r.get("steps") != other.get("steps"):
            control = IMPLEMENTATIONS[r["impl"]].step_control if r["impl"] in IMPLEMENTATIONS else ""
            why = f" ({control})" if control else ""
            r["notes"].append(f"steps differ from {other['impl']}: {r.get('steps')} vs {other.get('steps')}{why}")

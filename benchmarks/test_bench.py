"""pytest-benchmark suite: every benchmark problem x every solver implementation, and
every adjoint problem x adjoint implementation (forward + backward, `test_adjoint`).

Run with::

    python -m pytest benchmarks --benchmark-only

The problems, implementations, nfe/step counting and the loop-time formula all
come from :mod:`odecore.bench` (the engine behind ``odecore bench``).  Each
case records ``nfe``, ``steps``, ``func_us`` and ``loop_us_per_step`` (from the
benchmark's minimum round), and the op counts of its counting solve
(``solver_ops_per_step``, ``host_reads_per_step``, ``func_ops_per_eval``, ...) in
``benchmark.extra_info``; a summary table is printed at the end of the session. The
whole-program implementations (odecore-compiled, diffrax; diffrax skipped without jax) record
their first, compiling call instead of a loop time: ``first_call_s`` and ``compile_s``.
Nothing here asserts on timings.  (The GPU suite runs through ``odecore bench --suite gpu``.)
"""

import os
import statistics

import pytest
import torch

from odecore import bench

DEVICE = torch.device(os.environ.get("ODECORE_BENCH_DEVICE", "cpu"))
DTYPE = bench.DTYPES[os.environ.get("ODECORE_BENCH_DTYPE", "float64")]
GRAD = os.environ.get("ODECORE_BENCH_GRAD", "0") not in ("", "0")
ROUNDS = int(os.environ.get("ODECORE_BENCH_ROUNDS", "3"))
THREADS = os.environ.get("ODECORE_BENCH_THREADS")
if THREADS:
    torch.set_num_threads(int(THREADS))

_cache = {}


def _problem_state(name):
    """Instance and torchdiffeq reference solution, once per problem."""
    if name not in _cache:
        inst = bench.get_problem(name).make(DEVICE, DTYPE)
        ref = None
        tdq = bench.IMPLEMENTATIONS[bench.BASELINE]
        if tdq.available():
            ref = bench.count_solve(tdq, inst, grad=GRAD)["solution"]
        _cache[name] = (inst, ref)
    return _cache[name]


def _func_samples(inst, y0):
    return bench.func_samples(inst, y0, grad=GRAD, min_calls=20, max_calls=1000, budget_s=0.1)


@pytest.mark.parametrize("impl_name", list(bench.IMPLEMENTATIONS))
@pytest.mark.parametrize("problem_name", list(bench.PROBLEMS))
def test_solve(benchmark, bench_rows, problem_name, impl_name):
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    impl = bench.IMPLEMENTATIONS[impl_name]
    if not impl.available():
        pytest.skip(f"{impl.module} not installed")
    inst, ref = _problem_state(problem_name)
    if not impl.applicable(inst):
        pytest.skip(f"{impl_name} does not support {problem_name} ({inst.method})")

    y0 = bench.prepare_y0(inst, GRAD)
    run = impl.prepare(inst, inst.func, y0)
    first_call_s = bench.first_call(impl, run, DEVICE, GRAD)  # the compile, before any other call
    counts = bench.count_solve(impl, inst, grad=GRAD)
    solution = counts.pop("solution", None)

    benchmark.group = problem_name
    # func time sampled right before and after this case's rounds, so that the
    # loop-time subtraction sees the same machine load as the solves
    func_times = _func_samples(inst, y0)
    with bench.grad_context(GRAD):
        out = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    func_times += _func_samples(inst, y0)
    ft = statistics.median(func_times)
    assert out is not None

    info = dict(
        problem=problem_name,
        impl=impl_name,
        method=inst.method,
        device=str(DEVICE),
        dtype=str(DTYPE).replace("torch.", ""),
        grad=GRAD,
        func_us=ft * 1e6,
        max_abs_diff_vs_torchdiffeq=bench.max_abs_diff(solution, ref),
    )
    info.update({k: v for k, v in counts.items() if isinstance(v, (int, float, bool, type(None)))})
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:  # None under --benchmark-disable
        info["solve_ms"] = stats.min * 1e3
        info["solve_ms_median"] = stats.median * 1e3
        if impl.whole_program:  # func runs inside the program: no loop / func split
            info["loop_us_per_step"] = None
            info["first_call_s"] = first_call_s
            info["compile_s"] = first_call_s - stats.min
        else:
            lp = bench.loop_per_step(stats.min, counts.get("nfe"), ft, counts.get("steps"))
            info["loop_us_per_step"] = None if lp is None else lp * 1e6
        bench_rows.append(dict(info))
    benchmark.extra_info.update(info)


# --------------------------------------------------------------------------- #
# Adjoint: forward + backward through odeint_adjoint (odecore.bench "adjoint" suite)
# --------------------------------------------------------------------------- #

_adjoint_cache = {}


def _adjoint_state(name):
    """Instance and torchdiffeq's counts (with its gradients), once per adjoint problem."""
    if name not in _adjoint_cache:
        inst = bench.get_adjoint_problem(name).make(DEVICE, DTYPE)
        ref = None
        tdq = bench.ADJOINT_IMPLEMENTATIONS[bench.BASELINE]
        if tdq.available():
            ref = bench.count_adjoint(tdq, inst)
        _adjoint_cache[name] = (inst, ref)
    return _adjoint_cache[name]


class _AdjointSummary:
    """Prints the adjoint rows as their own table at the end of the session (they are kept
    out of `bench_rows`, whose summary in conftest.py knows only the solve problems)."""

    def __init__(self):
        self.rows = []

    def pytest_terminal_summary(self, terminalreporter):
        rows = self.rows
        if not rows:
            return
        base = {r["problem"]: r for r in rows if r["impl"] == bench.BASELINE}
        for r in rows:
            b = base.get(r["problem"]) or {}
            r["fb_speedup_vs_torchdiffeq"] = r["bwd_loop_speedup_vs_torchdiffeq"] = None
            if b.get("fb_ms") and r.get("fb_ms"):
                r["fb_speedup_vs_torchdiffeq"] = b["fb_ms"] / r["fb_ms"]
            bl, rl = b.get("bwd_loop_us_per_step"), r.get("bwd_loop_us_per_step")
            if bl is not None and rl is not None and rl > 0:
                r["bwd_loop_speedup_vs_torchdiffeq"] = bl / rl
        terminalreporter.write_sep("-", "odecore adjoint forward + backward (from the benchmark minimum)")
        terminalreporter.write_line(bench.format_adjoint_table(rows))


@pytest.fixture(scope="session")
def adjoint_rows(request):
    """Adjoint result rows, printed as a table at the end of the session."""
    summary = _AdjointSummary()
    request.config.pluginmanager.register(summary, "odecore_adjoint_summary")
    return summary.rows


@pytest.mark.parametrize("impl_name", list(bench.ADJOINT_IMPLEMENTATIONS))
@pytest.mark.parametrize("problem_name", list(bench.ADJOINT_PROBLEMS))
def test_adjoint(benchmark, adjoint_rows, problem_name, impl_name):
    """One round = odeint_adjoint forward + loss + loss.backward()."""
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    impl = bench.ADJOINT_IMPLEMENTATIONS[impl_name]
    if not impl.available():
        pytest.skip(f"{impl.module} not installed")
    inst, ref = _adjoint_state(problem_name)
    counts = bench.count_adjoint(impl, inst)
    grads = counts.pop("grads")
    fwd_times, bwd_times = [], []

    def run():
        fwd_s, bwd_s = bench.time_forward_backward(impl, inst)
        fwd_times.append(fwd_s)
        bwd_times.append(bwd_s)
        return fwd_s + bwd_s

    benchmark.group = problem_name
    vjp_times = bench.vjp_samples(inst, min_calls=20, max_calls=1000, budget_s=0.1)
    out = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    vjp_times += bench.vjp_samples(inst, min_calls=20, max_calls=1000, budget_s=0.1)
    vjp = statistics.median(vjp_times)
    assert out is not None

    info = dict(
        problem=problem_name,
        impl=impl_name,
        suite="adjoint",
        method=inst.method,
        device=str(DEVICE),
        dtype=str(DTYPE).replace("torch.", ""),
        vjp_us=vjp * 1e6,
        max_rel_grad_diff_vs_torchdiffeq=bench.max_rel_grad_diff(grads, ref and ref["grads"]),
    )
    info.update({k: v for k, v in counts.items() if isinstance(v, (int, float, bool, type(None)))})
    if ref is not None and ref.get("bwd_nfe"):
        info["bwd_nfe_ratio_vs_torchdiffeq"] = counts["bwd_nfe"] / ref["bwd_nfe"]
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:  # None under --benchmark-disable
        bwd = min(bwd_times[1:] or bwd_times)  # without the warm-up round
        info["fwd_ms"] = min(fwd_times[1:] or fwd_times) * 1e3
        info["fb_ms"] = stats.min * 1e3
        info["fb_ms_median"] = stats.median * 1e3
        info["bwd_ms"] = bwd * 1e3
        lp = bench.adjoint_loop_per_step(bwd, counts.get("bwd_nfe"), vjp, counts.get("bwd_steps"))
        info["bwd_loop_us_per_step"] = None if lp is None else lp * 1e6
        adjoint_rows.append(dict(info))
    benchmark.extra_info.update(info)

"""pytest-benchmark suite: every benchmark problem x every solver implementation.

Run with::

    python -m pytest benchmarks --benchmark-only

The problems, implementations, nfe/step counting and the loop-time formula all
come from :mod:`odecore.bench` (the engine behind ``odecore bench``).  Each
case records ``nfe``, ``steps``, ``func_us`` and ``loop_us_per_step`` (from the
benchmark's minimum round) in ``benchmark.extra_info``; a summary table is
printed at the end of the session.  Nothing here asserts on timings.
"""

import os
import statistics

import pytest
import torch

from odecore import bench

DEVICE = torch.device(os.environ.get("ODECORE_BENCH_DEVICE", "cpu"))
DTYPE = bench._DTYPES[os.environ.get("ODECORE_BENCH_DTYPE", "float64")]
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
    return bench._func_samples(inst, y0, grad=GRAD, min_calls=20, max_calls=1000, budget_s=0.1)


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

    counts = bench.count_solve(impl, inst, grad=GRAD)
    solution = counts.pop("solution", None)
    y0 = bench._prepare_y0(inst, GRAD)
    run = impl.prepare(inst, inst.func, y0)

    benchmark.group = problem_name
    # func time sampled right before and after this case's rounds, so that the
    # loop-time subtraction sees the same machine load as the solves
    func_times = _func_samples(inst, y0)
    with bench._grad_context(GRAD):
        out = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    func_times += _func_samples(inst, y0)
    ft = statistics.median(func_times)
    assert out is not None

    info = dict(problem=problem_name, impl=impl_name, method=inst.method,
                device=str(DEVICE), dtype=str(DTYPE).replace("torch.", ""), grad=GRAD,
                func_us=ft * 1e6,
                max_abs_diff_vs_torchdiffeq=bench._max_abs_diff(solution, ref))
    info.update({k: v for k, v in counts.items() if isinstance(v, (int, float, bool, type(None)))})
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:  # None under --benchmark-disable
        info["solve_ms"] = stats.min * 1e3
        info["solve_ms_median"] = stats.median * 1e3
        lp = bench.loop_per_step(stats.min, counts.get("nfe"), ft, counts.get("steps"))
        info["loop_us_per_step"] = None if lp is None else lp * 1e6
        bench_rows.append(dict(info))
    benchmark.extra_info.update(info)

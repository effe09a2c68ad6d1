"""pytest configuration for the odecore benchmarks.

The benchmarks are *not* part of the test suite: this directory is only
collected when it is asked for explicitly (``python -m pytest benchmarks ...``,
a path inside it, ``--benchmark-only``, or ``ODECORE_BENCH=1``).  A bare
``pytest`` from the repository root therefore skips it.

Knobs (environment variables, so they work however pytest is invoked):

* ``ODECORE_BENCH_DEVICE``  cpu (default) or cuda
* ``ODECORE_BENCH_DTYPE``   float64 (default) or float32
* ``ODECORE_BENCH_GRAD``    1 = autograd recording (y0 requires grad, no backward)
* ``ODECORE_BENCH_ROUNDS``  timed rounds per case (default 3; one warm-up round is added)
* ``ODECORE_BENCH_THREADS`` torch.set_num_threads (default: torch's default)
"""

import os
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def _explicitly_requested(config) -> bool:
    if os.environ.get("ODECORE_BENCH", "") not in ("", "0"):
        return True
    try:
        if config.getoption("benchmark_only"):
            return True
    except ValueError:
        pass
    root = Path(config.invocation_params.dir)
    for arg in config.args:
        p = (root / str(arg).split("::", 1)[0]).resolve()
        if p == _HERE or _HERE in p.parents:
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    if collection_path.name == "conftest.py":
        return None
    if not _explicitly_requested(config):
        return True
    return None


def pytest_configure(config):
    config._odecore_bench_rows = []


@pytest.fixture(scope="session")
def bench_rows(request):
    """Result rows collected by the benchmarks; printed as a table at the end."""
    return request.config._odecore_bench_rows


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = getattr(config, "_odecore_bench_rows", None)
    if not rows:
        return
    from odecore import bench

    base = {r["problem"]: r for r in rows if r["impl"] == bench.BASELINE}
    order = list(bench.IMPLEMENTATIONS)
    rows = sorted(rows, key=lambda r: (list(bench.PROBLEMS).index(r["problem"]), order.index(r["impl"])))
    for r in rows:
        b = base.get(r["problem"])
        r["loop_speedup_vs_torchdiffeq"] = r["solve_speedup_vs_torchdiffeq"] = None
        if b and b.get("loop_us_per_step") is not None and r.get("loop_us_per_step"):
            if r["loop_us_per_step"] > 0:
                r["loop_speedup_vs_torchdiffeq"] = b["loop_us_per_step"] / r["loop_us_per_step"]
        if b and r.get("solve_ms"):
            r["solve_speedup_vs_torchdiffeq"] = b["solve_ms"] / r["solve_ms"]
    terminalreporter.write_sep("-", "odecore loop time per step (from the benchmark minimum)")
    terminalreporter.write_line(bench.format_table(rows))

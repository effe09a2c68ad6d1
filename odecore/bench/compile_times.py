"""Compile time in a fresh process (``odecore bench --compile-times``): the first call of a
whole-program implementation (odecore-compiled, diffrax) when nothing of it is in memory, with the
on-disk compile caches cold and then warm.

Per (problem, implementation) two fresh Python processes (``sys.executable -c``) share one new,
empty cache directory -- TORCHINDUCTOR_CACHE_DIR for inductor, JAX's persistent compilation cache
for diffrax -- so that the numbers do not depend on what the machine had cached: the first process
fills it (cold), the second measures the first call with it warm. Each process times its first
solve and then the best of a few more; compile s = first call - best solve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from .impls import get_implementation, whole_program_implementations
from .problems import get_problem, prepare_y0
from .runner import dtype_name, progress_logger
from .timing import timed_call

# what the fresh process runs: one measurement, its result as JSON on the last line of stdout
CHILD_CODE = "import sys; from odecore.bench.compile_times import child_main; sys.exit(child_main(sys.argv[1]))"
SOLVES_AFTER_FIRST = 3
CHILD_TIMEOUT_S = 1800.0


def first_call_in_this_process(
    problem: str, impl: str, *, device: str = "cpu", dtype: torch.dtype = torch.float64, batch: int | None = None
) -> dict[str, float]:
    """Seconds of the first solve of ``impl`` on ``problem`` in this process, and of the best of
    ``SOLVES_AFTER_FIRST`` more (``first_call_s``, ``solve_s``, ``compile_s`` = their difference)."""
    implementation = get_implementation(impl)
    inst = get_problem(problem).make(device, dtype, batch=batch)
    run = implementation.prepare(inst, inst.func, prepare_y0(inst, False))
    with torch.no_grad():
        first = timed_call(run, inst.y0.device)
        best = min(timed_call(run, inst.y0.device) for _ in range(SOLVES_AFTER_FIRST))
    return dict(first_call_s=first, solve_s=best, compile_s=first - best)


def child_main(spec_json: str) -> int:
    """The fresh process's entry: the measurement ``spec_json`` describes, printed as JSON."""
    spec = json.loads(spec_json)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    result = first_call_in_this_process(
        spec["problem"],
        spec["impl"],
        device=spec["device"],
        dtype=getattr(torch, spec["dtype"]),
        batch=spec.get("batch"),
    )
    print(json.dumps(result))
    return 0


def cache_environment(cache_dir: str) -> dict[str, str]:
    """The environment of a child process whose on-disk compile caches are under ``cache_dir``
    (and on, whatever the caller's environment says)."""
    return dict(
        os.environ,
        TORCHINDUCTOR_CACHE_DIR=os.path.join(cache_dir, "inductor"),
        TORCHINDUCTOR_FX_GRAPH_CACHE="1",
        TORCHINDUCTOR_AUTOGRAD_CACHE="1",
        JAX_COMPILATION_CACHE_DIR=os.path.join(cache_dir, "jax"),
        # cache every program, however small and quick to compile
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


def fresh_process_first_call(spec: dict[str, Any], cache_dir: str, timeout_s: float = CHILD_TIMEOUT_S) -> dict:
    """:func:`first_call_in_this_process` in a new Python process with its caches in ``cache_dir``,
    plus ``process_s`` (the whole process, start-up included); RuntimeError when it fails."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_CODE, json.dumps(spec)],
        env=cache_environment(cache_dir),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"the child process exited with {proc.returncode}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), process_s=wall)


def _cold_and_warm(spec: dict[str, Any]) -> dict[str, Any]:
    """The two processes of one case, sharing one new cache directory: the row's measurements."""
    with tempfile.TemporaryDirectory(prefix="odecore-compile-cache-") as cache_dir:
        cold = fresh_process_first_call(spec, cache_dir)
        warm = fresh_process_first_call(spec, cache_dir)
    row: dict[str, Any] = {f"{which}_{k}": v for which, r in (("cold", cold), ("warm", warm)) for k, v in r.items()}
    row["solve_ms"] = min(cold["solve_s"], warm["solve_s"]) * 1e3
    return row


def run_compile_times(
    problems: Sequence[str],
    impls: Sequence[str] | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
    threads: int | None = None,
    batch: int | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """The compile-time rows (suite "compile") of every problem x whole-program implementation
    (default: those installed; others named in ``impls`` are left out). A child process that fails
    gives an error row with its last line of stderr."""
    log = progress_logger(verbose)
    whole = whole_program_implementations()
    names = [n for n in (impls or whole) if n in whole]
    rows: list[dict[str, Any]] = []
    for pname in problems:
        inst = get_problem(pname).make(device, dtype, batch=batch)
        for iname in names:
            impl = get_implementation(iname)
            if not impl.available():
                log(f"{pname}/{iname}: not installed, skipped")
                continue
            row: dict[str, Any] = dict(
                problem=pname, impl=iname, suite="compile", device=str(device), dtype=dtype_name(dtype)
            )
            row["batch"] = int(inst.y0.shape[0])
            if not impl.applicable(inst):
                rows.append(dict(row, skipped=impl.why_not(inst)))
                continue
            log(f"{pname}/{iname}: two fresh processes (cold, then warm cache)")
            spec = dict(problem=pname, impl=iname, device=str(device), dtype=dtype_name(dtype), threads=threads)
            spec["batch"] = batch
            try:
                row.update(_cold_and_warm(spec))
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                row["error"] = f"{type(e).__name__}: {e}"
                log(f"{pname}/{iname} FAILED: {row['error']}")
            rows.append(row)
    return rows

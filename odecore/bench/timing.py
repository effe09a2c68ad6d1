"""Wall-time measurement shared by the solve and adjoint suites: timed calls that wait for the
device, the grad mode of a run, and the loop-time formula (solve - nfe * func) / steps.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from .problems import Instance


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall time covers it (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def grad_context(grad: bool) -> contextlib.AbstractContextManager:
    """Autograd recording on (``grad``) or off for a block."""
    return torch.enable_grad() if grad else torch.no_grad()


def timed_call(call: Callable[..., Any], device: torch.device, args: tuple = ()) -> float:
    """Seconds of one ``call(*args)``, the device's work included."""
    start = time.perf_counter()
    call(*args)
    synchronize(device)
    return time.perf_counter() - start


def sample_call_times(
    call: Callable[..., Any],
    args: tuple,
    device: torch.device,
    *,
    min_calls: int,
    max_calls: int,
    budget_s: float,
    warmup: int,
) -> list[float]:
    """Wall times of ``call(*args)``: ``warmup`` untimed calls, then at least ``min_calls`` and
    at most ``max_calls`` timed ones, as many as fit in ``budget_s`` seconds."""
    for _ in range(warmup):
        call(*args)
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - start < budget_s):
        times.append(timed_call(call, device, args))
    return times


def func_samples(
    inst: Instance, y0: torch.Tensor, *, grad: bool, min_calls: int, max_calls: int, budget_s: float, warmup: int = 3
) -> list[float]:
    """Wall times of single ``func(t0, y0)`` calls in the given grad mode."""
    with grad_context(grad):
        return sample_call_times(
            inst.func,
            (inst.t[0], y0),
            y0.device,
            min_calls=min_calls,
            max_calls=max_calls,
            budget_s=budget_s,
            warmup=warmup,
        )


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
    times = func_samples(inst, y0, grad=grad, min_calls=min_calls, max_calls=max_calls, budget_s=budget_s)
    return dict(median=statistics.median(times), min=min(times), calls=len(times))


def time_solve(
    run: Callable[[], Any], device: torch.device, *, grad: bool = False, repeats: int = 5, warmup: int = 1
) -> list[float]:
    """Wall times in seconds of ``repeats`` calls of ``run`` after ``warmup`` calls."""
    with grad_context(grad):
        for _ in range(warmup):
            run()
        synchronize(device)
        return [timed_call(run, device) for _ in range(repeats)]


def loop_per_step(solve_s: float, nfe: int | None, func_s: float, steps: int | None) -> float | None:
    """(solve - nfe * func) / steps, in seconds; None when not computable."""
    if nfe is None or not steps:
        return None
    return (solve_s - nfe * func_s) / steps

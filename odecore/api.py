"""The public entry points odeint and odeint_event (torchdiffeq 0.2.5 semantics).

A call travels: validate and normalise (odecore._problem) -> dispatch (per-sample solve, event
solve, or the solve at the output times) -> reshape back to the caller's tuple / time direction.
"""

from collections.abc import Callable
from typing import Any

import torch

from . import events
from ._problem import TensorOrTuple, Tolerance, prepare, solve, time_sensitivity
from .solvers import SOLVERS, compiled
from .solvers.per_sample import odeint_per_sample


def odeint(
    func: Callable,
    y0: TensorOrTuple,
    t: torch.Tensor,
    *,
    rtol: Tolerance = 1e-7,
    atol: Tolerance = 1e-9,
    method: str | None = None,
    options: dict | None = None,
    event_fn: Callable | None = None,
) -> Any:
    """Integrate dy/dt = func(t, y), y(t[0]) = y0, returning y at every time in `t`.

    A drop-in replacement for ``torchdiffeq.odeint`` (0.2.5): same arguments, options, method
    names, defaults and results, with the step arithmetic in fused kernels.

    Args:
        func: callable ``func(t, y)`` returning dy/dt with y's shape and dtype; ``t`` is a 0-d
            tensor of y's dtype. With a tuple ``y0`` it takes and returns a tuple.
        y0: initial state, a floating point or complex tensor of any shape or a tuple of
            them (complex states: see the README). ``func.callback_step`` etc. are called
            as in torchdiffeq (see the README).
        t: 1-D tensor of times, strictly increasing or strictly decreasing; ``t[0]`` is the
            initial time. It may require grad.
        rtol, atol: relative and absolute tolerances: floats, tensors broadcastable to y0, or
            (tuple y0) one entry per tensor.
        method: one of ``odecore.SOLVERS`` (default 'dopri5').
        options: method options as in torchdiffeq; odecore adds ``backend`` ('fused' or
            'reference', default: the global backend), ``return_stats`` (also return a
            dict with 'nfe', 'n_steps', 'n_accepted', 'n_rejected', 'final_dt', 'loop' and
            'host_reads'), ``checkpoint`` (N: exact gradients from at most N stored steps)
            and ``sync_every`` (K: the device-resident loop reading the host once every K
            steps; default 16 on CUDA, 0 = the host loop elsewhere; see the README).
        event_fn: ``event_fn(t, y)`` returning a tensor: with it, ``t`` must hold 2 times
            (``t[1]`` only gives the direction) and the solve runs from ``t[0]`` until
            event_fn changes sign, returning ``(event_t, solution)`` with ``solution``
            of 2 rows ``[y0, y(event_t)]`` (odecore.events; use ``odecore.odeint_event``
            for a differentiable event time).

    Returns:
        A tensor of shape ``(len(t), *y0.shape)`` (a tuple of such for a tuple ``y0``), and
        the statistics dict when ``options['return_stats']`` is true.
    """
    if torch.compiler.is_compiling() and event_fn is None:
        return compiled.traced_odeint(func, y0, t, rtol, atol, method, options)  # inside the caller's program
    if event_fn is not None:
        return events.event_odeint(func, y0, t, rtol, atol, method, options, event_fn)
    if isinstance(options, dict) and options.get("batch_dim") is not None:
        return odeint_per_sample(func, y0, t, rtol, atol, method, options)
    p = prepare(func, y0, t, rtol, atol, method, options)
    if len(p.times) == 1:
        solution = p.y0.unsqueeze(0)
        stats = {"nfe": 0, "n_steps": 0, "n_accepted": 0, "n_rejected": 0, "final_dt": None}
    else:
        # (scipy_solver's result does not depend differentiably on anything, as in torchdiffeq)
        t_grad = t.requires_grad and torch.is_grad_enabled() and getattr(SOLVERS[p.method], "differentiable", True)
        start = p.y0
        if t_grad:
            # Gradients for t, exact for the solved trajectory: an output time t_j moves
            # the output along f(t_j, y_j), and the start time moves it by -(dy_j/dy0) f(t0, y0).
            start = p.y0 - time_sensitivity(p.func, t[:1], p.y0.unsqueeze(0)).squeeze(0)
        solution, stats = solve(
            p.func, start, p.times, t.detach(), p.reverse, p.rtol, p.atol, p.method, p.options, p.backend, p.segments
        )
        if t_grad:
            solution = solution + time_sensitivity(p.func, t, solution)
    solution = p.unflatten(solution)
    return (solution, stats) if p.return_stats else solution


def odeint_event(
    func: Callable,
    y0: TensorOrTuple,
    t0: torch.Tensor | float,
    *,
    event_fn: Callable,
    reverse_time: bool = False,
    odeint_interface: Callable = odeint,
    **kwargs: Any,
) -> tuple:
    """Integrates from `t0` until ``event_fn(t, y)`` changes sign; returns ``(event_t, solution)``
    with ``solution = [y0, y(event_t)]`` (a tuple of such for a tuple `y0`), both
    differentiable: the event time by the implicit function theorem.

    As torchdiffeq 0.2.5's ``odeint_event``: `event_fn` may return several values (the first
    to change sign ends the solve), ``reverse_time=True`` integrates backwards from `t0`,
    `odeint_interface` is ``odecore.odeint`` or ``odecore.odeint_adjoint`` (or any function
    with their event semantics), and `kwargs` (rtol, atol, method, options, adjoint_*) go to
    it. With ``options={'return_stats': True}`` the statistics dict comes third.
    """
    if not isinstance(t0, torch.Tensor):
        like = y0 if isinstance(y0, torch.Tensor) else y0[0]
        t0 = torch.tensor(float(t0), dtype=like.dtype, device=like.device)
    step = -1.0 if reverse_time else 1.0
    t = torch.cat([t0.reshape(-1), t0.reshape(-1).detach() + step])
    out = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)
    event_t, solution, rest = out[0], out[1], tuple(out[2:])
    event_t, solution = events.implicit_gradient(func, y0, t, event_fn, event_t, solution)
    return (event_t, solution) + rest

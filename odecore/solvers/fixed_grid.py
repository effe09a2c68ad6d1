"""The fixed-grid explicit Runge-Kutta loop shared by euler, midpoint, heun2, heun3 and rk4.

Semantics follow torchdiffeq 0.2.5: the grid is `t` itself, or built from `step_size`
(ending exactly on t[-1]), or returned by `grid_constructor(func, y0, t)`; outputs between
grid points are interpolated linearly or by a cubic Hermite polynomial; `perturb=True`
evaluates the first stage just after t0 and stages at the end of a step just before t1.
"""

import math

import torch

from .base import Perturb, warn_unused
from .tableau import hermite_dense_flat, linear_dense

INTERPOLATIONS = ("linear", "cubic")


# Most grid points a step_size may ask for (a bound on memory and time, not on accuracy).
MAX_GRID_POINTS = 10**8


def grid_from_step_size(step_size):
    def grid_constructor(func, y0, t):
        start, end = t[0], t[-1]
        niters = torch.ceil((end - start) / step_size + 1).item()  # as torchdiffeq, in t's dtype
        if not niters <= MAX_GRID_POINTS:
            raise ValueError(
                "step_size=%r asks for %s grid points over [%r, %r] (at most %d)"
                % (step_size, niters, start.item(), end.item(), MAX_GRID_POINTS)
            )
        niters = max(niters, 2.0)  # a span below the step's resolution: one step
        grid = torch.arange(0, niters, dtype=t.dtype, device=t.device) * step_size + start
        grid[-1] = t[-1]
        if len(grid) > 1 and not bool((grid[1:] > grid[:-1]).all()):
            raise ValueError(
                "step_size=%r is below the resolution of t's dtype %s near t=%r: the grid repeats times"
                % (step_size, t.dtype, start.item())
            )
        return grid

    return grid_constructor


class FixedGridRKSolver:
    """Base of the fixed-grid methods; a subclass sets `tableau` and `order`."""

    tableau = None
    order = None

    @classmethod
    def valid_callbacks(cls):
        """torchdiffeq's fixed-grid solvers call only callback_step (before every step)."""
        return {"callback_step"}

    def __init__(
        self,
        func,
        y0,
        rtol=None,
        atol=None,
        *,
        ops,
        segments=None,
        norm=None,
        step_size=None,
        grid_constructor=None,
        interp="linear",
        perturb=False,
        sync_every=None,
        **unused,
    ):
        warn_unused(type(self), unused)
        if step_size is not None and grid_constructor is not None:
            raise ValueError("step_size and grid_constructor are mutually exclusive arguments.")
        if interp not in INTERPOLATIONS:
            raise ValueError("interp must be one of %s, got %r" % (", ".join(map(repr, INTERPOLATIONS)), interp))
        if step_size is not None:
            if (
                isinstance(step_size, bool)
                or not isinstance(step_size, (int, float))
                and not (isinstance(step_size, torch.Tensor) and step_size.numel() == 1 and not step_size.is_complex())
            ):
                raise TypeError("options['step_size'] must be a real number, got %r" % (step_size,))
            if not (float(step_size) > 0 and math.isfinite(float(step_size))):
                raise ValueError("step_size must be positive and finite, got %r" % (step_size,))
        if grid_constructor is not None and not callable(grid_constructor):
            raise TypeError("options['grid_constructor'] must be callable, got %s" % type(grid_constructor).__name__)
        # sync_every (the adaptive device loop's K) needs nothing here: a fixed grid reads no
        # value back per step
        self.func = func
        self.y0 = y0
        self.ops = ops
        self.interp = interp
        self.perturb = bool(perturb)
        if step_size is not None:
            self.grid_constructor = grid_from_step_size(step_size)
        elif grid_constructor is not None:
            self.grid_constructor = grid_constructor
        else:
            self.grid_constructor = lambda func, y0, t: t
        b = self.tableau.b
        self._linear = [c for row in linear_dense(b) for c in row]
        self._hermite = hermite_dense_flat(b)
        self.n_steps = 0
        self.final_dt = None

    def _grid(self, t):
        grid = self.grid_constructor(self.func, self.y0, t)
        if not isinstance(grid, torch.Tensor) or grid.dim() != 1 or len(grid) < 1:
            raise ValueError("grid_constructor must return a 1-D tensor of times")
        self.grid_tensor = grid.detach()  # the callbacks' times, as torchdiffeq's
        grid = self.grid_tensor.tolist()
        if grid[0] != t[0].item() or grid[-1] != t[-1].item():
            raise ValueError(
                "grid_constructor must return a grid that starts at t[0] and ends at t[-1], got [%r, ..., %r]"
                % (grid[0], grid[-1])
            )
        if any(not b > a for a, b in zip(grid[:-1], grid[1:])):
            raise ValueError("grid_constructor must return strictly monotonic times in the direction of t")
        return grid

    def integrate(self, t, t_tensor, recorder=None):
        """Solves over the float times `t` on the grid; a `recorder` (see odecore.checkpoint)
        is told of every step and the output times after it, so `replay` can redo it."""
        grid = self._grid(t_tensor)
        y = self.y0
        chunks = [y.unsqueeze(0)]
        j = 1
        callback = self.func.callbacks.get("callback_step") is not None
        for i, (t0, t1) in enumerate(zip(grid[:-1], grid[1:])):
            if callback:
                g0, g1 = self.grid_tensor[i], self.grid_tensor[i + 1]
                self.func.callback("callback_step", g0, y, g1 - g0, None)
            if recorder is not None:
                recorder.step((t0, t1), y, None)
            k, y1 = self._advance(t0, t1, y)
            if j < len(t) and t1 >= t[j]:
                first_out = j
                while j < len(t) and t1 >= t[j]:
                    j += 1
                chunks.extend(self._outputs(t[first_out:j], t0, t1, y, y1, k, t1 - t0))
                if recorder is not None:
                    recorder.outputs(t[first_out:j])
            y = y1
        if len(grid) > 1:
            self.final_dt = grid[-1] - grid[-2]
        solution = torch.cat(chunks)
        self._check_finite(solution, t, grid)
        return solution

    def _advance(self, t0, t1, y):
        """One step from (t0, y) to t1; returns (k, y1)."""
        tab, ops, func = self.tableau, self.ops, self.func
        dt = t1 - t0
        last = Perturb.PREV if self.perturb else Perturb.NONE
        k = [func(t0, y, Perturb.NEXT if self.perturb else Perturb.NONE)]
        for i in range(1, tab.stages):
            idx, coeffs = tab.stage_terms[i]
            yi = ops.rk_stage(y, [k[m] for m in idx], coeffs, dt)
            k.append(func(t1, yi, last) if tab.c[i] == 1.0 else func(t0 + tab.c[i] * dt, yi))
        b_idx, b = tab.b_terms
        self.n_steps += 1
        return k, ops.rk_stage(y, [k[m] for m in b_idx], b, dt)

    def replay(self, y, f, steps, emits):
        """Redoes recorded `steps` from state y, emitting the recorded output times after
        each; returns (output chunks, y, None) at the end."""
        chunks = []
        for (t0, t1), times in zip(steps, emits):
            k, y1 = self._advance(t0, t1, y)
            if times:
                chunks.extend(self._outputs(times, t0, t1, y, y1, k, t1 - t0))
            y = y1
        return chunks, y, None

    @staticmethod
    def _check_finite(solution, t, grid):
        """A fixed grid never rejects a step, so NaN/inf is looked for once, in the outputs."""
        finite = torch.isfinite(solution.detach()).reshape(len(t), -1).all(dim=1)
        if not bool(finite.all()):
            j = int((~finite).nonzero()[0, 0])
            i = max(1, next((i for i, g in enumerate(grid) if g >= t[j]), len(grid) - 1))
            raise RuntimeError(
                "non-finite values (NaN or inf) in the solution at t=%r (output %d), dt=%r; "
                "func returned NaN/inf or the solution overflowed" % (t[j], j, grid[i] - grid[i - 1])
            )

    def _outputs(self, times, t0, t1, y0, y1, k, dt):
        pieces, pending = [], []

        def flush():
            if pending:
                if self.interp == "linear":
                    pieces.append(self.ops.rk_interp(y0, k, self._linear, dt, list(pending)))
                else:
                    f1 = self.func(t1, y1)
                    pieces.append(self.ops.rk_interp(y0, k + [f1], self._hermite, dt, list(pending)))
                pending.clear()

        for time in times:
            if time == t0 or time == t1:
                flush()
                pieces.append((y0 if time == t0 else y1).unsqueeze(0))
            else:
                pending.append((time - t0) / (t1 - t0))
        flush()
        return pieces

    def stats(self):
        return {
            "nfe": self.func.nfe,
            "n_steps": self.n_steps,
            "n_accepted": self.n_steps,
            "n_rejected": 0,
            "final_dt": self.final_dt,
        }

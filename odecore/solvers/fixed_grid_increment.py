"""The fixed-grid loop for methods that are not explicit Runge-Kutta (Adams, implicit RK).

Such a step returns what torchdiffeq's ``FixedGridODESolver._step_func`` returns: the
increment ``dy = y1 - y0`` and ``f0 = f(t0, y0)``. The grid, the checks, the recorder hooks
and the outputs are FixedGridRKSolver's, with the step seen as two "stages" ``[f0, dy/dt]``
of weights (0, 1): linear interpolation is ``y0 + x (y1 - y0)`` and ``interp='cubic'`` the
Hermite cubic through y0, y1, f0 and f(t1, y1), as in torchdiffeq.
"""

import torch

from .fixed_grid import FixedGridRKSolver
from .tableau import hermite_dense_flat, linear_dense

_WEIGHTS = (0.0, 1.0)  # of [f0, dy/dt]


class _IncrementForm:
    """What FixedGridRKSolver.__init__ reads of a tableau: the weights of the step's terms."""

    b = _WEIGHTS


class FixedGridIncrementSolver(FixedGridRKSolver):
    """Base of the fixed-grid methods whose `_step(t0, t1, y)` returns ``(f0, dy)``."""

    tableau = _IncrementForm

    def __init__(self, func, y0, rtol=None, atol=None, **kwargs):
        super().__init__(func, y0, rtol, atol, **kwargs)
        self._linear = [c for row in linear_dense(_WEIGHTS) for c in row]
        self._hermite = hermite_dense_flat(_WEIGHTS)

    def _step(self, t0, t1, y):
        raise NotImplementedError

    def _advance(self, t0, t1, y):
        f0, dy = self._step(t0, t1, y)
        self.n_steps += 1
        return [f0, dy / (t1 - t0)], y + dy

    @staticmethod
    def _tolerance(tol, default, y):
        """rtol/atol (odecore passes float64 tensors of 1 or y.numel() values) in y's dtype,
        shaped to broadcast against y."""
        tol = torch.as_tensor(default if tol is None else tol, dtype=y.dtype, device=y.device)
        if tol.numel() == 1:
            return tol.reshape(())
        return tol.reshape(y.shape)

"""Fixed-grid Adams methods, as torchdiffeq 0.2.5's ``explicit_adams``, ``implicit_adams`` and
``fixed_adams`` (the same as ``implicit_adams``).

A step from t0 first evaluates f0 = f(t0, y0) and puts it at the front of the history of
derivatives at the previous grid times (at most ``max_order - 1`` of them). With k of them
known (k >= 3), the k-step Adams-Bashforth formula predicts

    y1 = y0 + dt * sum_j beta_kj f_{n-j},  j = 0..k-1            (order k)

and, for ``implicit_adams``, the (k+1)-value Adams-Moulton formula corrects it by functional
iteration (at most ``max_iters`` evaluations of f(t1, .)):

    y1 = y0 + dt * (m_0 f(t1, y1) + sum_j m_{j+1} f_{n-j})        (order k + 1)

until successive increments agree to ``rtol``/``atol`` (``|dy' - dy| <= atol + rtol *
max(|dy'|, |dy|)`` elementwise, on the increments). If they do not, torchdiffeq's warning
"Functional iteration did not converge. Solution may be incorrect." is given, the last
iterate is kept and the oldest derivative leaves the history (while it is not full, the
order then grows more slowly). While fewer than 3 derivatives are known (the first two
steps, or every step when ``max_order < 4``) the step is rk4 (Kutta's 3/8 rule) from f0.
The coefficients are those of a constant step, whatever the grid (as in torchdiffeq).

So with the default ``max_order=12`` the predictor reaches 11 steps and the corrector order
12; the first steps bound the global order: the one step of AB3 (local error O(dt^4))
makes explicit_adams 4th order, the one step of AM4 after the rk4 warm-up makes
implicit_adams 5th order (``max_order=4``: orders 3 and 4).

Coefficients: Adams-Bashforth beta_kj = (-1)^j sum_{i>=j} binom(i, j) gamma_i and
Adams-Moulton from gamma*_i, gamma_i = (-1)^i int_0^1 binom(-s, i) ds (Hairer, Norsett &
Wanner, "Solving ODEs I", section III.1); computed exactly below with fractions.
"""

import collections
import math
import warnings
from fractions import Fraction

import torch

from .base import Perturb
from .fixed_grid_increment import FixedGridIncrementSolver
from .rk4 import TABLEAU as RK4_TABLEAU

MIN_ORDER = 4
MAX_ORDER = 12
MAX_ITERS = 4


def _poly_mul(p, q):
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def _gammas(n, shift):
    """gamma_i = (-1)^i int_0^1 binom(-s + shift, i) ds for i < n, with shift = 0 for
    Adams-Bashforth (gamma_i) and shift = 1 for Adams-Moulton (gamma*_i)."""
    out = []
    poly = [Fraction(1)]  # binom(-s + shift, i) as a polynomial in s, built up in i
    for i in range(n):
        if i > 0:
            # binom(x, i) = binom(x, i-1) * (x - i + 1) / i, x = shift - s
            poly = [v / i for v in _poly_mul(poly, [Fraction(shift - i + 1), Fraction(-1)])]
        integral = sum(v / (d + 1) for d, v in enumerate(poly))
        out.append((-1) ** i * integral)
    return out


def _adams_coefficients(k, shift):
    """The k weights of f_{n-j} (Bashforth, shift 0) or of f_{n+1-j} (Moulton, shift 1),
    j = 0..k-1, from the backward-difference form sum_i gamma_i nabla^i f."""
    gammas = _gammas(k, shift)
    return [(-1) ** j * sum(math.comb(i, j) * gammas[i] for i in range(j, k)) for j in range(k)]


BASHFORTH = [None] + [tuple(float(v) for v in _adams_coefficients(k, 0)) for k in range(1, MAX_ORDER)]
MOULTON = [None] + [tuple(float(v) for v in _adams_coefficients(k, 1)) for k in range(1, MAX_ORDER + 1)]


def _is_whole(value):
    """An int, or a float holding one (not a bool, NaN, inf, None or a string)."""
    return (
        not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and int(value) == value
    )


class AdamsBashforthMoulton(FixedGridIncrementSolver):
    """``implicit_adams`` (and ``fixed_adams``): Adams-Bashforth predictor, Adams-Moulton
    corrector by functional iteration; options ``max_order`` (12), ``max_iters`` (4) and
    the fixed-grid ones."""

    order = 4  # torchdiffeq's attribute; the convergence order is in the module docstring

    def __init__(
        self, func, y0, rtol=None, atol=None, *, implicit=True, max_iters=MAX_ITERS, max_order=MAX_ORDER, **kwargs
    ):
        super().__init__(func, y0, rtol, atol, **kwargs)
        if not _is_whole(max_order) or max_order > MAX_ORDER or max_order < 1:
            raise ValueError("max_order must be an integer between 1 and {}, got {!r}".format(MAX_ORDER, max_order))
        if max_order < MIN_ORDER:
            warnings.warn("max_order is below {}, so the solver reduces to `rk4`.".format(MIN_ORDER))
        if implicit and (not _is_whole(max_iters) or max_iters < 1):
            raise ValueError("max_iters must be a positive integer, got {!r}".format(max_iters))
        # torchdiffeq's defaults when the class is built directly
        self.rtol = self._tolerance(rtol, 1e-3, y0)
        self.atol = self._tolerance(atol, 1e-4, y0)
        self.implicit = bool(implicit)
        self.max_iters = int(max_iters) if implicit else max_iters  # explicit_adams ignores it
        self.max_order = int(max_order)
        # torchdiffeq's deque of max_order - 1 derivatives (max_order = 1 keeps f0, for rk4)
        self._history = collections.deque(maxlen=max(self.max_order - 1, 1))

    def _step(self, t0, t1, y):
        ops, func, tab = self.ops, self.func, RK4_TABLEAU
        dt = t1 - t0
        f0 = func(t0, y, Perturb.NEXT if self.perturb else Perturb.NONE)
        history = self._history
        history.appendleft(f0)
        order = min(len(history), self.max_order - 1)
        zero = torch.zeros_like(y)
        if order < MIN_ORDER - 1:
            # rk4 (3/8 rule) from f0, as torchdiffeq's rk4_alt_step_func
            k = [f0]
            for i in range(1, tab.stages):
                idx, coeffs = tab.stage_terms[i]
                yi = ops.rk_stage(y, [k[m] for m in idx], coeffs, dt)
                if tab.c[i] == 1.0:
                    k.append(func(t1, yi, Perturb.PREV if self.perturb else Perturb.NONE))
                else:
                    k.append(func(t0 + tab.c[i] * dt, yi))
            return f0, ops.rk_stage(zero, k, list(tab.b), dt)
        past = list(history)[:order]
        dy = ops.rk_stage(zero, past, list(BASHFORTH[order]), dt)
        if not self.implicit:
            return f0, dy
        moulton = MOULTON[order + 1]
        delta = ops.rk_stage(zero, past, list(moulton[1:]), dt)
        converged = False
        for _ in range(self.max_iters):
            dy_old = dy
            f = func(t1, y + dy, Perturb.PREV if self.perturb else Perturb.NONE)
            dy = ops.rk_stage(delta, [f], [moulton[0]], dt)
            converged = self._converged(dy_old, dy)
            if converged:
                break
        if not converged:
            warnings.warn("Functional iteration did not converge. Solution may be incorrect.")
            history.pop()
        return f0, dy

    def _converged(self, dy_old, dy):
        """torchdiffeq's test: every element within atol + rtol * max(|dy_old|, |dy|)."""
        if dy.numel() == 0:  # an empty state: nothing to iterate on
            return True
        with torch.no_grad():
            tol = self.atol + self.rtol * torch.maximum(dy_old.abs(), dy.abs())
            return bool(((dy_old - dy).abs() / tol).max() < 1)

    # -- checkpointing: the history is part of the state ------------------------------- #

    def integrate(self, t, t_tensor, recorder=None):
        self._history.clear()
        if recorder is not None:
            recorder = _HistoryRecorder(recorder, self)
        return super().integrate(t, t_tensor, recorder)

    def _stacked_history(self, y):
        """The history as one tensor (maxlen, *y.shape), zero-padded."""
        rows = list(self._history)
        rows += [torch.zeros_like(y)] * (self._history.maxlen - len(rows))
        return torch.stack(rows)

    def replay(self, y, f, steps, emits):
        """Redoes recorded steps (t0, t1, history length) from state y and history f (as
        `_stacked_history`; ignored when the first step starts with no history)."""
        length = steps[0][2] if steps else 0
        self._history.clear()
        self._history.extend(f[i] for i in range(length))
        chunks = []
        for (t0, t1, _), times in zip(steps, emits):
            k, y1 = self._advance(t0, t1, y)
            if times:
                chunks.extend(self._outputs(times, t0, t1, y, y1, k, t1 - t0))
            y = y1
        return chunks, y, self._stacked_history(y)


class _HistoryRecorder:
    """Passes a checkpoint recorder the Adams history with each step's state."""

    def __init__(self, recorder, solver):
        self.recorder = recorder
        self.solver = solver

    def step(self, info, y, f):
        history = self.solver._history
        self.recorder.step(tuple(info) + (len(history),), y, self.solver._stacked_history(y))

    def outputs(self, times):
        self.recorder.outputs(times)


class AdamsBashforth(AdamsBashforthMoulton):
    """``explicit_adams``: the Adams-Bashforth predictor alone (``max_iters`` is ignored)."""

    def __init__(self, func, y0, rtol=None, atol=None, **kwargs):
        super().__init__(func, y0, rtol, atol, implicit=False, **kwargs)

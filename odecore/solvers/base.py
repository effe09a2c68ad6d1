"""What every solver shares: the wrapped right-hand side and the solver statistics."""

import enum
import math
import warnings

import numpy as np
import torch

_NUMPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}

# torchdiffeq 0.2.5's callbacks, each called as callback(t0, y0, dt); the `_adjoint` variants
# are the ones odeint_adjoint's backward pass calls.
CALLBACK_NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")
ADJOINT_CALLBACK_NAMES = tuple(name + "_adjoint" for name in CALLBACK_NAMES)


class Perturb(enum.Enum):
    """Which side of a time the right-hand side is evaluated on (torchdiffeq's Perturb)."""

    NONE = 0
    NEXT = 1  # just after t: the first evaluation of a step past a discontinuity
    PREV = -1  # just before t: the evaluations at the end of a step


def _nextafter(value, direction, dtype):
    """The neighbour of `value` (rounded to `dtype`) towards +inf (direction 1) or -inf (-1)."""
    toward = math.inf if direction > 0 else -math.inf
    if dtype == torch.float64:
        return math.nextafter(value, toward)
    if dtype == torch.float32:
        return float(np.nextafter(np.float32(value), np.float32(toward)))
    t = torch.tensor(value, dtype=dtype)
    return torch.nextafter(t, torch.tensor(toward, dtype=dtype)).item()


class RHS:
    """The user's ``func(t, y)`` as the solver calls it.

    The solver keeps time as Python floats; `RHS` hands ``func`` a 0-d tensor of the state's
    dtype (as torchdiffeq does), applies the time reversal and perturbation, counts
    evaluations, and checks the first output so that a wrong shape or dtype is reported by
    name rather than deep inside a kernel.

    It also holds func's callbacks (``func.callback_step`` etc., as torchdiffeq finds them on
    the function it integrates): a solver calls `callback` for those it supports, and `RHS`
    hands them 0-d time tensors, t0 in the caller's time direction (as torchdiffeq).
    """

    def __init__(self, func, y0, time_sign=1.0):
        self.func = func
        self.dtype = y0.dtype
        self.device = y0.device
        self.shape = y0.shape
        self.time_sign = time_sign
        # a func that already returns the reversed-time derivative (the adjoint's augmented
        # dynamics) is not negated again
        self.negate = time_sign < 0 and not getattr(func, "negated_when_reversed", False)
        self.nfe = 0
        self._checked = False
        self.callbacks = {name: getattr(func, name) for name in CALLBACK_NAMES if callable(getattr(func, name, None))}
        # a complex state is integrated as its real view (odecore._problem.ComplexFunc)
        self.complex_view = bool(getattr(func, "complex_view", False))

    def callback(self, name, t0, y0, dt, dtype):
        """Calls func's callback `name` (if it has one) with (t0, y0, dt): times are 0-d
        tensors (floats are made tensors of `dtype`, the solver's time dtype) on y0's device."""
        callback = self.callbacks.get(name)
        if callback is None:
            return
        if not isinstance(t0, torch.Tensor):
            t0 = torch.tensor(t0, dtype=dtype, device=self.device)
        if not isinstance(dt, torch.Tensor):
            dt = torch.tensor(dt, dtype=dtype, device=self.device)
        callback(-t0 if self.time_sign < 0 else t0, y0, dt)

    def nudge(self, t, perturb):
        """The time at which an evaluation perturbed by `perturb` happens, in y's dtype."""
        return t if perturb is Perturb.NONE else _nextafter(t, perturb.value, self.dtype)

    def __call__(self, t, y, perturb=Perturb.NONE):
        if perturb is not Perturb.NONE:
            t = _nextafter(t, perturb.value, self.dtype)
        out = self.func(torch.scalar_tensor(self.time_sign * t, dtype=self.dtype, device=self.device), y)
        self.nfe += 1
        if not self._checked:
            self._check(out)
        return -out if self.negate else out

    def time_tensors(self, times):
        """The 0-d time tensors func receives at the float `times` (already nudged), made at
        once: one tensor and its unbound views on the CPU (two ops for a whole step); on
        other devices one fill each (a host-to-device copy could wait for the stream)."""
        sign, dtype, device = self.time_sign, self.dtype, self.device
        if device.type == "cpu" and dtype in _NUMPY_DTYPES:  # from_numpy dispatches no op
            return torch.from_numpy(np.array([sign * t for t in times], dtype=_NUMPY_DTYPES[dtype])).unbind(0)
        if device.type == "cpu":
            return torch.tensor([sign * t for t in times], dtype=dtype).unbind(0)
        return [torch.scalar_tensor(sign * t, dtype=dtype, device=device) for t in times]

    def call_device_time(self, t, y):
        """func at a time that is already a 0-d tensor on y's device, times the time sign
        and in y's dtype (the device loop's stage times)."""
        out = self.func(t, y)
        self.nfe += 1
        if not self._checked:
            self._check(out)
        return -out if self.negate else out

    def _check(self, out):
        if not isinstance(out, torch.Tensor):
            raise TypeError("func must return a torch.Tensor, got %s" % type(out).__name__)
        if out.shape != self.shape:
            raise ValueError(
                "func returned a tensor of shape %s, but the state y0 has shape %s"
                % (tuple(out.shape), tuple(self.shape))
            )
        if out.dtype != self.dtype:
            raise TypeError("func returned dtype %s, but the state y0 has dtype %s" % (out.dtype, self.dtype))
        if out.device != self.device:
            raise ValueError("func returned a tensor on %s, but the state y0 is on %s" % (out.device, self.device))
        self._checked = True


def warn_unused(solver_cls, unused):
    if unused:
        warnings.warn("{}: Unexpected arguments {}".format(solver_cls.__name__, unused))


def check_finite_ratio(ratio, t, dt):
    if ratio != ratio:
        raise RuntimeError(
            "non-finite values (NaN or inf) in the solution or its error estimate at t=%r, dt=%r; "
            "func returned NaN/inf or the solution overflowed" % (t, dt)
        )

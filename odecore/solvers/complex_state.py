"""Complex states for the adaptive RK methods, with torchdiffeq 0.2.5's error norm.

odecore integrates a complex y0 as its real view (``torch.view_as_real``: shape
(..., 2)): a Runge-Kutta stage is a real linear combination, so the fused kernels compute
on the real and imaginary parts exactly what complex arithmetic would. Only the error
control differs: torchdiffeq works on the complex tensors, so its tolerance scale is
``atol + rtol * max(|y0|, |y1|)`` with complex moduli and its RMS norm averages ``|x|^2``
over complex elements. `ComplexStateMixin` computes the error ratio and the initial step
that way (on complex views of the solver's real tensors, with the user's `norm`, if any,
given complex tensors as torchdiffeq does), so the same steps are taken. The tolerances
hold 1 or one value per complex element; `segments` count real elements (two per
complex one).
"""

import torch

from .adaptive import AdaptiveRKSolver, rms_segments


def as_complex(x):
    """The complex view of a real view (..., 2), copying when its layout does not allow one."""
    if x.stride(-1) != 1 or x.storage_offset() % 2 or any(s % 2 for s in x.stride()[:-1]):
        x = x.clone(memory_format=torch.contiguous_format)
    return torch.view_as_complex(x)


class ComplexStateMixin:
    """Error ratio and initial step of an AdaptiveRKSolver on complex moduli (see above)."""

    def __init__(self, func, y0, rtol, atol, *, segments, norm=None, **kwargs):
        super().__init__(func, y0, rtol, atol, segments=segments, norm=norm, **kwargs)
        self.complex_segments = [s // 2 for s in segments]
        self.user_norm = norm
        # a norm is set, so the solver takes its torch-ops error path (and the host loop)
        self.norm = self._complex_norm

    def _complex_norm(self, x):
        """torchdiffeq's norm of the complex tensor x (flat, one entry per complex element
        in the state's order): the user's, or the (per tuple part) RMS of the moduli."""
        if self.user_norm is not None:
            return float(abs(self.user_norm(x)))
        return rms_segments(x.abs(), self.complex_segments)

    def _scaled(self, x, scale):
        return (as_complex(x).reshape(-1) / scale).view(x.shape[:-1])

    def _error_ratio(self, y0, y1, k, dt):
        e_idx, e = self.tableau.e_terms
        err = sum(k[j] * (ej * dt) for j, ej in zip(e_idx, e))
        y0c, y1c = as_complex(y0), as_complex(y1)
        tol = self.atol.view(-1) + self.rtol.view(-1) * torch.max(y0c.abs(), y1c.abs()).reshape(-1)
        ratio = self._complex_norm(self._scaled(err, tol))
        if not torch.isfinite(y1).all():
            return float("nan")
        return ratio

    def _tolerance_scale(self, y0):
        return self.atol.view(-1) + as_complex(y0).abs().reshape(-1) * self.rtol.view(-1)

    def _scaled_norm(self, x, scale):
        return abs(self._complex_norm(self._scaled(x, scale)))


_CLASSES = {}


def for_complex_state(cls):
    """The solver class to integrate a complex state's real view with: adaptive RK methods
    get the complex error norm; the others (fixed grid, scipy) are used as they are."""
    if not (isinstance(cls, type) and issubclass(cls, AdaptiveRKSolver)):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(cls.__name__, (ComplexStateMixin, cls), {"__module__": cls.__module__})
    return _CLASSES[cls]

"""The one backend switch: every solver gets its step arithmetic from `get_ops`.

Two backends implement the same four ops with the same signatures:

* ``fused``: the C++/CUDA kernels of ``torch.ops.odecore`` (``odecore/ops/fused.py``);
* ``reference``: plain torch ops (``odecore/ops/reference.py``), the oracle of the tests and
  the fallback when the extension is not built.

The ops (``y0`` and every ``k[j]`` share shape, dtype and device):

* ``rk_stage(y0, k, a, dt)`` -> ``y0 + dt * sum_j a[j] * k[j]``
* ``rk_finish(y0, k, b, e, dt, rtol, atol, segments)`` -> ``(y1, ratio)``: ``y1`` as
  ``rk_stage`` with ``b``, and the error ratio of ``err = dt * sum_j e[j] * k[j]``: the largest
  over ``segments`` (lengths of consecutive chunks of the flattened state; a negative length
  ``-L`` marks ``L`` elements left out of the norm, as a seminorm does) of
  ``rms(err / (atol + rtol * max(|y0|, |y1|)))``, a 0-d float64 tensor; NaN when ``y1`` is not
  finite or ``err`` is NaN. ``rtol``/``atol`` hold 1 or ``y0.numel()`` values.
* ``rk_error_ratio(y0, y1, k, e, dt, rtol, atol, segments)`` -> ``ratio`` when ``y1`` is known.
* ``sde_step(y0, f, g, dw, gdg, dt, correction)`` -> ``y0 + f dt + g dw + gdg (dw^2 - correction) / 2``
  elementwise (one Euler-Maruyama or, with ``gdg`` = g dg/dy, Milstein step of an SDE with
  diagonal noise; ``correction`` is dt for Ito and 0 for Stratonovich).
* ``rk_interp(y0, k, poly, dt, x)`` -> dense output of shape ``(len(x), *y0.shape)``:
  ``y0 + dt * sum_j P_j(x) k[j]`` with ``P_j(x) = sum_d poly[j * D + d] * x**(d + 1)``.
"""

import torch

from .._extension import LOAD_ERROR, extension, has_fused
from . import reference

if extension is not None:
    from . import fused  # registers the fake kernels with the ops

BACKENDS = ("fused", "reference")
_default = ["fused"]


def set_backend(name):
    """Selects the step arithmetic for every later solve: 'fused' (default) or 'reference'."""
    _check_name(name)
    _default[0] = name


def get_backend():
    """The global backend name set by `set_backend`."""
    return _default[0]


def _check_name(name):
    if name not in BACKENDS:
        raise ValueError("backend must be one of %s, got %r" % (", ".join(map(repr, BACKENDS)), name))


def check_backend(backend):
    """Checks options['backend'] (None: the global backend)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError("options['backend'] must be one of %s, got %r" % (", ".join(map(repr, BACKENDS)), backend))


def get_ops(name=None, device=None):
    """The op namespace of backend `name` (None: the global one) for tensors on `device`.

    Asking for 'fused' where no kernels were built for that device gives the reference ops
    (the extension's absence was already reported once when odecore was imported).
    """
    name = get_backend() if name is None else name
    _check_name(name)
    if name == "fused" and has_fused(device):
        return fused
    return reference


def backend_info() -> dict:
    """Which kernels odecore was built with, and against which versions.

    Returns a dict: ``cpu`` / ``cuda`` (fused kernels built for that device), ``torch_version``
    and ``cuda_version`` (what the extension was built against; None when not built or CPU-only),
    ``runtime_torch_version``, ``extension`` (whether odecore._C loaded), ``load_error`` and
    ``backend`` (the current global backend).
    """
    return {
        "extension": extension is not None,
        "cpu": has_fused("cpu"),
        "cuda": has_fused("cuda"),
        "torch_version": None if extension is None else extension.torch_version,
        "cuda_version": getattr(extension, "cuda_version", None),
        "runtime_torch_version": torch.__version__,
        "runtime_cuda_available": torch.cuda.is_available(),
        "num_threads": torch.get_num_threads(),
        "load_error": LOAD_ERROR,
        "backend": get_backend(),
    }

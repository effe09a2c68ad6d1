"""Loads the compiled kernels (odecore._C) if they were built, and says which were."""

import warnings

import torch

try:
    from . import _C  # registers torch.ops.odecore.*
except ImportError as error:  # built without the extension, or built for another torch
    _C = None
    _LOAD_ERROR = "%s: %s" % (type(error).__name__, error)
    warnings.warn(
        "odecore: the compiled kernels (odecore._C) could not be loaded (%s); "
        "odecore runs on its pure-PyTorch reference path, which gives the same results more slowly. "
        "Reinstall with `pip install --no-build-isolation .` to build them." % _LOAD_ERROR,
        UserWarning,
        stacklevel=3,
    )
else:
    _LOAD_ERROR = None


def has_fused(device=None):
    """Whether fused kernels exist for `device` (a torch.device, str, or None for CPU)."""
    if _C is None:
        return False
    device_type = torch.device(device).type if device is not None else "cpu"
    if device_type == "cpu":
        return bool(_C.with_cpu)
    if device_type == "cuda":
        return bool(_C.with_cuda)
    return False


def backend_info():
    """Which kernels odecore was built with, and against which versions.

    Returns a dict: ``cpu`` / ``cuda`` (fused kernels built for that device), ``torch_version``
    and ``cuda_version`` (what the extension was built against; None when not built or CPU-only),
    ``runtime_torch_version``, ``extension`` (whether odecore._C loaded), ``load_error`` and
    ``backend`` (the current global backend).
    """
    from .ops import get_backend

    return {
        "extension": _C is not None,
        "cpu": has_fused("cpu"),
        "cuda": has_fused("cuda"),
        "torch_version": None if _C is None else _C.torch_version,
        "cuda_version": getattr(_C, "cuda_version", None),
        "runtime_torch_version": torch.__version__,
        "runtime_cuda_available": torch.cuda.is_available(),
        "num_threads": torch.get_num_threads(),
        "load_error": _LOAD_ERROR,
        "backend": get_backend(),
    }

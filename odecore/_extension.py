"""Loads the compiled kernels (odecore._C) if they were built, and says for which devices."""

import warnings

import torch

try:
    from . import _C as extension  # registers torch.ops.odecore.*
except ImportError as error:  # built without the extension, or built for another torch
    extension = None
    LOAD_ERROR = "%s: %s" % (type(error).__name__, error)
    warnings.warn(
        "odecore: the compiled kernels (odecore._C) could not be loaded (%s); "
        "odecore runs on its pure-PyTorch reference path, which gives the same results more slowly. "
        "Reinstall with `pip install --no-build-isolation .` to build them." % LOAD_ERROR,
        UserWarning,
        stacklevel=3,
    )
else:
    LOAD_ERROR = None


def has_fused(device: "torch.device | str | None" = None) -> bool:
    """Whether fused kernels exist for `device` (a torch.device, str, or None for CPU)."""
    if extension is None:
        return False
    device_type = torch.device(device).type if device is not None else "cpu"
    if device_type == "cpu":
        return bool(extension.with_cpu)
    if device_type == "cuda":
        return bool(extension.with_cuda)
    return False

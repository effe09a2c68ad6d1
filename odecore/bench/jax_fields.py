"""The benchmark problems' vector fields written in jax.numpy, for the diffrax rows.

Each twin is the same field as its torch module (same architecture, activation and constants),
with the module's weights converted to JAX arrays in the state's dtype. JAX is optional: it is
imported only when a twin is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .problems import CubicSpiral, MLPField, VanDerPol

# field(t, y, params) -> dy/dt, and its params (a pytree of JAX arrays, the jitted solve's input)
JaxField = tuple[Callable[[Any, Any, Any], Any], Any]


def jax_array(x: torch.Tensor | float, dtype: torch.dtype) -> Any:
    """``x`` (a tensor or a number) as a JAX array of the numpy twin of ``dtype``, on the CPU."""
    import jax.numpy as jnp

    values = x.detach().cpu().numpy() if torch.is_tensor(x) else x
    return jnp.asarray(np.asarray(values, dtype=torch.empty((), dtype=dtype).numpy().dtype))


def _van_der_pol(func: VanDerPol, dtype: torch.dtype) -> JaxField:
    import jax.numpy as jnp

    def field(t, y, mu):
        x, v = y[..., 0], y[..., 1]
        return jnp.stack([v, mu * (1 - x * x) * v - x], axis=-1)

    return field, jax_array(func.mu, dtype)


def _cubic_spiral(func: CubicSpiral, dtype: torch.dtype) -> JaxField:
    def field(t, y, a):
        return (y**3) @ a

    return field, jax_array(func.A, dtype)


def _mlp(func: MLPField, dtype: torch.dtype) -> JaxField:
    import jax.numpy as jnp

    first, last = func.net[0], func.net[2]

    def field(t, y, params):
        w1t, b1, w2t, b2 = params
        return jnp.tanh(y @ w1t + b1) @ w2t + b2

    # nn.Linear computes y @ W.T + b: the transposes are made once, here, not in every evaluation
    params = tuple(jax_array(p, dtype) for p in (first.weight.T, first.bias, last.weight.T, last.bias))
    return field, params


_TWINS: dict[type, Callable[[Any, torch.dtype], JaxField]] = {
    VanDerPol: _van_der_pol,
    CubicSpiral: _cubic_spiral,
    MLPField: _mlp,
}


def has_jax_twin(func: nn.Module) -> bool:
    """Whether ``func`` (a benchmark problem's vector field) has a jax.numpy twin."""
    return type(func) in _TWINS


def jax_twin(func: nn.Module, dtype: torch.dtype) -> JaxField:
    """The jax.numpy twin of ``func`` and its parameters in ``dtype``; KeyError when it has none."""
    return _TWINS[type(func)](func, dtype)

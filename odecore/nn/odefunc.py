"""The convolutional dynamics function of the ODE-Net (Chen et al. 2018, section 3)."""

import torch
from torch import nn

from .conv import ConcatConv2d

__all__ = ["ODEFunc", "norm"]


def norm(dim: int) -> nn.GroupNorm:
    """GroupNorm with min(32, dim) groups, the normalisation used throughout the paper's
    MNIST models (and torchdiffeq's examples/odenet_mnist.py)."""
    return nn.GroupNorm(min(32, dim), dim)


class ODEFunc(nn.Module):
    """dh/dt = f(h(t), t, theta) for the MNIST ODE-Net of Chen, Rubanova, Bettencourt &
    Duvenaud, "Neural Ordinary Differential Equations", NeurIPS 2018 (section 3, Table 1):

        GroupNorm -> ReLU -> ConcatConv2d(dim, dim, 3, 1, 1)
        -> GroupNorm -> ReLU -> ConcatConv2d(dim, dim, 3, 1, 1) -> GroupNorm

    i.e. one residual block's layers with the time as an extra input channel of both
    convolutions. ``forward(t, h)`` maps (B, dim, H, W) to the same shape. ``nfe`` counts
    the calls (the number of function evaluations the solver made, forward and backward);
    set it to 0 to restart the count.

    ``activation`` (default ``nn.ReLU(inplace=True)``, the paper's) may be replaced by a
    smooth one (e.g. ``nn.Softplus()``): ReLU's kinks make the dynamics only piecewise
    smooth, so at tight tolerances adaptive solvers reject many steps and the adjoint
    gradient converges slowly to the direct one.
    """

    def __init__(self, dim: int, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.norm1 = norm(dim)
        self.conv1 = ConcatConv2d(dim, dim, 3, 1, 1)
        self.norm2 = norm(dim)
        self.conv2 = ConcatConv2d(dim, dim, 3, 1, 1)
        self.norm3 = norm(dim)
        self.relu = nn.ReLU(inplace=True) if activation is None else activation
        self.nfe = 0

    def forward(self, t: float | torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():  # a compiled solve counts its evaluations in its stats
            self.nfe += 1
        out = self.relu(self.norm1(h))
        out = self.conv1(t, out)
        out = self.relu(self.norm2(out))
        out = self.conv2(t, out)
        return self.norm3(out)

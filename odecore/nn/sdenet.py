"""SDE-Net: Kong, Sun & Zhang, "SDE-Net: Equipping Deep Neural Networks with Uncertainty
Estimates", ICML 2020.

The ODE block of an ODE-Net becomes an SDE integrated by Euler-Maruyama over
``layer_depth`` steps on [0, T]: a drift net (shared across steps, time as input) fits the
task, and a diffusion net gives one value per sample, ``sigma_max * sigmoid(...)``, which
is trained to be small on in-distribution data and large out of it, so the spread of the
stochastic forward passes measures epistemic uncertainty. Each step's update is odecore's
fused ``sde_step`` op. Layouts follow the paper's code: :class:`SDENet` for images (MNIST
layout) and :class:`SDENetRegression` (MLP, mean and variance heads).
"""

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..ops import get_ops
from .classifiers import downsampling_layers, head_layers
from .conv import ConcatConv2d
from .odefunc import ODEFunc, norm

__all__ = ["Diffusion", "SDENet", "SDENetRegression", "euler_maruyama", "sdenet_train_step"]


class Diffusion(nn.Module):
    """GN -> ReLU -> ConcatConv -> GN -> ReLU -> ConcatConv -> head to one sigmoid per sample."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = norm(dim), norm(dim)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = ConcatConv2d(dim, dim, 3, 1, 1)
        self.conv2 = ConcatConv2d(dim, dim, 3, 1, 1)
        self.head = nn.Sequential(*head_layers(dim, 1), nn.Sigmoid())

    def forward(self, t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(t, self.relu(self.norm1(x)))
        out = self.conv2(t, self.relu(self.norm2(out)))
        return self.head(out)


def euler_maruyama(
    drift: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    g: torch.Tensor,
    layer_depth: int,
    horizon: float,
    ops: ModuleType,
) -> torch.Tensor:
    """x after `layer_depth` Euler-Maruyama steps of dx = drift(t, x) dt + g dW on [0, horizon],
    g (per sample) broadcast over x; one update per step by the backend ``ops`` (see
    :func:`odecore.ops.get_ops`)."""
    dt = horizon / layer_depth
    g = g.reshape(g.shape[0], *([1] * (x.dim() - 1))).expand_as(x)
    for i in range(layer_depth):
        t = torch.scalar_tensor(horizon * i / layer_depth, dtype=x.dtype, device=x.device)
        dw = torch.randn_like(x) * math.sqrt(dt)
        x = ops.sde_step(x, drift(t, x), g, dw, None, dt, 0.0)
    return x


class SDENet(nn.Module):
    """SDE-Net classifier (the paper's MNIST model): downsampling -> SDE block -> head.

    ``forward(x)`` is one stochastic pass (logits); ``forward(x, training_diffusion=True)``
    returns the diffusion net's value in (0, 1) on the (detached) features, for its
    in/out-of-distribution training. ``sigma_max`` scales the diffusion (500 in the paper's
    MNIST runs), ``horizon`` is T (6)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        dim: int = 64,
        layer_depth: int = 6,
        sigma_max: float = 500.0,
        horizon: float = 6.0,
        backend: str | None = None,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        self.layer_depth, self.sigma_max, self.horizon, self.backend = layer_depth, sigma_max, horizon, backend
        if image_size >= 16:  # the paper's stem: 28x28 -> 6x6
            self.downsampling = nn.Sequential(*downsampling_layers(in_channels, dim, "conv"))
        else:  # small images (8x8 digits) keep a 4x4 map
            self.downsampling = nn.Sequential(
                nn.Conv2d(in_channels, dim, 3, 1, 1), norm(dim), nn.ReLU(inplace=True), nn.Conv2d(dim, dim, 4, 2, 1)
            )
        self.drift = ODEFunc(dim)
        self.diffusion = Diffusion(dim)
        self.head = nn.Sequential(*head_layers(dim, num_classes))

    def forward(self, x: torch.Tensor, training_diffusion: bool = False) -> torch.Tensor:
        out = self.downsampling(x)
        t0 = torch.zeros((), dtype=out.dtype, device=out.device)
        if training_diffusion:
            return self.diffusion(t0, out.detach())
        g = self.sigma_max * self.diffusion(t0, out)
        out = euler_maruyama(self.drift, out, g, self.layer_depth, self.horizon, get_ops(self.backend, out.device))
        return self.head(out)

    def task_parameters(self) -> list[nn.Parameter]:
        """Downsampling, drift and head: what the task loss trains."""
        return [p for name, p in self.named_parameters() if not name.startswith("diffusion.")]


class SDENetRegression(nn.Module):
    """SDE-Net for regression (the paper's YearPredictionMSD model): an MLP drift over
    ``layer_depth`` Euler-Maruyama steps; the head gives a mean and a positive variance."""

    def __init__(
        self,
        in_features: int,
        hidden: int = 50,
        layer_depth: int = 4,
        sigma_max: float = 0.5,
        horizon: float = 4.0,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.layer_depth, self.sigma_max, self.horizon, self.backend = layer_depth, sigma_max, horizon, backend
        self.downsampling = nn.Linear(in_features, hidden)
        self.drift_net = nn.Sequential(nn.Linear(hidden + 1, hidden), nn.ReLU(inplace=True))
        self.diffusion_net = nn.Sequential(
            nn.Linear(hidden, 100), nn.ReLU(inplace=True), nn.Linear(100, 1), nn.Sigmoid()
        )
        self.head = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(hidden, 2))

    def drift(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.drift_net(torch.cat([x, t.expand(x.shape[0], 1)], dim=1))

    def forward(
        self, x: torch.Tensor, training_diffusion: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.downsampling(x)
        if training_diffusion:
            return self.diffusion_net(out.detach())
        g = self.sigma_max * self.diffusion_net(out)
        out = euler_maruyama(self.drift, out, g, self.layer_depth, self.horizon, get_ops(self.backend, out.device))
        mean, raw = self.head(out).unbind(-1)
        return mean, nn.functional.softplus(raw) + 1e-3

    def task_parameters(self) -> list[nn.Parameter]:
        """Downsampling, drift and head: what the task loss trains."""
        return [p for name, p in self.named_parameters() if not name.startswith("diffusion_net.")]


def sdenet_train_step(
    model: SDENet | SDENetRegression,
    task_optimizer: torch.optim.Optimizer,
    diffusion_optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    task_loss: Callable[[Any, torch.Tensor], torch.Tensor],
    ood_noise: float = 2.0,
) -> tuple[float, float]:
    """One step of the paper's alternating training: the task loss for downsampling, drift and
    head; then binary cross-entropy for the diffusion net, 0 on the batch and 1 on the batch
    perturbed by N(0, ood_noise^2) (pseudo out-of-distribution data). Returns both losses."""
    task_optimizer.zero_grad()
    loss = task_loss(model(x), y)
    loss.backward()
    task_optimizer.step()
    diffusion_optimizer.zero_grad()
    d_in = model(x, training_diffusion=True)
    d_out = model(x + ood_noise * torch.randn_like(x), training_diffusion=True)
    bce = nn.functional.binary_cross_entropy
    d_loss = bce(d_in, torch.zeros_like(d_in)) + bce(d_out, torch.ones_like(d_out))
    d_loss.backward()
    diffusion_optimizer.step()
    return loss.item(), d_loss.item()

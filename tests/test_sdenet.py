"""SDE-Net (Kong et al. 2020): shapes, the Euler-Maruyama block against a hand-written loop,
fused vs reference, and that the alternating training separates in- from out-of-distribution
inputs through the diffusion."""

import math

import torch

from odecore.nn import SDENet, SDENetRegression, euler_maruyama, sdenet_train_step
from odecore.ops import get_ops


def test_shapes_and_diffusion_range():
    model = SDENet(dim=16, layer_depth=3)
    x = torch.randn(5, 1, 28, 28)
    assert model(x).shape == (5, 10)
    d = model(x, training_diffusion=True)
    assert d.shape == (5, 1) and bool(((d > 0) & (d < 1)).all())
    d.sum().backward()  # the diffusion sees detached features: no gradient reaches the stem
    assert all(p.grad is None for p in model.downsampling.parameters())
    mean, var = SDENetRegression(7, hidden=8)(torch.randn(3, 7))
    assert mean.shape == var.shape == (3,) and bool((var > 0).all())


def test_euler_maruyama_matches_a_hand_written_loop(backend):
    torch.manual_seed(0)
    w = torch.randn(4, 4, dtype=torch.float64)

    def drift(t, x):
        return torch.tanh(x @ w) * (1 + t)

    x0, g = torch.randn(6, 4, dtype=torch.float64), torch.rand(6, 1, dtype=torch.float64)
    torch.manual_seed(1)
    got = euler_maruyama(drift, x0, g, layer_depth=4, horizon=2.0, ops=get_ops(backend))
    torch.manual_seed(1)
    x, dt = x0, 0.5
    for i in range(4):
        t = torch.tensor(2.0 * i / 4, dtype=torch.float64)
        x = x + drift(t, x) * dt + g * (torch.randn_like(x) * math.sqrt(dt))
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


def test_passes_are_stochastic_only_through_the_diffusion():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 28, 28)
    noisy, quiet = SDENet(dim=16, layer_depth=3, sigma_max=50.0), SDENet(dim=16, layer_depth=3, sigma_max=0.0)
    assert not torch.allclose(noisy(x), noisy(x))
    torch.testing.assert_close(quiet(x), quiet(x))


def test_training_makes_the_diffusion_larger_out_of_distribution():
    torch.manual_seed(0)
    model = SDENet(dim=16, layer_depth=2, sigma_max=1.0)
    task = torch.optim.Adam(model.task_parameters(), lr=1e-3)
    diffusion = torch.optim.Adam(model.diffusion.parameters(), lr=1e-2)
    templates = torch.randn(2, 1, 28, 28)
    y = torch.arange(32) % 2
    for _ in range(40):
        x = templates[y] + 0.1 * torch.randn(32, 1, 28, 28)
        sdenet_train_step(model, task, diffusion, x, y, torch.nn.functional.cross_entropy)
    with torch.no_grad():
        x = templates[y] + 0.1 * torch.randn(32, 1, 28, 28)
        d_in = model(x, training_diffusion=True).mean()
        d_out = model(x + 2.0 * torch.randn_like(x), training_diffusion=True).mean()
    assert d_out > d_in + 0.3, (d_in, d_out)

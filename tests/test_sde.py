"""sdeint: strong and weak orders against closed forms, agreement with torchsde on the same
Brownian path, fused vs reference, gradients, and bad input."""

import math

import numpy as np
import pytest
import torch

from odecore.sde import BrownianInterval, sdeint

from .testing import backends, product, require_backend

try:
    import torchsde
except ImportError:  # pragma: no cover - torchsde is a test extra
    torchsde = None

F64 = torch.float64


class GBM:
    """dY = mu Y dt + sigma Y dW."""

    def __init__(self, mu=0.5, sigma=0.8, sde_type="ito", noise_type="diagonal"):
        self.mu, self.sigma, self.sde_type, self.noise_type = mu, sigma, sde_type, noise_type

    def f(self, t, y):
        return self.mu * y

    def g(self, t, y):
        return self.sigma * y if self.noise_type == "diagonal" else (self.sigma * y).unsqueeze(-1)

    def exact(self, y0, t, w):
        ito_shift = -0.5 * self.sigma**2 if self.sde_type == "ito" else 0.0
        return y0 * torch.exp((self.mu + ito_shift) * t + self.sigma * w)


class OU:
    """dY = -theta Y dt + sigma dW (additive noise): Y(1) = e^-theta y0 + sigma int e^-theta(1-s) dW."""

    noise_type, sde_type = "additive", "ito"

    def __init__(self, theta=1.0, sigma=0.5):
        self.theta, self.sigma = theta, sigma

    def f(self, t, y):
        return -self.theta * y

    def g(self, t, y):
        return torch.full((*y.shape, 1), self.sigma, dtype=y.dtype)


def slope(hs, errors):
    return np.polyfit(np.log(hs), np.log(errors), 1)[0]


HS = [2.0**-k for k in range(3, 8)]


GRAD_FREE = {"grad_free": True}  # torchsde's derivative-free Milstein


@pytest.mark.parametrize(
    "method,options,expected,backend",
    [("euler", {}, 0.5, b) for b in backends]
    + [("milstein", {}, 1.0, b) for b in backends]
    + [("milstein", GRAD_FREE, 1.0, b) for b in backends],
)
def test_strong_order_on_gbm(method, options, expected, backend):
    require_backend(backend)
    sde, y0, ts = GBM(), torch.ones(2000, 1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    bm = BrownianInterval(t0=0.0, t1=1.0, size=(2000, 1), dtype=F64, entropy=7)
    exact = sde.exact(y0, 1.0, bm(0.0, 1.0))
    options = dict(options, backend=backend)
    errors = [
        (sdeint(sde, y0, ts, bm=bm, dt=h, method=method, options=options)[-1] - exact).abs().mean().item() for h in HS
    ]
    assert abs(slope(HS, errors) - expected) <= 0.15, errors


@pytest.mark.parametrize(
    "method,sde_type", [("euler", "ito"), ("reversible_heun", "stratonovich"), ("euler_heun", "stratonovich")]
)
def test_strong_order_one_on_ornstein_uhlenbeck(method, sde_type):
    """Additive noise (Ito and Stratonovich are the same SDE): Euler-Maruyama and the
    reversible Heun method reach order 1.0 (reversible Heun: 0.5 in general, measured 1.02 here)."""
    sde, n = OU(), 2000
    sde.sde_type = sde_type
    y0, ts = torch.ones(n, 1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    bm = BrownianInterval(t0=0.0, t1=1.0, size=(n, 1), dtype=F64, entropy=3)
    fine = 2.0**-12  # the stochastic integral, on a much finer grid of the same path
    grid = torch.arange(0, 1.0 + fine / 2, fine, dtype=F64).tolist()
    integral = sum(math.exp(-sde.theta * (1 - s)) * bm(s, s + fine) for s in grid[:-1])
    exact = math.exp(-sde.theta) * y0 + sde.sigma * integral
    errors = [(sdeint(sde, y0, ts, bm=bm, dt=h, method=method)[-1] - exact).abs().mean().item() for h in HS[:4]]
    assert abs(slope(HS[:4], errors) - 1.0) <= 0.15, errors


@pytest.mark.parametrize(
    "method,options",
    [("heun", {}), ("midpoint", {}), ("milstein", {}), ("milstein", GRAD_FREE)]
    + [("euler_heun", {}), ("log_ode", {}), ("reversible_heun", {})],
)
def test_stratonovich_methods_converge_at_order_one_on_gbm(method, options):
    """Diagonal (commutative) noise: order 1.0 (reversible Heun: measured 0.94)."""
    sde = GBM(sde_type="stratonovich")
    y0, ts = torch.ones(2000, 1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    levy = "foster" if method == "log_ode" else "none"  # log_ode steps on bm(t0, t1, return_A=True)
    bm = BrownianInterval(t0=0.0, t1=1.0, size=(2000, 1), dtype=F64, entropy=11, levy_area_approximation=levy)
    exact = sde.exact(y0, 1.0, bm(0.0, 1.0))
    errors = [
        (sdeint(sde, y0, ts, bm=bm, dt=h, method=method, options=options)[-1] - exact).abs().mean().item() for h in HS
    ]
    assert abs(slope(HS, errors) - 1.0) <= 0.15, errors


class LinearScalarNoise:
    """dY = a Y dt + B Y dW with scalar noise and B not symmetric (a scalar, so a I and B
    commute): Y(t) = expm((a I - B^2/2) t + B W(t)) y0 (Ito; Stratonovich without the B^2/2)."""

    noise_type = "scalar"
    a = 0.3
    B = torch.tensor([[0.2, 0.5], [-0.3, 0.1]], dtype=F64)

    def __init__(self, sde_type="ito"):
        self.sde_type = sde_type

    def f(self, t, y):
        return self.a * y

    def g(self, t, y):
        return (y @ self.B.T).unsqueeze(-1)

    def exact(self, y0, t, w):
        drift = self.a * torch.eye(2, dtype=F64) - (0.5 * self.B @ self.B if self.sde_type == "ito" else 0.0)
        flows = torch.matrix_exp(drift * t + w.view(-1, 1, 1) * self.B)
        return torch.bmm(flows, y0.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("sde_type,options", product(["ito", "stratonovich"], [{}, GRAD_FREE]))
def test_milstein_strong_order_one_with_scalar_noise(sde_type, options):
    """Milstein's term for scalar noise is (J g)(dW^2 - h) / 2, J = dg/dy (measured slopes 0.98);
    torchsde 0.2.6's J^T g gives 0.51 on this problem, where J = B is not symmetric."""
    sde, n = LinearScalarNoise(sde_type), 2000
    y0, ts = torch.ones(n, 2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    bm = BrownianInterval(t0=0.0, t1=1.0, size=(n, 1), dtype=F64, entropy=5)
    exact = sde.exact(y0, 1.0, bm(0.0, 1.0))
    errors = [
        (sdeint(sde, y0, ts, bm=bm, dt=h, method="milstein", options=options)[-1] - exact).abs().mean().item()
        for h in HS
    ]
    assert abs(slope(HS, errors) - 1.0) <= 0.15, errors


def test_weak_order_of_euler():
    # E[y_h] - E[y] = E[y_h - y]: estimated on the same paths it has the small variance of
    # a strong error, so the fitted slope is the weak order and not Monte Carlo noise
    sde, n = GBM(mu=1.0, sigma=0.5), 20000
    y0, ts = torch.ones(n, 1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    hs = [0.25, 0.125, 0.0625, 0.03125]
    bm = BrownianInterval(t0=0.0, t1=1.0, size=(n, 1), dtype=F64, entropy=5)
    exact = sde.exact(y0, 1.0, bm(0.0, 1.0))
    errors = [abs((sdeint(sde, y0, ts, bm=bm, dt=h, method="euler")[-1] - exact).mean().item()) for h in hs]
    assert abs(slope(hs, errors) - 1.0) <= 0.15, errors


@pytest.mark.skipif(torchsde is None, reason="torchsde not installed")
@pytest.mark.parametrize(
    "method,sde_type,noise_type,options",
    [
        ("euler", "ito", "diagonal", {}),
        ("euler", "ito", "scalar", {}),
        ("euler", "ito", "general", {}),
        ("milstein", "ito", "diagonal", {}),
        ("milstein", "stratonovich", "diagonal", {}),
        ("heun", "stratonovich", "diagonal", {}),
        ("midpoint", "stratonovich", "diagonal", {}),
        ("midpoint", "stratonovich", "general", {}),
        # g_i a function of y_i: J symmetric, where torchsde's scalar Milstein term is ours
        ("milstein", "ito", "scalar", {}),
        ("milstein", "stratonovich", "scalar", {}),
        ("milstein", "ito", "diagonal", GRAD_FREE),
        ("milstein", "stratonovich", "diagonal", GRAD_FREE),
        ("milstein", "ito", "scalar", GRAD_FREE),
        ("euler_heun", "stratonovich", "diagonal", {}),
        ("euler_heun", "stratonovich", "general", {}),
        ("reversible_heun", "stratonovich", "diagonal", {}),
        ("reversible_heun", "stratonovich", "scalar", {}),
        ("reversible_heun", "stratonovich", "general", {}),
        ("log_ode", "stratonovich", "diagonal", {}),
        ("log_ode", "stratonovich", "general", {}),  # with the Levy area term
    ],
)
def test_matches_torchsde_on_the_same_path(method, sde_type, noise_type, options):
    torch.manual_seed(0)
    d, m, batch = 3, 2, 16
    A = torch.randn(d, d, dtype=F64) * 0.3
    B = torch.randn(d, m, dtype=F64) * 0.3

    class Net:
        def __init__(self):
            self.sde_type, self.noise_type = sde_type, noise_type

        def f(self, t, y):
            return torch.tanh(y @ A) * torch.cos(t)

        def g(self, t, y):
            if noise_type == "diagonal":
                return 0.3 * torch.sin(y) + 0.1
            if noise_type == "scalar":
                return (0.3 * torch.sin(y) + 0.1).unsqueeze(-1)
            return torch.tanh(y).unsqueeze(-1) * B + 0.05

    size = (batch, {"diagonal": d, "scalar": 1, "general": m}[noise_type])
    levy = "foster" if method == "log_ode" else "none"
    bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=size, dtype=F64, entropy=2, levy_area_approximation=levy)
    y0 = torch.randn(batch, d, dtype=F64)
    ts = torch.linspace(0, 1, 5, dtype=F64)
    ours = sdeint(Net(), y0, ts, bm=bm, dt=0.01, method=method, options=dict(options))
    theirs = torchsde.sdeint(Net(), y0, ts, bm=bm, dt=0.01, method=method, options=dict(options))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_fused_and_reference_agree_and_gradcheck():
    require_backend("fused")
    torch.manual_seed(1)
    w = torch.randn(2, 2, dtype=F64, requires_grad=True)
    y0 = torch.randn(4, 2, dtype=F64, requires_grad=True)
    ts = torch.linspace(0, 0.5, 3, dtype=F64)

    class Net:
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return torch.tanh(y @ w)

        def g(self, t, y):
            return 0.2 * torch.sigmoid(y @ w)

    def solve(y0, w_, backend="fused"):
        bm = BrownianInterval(t0=0.0, t1=0.5, size=(4, 2), dtype=F64, entropy=9)
        return sdeint(Net(), y0, ts, bm=bm, dt=0.05, method="euler", options=dict(backend=backend))

    torch.testing.assert_close(solve(y0, w), solve(y0, w, "reference"), rtol=1e-13, atol=1e-14)
    assert torch.autograd.gradcheck(lambda y: solve(y, w), (y0,))


def test_default_brownian_motion_and_output_shape(backend):
    out = sdeint(GBM(), torch.ones(8, 3), torch.linspace(0, 1, 6), dt=0.05, options=dict(backend=backend))
    assert out.shape == (6, 8, 3) and torch.isfinite(out).all()
    assert torch.equal(out[0], torch.ones(8, 3))


def test_bad_inputs():
    y0, ts = torch.ones(4, 2), torch.linspace(0, 1, 3)
    with pytest.raises(ValueError, match="noise_type"):
        sdeint(GBM(noise_type="weird"), y0, ts)
    with pytest.raises(ValueError, match="does not solve ito"):
        sdeint(GBM(), y0, ts, method="heun")
    with pytest.raises(ValueError, match="milstein"):
        sdeint(GBM(noise_type="general"), y0, ts, method="milstein")
    with pytest.raises(ValueError, match="strictly increasing"):
        sdeint(GBM(), y0, ts.flip(0))
    with pytest.raises(ValueError, match="dt"):
        sdeint(GBM(), y0, ts, dt=-1.0)
    with pytest.raises(ValueError, match=r"\(batch, d\)"):
        sdeint(GBM(), torch.ones(2), ts)

    class BadG(GBM):
        def g(self, t, y):
            return y[:, :1]

    with pytest.raises(ValueError, match="sde.g returned shape"):
        sdeint(BadG(), y0, ts)
    with pytest.raises(ValueError, match="extra_solver_state"):  # euler keeps no extra state
        sdeint(GBM(), y0, ts, extra_solver_state=(y0,))

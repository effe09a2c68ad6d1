"""torchcde's ``cdeint`` with odecore in place of torchdiffeq (and of torchsde).

torchcde calls ``torchdiffeq.odeint``/``odeint_adjoint`` with a vector field that evaluates an
interpolated control path; with ``adjoint=True`` the path's spline coefficients are passed in
``adjoint_params``, so the vector field uses tensors whose graph was built outside it (the
spline's derived coefficients). Everything here is compared with real torchdiffeq on the same
problem in the same process."""

import math

import pytest
import torch

import odecore

torchcde = pytest.importorskip("torchcde")
torchdiffeq = pytest.importorskip("torchdiffeq")
cde_solver = pytest.importorskip("torchcde.solver")


def spirals(n=16, length=25, seed=0, missing=0.0):
    """torchcde's documented example data: clockwise vs anticlockwise decaying spirals, (n, length, 3)
    with time as the first channel; a fraction `missing` of the observations set to NaN (irregular)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0.0, 4 * math.pi, length, dtype=torch.float64)
    start = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    x = torch.cos(start[:, None] + t[None]) / (1 + 0.5 * t)
    x[: n // 2] *= -1
    y = torch.sin(start[:, None] + t[None]) / (1 + 0.5 * t)
    X = torch.stack([t.expand(n, length), x, y], dim=2)
    X = X + 0.01 * torch.randn(X.shape, generator=g, dtype=torch.float64) * torch.tensor([0.0, 1.0, 1.0])
    if missing:
        drop = torch.rand(n, length, generator=g) < missing
        X[..., 1:][drop] = float("nan")
    labels = torch.zeros(n, dtype=torch.float64)
    labels[: n // 2] = 1
    return X, labels


class CDEFunc(torch.nn.Module):
    def __init__(self, channels, hidden):
        super().__init__()
        self.channels, self.hidden = channels, hidden
        self.l1 = torch.nn.Linear(hidden, 16)
        self.l2 = torch.nn.Linear(16, channels * hidden)

    def forward(self, t, z):
        return self.l2(self.l1(z).relu()).tanh().view(*z.shape[:-1], self.hidden, self.channels)


class NeuralCDE(torch.nn.Module):
    def __init__(self, channels=3, hidden=4):
        super().__init__()
        self.func = CDEFunc(channels, hidden)
        self.initial = torch.nn.Linear(channels, hidden)
        self.readout = torch.nn.Linear(hidden, 1)

    def forward(self, coeffs, **kwargs):
        X = torchcde.CubicSpline(coeffs)
        z0 = self.initial(X.evaluate(X.interval[0]))
        if kwargs.get("adjoint", True):  # torchcde's recipe: the coefficients among adjoint_params
            kwargs["adjoint_params"] = tuple(self.func.parameters()) + ((coeffs,) if coeffs.requires_grad else ())
        zT = torchcde.cdeint(X=X, z0=z0, func=self.func, t=X.interval, **kwargs)
        return self.readout(zT[..., 1, :]).squeeze(-1)


def _model(seed=0):
    torch.manual_seed(seed)
    return NeuralCDE().double()


def _grads(library, monkeypatch, model, coeffs, labels, **kwargs):
    monkeypatch.setattr(cde_solver, "torchdiffeq", library)
    coeffs = coeffs.detach().requires_grad_(True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(coeffs, **kwargs), labels)
    grads = torch.autograd.grad(loss, (coeffs, *model.parameters()))
    return loss.detach(), grads


@pytest.mark.parametrize("adjoint", [True, False])
def test_cdeint_gradients_match_torchdiffeq(monkeypatch, adjoint):
    """Loss and gradients (func's and the encoder's parameters, and the spline coefficients through
    adjoint_params) as torchdiffeq gives them on the same fixed grid: the same to rounding."""
    X, labels = spirals(n=8, length=10)
    coeffs = torchcde.natural_cubic_coeffs(X)
    model = _model()
    kwargs = dict(adjoint=adjoint, method="rk4", options=dict(step_size=0.2))
    ours_loss, ours = _grads(odecore, monkeypatch, model, coeffs, labels, **kwargs)
    ref_loss, ref = _grads(torchdiffeq, monkeypatch, model, coeffs, labels, **kwargs)
    torch.testing.assert_close(ours_loss, ref_loss, rtol=1e-12, atol=1e-14)
    assert ours[0].abs().max() > 0  # the path's coefficients do get a gradient
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_cdeint_adaptive_adjoint_matches_torchdiffeq(monkeypatch):
    """cdeint's defaults (dopri5, adjoint=True, rtol 1e-4 and atol 1e-6 passed on to the backward
    pass): the same steps as torchdiffeq, so loss and gradients agree to rounding (measured: 8e-11
    of the largest gradient entry; adjoint and direct gradients differ by 5e-2 at these
    tolerances, so this is not a loose match)."""
    X, labels = spirals(n=8, length=10)
    coeffs = torchcde.natural_cubic_coeffs(X)
    model = _model()
    ours_loss, ours = _grads(odecore, monkeypatch, model, coeffs, labels)
    ref_loss, ref = _grads(torchdiffeq, monkeypatch, model, coeffs, labels)
    torch.testing.assert_close(ours_loss, ref_loss, rtol=1e-10, atol=1e-12)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * float(b.abs().max()))


def test_cdeint_stacked_batch_and_fixed_grid(monkeypatch):
    """Paths stacked over two batch dimensions, a fixed-grid method with step_size, and the
    Hermite spline with backward differences: the same output as torchdiffeq."""
    X, _ = spirals(n=6)
    X = X.view(2, 3, *X.shape[1:])
    coeffs = torchcde.hermite_cubic_coefficients_with_backward_differences(X)
    model = _model(1)
    outs = []
    for library in (odecore, torchdiffeq):
        monkeypatch.setattr(cde_solver, "torchdiffeq", library)
        c = coeffs.detach().requires_grad_(True)
        out = model(c, method="rk4", options=dict(step_size=0.25), adjoint=True)
        (grad,) = torch.autograd.grad(out.sum(), (c,))
        outs.append((out.detach(), grad))
    assert outs[0][0].shape == (2, 3)
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-8, atol=1e-10)


def test_irregular_classification_trains(monkeypatch):
    """torchcde's documented usage on irregular (NaN-holed) series: cdeint(X=..., func=..., z0=...,
    t=X.interval, adjoint=True) trains with odecore; the loss goes down."""
    monkeypatch.setattr(cde_solver, "torchdiffeq", odecore)
    X, labels = spirals(n=16, length=12, missing=0.3, seed=3)
    X, labels = X.float(), labels.float()  # float32, as models train
    coeffs = torchcde.natural_cubic_coeffs(X)
    torch.manual_seed(2)
    model = NeuralCDE()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(coeffs, adjoint=True), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]


def test_cdeint_torchsde_backend(monkeypatch):
    """backend='torchsde' (a CDE solved as a zero-noise Stratonovich SDE) with odecore's sdeint in
    torchsde's place gives torchdiffeq's fixed-grid answer."""
    X, _ = spirals(n=4)
    coeffs = torchcde.natural_cubic_coeffs(X)
    model = _model(4)
    spline = torchcde.CubicSpline(coeffs)
    z0 = model.initial(spline.evaluate(spline.interval[0])).detach()
    monkeypatch.setattr(cde_solver, "torchsde", odecore)
    sde_out = torchcde.cdeint(
        X=spline,
        z0=z0,
        func=model.func,
        t=spline.interval,
        backend="torchsde",
        adjoint=False,
        method="midpoint",
        dt=0.05,
    )
    monkeypatch.setattr(cde_solver, "torchdiffeq", torchdiffeq)
    ode_out = torchcde.cdeint(
        X=spline,
        z0=z0,
        func=model.func,
        t=spline.interval,
        adjoint=False,
        method="midpoint",
        options=dict(step_size=0.05),
    )
    torch.testing.assert_close(sde_out.detach(), ode_out.detach(), rtol=1e-6, atol=1e-8)

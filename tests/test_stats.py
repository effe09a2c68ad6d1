"""options={'return_stats': True} on every solve path: every method in odecore.SOLVERS via
odeint and odeint_adjoint (with the backward_* keys), checkpointing, one output time."""

import warnings

import pytest
import torch

import odecore
from odecore.solvers import AdaptiveRKSolver, FixedGridRKSolver

KEYS = ("nfe", "n_steps", "n_accepted", "n_rejected", "final_dt")
# scipy does not expose the rejected attempts of its implicit methods and LSODA (the default)
MAY_BE_NONE = {"scipy_solver": ("n_steps", "n_rejected")}


def _options(method):
    cls = odecore.SOLVERS[method]
    opts = dict(return_stats=True)
    if isinstance(cls, type) and issubclass(cls, FixedGridRKSolver):
        opts["step_size"] = 0.125
    return opts


def _check(stats, method, prefix=""):
    for key in KEYS:
        assert prefix + key in stats, (method, prefix + key, stats)
        value = stats[prefix + key]
        if value is None and key in MAY_BE_NONE.get(method, ()):
            continue
        if key == "final_dt":
            assert isinstance(value, float) and value > 0, (method, key, value)
        else:
            assert isinstance(value, int) and not isinstance(value, bool) and value >= 0, (method, key, value)
    if stats[prefix + "n_steps"] is not None:
        assert stats[prefix + "n_steps"] == stats[prefix + "n_accepted"] + stats[prefix + "n_rejected"]
    assert stats[prefix + "nfe"] >= stats[prefix + "n_accepted"] > 0


def _func():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()


class Wrapped(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.net(y)


@pytest.mark.parametrize("method", sorted(odecore.SOLVERS))
def test_every_method_reports_stats(method):
    func = Wrapped(_func())
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, stats = odecore.odeint(func, y0, t, method=method, rtol=1e-6, atol=1e-8, options=_options(method))
    assert out.shape == (3, 2)
    _check(stats, method)
    assert stats["nfe"] == func.nfe
    cls = odecore.SOLVERS[method]
    if issubclass(cls, FixedGridRKSolver):
        assert stats["n_rejected"] == 0 and stats["final_dt"] == pytest.approx(0.125)
    if issubclass(cls, AdaptiveRKSolver):
        assert stats["loop"] in ("host", "device")


@pytest.mark.parametrize("method", sorted(odecore.SOLVERS))
def test_every_method_reports_adjoint_stats(method):
    func = Wrapped(_func())
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, stats = odecore.odeint_adjoint(func, y0, t, method=method, rtol=1e-6, atol=1e-8, options=_options(method))
        _check(stats, method)
        out.sum().backward()
    _check(stats, method, "backward_")
    assert y0.grad is not None


def test_checkpoint_and_single_time_stats():
    func = Wrapped(_func())
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64, requires_grad=True)
    out, stats = odecore.odeint(
        func, y0, torch.linspace(0, 1, 3, dtype=torch.float64), options=dict(return_stats=True, checkpoint=2)
    )
    _check(stats, "dopri5")
    assert stats["checkpoints"] <= 2
    for fn in (odecore.odeint, odecore.odeint_adjoint):
        _, stats = fn(func, y0, torch.tensor([0.5], dtype=torch.float64), options=dict(return_stats=True))
        assert stats == {"nfe": 0, "n_steps": 0, "n_accepted": 0, "n_rejected": 0, "final_dt": None}

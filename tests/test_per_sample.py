"""Per-sample solving (options={'batch_dim': d}): each sample's own t, dt, error norm,
accept/reject and status inside the fused kernels; results equal solving each sample alone."""

import math

import pytest
import torch

import odecore
from odecore.solvers.per_sample import SampleFailure

from .problems import van_der_pol
from .testing import ADAPTIVE_METHODS

pytestmark = pytest.mark.fused


def forced(t, y):
    """Uses t: one time per sample, broadcast against y."""
    return -0.5 * y + torch.sin(3 * t) * torch.cos(y)


def solo_solves(func_for, y0, t_for, method, rtol=1e-6, atol=1e-6, **options):
    out = []
    for b in range(y0.shape[0]):
        out.append(
            odecore.odeint(
                func_for(b),
                y0[b],
                t_for(b),
                rtol=rtol,
                atol=atol,
                method=method,
                options=dict(options, return_stats=True),
            )
        )
    return out


def check_equal_to_solo(ys, stats, solos, column=lambda ys, b: ys[:, b]):
    for b, (yb, sb) in enumerate(solos):
        assert torch.equal(column(ys, b), yb), (b, (column(ys, b) - yb).abs().max())
        assert stats["n_steps"][b].item() == sb["n_steps"]
        assert stats["n_accepted"][b].item() == sb["n_accepted"]
        assert stats["final_dt"][b].item() == sb["final_dt"]
        assert stats["nfe_per_sample"][b].item() == sb["nfe"]


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_solving_each_sample_alone(method, dtype):
    mu = torch.tensor([1.0, 4.0, 9.0, 16.0, 25.0], dtype=dtype)
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.5, -1.0], [2.0, 0.5], [-1.5, 0.0]], dtype=dtype)
    t = torch.linspace(0, 4, 9, dtype=dtype)
    ys, stats = odecore.odeint(
        van_der_pol(mu.view(5)[:, None][..., 0], dim=-1),
        y0,
        t,
        rtol=1e-6,
        atol=1e-6,
        method=method,
        options={"batch_dim": 0, "return_stats": True},
    )
    assert ys.shape == (9, 5, 2) and stats["loop"] == "per_sample"
    check_equal_to_solo(ys, stats, solo_solves(lambda b: van_der_pol(mu[b], dim=-1), y0, lambda b: t, method))


def test_reverse_time_and_time_dependent_func():
    y0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(2, -1, 6, dtype=torch.float64)
    ys, stats = odecore.odeint(forced, y0, t, rtol=1e-7, atol=1e-8, options={"batch_dim": 0, "return_stats": True})
    check_equal_to_solo(ys, stats, solo_solves(lambda b: forced, y0, lambda b: t, "dopri5", rtol=1e-7, atol=1e-8))


def test_per_sample_output_grids():
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn(3, 2, dtype=torch.float64, generator=g)
    t = torch.stack([torch.linspace(0, 1, 5), torch.linspace(0.5, 4, 5), torch.linspace(-1, 0, 5)]).double()
    ys, stats = odecore.odeint(forced, y0, t, options={"batch_dim": 0, "return_stats": True})
    check_equal_to_solo(ys, stats, solo_solves(lambda b: forced, y0, lambda b: t[b], "dopri5", rtol=1e-7, atol=1e-9))


def test_batch_dim_other_than_zero():
    g = torch.Generator().manual_seed(2)
    y0 = torch.randn(2, 6, dtype=torch.float64, generator=g)  # batch along dim 1
    mu = torch.linspace(1, 10, 6, dtype=torch.float64)

    columns = van_der_pol(mu, dim=0)

    def vdp_cols(t, y):
        assert t.shape == (1, 6)
        return columns(t, y)

    t = torch.linspace(0, 3, 4, dtype=torch.float64)
    ys = odecore.odeint(vdp_cols, y0, t, rtol=1e-6, atol=1e-6, options={"batch_dim": 1})
    rows = odecore.odeint(
        van_der_pol(mu, dim=-1), y0.t().contiguous(), t, rtol=1e-6, atol=1e-6, options={"batch_dim": 0}
    )
    assert ys.shape == (4, 2, 6)
    assert torch.equal(ys, rows.transpose(1, 2))


def test_van_der_pol_mu_1_to_25_fewer_evaluations_same_answers():
    """A batch of stiffness levels: each sample takes the steps it needs instead of the
    stiffest one's, so far fewer evaluations per sample, and the same answers to tolerance."""
    g = torch.Generator().manual_seed(3)
    n = 32
    mu = 1 + 24 * torch.rand(n, dtype=torch.float64, generator=g)
    y0 = torch.stack([2 * torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)], -1)
    t = torch.linspace(0, 10, 21, dtype=torch.float64)
    per, stats = odecore.odeint(
        van_der_pol(mu, dim=-1), y0, t, rtol=1e-7, atol=1e-7, options={"batch_dim": 0, "return_stats": True}
    )
    shared, shared_stats = odecore.odeint(
        van_der_pol(mu, dim=-1), y0, t, rtol=1e-7, atol=1e-7, options={"return_stats": True}
    )
    mean_nfe = stats["nfe_per_sample"].double().mean().item()
    assert mean_nfe < 0.8 * shared_stats["nfe"], (mean_nfe, shared_stats["nfe"])
    truth = odecore.odeint(van_der_pol(mu, dim=-1), y0, t, rtol=1e-11, atol=1e-11)
    assert (per - truth).abs().max() < 1e-3
    assert (shared - truth).abs().max() < 1e-3


def test_a_failing_sample_is_reported_and_the_others_finish():
    y0 = torch.ones(4, 2, dtype=torch.float64)
    bad = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)[:, None]

    def func(t, y):  # sample 2 turns NaN after t = 0.7
        return torch.where((t > 0.7) & (bad > 0), torch.full_like(y, math.nan), -y)

    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    with pytest.raises(SampleFailure) as info:
        odecore.odeint(func, y0, t, options={"batch_dim": 0})
    err = info.value
    assert err.failed == [2]
    assert "sample 2: non-finite" in str(err) and "t=" in str(err) and "dt=" in str(err)
    good = odecore.odeint(lambda t, y: -y, y0[0], t)
    for b in (0, 1, 3):
        assert torch.equal(err.solution[:, b], good)
    assert torch.isnan(err.solution[-1, 2]).all()
    assert err.stats["status"].tolist() == [0, 0, 2, 0]


def test_max_num_steps_per_sample():
    mu = torch.tensor([1.0, 1000.0], dtype=torch.float64)
    y0 = torch.tensor([[2.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    with pytest.raises(SampleFailure, match="sample 1: max_num_steps exceeded") as info:
        odecore.odeint(
            van_der_pol(mu, dim=-1),
            y0,
            torch.tensor([0.0, 3.0], dtype=torch.float64),
            options={"batch_dim": 0, "max_num_steps": 200},
        )
    assert info.value.failed == [1]


@pytest.mark.parametrize("k", [4, 16])
def test_host_reads_at_most_steps_over_k(k):
    mu = torch.linspace(1, 5, 8, dtype=torch.float64)
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64).repeat(8, 1)
    _, stats = odecore.odeint(
        van_der_pol(mu, dim=-1),
        y0,
        torch.linspace(0, 10, 3, dtype=torch.float64),
        options={"batch_dim": 0, "return_stats": True, "sync_every": k},
    )
    most = int(stats["n_steps"].max())
    assert most > 50
    assert stats["host_reads"] <= math.ceil(most / k) + 2


@pytest.mark.parametrize(
    "options,error,match",
    [
        ({"batch_dim": 2}, ValueError, "batch_dim"),
        ({"batch_dim": 0, "norm": lambda x: x.abs().max()}, ValueError, "norm"),
    ],
)
def test_bad_arguments(options, error, match):
    with pytest.raises(error, match=match):
        odecore.odeint(lambda t, y: -y, torch.ones(3, 2), torch.linspace(0, 1, 3), options=options)


def test_reference_backend_equals_fused():
    mu = torch.tensor([1.0, 5.0, 12.0], dtype=torch.float64)
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.5, -1.0]], dtype=torch.float64)
    t = torch.linspace(0, 2, 4, dtype=torch.float64)
    ref, ref_stats = odecore.odeint(
        van_der_pol(mu, dim=-1), y0, t, options={"batch_dim": 0, "backend": "reference", "return_stats": True}
    )
    fused, fused_stats = odecore.odeint(van_der_pol(mu, dim=-1), y0, t, options={"batch_dim": 0, "return_stats": True})
    assert torch.equal(ref_stats["n_steps"], fused_stats["n_steps"])
    torch.testing.assert_close(ref, fused, rtol=1e-12, atol=1e-12)


def test_bad_method_state_and_times():
    with pytest.raises(ValueError, match="adaptive Runge-Kutta"):
        odecore.odeint(
            lambda t, y: -y, torch.ones(3, 2), torch.linspace(0, 1, 3), method="rk4", options={"batch_dim": 0}
        )
    with pytest.raises(TypeError, match="one tensor"):
        odecore.odeint(
            lambda t, y: y, (torch.ones(3), torch.ones(3)), torch.linspace(0, 1, 3), options={"batch_dim": 0}
        )
    with pytest.raises(ValueError, match=r"shape \(T,\) or \(batch, T\)"):
        odecore.odeint(lambda t, y: -y, torch.ones(3, 2), torch.zeros(2, 4), options={"batch_dim": 0})
    with pytest.raises(ValueError, match="one direction"):
        odecore.odeint(
            lambda t, y: -y, torch.ones(2, 2), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), options={"batch_dim": 0}
        )


def test_odeint_adjoint_per_sample_forward_gradients():
    """Per-sample forward, shared-step adjoint backward: the gradients of the per-sample
    solution match direct backprop through a tight shared solve."""
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()

    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y) * (1 + 0.5 * torch.sin(t))

    func = F()
    y0 = torch.randn(6, 2, dtype=torch.float64)
    t = torch.linspace(0, 1.5, 4, dtype=torch.float64)
    y0a = y0.clone().requires_grad_()
    ys, stats = odecore.odeint_adjoint(
        func, y0a, t, rtol=1e-9, atol=1e-9, options={"batch_dim": 0, "return_stats": True}
    )
    assert stats["loop"] == "per_sample" and stats["n_steps"].shape == (6,)
    ys.pow(2).sum().backward()
    grads = [y0a.grad] + [q.grad.clone() for q in net.parameters()]
    net.zero_grad()
    y0b = y0.clone().requires_grad_()
    odecore.odeint(func, y0b, t, rtol=1e-11, atol=1e-11).pow(2).sum().backward()
    expected = [y0b.grad] + [q.grad for q in net.parameters()]
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)

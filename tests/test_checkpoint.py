"""Exact checkpointed gradients: odeint(..., options={'checkpoint': N}).

The forward values are those of plain odeint; the backward pass replays the steps from at
most N stored checkpoints and gives the direct-backprop gradient to float64 rounding, for
adaptive and fixed-grid methods, tuple states, closures and nn.Modules (gradients
accumulate into .grad, like torch.utils.checkpoint), forward and backward in time. The
bytes autograd saves are bounded by about (N+1) checkpoints x 2 state-sized tensors plus
the outputs, whatever the number of steps."""

import pytest
import torch

import odecore

from .problems import SpiralMLP
from .testing import EXPLICIT_RK_METHODS, FIXED_METHODS, backends, product, require_backend

FIXED_STEP = 0.05
GRAD_REL = 1e-12


def method_options(method, backend, **extra):
    opts = dict(backend=backend, **extra)
    if method in FIXED_METHODS:
        opts["step_size"] = FIXED_STEP
    return opts


def spiral_mlp(seed=0):
    """ode_demo's ODEFunc with non-zero biases, so that every parameter gets a non-trivial
    gradient, and a forcing in time."""
    return SpiralMLP(seed, weight_std=0.3, bias_std=0.1, forcing=0.1)


def spiral_y0(batch=3):
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [-0.5, 1.5], [0.3, -0.8]], dtype=torch.float64)[:batch]
    return y0.clone().requires_grad_()


def loss_weights(shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def zero_grads(tensors):
    for x in tensors:
        x.grad = None


def backward_grads(func, y0, t, leaves, w, **kwargs):
    """Solution, stats and the .grad of every leaf after sum(w * solution).backward()."""
    zero_grads(leaves)
    options = dict(kwargs.pop("options", {}), return_stats=True)
    sol, stats = odecore.odeint(func, y0, t, options=options, **kwargs)
    if isinstance(sol, tuple):
        loss = sum((wi * si).sum() for wi, si in zip(w, sol))
    else:
        loss = (w * sol).sum()
    loss.backward()
    grads = [None if x.grad is None else x.grad.clone() for x in leaves]
    zero_grads(leaves)
    return sol, stats, grads


def assert_exact_grads(got, expected, rel=GRAD_REL):
    """Equal to float64 rounding: every entry within rel * (largest entry of that gradient)."""
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert e is not None, i
        assert g is not None, ("missing gradient", i)
        assert g.shape == e.shape
        scale = max(e.abs().max().item(), 1e-300)
        err = (g - e).abs().max().item()
        assert err <= rel * scale, (i, err, scale, err / scale)


def assert_same_solution(got, expected):
    if isinstance(expected, tuple):
        for g, e in zip(got, expected):
            assert_same_solution(g, e)
        return
    torch.testing.assert_close(got.detach(), expected.detach(), rtol=0, atol=0)


def compare(func, y0, t, leaves, w, checkpoint, **kwargs):
    """Checkpointed vs plain odeint: same solution and step statistics, same gradients."""
    sol_d, stats_d, g_d = backward_grads(func, y0, t, leaves, w, **kwargs)
    kw = dict(kwargs)
    kw["options"] = dict(kw.get("options", {}), checkpoint=checkpoint)
    sol_c, stats_c, g_c = backward_grads(func, y0, t, leaves, w, **kw)
    assert_same_solution(sol_c, sol_d)
    for key in ("nfe", "n_steps", "n_accepted", "n_rejected"):
        assert stats_c[key] == stats_d[key], (key, stats_c, stats_d)
    assert_exact_grads(g_c, g_d)
    return stats_d, g_d


# --------------------------------------------------------------------------- #
# Exact gradients: every method, both backends, several N
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method,backend", product(EXPLICIT_RK_METHODS, backends))
def test_gradients_equal_direct_backprop(method, backend):
    require_backend(backend)
    func = spiral_mlp()
    y0 = spiral_y0()
    t = torch.linspace(0.0, 1.5, 4, dtype=torch.float64)
    leaves = [y0] + list(func.parameters())
    w = loss_weights((4, 3, 2))
    stats, _ = compare(
        func,
        y0,
        t,
        leaves,
        w,
        checkpoint=3,
        rtol=1e-7,
        atol=1e-7,
        method=method,
        options=method_options(method, backend),
    )
    assert stats["n_steps"] > 3  # more steps than checkpoints: segments really are replayed


@pytest.mark.parametrize("checkpoint,backend", product([1, 2, 5, 10000], backends))
def test_any_number_of_checkpoints(checkpoint, backend):
    require_backend(backend)
    func = spiral_mlp()
    y0 = spiral_y0()
    t = torch.linspace(0.0, 3.0, 7, dtype=torch.float64)
    leaves = [y0] + list(func.parameters())
    stats, _ = compare(
        func,
        y0,
        t,
        leaves,
        loss_weights((7, 3, 2)),
        checkpoint=checkpoint,
        rtol=1e-8,
        atol=1e-8,
        options=dict(backend=backend),
    )
    assert stats["n_steps"] > 5


def test_with_rejected_steps(backend):
    func = spiral_mlp()
    y0 = spiral_y0()
    t = torch.linspace(0.0, 3.0, 4, dtype=torch.float64)
    leaves = [y0] + list(func.parameters())
    w = loss_weights((4, 3, 2))
    # find a tolerance at which the solve rejects some steps
    for tol in (1e-5, 1e-6, 1e-7, 1e-8, 1e-9):
        _, stats = odecore.odeint(func, y0, t, rtol=tol, atol=tol, options=dict(return_stats=True))
        if stats["n_rejected"] > 0:
            break
    assert stats["n_rejected"] > 0
    compare(func, y0, t, leaves, w, checkpoint=2, rtol=tol, atol=tol, options=dict(backend=backend))


@pytest.mark.parametrize("method,direction", product(["dopri5", "bosh3", "rk4", "euler"], ["forward", "backward"]))
def test_direction_of_time(method, direction):
    func = spiral_mlp()
    y0 = spiral_y0()
    t = torch.linspace(-0.5, 1.5, 5, dtype=torch.float64)
    t = t if direction == "forward" else t.flip(0)
    leaves = [y0] + list(func.parameters())
    compare(
        func,
        y0,
        t,
        leaves,
        loss_weights((5, 3, 2)),
        checkpoint=3,
        rtol=1e-7,
        atol=1e-7,
        method=method,
        options=method_options(method, "fused" if odecore.backend_info()["cpu"] else "reference"),
    )


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_gradient_wrt_t(method):
    func = spiral_mlp()
    y0 = spiral_y0()
    t = torch.linspace(0.0, 1.5, 4, dtype=torch.float64).requires_grad_()
    leaves = [y0, t] + list(func.parameters())
    _, grads = compare(
        func,
        y0,
        t,
        leaves,
        loss_weights((4, 3, 2)),
        checkpoint=2,
        rtol=1e-8,
        atol=1e-8,
        method=method,
        options=method_options(method, "reference"),
    )
    assert grads[1].abs().sum() > 0


# --------------------------------------------------------------------------- #
# Tuple states, closures, nn.Modules, accumulation into .grad
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method,backend", product(["dopri5", "tsit5", "rk4"], backends))
def test_tuple_state_and_closure_parameters(method, backend):
    require_backend(backend)
    w = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)

    def f(t, y):  # a closure: its parameters are only reachable through autograd
        a, b = y
        return (-a * w + b, c * (a * a).sum() * torch.cos(t) - b)

    a0 = torch.tensor([[1.0, -0.5]], dtype=torch.float64, requires_grad=True)
    b0 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)  # 0-d element
    t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    weights = (loss_weights((5, 1, 2), 3), loss_weights((5,), 4))
    stats, grads = compare(
        f,
        (a0, b0),
        t,
        [a0, b0, w, c],
        weights,
        checkpoint=2,
        rtol=1e-8,
        atol=1e-8,
        method=method,
        options=method_options(method, backend),
    )
    assert stats["n_steps"] > 2
    assert all(g.abs().sum() > 0 for g in grads)


def test_closure_over_module_parameters():
    net = spiral_mlp(seed=1)
    y0 = spiral_y0(4)
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    leaves = [y0] + list(net.parameters())
    compare(lambda t, y: net(t, y), y0, t, leaves, loss_weights((3, 4, 2)), checkpoint=2, rtol=1e-8, atol=1e-8)


def test_only_parameters_require_grad():
    func = spiral_mlp()
    y0 = spiral_y0().detach()
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    compare(func, y0, t, list(func.parameters()), loss_weights((3, 3, 2)), checkpoint=2, rtol=1e-8, atol=1e-8)


def test_only_y0_requires_grad():
    func = spiral_mlp().requires_grad_(False)
    y0 = spiral_y0()
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    compare(func, y0, t, [y0], loss_weights((3, 3, 2)), checkpoint=2, rtol=1e-8, atol=1e-8)
    assert all(p.grad is None for p in func.parameters())


def test_gradients_accumulate_into_grad():
    func = spiral_mlp()
    y0 = spiral_y0()
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    leaves = [y0] + list(func.parameters())
    w = loss_weights((3, 3, 2))
    _, _, single = backward_grads(func, y0, t, leaves, w, rtol=1e-8, atol=1e-8, options=dict(checkpoint=2))
    zero_grads(leaves)
    for _ in range(2):
        out = odecore.odeint(func, y0, t, rtol=1e-8, atol=1e-8, options=dict(checkpoint=2))
        (w * out).sum().backward()
    twice = [x.grad.clone() for x in leaves]
    zero_grads(leaves)
    assert_exact_grads(twice, [2 * g for g in single])


def test_no_grad_gives_plain_values():
    func = spiral_mlp()
    y0 = spiral_y0()
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    with torch.no_grad():
        plain = odecore.odeint(func, y0, t, rtol=1e-8, atol=1e-8)
        ckpt = odecore.odeint(func, y0, t, rtol=1e-8, atol=1e-8, options=dict(checkpoint=2))
    assert not ckpt.requires_grad
    assert_same_solution(ckpt, plain)


@pytest.mark.parametrize("checkpoint", [0, -1, 1.5, "all"])
def test_invalid_checkpoint_count(checkpoint):
    y0 = spiral_y0()
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="checkpoint"):
        odecore.odeint(spiral_mlp(), y0, t, options=dict(checkpoint=checkpoint))


# --------------------------------------------------------------------------- #
# Memory
# --------------------------------------------------------------------------- #


def saved_bytes(fn):
    """(result of fn(), bytes of every tensor autograd packed for backward while it ran)."""
    total = [0]

    def pack(x):
        total[0] += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = fn()
    return out, total[0]


@pytest.mark.parametrize("method,checkpoint,backend", product(["dopri5", "rk4"], [1, 4], backends))
def test_saved_bytes_independent_of_steps(method, checkpoint, backend):
    require_backend(backend)
    func = spiral_mlp()
    y0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_()
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    state_bytes = y0.numel() * y0.element_size()
    rows = {}
    for fine in (False, True):
        if method == "rk4":
            kw = dict(method=method, options=dict(backend=backend, return_stats=True, step_size=0.01 if fine else 0.1))
        else:
            tol = 1e-10 if fine else 1e-6
            kw = dict(rtol=tol, atol=tol, options=dict(backend=backend, return_stats=True))
        ck = dict(kw, options=dict(kw["options"], checkpoint=checkpoint))
        (sol_c, stats_c), bytes_c = saved_bytes(lambda: odecore.odeint(func, y0, t, **ck))
        (sol_d, stats_d), bytes_d = saved_bytes(lambda: odecore.odeint(func, y0, t, **kw))
        assert stats_c["n_steps"] == stats_d["n_steps"]
        output_bytes = sol_c.numel() * sol_c.element_size()
        bound = (checkpoint + 1) * 2 * state_bytes + output_bytes + t.numel() * t.element_size()
        assert bytes_c <= bound, (bytes_c, bound, stats_c)
        rows[fine] = (stats_c["n_steps"], bytes_c, bytes_d)
        sol_c.sum().backward()  # what was saved is enough for backward
    (steps_coarse, ck_coarse, direct_coarse), (steps_fine, _ck_fine, direct_fine) = rows[False], rows[True]
    assert steps_fine >= 2.5 * steps_coarse, (steps_coarse, steps_fine)
    # (the count of checkpoints kept may differ, but never exceeds N: both are within the bound)
    # whereas direct backprop keeps every step
    assert direct_fine >= 2 * direct_coarse, (direct_coarse, direct_fine)
    assert direct_coarse > 5 * ck_coarse, (direct_coarse, ck_coarse)

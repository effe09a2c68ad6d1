"""options={'compile': True}: the whole solve as one compiled program (odecore/solvers/compiled.py).

Each compiled program costs seconds to build, so the problems here are module-level objects that the
tests share (a program is cached per func and problem structure). What is compared with the
uncompiled solve: the steps (n_steps, n_accepted), the solution (measured: within 2e-13 for float64 on
these problems, exactly equal on a fixed grid), the errors word for word, the fallbacks.
"""

import math
import warnings

import pytest
import torch
from torch import nn

import odecore
from odecore.solvers.compiled import NotCompilable

from .testing import require_fused, van_der_pol_batched

pytestmark = pytest.mark.slow

ADAPTIVE = ["dopri5", "tsit5", "bosh3", "dopri8", "fehlberg2", "adaptive_heun"]
VDP = van_der_pol_batched(2.0)
T = torch.linspace(0.0, 6.0, 40, dtype=torch.float64)


def _y0(dtype=torch.float64, batch=32):
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(batch, 2, generator=gen, dtype=torch.float64) * 4 - 2).to(dtype)


def _both(func, y0, t, **kwargs):
    options = dict(kwargs.pop("options", {}), return_stats=True)
    ref, ref_stats = odecore.odeint(func, y0, t, options=options, **kwargs)
    out, stats = odecore.odeint(func, y0, t, options=dict(options, compile="strict"), **kwargs)
    return ref, ref_stats, out, stats


def _same_steps(stats, ref_stats):
    assert stats["loop"] == "compiled" and stats["host_reads"] == 1
    for key in ("n_steps", "n_accepted", "n_rejected"):
        assert stats[key] == ref_stats[key], (key, stats, ref_stats)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_methods_take_the_uncompiled_steps(method):
    ref, ref_stats, out, stats = _both(VDP, _y0(), T, rtol=1e-6, atol=1e-6, method=method)
    _same_steps(stats, ref_stats)
    assert stats["final_dt"] == pytest.approx(ref_stats["final_dt"], rel=1e-12)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-12)


def test_float32_state():
    ref, ref_stats, out, stats = _both(VDP, _y0(torch.float32), T.float(), rtol=1e-5, atol=1e-5)
    _same_steps(stats, ref_stats)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)


def test_reverse_time_and_tuple_state():
    def rotation(t, y):
        a, b = y
        return (b * (1 + 0.1 * t), -a)

    y0 = _y0()
    state = (y0[:, 0].clone(), y0[:, 1].clone())
    ref, ref_stats, out, stats = _both(rotation, state, T.flip(0), rtol=1e-7, atol=1e-7)
    _same_steps(stats, ref_stats)
    for part, ref_part in zip(out, ref):
        torch.testing.assert_close(part, ref_part, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method,options", [("rk4", {"step_size": 0.05}), ("euler", {"step_size": 0.02})])
def test_fixed_grid_is_bitwise_the_uncompiled_solve(method, options):
    ref, ref_stats, out, stats = _both(VDP, _y0(), T, method=method, options=options)
    assert stats["n_steps"] == ref_stats["n_steps"] and stats["final_dt"] == ref_stats["final_dt"]
    assert torch.equal(out, ref)


def test_per_sample_solving():
    require_fused()

    def stiffening(t, y):  # each sample its own mu: its own steps
        mu = torch.linspace(1.0, 6.0, y.shape[0], dtype=y.dtype).unsqueeze(-1)
        x, v = y[:, :1], y[:, 1:]
        return torch.cat([v, mu * (1 - x * x) * v - x], -1)

    ref, ref_stats, out, stats = _both(stiffening, _y0(), T, rtol=1e-6, atol=1e-6, options={"batch_dim": 0})
    assert torch.equal(stats["n_steps"], ref_stats["n_steps"]) and stats["loop"] == "compiled"
    assert len(set(stats["n_steps"].tolist())) > 1  # the samples did step differently
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-12)


class Blowup(nn.Module):
    """y' = a y + b y^2: a decaying solution, or with b > 0 one that blows up in finite time."""

    def __init__(self):
        super().__init__()
        self.register_buffer("a", torch.tensor(-1.0, dtype=torch.float64))
        self.register_buffer("b", torch.tensor(0.0, dtype=torch.float64))

    def forward(self, t, y):
        return self.a * y + self.b * y * y


BLOWUP = Blowup()
Y1 = torch.ones(3, dtype=torch.float64)


def _message(options, t=T, **kwargs):
    with pytest.raises(RuntimeError) as uncompiled:
        odecore.odeint(BLOWUP, Y1, t, options=dict(options), **kwargs)
    with pytest.raises(RuntimeError) as compiled:
        odecore.odeint(BLOWUP, Y1, t, options=dict(options, compile="strict"), **kwargs)
    assert not isinstance(compiled.value, NotCompilable)
    return str(uncompiled.value), str(compiled.value)


def test_errors_are_the_uncompiled_errors_word_for_word():
    BLOWUP.a.fill_(-1.0), BLOWUP.b.fill_(0.0)
    ref, ref_stats, out, stats = _both(BLOWUP, Y1, T)
    _same_steps(stats, ref_stats)
    expected, got = _message({"max_num_steps": 3}, t=torch.tensor([0.0, 6.0], dtype=torch.float64))
    assert got == expected and "max_num_steps exceeded (3 steps) at t=" in got
    BLOWUP.b.fill_(2.0)  # y' = -y + 2 y^2 from 1: blows up at t = ln 2
    expected, got = _message({}, rtol=1e-9, atol=1e-9)
    assert got == expected and "step size underflow: t=0.69" in got
    BLOWUP.a.fill_(1e300), BLOWUP.b.fill_(0.0)  # overflows at once
    expected, got = _message({})
    assert got == expected and "non-finite values" in got
    BLOWUP.a.fill_(-1.0)


def test_one_program_for_new_tolerances_times_and_parameters():
    BLOWUP.a.fill_(-1.0), BLOWUP.b.fill_(0.0)
    runs = [
        dict(rtol=1e-5, atol=1e-7, t=T),
        dict(rtol=1e-9, atol=1e-9, t=T * 0.5),
        dict(rtol=1e-7, atol=1e-9, t=T, options={"max_num_steps": 500, "safety": 0.8}),
    ]
    compiles = None
    for run in runs:
        t = run.pop("t")
        options = dict(run.pop("options", {}), compile="strict", return_stats=True)
        out, stats = odecore.odeint(BLOWUP, Y1, t, options=options, **run)
        ref = odecore.odeint(BLOWUP, Y1, t, options={k: v for k, v in options.items() if k != "compile"}, **run)
        torch.testing.assert_close(out, ref[0], rtol=0, atol=1e-13)
        BLOWUP.a.mul_(1.1)  # as a training step updates the weights
        compiles = stats["compiles"] if compiles is None else compiles
        assert stats["compiles"] == compiles, stats  # (an earlier test's other len(t) made a second one)
    BLOWUP.a.fill_(-1.0)
    t3 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    _, stats = odecore.odeint(BLOWUP, Y1, t3, options={"compile": True, "return_stats": True})
    assert stats["compiles"] == compiles + 1  # a new length of t: a recompile, counted


def test_untraceable_func_falls_back_with_one_warning_or_raises_when_strict():
    def branchy(t, y):
        if float(y.sum()) > 0:  # data-dependent Python: no graph
            return -y
        return y

    y0 = torch.ones(2, dtype=torch.float64)
    ref = odecore.odeint(branchy, y0, T)
    with pytest.warns(UserWarning, match="falls back to the uncompiled solve"):
        out = odecore.odeint(branchy, y0, T, options={"compile": True})
    assert torch.equal(out, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reason is given once
        odecore.odeint(branchy, y0, T, options={"compile": True})
    with pytest.raises(NotCompilable, match="cannot be compiled"):
        odecore.odeint(branchy, y0, T, options={"compile": "strict"})


def test_options_and_fallbacks():
    with pytest.raises(ValueError, match="options\\['compile'\\] must be True, False or 'strict'"):
        odecore.odeint(VDP, _y0(), T, options={"compile": "yes"})
    y0 = _y0().requires_grad_(True)
    with pytest.raises(NotCompilable, match="gradients through the compiled loop"):
        odecore.odeint(VDP, y0, T, options={"compile": "strict"})
    with pytest.raises(NotCompilable, match="ImplicitEuler has no compiled loop"):
        odecore.odeint(VDP, _y0(), T, method="implicit_euler", options={"compile": "strict", "step_size": 0.1})
    assert math.isfinite(float(odecore.odeint(VDP, _y0(), T, options={"compile": False})[-1, 0, 0]))


class SmallNODE(nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.w1 = nn.Parameter(torch.randn(4, 16, generator=gen, dtype=torch.float64) * 0.5)
        self.w2 = nn.Parameter(torch.randn(16, 4, generator=gen, dtype=torch.float64) * 0.5)

    def forward(self, t, y):
        return torch.tanh(y @ self.w1) @ self.w2 * torch.cos(t)


NODE = SmallNODE()


def _adjoint_grads(options):
    y0 = _y0(batch=8).repeat(1, 2).requires_grad_(True)
    NODE.zero_grad()
    out, stats = odecore.odeint_adjoint(NODE, y0, T[:6], rtol=1e-7, atol=1e-7, options=dict(options, return_stats=True))
    (out**2).sum().backward()
    return out.detach(), [y0.grad] + [p.grad.clone() for p in NODE.parameters()], stats


def test_adjoint_compiles_its_forward_and_backward_solves():
    ref, ref_grads, ref_stats = _adjoint_grads({})
    out, grads, stats = _adjoint_grads({"compile": "strict"})
    assert stats["loop"] == "compiled" and stats["backward_loop"] == "compiled"
    for key in ("n_steps", "backward_n_steps", "backward_n_accepted"):
        assert stats[key] == ref_stats[key], key
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        NODE.w1.mul_(0.9)  # a training step: the same programs run the next pass
    _, _, again = _adjoint_grads({"compile": "strict"})
    assert again["compiles"] == stats["compiles"] and again["backward_compiles"] == stats["backward_compiles"]


class Block(nn.Module):
    """An ODE-Net block: odeint inside a module that the user compiles."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4)).double()

    def f(self, t, y):
        return self.net(y)

    def forward(self, y):
        return odecore.odeint(self.f, y, torch.tensor([1.0, 0.0], dtype=torch.float64), rtol=1e-6, atol=1e-6)[-1]


def test_inside_a_compiled_module_the_loop_is_traced_into_its_graph():
    block = Block()
    x = _y0(batch=8).repeat(1, 2)
    with torch.no_grad():
        explained = torch._dynamo.explain(block)(x)
        assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
        compiled_block = torch.compile(block, fullgraph=True)
        torch.testing.assert_close(compiled_block(x), block(x), rtol=0, atol=1e-12)  # reverse time, too
    with pytest.raises(Exception, match="gradients through odeint inside torch.compile are not supported"):
        torch.compile(block, fullgraph=True)(x)

"""odeint_adjoint as a drop-in for torchdiffeq 0.2.5's (issue #17): a func using a tensor whose
graph was built outside it (torchcde's pattern), grid_constructor and jump_t in the backward
pass, and what the output's grad_fn exposes (adjoint_options with the norm the backward pass
uses, adjoint_rtol/atol/method, shapes, saved tensors), which code may replace before backward."""

import gc
import weakref

import pytest
import torch
from torch import nn

import odecore
import odecore.adjoint as adjoint_mod

from .testing import require_fused

torchdiffeq = pytest.importorskip("torchdiffeq")

F64 = torch.float64
TD_ATTRIBUTES = ("shapes", "func", "adjoint_rtol", "adjoint_atol", "adjoint_method", "adjoint_options")
TD_ATTRIBUTES += ("t_requires_grad", "event_mode")


def rms(x):
    return x.abs().pow(2).mean().sqrt()


@pytest.fixture(params=["python", "native"])
def dynamics(request, monkeypatch):
    """The augmented dynamics evaluated in Python, or in C++ (odecore._C.AdjointDynamics)."""
    if request.param == "native":
        require_fused()
    monkeypatch.setattr(adjoint_mod, "NATIVE_DYNAMICS", request.param == "native")
    return request.param


def adjoint_node(out):
    """The adjoint's own autograd node: out's grad_fn, or for a tuple state the node its views lead to."""
    node = out.grad_fn if isinstance(out, torch.Tensor) else out[0].grad_fn
    while node is not None and not hasattr(node, "adjoint_options"):
        node = node.next_functions[0][0]
    assert node is not None
    return node


# --------------------------------------------------------------------------- #
# item 2: a graph built outside func (retain_graph in the VJP)
# --------------------------------------------------------------------------- #


def outer_graph_problem():
    """func uses w = exp(p) (and a spline-like coefficient c = p.cumsum), built outside func."""
    p = torch.tensor([0.3, -0.5, 0.1], dtype=F64, requires_grad=True)
    w, c = p.exp(), p.cumsum(0)

    class F(nn.Module):
        def forward(self, t, y):
            return -w * y + torch.sin(t) * c

    return p, F()


@pytest.mark.parametrize("method,options", [("rk4", dict(step_size=0.01)), ("dopri5", None)])
def test_outer_graph_gradients(dynamics, method, options):
    y0 = torch.ones(3, dtype=F64)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64)
    weights = torch.tensor([[0.0] * 3, [1.0, -2.0, 0.5], [0.3, 1.0, -1.0]], dtype=F64)
    kw = dict(rtol=1e-9, atol=1e-9, method=method, options=options)
    grads = {}
    for name, solve in (("odecore", odecore.odeint_adjoint), ("torchdiffeq", torchdiffeq.odeint_adjoint)):
        p, func = outer_graph_problem()
        y = solve(func, y0, t, adjoint_params=(p,), **kw)
        (grads[name],) = torch.autograd.grad((weights * y).sum(), p)
    p, func = outer_graph_problem()
    (direct,) = torch.autograd.grad((weights * odecore.odeint(func, y0, t, **kw)).sum(), p)
    torch.testing.assert_close(grads["odecore"], grads["torchdiffeq"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads["odecore"], direct, rtol=1e-6, atol=1e-9)


def test_outer_graph_survives_for_a_second_backward(dynamics):
    # the outer graph stays usable after the adjoint pass (it was retained, not consumed)
    p, func = outer_graph_problem()
    y = odecore.odeint_adjoint(func, torch.ones(3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), adjoint_params=(p,))
    y[-1].sum().backward()
    first = p.grad.clone()
    p.grad = None
    y = odecore.odeint_adjoint(func, torch.ones(3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), adjoint_params=(p,))
    y[-1].sum().backward()
    torch.testing.assert_close(p.grad, first, rtol=0, atol=0)


def test_evaluation_graphs_are_freed(dynamics):
    # retaining the graph costs nothing without an outer graph: each evaluation's saved tensors
    # die with it (none is alive after backward)
    saved = []

    def pack(x):
        alias = x.detach()  # (x itself could make a cycle through its grad_fn)
        saved.append(weakref.ref(alias))
        return alias

    class F(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3).double()

        def forward(self, t, y):
            return torch.tanh(self.lin(y)) * torch.cos(t)

    func = F()
    y = odecore.odeint_adjoint(func, torch.ones(2, 3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        y.sum().backward()
    gc.collect()
    assert len(saved) > 10
    assert sum(ref() is not None for ref in saved) == 0


# --------------------------------------------------------------------------- #
# item 4: grid_constructor in the backward pass
# --------------------------------------------------------------------------- #


class Decay(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([-1.0, 0.5], dtype=F64))

    def forward(self, t, y):
        return self.a * y + torch.cos(3 * t)


def recorded_grids(solve, t, method):
    """(the times each grid_constructor call got, its y0, gradients) for a non-uniform grid."""
    calls = []

    def grid_constructor(f, y0, tt):
        calls.append((tt.tolist(), y0.clone()))
        s = torch.linspace(0, 1, 7, dtype=tt.dtype) ** 1.5  # non-uniform, from tt[0] to tt[-1]
        return tt[0] + (tt[-1] - tt[0]) * s

    func = Decay()
    y0 = torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True)
    y = solve(func, y0, t, method=method, options=dict(grid_constructor=grid_constructor))
    grads = torch.autograd.grad((y * torch.arange(1.0, 1 + y.numel(), dtype=F64).view_as(y)).sum(), (y0, func.a))
    return calls, grads


@pytest.mark.parametrize("method", ["euler", "rk4", "midpoint"])
def test_backward_grid_constructor_matches_torchdiffeq(method):
    t = torch.tensor([0.0, 0.5, 1.2], dtype=F64)
    calls_oc, grads_oc = recorded_grids(odecore.odeint_adjoint, t, method)
    calls_td, grads_td = recorded_grids(torchdiffeq.odeint_adjoint, t, method)
    # forward [t0, t1, t2], then backward [t2, t1] and [t1, t0]: decreasing grids
    assert [c[0] for c in calls_oc] == [c[0] for c in calls_td] == [[0.0, 0.5, 1.2], [1.2, 0.5], [0.5, 0.0]]
    for (_, y_oc), (_, y_td) in zip(calls_oc[1:], calls_td[1:]):  # the augmented state [a_t, y, a, a_theta]
        torch.testing.assert_close(y_oc, y_td, rtol=1e-12, atol=1e-12)
    for g_oc, g_td in zip(grads_oc, grads_td):
        torch.testing.assert_close(g_oc, g_td, rtol=1e-10, atol=1e-12)


def test_backward_grid_constructor_decreasing_t():
    # decreasing t: the caller's times again, [t_i, t_(i-1)]; torchdiffeq 0.2.5 hands this case the
    # negated times (an artefact of negating t twice), where this grid (affine in them) is the same
    t = torch.tensor([1.2, 0.5, 0.0], dtype=F64)
    calls, grads = recorded_grids(odecore.odeint_adjoint, t, "rk4")
    assert [c[0] for c in calls] == [[1.2, 0.5, 0.0], [0.0, 0.5], [0.5, 1.2]]
    calls_td, grads_td = recorded_grids(torchdiffeq.odeint_adjoint, t, "rk4")
    assert [c[0] for c in calls_td[1:]] == [[-0.0, -0.5], [-0.5, -1.2]]
    for g, g_td in zip(grads, grads_td):
        torch.testing.assert_close(g, g_td, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- #
# item 5: jump_t in the backward pass
# --------------------------------------------------------------------------- #


class Jump(nn.Module):
    """A rate that jumps at t = 0.5; counts its evaluations."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([-1.0, 0.7], dtype=F64))
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.a * y * (1.0 if t < 0.5 else 3.0)


def jump_run(solve, t, **kw):
    func = Jump()
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    y = solve(func, y0, t, rtol=1e-6, atol=1e-8, method="dopri5", **kw)
    forward_nfe = func.nfe
    grads = torch.autograd.grad(y[-1].sum(), (y0, func.a))
    return grads, func.nfe - forward_nfe


@pytest.mark.parametrize("direction", ["increasing", "decreasing"])
@pytest.mark.parametrize("where", ["options", "adjoint_options"])
def test_jump_t_in_backward_pass(dynamics, direction, where):
    t = torch.tensor([0.0, 1.0], dtype=F64) if direction == "increasing" else torch.tensor([1.0, 0.0], dtype=F64)
    jump = dict(jump_t=torch.tensor([0.5], dtype=F64))
    kw = dict(options=jump) if where == "options" else dict(options=jump, adjoint_options=dict(jump))
    grads_oc, backward_oc = jump_run(odecore.odeint_adjoint, t, **kw)
    grads_td, backward_td = jump_run(torchdiffeq.odeint_adjoint, t, **kw)
    _, backward_without = jump_run(odecore.odeint_adjoint, t, options=jump, adjoint_options={})
    assert backward_oc <= backward_td, (backward_oc, backward_td)
    assert backward_oc < backward_without, (backward_oc, backward_without)
    direct = jump_run(odecore.odeint, t, options=jump)[0]
    for g, d in zip(grads_oc, direct):
        torch.testing.assert_close(g, d, rtol=1e-5, atol=1e-7)
    if direction == "increasing":  # the same steps as torchdiffeq
        assert backward_oc == backward_td
        for g, d in zip(grads_oc, grads_td):
            torch.testing.assert_close(g, d, rtol=1e-9, atol=1e-11)


# --------------------------------------------------------------------------- #
# item 7: the output's grad_fn
# --------------------------------------------------------------------------- #


class TupleODE(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0], dtype=F64))

    def forward(self, t, y):
        a, b = y
        return (-a * self.w + b, (a * a).sum() * torch.cos(t) - b)


def state(kind):
    if kind == "tensor":
        return Decay(), torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True)
    a0 = torch.tensor([[1.0, -0.5]], dtype=F64, requires_grad=True)
    return TupleODE(), (a0, torch.tensor(0.3, dtype=F64, requires_grad=True))


def random_adjoint_tuple(node, seed=0):
    """A tuple (a_t, y, adj_y, *adj_params) as the backward pass gives the norm."""
    gen = torch.Generator().manual_seed(seed)
    t, y, *params = node.saved_tensors
    shapes = [(), y[0].shape, y[0].shape] + [q.shape for q in params]
    return tuple(torch.randn(shape, generator=gen, dtype=F64) for shape in shapes)


def user_norm(args):
    return 2.0 * max(rms(x) for x in args)


@pytest.mark.parametrize("kind", ["tensor", "tuple"])
@pytest.mark.parametrize("norm", ["default", "seminorm", "custom", "forward norm"])
def test_grad_fn_exposes_torchdiffeq_attributes(kind, norm):
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64)
    kw = dict(rtol=1e-6, atol=1e-7, adjoint_atol=1e-8)
    if norm == "seminorm":
        kw["adjoint_options"] = dict(norm="seminorm")
    elif norm == "custom":
        kw["adjoint_options"] = dict(norm=user_norm)
    elif norm == "forward norm":
        kw["options"] = dict(norm=lambda y: 3.0 * (rms(y) if isinstance(y, torch.Tensor) else max(map(rms, y))))
    nodes = {}
    for name, solve in (("odecore", odecore.odeint_adjoint), ("torchdiffeq", torchdiffeq.odeint_adjoint)):
        func, y0 = state(kind)
        nodes[name] = adjoint_node(solve(func, y0, t, **kw))
    oc, td = nodes["odecore"], nodes["torchdiffeq"]
    for name in TD_ATTRIBUTES:
        assert hasattr(oc, name), name
    assert oc.shapes == td.shapes
    for name in ("adjoint_rtol", "adjoint_atol", "adjoint_method", "t_requires_grad", "event_mode"):
        assert getattr(oc, name) == getattr(td, name), name
    assert oc.adjoint_options.keys() == td.adjoint_options.keys()
    # torchdiffeq saves (t, y, *adjoint_params); odecore saves (t, y) and keeps adjoint_params
    assert len(oc.saved_tensors) == 2 and len(oc.adjoint_params) == len(td.saved_tensors) - 2
    for x, y in zip(oc.saved_tensors + oc.adjoint_params, td.saved_tensors):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    args = random_adjoint_tuple(td)
    torch.testing.assert_close(
        torch.as_tensor(oc.adjoint_options["norm"](args)), torch.as_tensor(td.adjoint_options["norm"](args))
    )


def counted(norm, calls):
    def counting_norm(args):
        calls.append(len(args))
        return norm(args)

    return counting_norm


@pytest.mark.parametrize("kind", ["tensor", "tuple"])
def test_replacing_grad_fn_norm_changes_the_backward_norm(dynamics, kind):
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64)
    results = {}
    for name, solve in (("odecore", odecore.odeint_adjoint), ("torchdiffeq", torchdiffeq.odeint_adjoint)):
        for scale in (None, 1.0, 30.0):
            func, y0 = state(kind)
            out = solve(func, y0, t, rtol=1e-7, atol=1e-8)
            node, calls = adjoint_node(out), []
            if scale is not None:
                default = node.adjoint_options["norm"]
                node.adjoint_options["norm"] = counted(lambda args, d=default, s=scale: s * d(args), calls)
            loss = sum(x.sum() for x in (out if isinstance(out, tuple) else (out,)))
            grads = torch.autograd.grad(loss, (y0 if isinstance(y0, tuple) else (y0,)) + tuple(func.parameters()))
            results[name, scale] = grads, len(calls)
    assert results["odecore", None][1] == 0
    for scale in (1.0, 30.0):
        n_calls, n_calls_td = results["odecore", scale][1], results["torchdiffeq", scale][1]
        assert n_calls > 0
        assert abs(n_calls - n_calls_td) <= 0.1 * n_calls_td, (scale, n_calls, n_calls_td)
        for g, g_td in zip(results["odecore", scale][0], results["torchdiffeq", scale][0]):
            torch.testing.assert_close(g, g_td, rtol=1e-8, atol=1e-10)
    # the default norm as a callable takes the same steps as the fused one; a larger one more
    for g, g_def in zip(results["odecore", 1.0][0], results["odecore", None][0]):
        torch.testing.assert_close(g, g_def, rtol=1e-9, atol=1e-11)
    assert results["odecore", 30.0][1] > results["odecore", 1.0][1]


def test_replacing_grad_fn_settings_changes_the_backward_pass():
    t = torch.tensor([0.0, 1.0], dtype=F64)
    nfe = {}
    for setting in ("none", "adjoint_rtol", "adjoint_method", "adjoint_options"):
        func, y0 = state("tensor")
        out, stats = odecore.odeint_adjoint(func, y0, t, rtol=1e-6, atol=1e-8, options=dict(return_stats=True))
        node = adjoint_node(out)
        if setting == "adjoint_rtol":
            node.adjoint_rtol = 1e-10
        elif setting == "adjoint_method":
            node.adjoint_method, node.adjoint_options = "rk4", dict(step_size=0.1)
        elif setting == "adjoint_options":
            node.adjoint_options["norm"] = "seminorm"
        out.sum().backward()
        nfe[setting] = stats["backward_nfe"]
    assert nfe["adjoint_rtol"] > nfe["none"]
    assert nfe["adjoint_method"] == 40  # rk4, 10 steps of 4 evaluations
    assert nfe["adjoint_options"] <= nfe["none"]
    func, y0 = state("tensor")
    out = odecore.odeint_adjoint(func, y0, t)
    adjoint_node(out).adjoint_options = [("norm", "seminorm")]
    with pytest.raises(TypeError, match="adjoint_options must be a dict"):
        out.sum().backward()

"""torchsde 0.2.6 behaviours of sdeint / sdeint_adjoint beyond the methods' orders (those are in
test_sde.py): adaptive Euler on a Stratonovich SDE, ts as a list, SDEs that define f_and_g,
g_prod or f_and_g_prod, extra solver state, sdeint_adjoint with adaptive=True, the exact
adjoint of the reversible Heun method and double backward through sdeint_adjoint. Against
torchsde on the same Brownian path where torchsde does the same, else against backpropagation
through sdeint."""

import warnings

import pytest
import torch

import odecore
from odecore.sde import BaseSDE, BrownianInterval, SDEIto, SDEStratonovich, sdeint, sdeint_adjoint

from .test_sde_adjoint import Net, bm_size, gradients, make_y0, relative_error

try:
    import torchsde
except ImportError:  # pragma: no cover - torchsde is a test extra
    torchsde = None

F64 = torch.float64
needs_torchsde = pytest.mark.skipif(torchsde is None, reason="torchsde not installed")


class Strat:
    sde_type, noise_type = "stratonovich", "diagonal"

    def f(self, t, y):
        return torch.sin(y)

    def g(self, t, y):
        return 0.3 * torch.cos(y)


def caught(solve):
    """(the warnings' texts, the exception) of a call that warns and then raises."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(ValueError) as error:
            solve()
    return [str(w.message) for w in record], str(error.value)


# --------------------------------------------------------------------------- #
# 12: adaptive Euler on a Stratonovich SDE
# --------------------------------------------------------------------------- #


@needs_torchsde
def test_adaptive_euler_on_a_stratonovich_sde_warns_then_raises_as_torchsde():
    y0, ts = torch.ones(4, 2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    theirs = caught(lambda: torchsde.sdeint(Strat(), y0, ts, method="euler", adaptive=True))
    ours = caught(lambda: sdeint(Strat(), y0, ts, method="euler", adaptive=True))
    assert len(theirs[0]) == 1 and ours[0] == theirs[0]  # the same warning, once
    assert theirs[1] in ours[1] and "method 'euler'" in ours[1]  # torchsde's error text, naming the argument
    # additive noise: no warning, the same error
    add = Net("stratonovich", "additive")
    theirs = caught(lambda: torchsde.sdeint(add, y0[:, :1].repeat(1, 3), ts, method="euler", adaptive=True))
    ours = caught(lambda: sdeint(add, y0[:, :1].repeat(1, 3), ts, method="euler", adaptive=True))
    assert ours[0] == theirs[0] == [] and theirs[1] in ours[1]


# --------------------------------------------------------------------------- #
# 11: ts as a list or tuple
# --------------------------------------------------------------------------- #


def test_ts_as_a_list_or_tuple_of_floats():
    y0 = torch.ones(4, 2, dtype=F64)
    bm = BrownianInterval(0.0, 1.0, size=(4, 2), dtype=F64, entropy=3)
    tensor = sdeint(Strat(), y0, torch.tensor([0.0, 0.4, 1.0], dtype=F64), bm=bm, dt=0.1)
    assert torch.equal(sdeint(Strat(), y0, [0.0, 0.4, 1.0], bm=bm, dt=0.1), tensor)
    assert torch.equal(sdeint(Strat(), y0, (0, 0.4, 1), bm=bm, dt=0.1), tensor)  # ints too, as torchsde
    if torchsde is not None:
        theirs = torchsde.sdeint(Strat(), y0, [0.0, 0.4, 1.0], bm=bm, dt=0.1)
        torch.testing.assert_close(tensor, theirs, rtol=1e-12, atol=1e-14)
    net, y = Net("stratonovich", "diagonal"), make_y0(4)
    grads = [gradients(lambda: sdeint_adjoint(net, y, ts, bm=bm_, dt=0.1), net, y) for ts, bm_ in [
        ([0.0, 0.4, 1.0], BrownianInterval(0.0, 1.0, size=(4, 3), dtype=F64, entropy=1)),
        (torch.tensor([0.0, 0.4, 1.0], dtype=F64), BrownianInterval(0.0, 1.0, size=(4, 3), dtype=F64, entropy=1)),
    ]]  # fmt: skip
    assert torch.equal(grads[0], grads[1])
    for bad in ([], [0.0, "1"], [0.0, torch.tensor(1.0)], 1.0):
        with pytest.raises(ValueError, match="ts must be"):
            sdeint(Strat(), y0, bad)
    with pytest.raises(ValueError, match="strictly increasing"):
        sdeint(Strat(), y0, [1.0, 0.0])


# --------------------------------------------------------------------------- #
# 10: f_and_g, g_prod, f_and_g_prod
# --------------------------------------------------------------------------- #

A = torch.tensor([[0.3, -0.2, 0.1], [0.1, 0.2, -0.3], [-0.2, 0.1, 0.25]], dtype=F64)
B = torch.tensor([[0.3, -0.1], [0.2, 0.25], [-0.15, 0.1]], dtype=F64)


def _drift(t, y):
    return torch.tanh(y @ A) * torch.cos(t)


def _diffusion(noise_type, t, y):
    if noise_type == "diagonal":
        return 0.3 * torch.sin(y) + 0.5
    if noise_type == "scalar":
        return (0.3 * torch.sin(y) + 0.5).unsqueeze(-1)
    if noise_type == "additive":
        return (B * (1 + t)).expand(y.shape[0], -1, -1)
    return torch.tanh(y).unsqueeze(-1) * B + 0.05


def _prod(noise_type, g, v):
    return g * v if noise_type == "diagonal" else torch.bmm(g, v.unsqueeze(-1)).squeeze(-1)


def combined_sde(kind, sde_type, noise_type, calls):
    """The same SDE defining only the functions of `kind` ('f,g', 'f_and_g', 'f,g_prod',
    'f_and_g_prod', or 'f,g,f_and_g'), each call counted in `calls`."""
    functions = {
        "f": _drift,
        "g": lambda t, y: _diffusion(noise_type, t, y),
        "f_and_g": lambda t, y: (_drift(t, y), _diffusion(noise_type, t, y)),
        "g_prod": lambda t, y, v: _prod(noise_type, _diffusion(noise_type, t, y), v),
        "f_and_g_prod": lambda t, y, v: (_drift(t, y), _prod(noise_type, _diffusion(noise_type, t, y), v)),
    }

    class Sde(torch.nn.Module):
        pass

    sde = Sde()
    sde.sde_type, sde.noise_type = sde_type, noise_type
    for name in kind.split(","):

        def counted(*args, _name=name):
            calls[_name] = calls.get(_name, 0) + 1
            return functions[_name](*args)

        setattr(sde, name, counted)
    return sde


COMBINED = [
    ("euler", "ito", "diagonal", "f_and_g_prod"),
    ("euler", "ito", "general", "f,g_prod"),
    ("euler", "ito", "scalar", "f_and_g"),
    ("midpoint", "stratonovich", "general", "f_and_g_prod"),
    ("heun", "stratonovich", "diagonal", "f,g_prod"),
    ("euler_heun", "stratonovich", "scalar", "f,g_prod"),
    ("log_ode", "stratonovich", "diagonal", "f_and_g_prod"),
    ("milstein", "ito", "diagonal", "f_and_g"),
    ("milstein", "ito", "diagonal", "f,g,f_and_g"),
    ("reversible_heun", "stratonovich", "general", "f_and_g"),
    ("srk", "ito", "additive", "f_and_g"),
]


@pytest.mark.parametrize("method,sde_type,noise_type,kind", COMBINED)
def test_combined_functions_give_the_same_solution_and_are_used(method, sde_type, noise_type, kind):
    batch, dt = 8, 0.1
    size = bm_size(noise_type, batch)
    levy = {"srk": "space-time", "log_ode": "foster"}.get(method, "none")
    y0 = torch.randn(batch, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)

    def solve(kind, calls, lib=odecore):
        bm = BrownianInterval(0.0, 1.0, size=size, dtype=F64, entropy=4, levy_area_approximation=levy)
        return lib.sdeint(combined_sde(kind, sde_type, noise_type, calls), y0, ts, bm=bm, dt=dt, method=method)

    plain_calls, calls = {}, {}
    plain = solve("f,g", plain_calls)
    torch.testing.assert_close(solve(kind, calls), plain, rtol=1e-13, atol=1e-14)
    # one call of the combined function where f and g were called once each
    combined = "f_and_g" if kind == "f,g,f_and_g" else kind.split(",")[-1]
    assert calls.get(combined, 0) > 0 and "g" not in calls, calls
    if kind in ("f_and_g", "f_and_g_prod", "f,g,f_and_g") and method != "srk":  # srk evaluates f and g apart
        assert calls[combined] <= plain_calls["g"], (calls, plain_calls)
    if torchsde is not None and method not in ("milstein", "srk") and kind != "f_and_g":
        # (torchsde's milstein and srk need f and g, and its euler_heun g_prod or g)
        torch.testing.assert_close(solve(kind, {}, torchsde), plain, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "sde_type,noise_type,method,kind",
    [("stratonovich", "diagonal", "midpoint", "f_and_g_prod"), ("ito", "diagonal", "milstein", "f_and_g")]
    + [("ito", "additive", "euler", "f,g_prod"), ("stratonovich", "general", "heun", "f_and_g_prod")],
)
def test_combined_functions_in_the_adjoint(sde_type, noise_type, method, kind):
    """The adjoint uses f_and_g_prod (Stratonovich, additive noise: only f and g dW enter) or
    f_and_g (Ito): the same gradients as from f and g."""
    batch = 4
    y0 = make_y0(batch)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    grads = []
    for k in ("f,g", kind):
        calls = {}
        sde = combined_sde(k, sde_type, noise_type, calls)
        bm = BrownianInterval(0.0, 1.0, size=bm_size(noise_type, batch), dtype=F64, entropy=2)
        ys = sdeint_adjoint(sde, y0, ts, bm=bm, dt=0.1, method=method, adjoint_params=())
        (grad,) = torch.autograd.grad((ys**2).sum(), y0)
        grads.append(grad)
        assert "g" not in calls or k == "f,g"
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-14)


def test_missing_functions_are_named():
    y0, ts = torch.ones(4, 3, dtype=F64), [0.0, 1.0]
    with pytest.raises(RuntimeError, match=r"Method `g` has not been provided.*'milstein'"):
        sdeint(combined_sde("f,g_prod", "ito", "diagonal", {}), y0, ts, method="milstein")
    with pytest.raises(RuntimeError, match="Method `g` has not been provided"):
        sdeint_adjoint(combined_sde("f,g_prod", "ito", "diagonal", {}), y0, ts, adjoint_params=())
    with pytest.raises(ValueError, match="Cannot infer noise size"):  # general noise, g dW only, no bm
        sdeint(combined_sde("f_and_g_prod", "ito", "general", {}), y0, ts)
    bm = BrownianInterval(0.0, 1.0, size=(4, 2), dtype=F64, entropy=1)
    assert sdeint(combined_sde("f_and_g_prod", "ito", "general", {}), y0, ts, bm=bm, dt=0.5).shape == (2, 4, 3)
    assert sdeint(combined_sde("f,g_prod", "ito", "diagonal", {}), y0, ts, dt=0.5).shape == (2, 4, 3)
    with pytest.raises(ValueError, match="at least one of `f`, `f_and_g`, or `f_and_g_prod`"):
        sdeint(combined_sde("g", "ito", "diagonal", {}), y0, ts)
    with pytest.raises(ValueError, match="at least one of `g`, `f_and_g`, `g_prod` or `f_and_g_prod`"):
        sdeint(combined_sde("f", "ito", "diagonal", {}), y0, ts)

    class BadProd:
        sde_type, noise_type = "ito", "diagonal"

        def f_and_g_prod(self, t, y, v):
            return y, v[:, :1]

    with pytest.raises(ValueError, match="sde.g_prod"):
        sdeint(BadProd(), y0, ts)


def test_torchsde_base_classes():
    assert odecore.BaseSDE is BaseSDE and odecore.SDEIto is SDEIto and odecore.SDEStratonovich is SDEStratonovich

    class Sde(SDEStratonovich):
        def __init__(self):
            super().__init__(noise_type="diagonal")
            self.a = torch.nn.Parameter(torch.tensor(0.5, dtype=F64))

        def f(self, t, y):
            return self.a * y

        def g(self, t, y):
            return 0.2 * y

    sde = Sde()
    assert isinstance(sde, torch.nn.Module) and (sde.sde_type, sde.noise_type) == ("stratonovich", "diagonal")
    assert SDEIto("scalar").sde_type == "ito"
    sdeint_adjoint(sde, torch.ones(2, 1, dtype=F64), [0.0, 1.0], dt=0.1).sum().backward()
    assert sde.a.grad is not None
    with pytest.raises(ValueError, match="Expected noise type"):
        BaseSDE("weird", "ito")
    with pytest.raises(ValueError, match="Expected sde type"):
        SDEIto("diagonal").__class__.__bases__[0]("diagonal", "weird")


# --------------------------------------------------------------------------- #
# 11: extra solver state
# --------------------------------------------------------------------------- #


def test_extra_solver_state_is_returned_and_accepted_back():
    y0 = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    bm = BrownianInterval(0.0, 1.0, size=(4, 2), dtype=F64, entropy=3)
    kw = dict(bm=bm, dt=2**-4, method="reversible_heun")
    ys, extra = sdeint(Strat(), y0, [0.0, 0.5, 1.0], extra=True, **kw)
    assert isinstance(extra, tuple) and [x.shape for x in extra] == [y0.shape] * 3  # (f, g, z)
    # continuing from the state halfway is the same solve
    first, extra_half = sdeint(Strat(), y0, [0.0, 0.5], extra=True, **kw)
    second, extra_end = sdeint(Strat(), first[-1], [0.5, 1.0], extra=True, extra_solver_state=extra_half, **kw)
    assert torch.equal(second[-1], ys[-1]) and all(torch.equal(a, b) for a, b in zip(extra_end, extra))
    # without the extra state the second half starts afresh (z = y, f and g at y): not the same
    assert not torch.equal(sdeint(Strat(), first[-1], [0.5, 1.0], **kw)[-1], ys[-1])
    if torchsde is not None:  # torchsde's state, and ours accepted by torchsde and the other way round
        theirs, their_extra = torchsde.sdeint(Strat(), y0, [0.0, 0.5, 1.0], extra=True, **kw)
        torch.testing.assert_close(ys, theirs, rtol=1e-12, atol=1e-14)
        for a, b in zip(extra, their_extra):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        cont = torchsde.sdeint(Strat(), first[-1], [0.5, 1.0], extra_solver_state=extra_half, **kw)
        torch.testing.assert_close(cont, second, rtol=1e-12, atol=1e-14)
    # other methods keep none; logqp returns (ys, log_ratio, extra)
    assert sdeint(Strat(), y0, [0.0, 1.0], bm=bm, dt=0.1, extra=True)[1] == ()
    gbm = SDEIto("diagonal")
    gbm.f, gbm.g, gbm.h = (lambda t, y: 0.5 * y), (lambda t, y: 0.2 * y), (lambda t, y: 0.0 * y)
    out = sdeint(gbm, y0, [0.0, 1.0], dt=0.1, logqp=True, extra=True)
    assert len(out) == 3 and out[1].shape == (1, 4) and out[2] == ()
    for bad in [(y0,), (y0, y0), (y0, torch.ones(4, 3, dtype=F64), y0), y0]:
        with pytest.raises(ValueError, match="extra_solver_state"):
            sdeint(Strat(), y0, [0.0, 1.0], extra_solver_state=bad, **kw)


# --------------------------------------------------------------------------- #
# 11: sdeint_adjoint with adaptive=True
# --------------------------------------------------------------------------- #


@needs_torchsde
def test_adaptive_adjoint_matches_torchsde_on_the_same_path():
    """Adaptive Euler with additive noise takes torchsde's steps (test_sde_methods); the backward
    solves take fixed steps of dt on both sides."""
    batch = 8
    net, y0 = Net("ito", "additive"), make_y0(batch)
    ts = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=bm_size("additive", batch), dtype=F64, entropy=5)
    kw = dict(bm=bm, dt=0.05, adaptive=True, rtol=1e-3, atol=1e-3, method="euler")
    ours = gradients(lambda: sdeint_adjoint(net, y0, ts, **kw), net, y0)
    theirs = gradients(lambda: torchsde.sdeint_adjoint(net, y0, ts, **kw), net, y0)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_adaptive_adjoint_converges_as_the_tolerances_shrink():
    """The forward solve is sdeint's adaptive one; the backward one takes fixed steps of dt from
    each output time, so the gradients approach the fine fixed-step ones as rtol, atol shrink
    (measured relative differences 9.4e-3 at 1e-3, 1.4e-3 at 1e-5)."""
    batch = 8
    net, y0 = Net("stratonovich", "diagonal"), make_y0(batch)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    bm = BrownianInterval(0.0, 1.0, size=bm_size("diagonal", batch), dtype=F64, entropy=6)
    fine = gradients(lambda: sdeint_adjoint(net, y0, ts, bm=bm, dt=2**-9, method="midpoint"), net, y0)
    errors = []
    for tol in (1e-3, 1e-5):
        kw = dict(bm=bm, adaptive=True, rtol=tol, atol=tol, method="midpoint")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning for midpoint
            forward = sdeint_adjoint(net, y0, ts, dt=2**-8, **kw)
        assert torch.equal(forward, sdeint(net, y0, ts, dt=2**-8, **kw))
        errors.append(relative_error(gradients(lambda: sdeint_adjoint(net, y0, ts, dt=2**-8, **kw), net, y0), fine))
    assert errors[1] < errors[0] / 3 and errors[1] < 3e-3, errors


# --------------------------------------------------------------------------- #
# 9, 11: reversible Heun and its exact adjoint
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("noise_type", ["diagonal", "scalar", "additive", "general"])
def test_adjoint_reversible_heun_is_backprop_through_the_solve(noise_type):
    """The gradients of the forward solution to rounding (measured ~3e-16 relative), also with
    output times off the step grid and adaptive steps (torchsde: approximate there, it warns)."""
    batch = 8
    net, y0 = Net("stratonovich", noise_type), make_y0(batch)
    bm = BrownianInterval(0.0, 1.0, size=bm_size(noise_type, batch), dtype=F64, entropy=5)
    for ts, kw in [
        ([0.0, 0.5, 1.0], dict(dt=2**-5)),
        ([0.0, 0.3, 0.71, 1.0], dict(dt=0.03)),
        ([0.0, 0.3, 1.0], dict(dt=0.05, adaptive=True, rtol=1e-3, atol=1e-3)),
    ]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            adjoint = gradients(lambda: sdeint_adjoint(net, y0, ts, bm=bm, method="reversible_heun", **kw), net, y0)
        backprop = gradients(lambda: sdeint(net, y0, ts, bm=bm, method="reversible_heun", **kw), net, y0)
        assert relative_error(adjoint, backprop) < 1e-12, (ts, kw)


@needs_torchsde
def test_adjoint_reversible_heun_matches_torchsde_and_extra_state_gradients():
    batch = 8
    net, y0 = Net("stratonovich", "general"), make_y0(batch)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=bm_size("general", batch), dtype=F64, entropy=5)
    kw = dict(bm=bm, dt=2**-5, method="reversible_heun", extra=True)
    grads = []
    for solve in (sdeint_adjoint, torchsde.sdeint_adjoint, sdeint):
        net.zero_grad(set_to_none=True)
        y0.grad = None
        ys, (f, g, z) = solve(net, y0, ts, **kw)
        # a loss of the final extra state too: its gradient enters the backward pass
        ((ys**2).sum() + (f * z).sum() + g.sum()).backward()
        params = [torch.zeros_like(p) if p.grad is None else p.grad for p in net.parameters()]
        grads.append(torch.cat([y0.grad.reshape(-1)] + [p.reshape(-1) for p in params]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-10, atol=1e-12)  # backprop through sdeint


def test_reversible_heun_adjoint_choices():
    net, y0 = Net("stratonovich", "diagonal"), make_y0(2)
    ts = [0.0, 1.0]
    with pytest.warns(UserWarning, match="adjoint_method!='adjoint_reversible_heun'"):
        sdeint_adjoint(net, y0, ts, dt=0.1, method="reversible_heun", adjoint_method="midpoint").sum().backward()
    with pytest.raises(ValueError, match="method='reversible_heun' only"):
        sdeint_adjoint(net, y0, ts, method="midpoint", adjoint_method="adjoint_reversible_heun")
    with pytest.raises(ValueError, match="adjoint_reversible_heun can only be used for adjoint_method"):
        sdeint(net, y0, ts, method="adjoint_reversible_heun")
    with pytest.raises(ValueError, match="Log-ODE schemes cannot be used for adjoint SDEs"):
        sdeint_adjoint(net, y0, ts, adjoint_method="log_ode")
    with pytest.raises(ValueError, match="Derivative-free Milstein cannot be used for adjoint SDEs"):
        sdeint_adjoint(net, y0, ts, method="milstein", adjoint_method="milstein", adjoint_options={"grad_free": True})
    # grad_free in options is the forward's only
    sdeint_adjoint(net, y0, ts, dt=0.1, method="milstein", adjoint_method="milstein", options={"grad_free": True})
    with pytest.raises(ValueError, match="grad_free"):
        sdeint(net, y0, ts, method="milstein", options={"grad_free": 1})


# --------------------------------------------------------------------------- #
# 11: double backward through sdeint_adjoint
# --------------------------------------------------------------------------- #


def first_and_second(solve, net, y0):
    """(the gradient of a loss, the gradient of (that gradient . v)), each over (y0, parameters)."""
    inputs = [y0] + list(net.parameters())
    ys = solve()
    w = torch.linspace(-1, 1, ys.numel(), dtype=F64).view_as(ys)
    grads = torch.autograd.grad((ys * w).sum() + (ys**2).sum(), inputs, create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
    v = [torch.linspace(0.5, -0.7, x.numel(), dtype=F64).view_as(x) for x in inputs]
    dot = sum((g * u).sum() for g, u in zip(grads, v) if g.requires_grad)
    second = torch.autograd.grad(dot, inputs, allow_unused=True)
    flat = lambda xs: torch.cat([x.detach().reshape(-1) for x in xs])  # noqa: E731
    return flat(grads), flat(torch.zeros_like(x) if s is None else s for s, x in zip(second, inputs))


@pytest.mark.parametrize(
    "sde_type,noise_type,method",
    [("stratonovich", "diagonal", "midpoint"), ("ito", "diagonal", "milstein"), ("ito", "scalar", "euler")],
)
def test_double_backward_against_double_backprop(sde_type, noise_type, method):
    """Second derivatives of the adjoint's gradients against those of backpropagation through
    sdeint (the exact discrete ones): like the first derivatives, the difference shrinks like dt
    (measured second-order relative errors 1.3e-3, 5.1e-4, 2.3e-4 Stratonovich, 5.4e-2, 2.7e-2,
    1.3e-2 Ito diagonal, at dt = 2^-4, 2^-5, 2^-6)."""
    batch = 8
    net, y0 = Net(sde_type, noise_type), make_y0(batch)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    bm = BrownianInterval(0.0, 1.0, size=bm_size(noise_type, batch), dtype=F64, entropy=5)
    errors = []
    for dt in (2**-4, 2**-5, 2**-6):
        _, second = first_and_second(lambda: sdeint_adjoint(net, y0, ts, bm=bm, method=method, dt=dt), net, y0)
        _, exact = first_and_second(lambda: sdeint(net, y0, ts, bm=bm, method=method, dt=dt), net, y0)
        errors.append(relative_error(second, exact))
    ratios = [e0 / e1 for e0, e1 in zip(errors[:-1], errors[1:])]
    assert all(r > 1.6 for r in ratios), (errors, ratios)
    assert errors[-1] < (3e-2 if sde_type == "ito" else 5e-4), errors


def test_first_derivatives_under_create_graph_and_higher_orders():
    batch = 4
    y0 = make_y0(batch)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    for method, noise_type in [("midpoint", "diagonal"), ("reversible_heun", "general")]:
        net = Net("stratonovich", noise_type)
        bm = BrownianInterval(0.0, 1.0, size=bm_size(noise_type, batch), dtype=F64, entropy=7)
        inputs = [y0] + list(net.parameters())

        def grads(create_graph):
            ys = sdeint_adjoint(net, y0, ts, bm=bm, method=method, dt=2**-4)
            return torch.autograd.grad((ys**2).sum(), inputs, create_graph=create_graph)

        plain, graph = grads(False), grads(True)
        for a, b in zip(plain, graph):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
        total = sum(g.sum() for g in graph)
        if method == "reversible_heun":  # first derivatives only
            with pytest.raises(NotImplementedError, match="adjoint_reversible_heun"):
                torch.autograd.grad(total, net.W)
            continue
        (second,) = torch.autograd.grad(total, net.W, create_graph=True)  # allowed, but not differentiable
        torch.testing.assert_close(second, torch.autograd.grad(sum(g.sum() for g in grads(True)), net.W)[0])
        with pytest.raises(NotImplementedError, match="not third"):
            torch.autograd.grad(second.sum(), net.W)


def test_gradgradcheck_against_the_discrete_forward_at_fine_dt():
    """gradgradcheck's numerical second derivatives are finite differences of the adjoint's
    first-order gradients; the analytic ones take the outputs' sensitivities from the adjoint
    again, so the two agree up to the discretisation error (hence atol 1e-3, as for the
    first-order gradcheck in test_sde_adjoint)."""
    gen = torch.Generator().manual_seed(4)
    theta = torch.randn(2, 2, dtype=F64, generator=gen) * 0.5
    sigma = torch.tensor([0.3, 0.2], dtype=F64)
    y0 = torch.randn(1, 2, dtype=F64, generator=gen)
    bm = BrownianInterval(0.0, 1.0, size=(1, 2), dtype=F64, entropy=11)

    def solve(y0, theta, sigma):
        class Tiny:
            sde_type, noise_type = "stratonovich", "diagonal"

            def f(self, t, y):
                return torch.tanh(y @ theta)

            def g(self, t, y):
                return sigma * torch.cos(y)

        return sdeint_adjoint(Tiny(), y0, [0.0, 1.0], bm=bm, dt=2**-6, adjoint_params=(theta, sigma))[-1]

    inputs = tuple(x.clone().requires_grad_() for x in (y0, theta, sigma))
    assert torch.autograd.gradgradcheck(solve, inputs, eps=1e-6, atol=1e-3, rtol=1e-3)

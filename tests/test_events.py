"""Event handling (odeint(..., event_fn=...), odeint_adjoint(..., event_fn=...), odeint_event):
event times and their implicit-function gradients against closed forms (a bouncing ball,
exponential decay) and against torchdiffeq 0.2.5's odeint_event; several event functions,
backwards in time, tuple states, fixed-grid methods, events that never happen, statistics."""

import math

import pytest
import torch
from torch import nn

import odecore
from odecore import events

torchdiffeq = pytest.importorskip("torchdiffeq")

F64 = torch.float64
H0, V0, G = 2.0, 3.0, 9.81
TIGHT = dict(rtol=1e-12, atol=1e-12)
INTERFACES = {"odeint": odecore.odeint, "odeint_adjoint": odecore.odeint_adjoint}
TDQ_INTERFACES = {"odeint": torchdiffeq.odeint, "odeint_adjoint": torchdiffeq.odeint_adjoint}


class Ball(nn.Module):
    """Height and velocity under gravity `g` (a parameter): h' = v, v' = -g."""

    def __init__(self, g=G):
        super().__init__()
        self.g = nn.Parameter(torch.tensor(g, dtype=F64))

    def forward(self, t, y):
        return torch.stack([y[1], -self.g * torch.ones_like(y[1])])


def floor(t, y):
    return y[0]


def ball_inputs(h0=H0, v0=V0):
    y0 = torch.tensor([h0, v0], dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.0, dtype=F64, requires_grad=True)
    return Ball(), y0, t0


def closed_form_impact(h0=H0, v0=V0, g=G, sign=1.0):
    """The impact time t* = (v0 + sign * D) / g, D = sqrt(v0^2 + 2 g h0) (sign=-1: the root
    in the past), its gradients w.r.t. (h0, v0, g, t0), and the velocity -sign * D there
    with its gradients w.r.t. (h0, v0, g)."""
    d = math.sqrt(v0**2 + 2 * g * h0)
    t_star = (v0 + sign * d) / g
    dt = (sign / d, (1 + sign * v0 / d) / g, -t_star / g + sign * h0 / (g * d), 1.0)
    dv = (-sign * g / d, -sign * v0 / d, -sign * h0 / d)
    return t_star, dt, -sign * d, dv


def close(actual, expected, tol=1e-10):
    assert actual == pytest.approx(expected, rel=tol, abs=tol)


# --------------------------------------------------------------------------- #
# The bouncing ball against its closed form
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("interface", INTERFACES)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse_time"])
def test_bouncing_ball_closed_form(interface, reverse):
    func, y0, t0 = ball_inputs()
    event_t, solution = odecore.odeint_event(
        func, y0, t0, event_fn=floor, reverse_time=reverse, odeint_interface=INTERFACES[interface], **TIGHT
    )
    t_star, dt, v_star, dv = closed_form_impact(sign=-1.0 if reverse else 1.0)
    assert solution.shape == (2, 2)
    assert torch.equal(solution[0].detach(), y0.detach())
    close(event_t.item(), t_star)
    close(solution[1, 0].item(), 0.0)
    close(solution[1, 1].item(), v_star)
    grads = torch.autograd.grad(event_t, (y0, func.g, t0), retain_graph=True)
    for actual, expected in zip([grads[0][0], grads[0][1], grads[1], grads[2]], dt):
        close(actual.item(), expected)
    grads = torch.autograd.grad(solution[1, 1], (y0, func.g), retain_graph=True)
    for actual, expected in zip([grads[0][0], grads[0][1], grads[1]], dv):
        close(actual.item(), expected)
    # the height at the event stays 0: its total derivative vanishes
    grads = torch.autograd.grad(solution[1, 0], (y0, func.g))
    close(grads[0].abs().max().item(), 0.0)
    close(grads[1].item(), 0.0)


@pytest.mark.parametrize("interface", INTERFACES)
def test_bouncing_ball_matches_torchdiffeq(interface):
    results = []
    for fn, interfaces in [(odecore.odeint_event, INTERFACES), (torchdiffeq.odeint_event, TDQ_INTERFACES)]:
        func, y0, t0 = ball_inputs()
        event_t, solution = fn(func, y0, t0, event_fn=floor, odeint_interface=interfaces[interface], **TIGHT)
        loss = event_t + solution[-1].pow(2).sum()
        grads = torch.autograd.grad(loss, (y0, func.g, t0))
        results.append([event_t.detach(), solution.detach()] + [g.detach() for g in grads])
    # torchdiffeq bisects to atol = 1e-12 in time; odecore's root is at ~1e-16 of the closed form
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_plain_odeint_is_at_fixed_event_time_like_torchdiffeq():
    """odeint(..., event_fn) itself: event_t carries no gradient, y(event_t) is differentiable
    at the fixed event time (what torchdiffeq's odeint returns; odeint_event adds the rest)."""
    out = []
    for mod in (odecore, torchdiffeq):
        func, y0, t0 = ball_inputs()
        t = torch.stack([t0, t0.detach() + 1])
        event_t, solution = mod.odeint(func, y0, t, event_fn=floor, **TIGHT)
        assert not event_t.requires_grad
        assert event_t.dtype == F64 and solution.shape == (2, 2)
        grads = torch.autograd.grad(solution[-1].sum(), (y0, func.g, t0))
        out.append([event_t, solution.detach()] + list(grads))
    for ours, theirs in zip(*out):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- #
# Several event functions: the first crossing wins
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("interface", INTERFACES)
@pytest.mark.parametrize("ceiling", [2.2, 3.0], ids=["hits_ceiling", "hits_floor"])
def test_first_event_wins(interface, ceiling):
    apex = H0 + V0**2 / (2 * G)  # 2.459: a ceiling below it is hit on the way up
    height = torch.tensor(ceiling, dtype=F64, requires_grad=True)

    def floor_and_ceiling(t, y):
        return torch.stack([y[0], height - y[0]])

    func, y0, t0 = ball_inputs()
    event_t, solution = odecore.odeint_event(
        func, y0, t0, event_fn=floor_and_ceiling, odeint_interface=INTERFACES[interface], **TIGHT
    )
    if ceiling < apex:
        v_hit = math.sqrt(V0**2 - 2 * G * (ceiling - H0))
        close(event_t.item(), (V0 - v_hit) / G)
        close(solution[1, 0].item(), ceiling)
        # the event function's own parameter: dt*/dH = 1 / v(t*) (torchdiffeq leaves this term out)
        close(torch.autograd.grad(event_t, height)[0].item(), 1 / v_hit)
    else:
        t_star, dt, _, _ = closed_form_impact()
        close(event_t.item(), t_star)
        close(torch.autograd.grad(event_t, y0)[0][0].item(), dt[0])
    theirs, _ = torchdiffeq.odeint_event(Ball(), y0.detach(), t0.detach(), event_fn=floor_and_ceiling, **TIGHT)
    close(event_t.item(), theirs.item())


def test_event_at_t0_ends_the_solve_there():
    func, y0, t0 = ball_inputs(h0=0.0)
    event_t, solution = odecore.odeint(func, y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=floor)
    assert event_t.item() == 0.0
    assert torch.equal(solution[0], solution[1])


# --------------------------------------------------------------------------- #
# Other problems and methods
# --------------------------------------------------------------------------- #

# event time accuracy of y' = -k y crossing 1/2 at tolerance `tol`: limited by each method's
# dense output (dopri8 and the low-order methods interpolate with a quartic fit)
DECAY = {
    "dopri5": (1e-12, 1e-10),
    "tsit5": (1e-12, 1e-10),
    "dopri8": (1e-12, 1e-7),
    "bosh3": (1e-9, 1e-5),
    "fehlberg2": (1e-9, 1e-6),
    "adaptive_heun": (1e-7, 1e-5),
}


@pytest.mark.parametrize("method", DECAY)
def test_exponential_decay_every_adaptive_method(method):
    tol, accuracy = DECAY[method]
    k = torch.tensor(0.7, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)

    def func(t, y):
        return -k * y

    def half(t, y):
        return y[0] - 0.5

    event_t, solution, stats = odecore.odeint_event(
        func,
        y0,
        torch.tensor(0.0, dtype=F64),
        event_fn=half,
        method=method,
        rtol=tol,
        atol=tol,
        options={"return_stats": True},
    )
    exact = math.log(2.0) / 0.7  # t* = log(2 y0) / k
    assert event_t.item() == pytest.approx(exact, abs=accuracy)
    grad_k, grad_y0 = torch.autograd.grad(event_t, (k, y0))
    assert grad_k.item() == pytest.approx(-exact / 0.7, abs=3 * accuracy)
    assert grad_y0.item() == pytest.approx(1 / 0.7, rel=1e-10)  # y* is pinned at 1/2 by the event
    if method != "tsit5":  # not in torchdiffeq 0.2.5
        theirs, _ = torchdiffeq.odeint_event(
            func, y0.detach(), torch.tensor(0.0, dtype=F64), event_fn=half, method=method, rtol=tol, atol=tol
        )
        # torchdiffeq bisects to atol; its dopri8 takes other steps than odecore's (step control)
        assert event_t.item() == pytest.approx(theirs.item(), abs=accuracy if method == "dopri8" else 4 * tol)
    assert stats["n_accepted"] > 0 and stats["root_iterations"] <= 60


def test_tuple_state():
    def func(t, y):
        return y[1][0], -G * torch.ones_like(y[1])

    y0 = (torch.tensor(H0, dtype=F64, requires_grad=True), torch.tensor([V0], dtype=F64, requires_grad=True))
    event_t, solution = odecore.odeint_event(
        func, y0, torch.tensor(0.0, dtype=F64), event_fn=lambda t, y: y[0], **TIGHT
    )
    t_star, dt, v_star, _ = closed_form_impact()
    assert [s.shape for s in solution] == [(2,), (2, 1)]
    close(event_t.item(), t_star)
    close(solution[1][1, 0].item(), v_star)
    grads = torch.autograd.grad(event_t, y0)
    close(grads[0].item(), dt[0])
    close(grads[1].item(), dt[1])


@pytest.mark.parametrize("interp", ["linear", "cubic"])
def test_fixed_grid_matches_torchdiffeq(interp):
    options = {"step_size": 0.05, "interp": interp}
    out = []
    for mod in (odecore, torchdiffeq):
        func, y0, t0 = ball_inputs()
        event_t, solution = mod.odeint_event(func, y0, t0, event_fn=floor, method="rk4", options=options, atol=1e-11)
        grads = torch.autograd.grad(event_t + solution[-1, 1], (y0, func.g))
        out.append([event_t.detach(), solution.detach()] + list(grads))
    for ours, theirs in zip(*out):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    if interp == "cubic":  # exact for a quadratic
        close(out[0][0].item(), closed_form_impact()[0])


def test_fixed_grid_needs_step_size():
    func, y0, t0 = ball_inputs()
    with pytest.raises(ValueError, match="step_size"):
        odecore.odeint_event(func, y0, t0, event_fn=floor, method="rk4")


# --------------------------------------------------------------------------- #
# Errors and statistics
# --------------------------------------------------------------------------- #


def test_event_that_never_happens_stops_at_max_num_steps():
    class Decay(nn.Module):
        def forward(self, t, y):
            return -y

    y0 = torch.tensor([1.0], dtype=F64)
    for interface in INTERFACES.values():  # decay never reaches 2
        with pytest.raises(RuntimeError, match="max_num_steps exceeded .* before event_fn changed sign"):
            odecore.odeint_event(
                Decay(),
                y0,
                0.0,
                event_fn=lambda t, y: y[0] - 2.0,
                odeint_interface=interface,
                options={"max_num_steps": 20},
            )


def test_t_must_have_two_times():
    func, y0, _ = ball_inputs()
    for interface in INTERFACES.values():
        with pytest.raises(ValueError, match=r"len\(t\) == 2"):
            interface(func, y0, torch.tensor([0.0, 1.0, 2.0], dtype=F64), event_fn=floor)


def test_nan_event_function_is_reported():
    func, y0, t0 = ball_inputs()
    with pytest.raises(RuntimeError, match="event_fn returned NaN"):
        odecore.odeint_event(func, y0, t0, event_fn=lambda t, y: y[0] * (float("nan") if t > 0.5 else 1.0))


def test_root_finding_is_bounded(monkeypatch):
    monkeypatch.setattr(events, "MAX_ROOT_ITERS", 3)
    func, y0, t0 = ball_inputs()
    with pytest.raises(RuntimeError, match="event root finding did not converge in 3 iterations"):
        odecore.odeint_event(func, y0, t0, event_fn=floor, **TIGHT)


@pytest.mark.parametrize("name", ["linear", "exp", "sin", "triple_root", "steep", "jump", "near_zero", "large_t"])
def test_root_finder_is_within_an_ulp_of_bisection_count(name):
    h, a, b, root = {
        "linear": (lambda s: 0.3 - s, 0.0, 1.0, 0.3),
        "exp": (lambda s: math.exp(-s) - 0.5, 0.0, 1.3, math.log(2.0)),
        "sin": (lambda s: math.sin(s), 2.5, 3.5, math.pi),
        "triple_root": (lambda s: math.tanh(0.1 - s) ** 3, 0.0, 2.0, 0.1),
        "steep": (lambda s: math.atan(1e6 * (0.123 - s)), 0.0, 1.0, 0.123),
        "jump": (lambda s: 1.0 if s < 0.3 else -1.0, 0.0, 1.0, 0.3),
        "near_zero": (lambda s: 1e-10 - s, 0.0, 1e-3, 1e-10),
        "large_t": (lambda s: 1e5 + 0.37 - s, 1e5, 1e5 + 1.0, 1e5 + 0.37),
    }[name]
    eps = 2.0**-52
    s, iterations = events.find_root(h, a, b, h(a), h(b), eps)
    delta = eps * max(abs(a), abs(b), b - a)
    bisections = math.ceil(math.log2((b - a) / (2 * delta)))
    assert iterations <= bisections + 1
    if name != "triple_root":  # flat to float64 for |s - 0.1| < 1e-5: any point there is a root
        assert abs(s - root) <= 2 * delta
    assert h(s) >= 0  # the last point before the sign change (or an exact zero)
    if name in ("exp", "sin", "large_t"):
        assert iterations <= 12  # superlinear on smooth crossings


@pytest.mark.parametrize("interface", INTERFACES)
def test_stats_like_odeint(interface):
    calls = [0]

    class Counted(Ball):
        def forward(self, t, y):
            calls[0] += 1
            return super().forward(t, y)

    y0 = torch.tensor([H0, V0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with torch.no_grad():
        event_t, solution, stats = INTERFACES[interface](
            Counted(), y0, t, event_fn=floor, options={"return_stats": True}
        )
    for key in ("nfe", "n_steps", "n_accepted", "n_rejected", "event_evals", "root_iterations"):
        assert key in stats
    assert stats["nfe"] == calls[0]
    assert stats["n_steps"] == stats["n_accepted"] + stats["n_rejected"]
    # the same steps and evaluations as torchdiffeq's event solve
    calls[0] = 0
    with torch.no_grad():
        theirs, _ = TDQ_INTERFACES[interface](Counted(), y0, t, event_fn=floor)
    assert stats["nfe"] == calls[0]
    close(event_t.item(), theirs.item(), tol=1e-8)

"""Semantics of the solver options (torchdiffeq 0.2.5 meanings) and of the
odecore extras (return_stats)."""

import copy
import warnings

import pytest
import torch

import odecore

from .problems import get_problem, van_der_pol
from .testing import ADAPTIVE_METHODS, EXPLICIT_RK_METHODS, FIXED_METHODS, CountingFunc, dtypes, product, time_grid

INF = float("inf")
STAT_KEYS = ("nfe", "n_steps", "n_accepted", "n_rejected")


def same_steps(a, b):
    return all(a[k] == b[k] for k in STAT_KEYS)


def nextafter(x, direction, dtype):
    return torch.nextafter(torch.tensor(x, dtype=dtype), torch.tensor(direction, dtype=dtype)).item()


# --------------------------------------------------------------------------- #
# jump_t / step_t
# --------------------------------------------------------------------------- #


def step_function(t, y):
    """y' = +1 before t = 0.5, -1 from t = 0.5 on (exact y(1) = y(0))."""
    return torch.where(t < 0.5, torch.ones_like(y), -torch.ones_like(y))


@pytest.mark.parametrize("method,direction", product(ADAPTIVE_METHODS, ["forward", "backward"]))
def test_jump_t_saves_evaluations_and_is_exact(method, direction):
    y0 = torch.zeros(2, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0] if direction == "forward" else [1.0, 0.0], dtype=torch.float64)
    f_plain, f_jump = CountingFunc(step_function), CountingFunc(step_function)
    kw = dict(rtol=1e-6, atol=1e-6, method=method)
    out_plain = odecore.odeint(f_plain, y0, t, **kw)
    out_jump = odecore.odeint(f_jump, y0, t, options=dict(jump_t=torch.tensor([0.5], dtype=torch.float64)), **kw)
    assert f_jump.nfe < f_plain.nfe, (f_jump.nfe, f_plain.nfe)
    err_plain = out_plain[-1].abs().max().item()
    err_jump = out_jump[-1].abs().max().item()
    # Piecewise constant right-hand side: with the jump announced, every step
    # sees only one side of it (stages at t1 are evaluated just before t1, the
    # first stage after the jump just after it) -> exact up to rounding.
    assert err_jump <= 1e-12, err_jump
    assert err_jump < err_plain
    # the function was evaluated on both sides, arbitrarily close to the jump
    times = torch.tensor(f_jump.times(), dtype=torch.float64)
    assert ((times < 0.5) & (times > 0.5 - 1e-12)).any()
    assert ((times >= 0.5) & (times < 0.5 + 1e-12)).any()


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_jump_t_state_dependent(method):
    def f(t, y):
        return torch.where(t < 0.5, -y, -2 * y)

    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    tol = 1e-6 if method == "adaptive_heun" else 1e-9
    f_plain, f_jump = CountingFunc(f), CountingFunc(f)
    out_plain = odecore.odeint(f_plain, y0, t, rtol=tol, atol=tol, method=method)
    out_jump = odecore.odeint(
        f_jump, y0, t, rtol=tol, atol=tol, method=method, options=dict(jump_t=torch.tensor([0.5], dtype=torch.float64))
    )
    exact = (
        y0
        * torch.tensor(
            [1.0, torch.exp(torch.tensor(-0.5)).item(), torch.exp(torch.tensor(-1.5)).item()], dtype=torch.float64
        )[:, None]
    )
    err_jump = (out_jump - exact).abs().max().item()
    err_plain = (out_plain - exact).abs().max().item()
    assert f_jump.nfe < f_plain.nfe
    assert err_jump <= 1e3 * tol, (err_jump, err_plain)


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_step_t_forces_a_step_boundary(method):
    f = van_der_pol(1.0)
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    tol = 1e-5 if method == "adaptive_heun" else 1e-7

    def near(times, x):
        return any(abs(s - x) <= 4e-16 for s in times)

    plain = CountingFunc(f)
    odecore.odeint(plain, y0, t, rtol=tol, atol=tol, method=method)
    assert not near(plain.times(), 0.3)  # a stage landing there by chance would void the test
    forced = CountingFunc(f)
    out = odecore.odeint(
        forced, y0, t, rtol=tol, atol=tol, method=method, options=dict(step_t=torch.tensor([0.3], dtype=torch.float64))
    )
    assert near(forced.times(), 0.3)
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------- #
# first_step / min_step / max_step / safety / ifactor / dfactor / norm / dtype
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_max_step(method):
    prob = get_problem("exponential")
    y0 = prob.y0(torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    _, st = odecore.odeint(
        prob.func, y0, t, rtol=1e-3, atol=1e-3, method=method, options=dict(max_step=0.01, return_stats=True)
    )
    assert st["n_accepted"] >= 100, st
    _, st_free = odecore.odeint(prob.func, y0, t, rtol=1e-3, atol=1e-3, method=method, options=dict(return_stats=True))
    assert st_free["n_accepted"] < 100, st_free


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_min_step(method):
    """With min_step = 0.1 every step is at least 0.1 long (steps of exactly
    min_step are always accepted), however tight the tolerance."""
    prob = get_problem("linear")
    y0 = prob.y0(torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    f = CountingFunc(prob.func)
    out, st = odecore.odeint(
        f, y0, t, rtol=1e-13, atol=1e-13, method=method, options=dict(min_step=0.1, return_stats=True)
    )
    assert st["n_accepted"] <= 11, st
    assert st["n_steps"] <= 25, st
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_first_step(method):
    """The first stage after t0 is at t0 + c_2 * first_step (dopri5: c_2 = 1/5,
    bosh3: c_2 = 1/2)."""
    c2 = {"dopri5": 0.2, "bosh3": 0.5}[method]
    f = CountingFunc(get_problem("linear").func)
    odecore.odeint(
        f,
        get_problem("linear").y0(torch.float64),
        torch.tensor([0.25, 1.0], dtype=torch.float64),
        method=method,
        options=dict(first_step=1e-3),
    )
    times = f.times()
    assert times[0] == 0.25
    assert abs(times[1] - (0.25 + c2 * 1e-3)) <= 1e-15, times[:3]


@pytest.mark.parametrize("option,values", [("ifactor", (10.0, 1.5)), ("safety", (0.9, 0.5)), ("dfactor", (0.2, 0.9))])
def test_step_controller_factors(option, values):
    """More conservative controller settings cost more steps."""
    prob = get_problem("exponential")
    y0 = prob.y0(torch.float64)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    steps = []
    for v in values:
        _, st = odecore.odeint(
            prob.func,
            y0,
            t,
            rtol=1e-8,
            atol=1e-8,
            options={option: v, "first_step": 1e-5 if option == "ifactor" else 1.0, "return_stats": True},
        )
        steps.append(st["n_steps"])
    assert steps[1] > steps[0], steps


@pytest.mark.parametrize("tuple_state", [False, True])
def test_custom_norm_is_used(tuple_state):
    calls = []

    def linf(x):
        calls.append(type(x))
        if isinstance(x, tuple):
            return max(xi.abs().max() for xi in x)
        return x.abs().max()

    f = van_der_pol(1.0)
    t = torch.linspace(0.0, 2.0, 3, dtype=torch.float64)
    if tuple_state:
        y0 = (torch.tensor([2.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))

        def func(t, y):
            d = f(t, torch.cat(y))
            return (d[:1], d[1:])
    else:
        y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
        func = f
    out, st = odecore.odeint(func, y0, t, rtol=1e-7, atol=1e-7, options=dict(norm=linf, return_stats=True))
    assert calls, "custom norm never called"
    assert all(c is (tuple if tuple_state else torch.Tensor) for c in calls), set(calls)
    _, st_rms = odecore.odeint(func, y0, t, rtol=1e-7, atol=1e-7, options=dict(return_stats=True))
    assert st["nfe"] >= st_rms["nfe"]  # linf >= rms: at least as many steps


def test_time_dtype_option(dtype):
    prob = get_problem("exponential")
    y0 = prob.y0(dtype)
    t = time_grid("forward", dtype)
    f = CountingFunc(prob.func)
    out = odecore.odeint(f, y0, t, rtol=1e-5, atol=1e-5, options=dict(dtype=torch.float32))
    assert out.dtype == dtype
    assert all(d == dtype for d in f.t_dtypes)  # func still sees t in y's dtype
    assert ((out.double() - prob.exact(t, y0)).abs().max()) < 1e-3


# --------------------------------------------------------------------------- #
# Fixed grid: perturb, grid_constructor, step_size, interp
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype,perturb", product(dtypes, [False, True]))
def test_perturb_euler(dtype, perturb):
    f = CountingFunc(lambda t, y: -y)
    odecore.odeint(
        f,
        torch.ones(2, dtype=dtype),
        torch.tensor([0.0, 1.0], dtype=dtype),
        method="euler",
        options=dict(step_size=0.25, perturb=perturb),
    )
    grid = [0.0, 0.25, 0.5, 0.75]
    expected = [nextafter(g, INF, dtype) for g in grid] if perturb else grid
    assert f.times() == expected
    assert all(d == dtype for d in f.t_dtypes)


@pytest.mark.parametrize("dtype,perturb", product(dtypes, [False, True]))
def test_perturb_rk4(dtype, perturb):
    f = CountingFunc(lambda t, y: -y)
    odecore.odeint(
        f,
        torch.ones(2, dtype=dtype),
        torch.tensor([0.0, 1.0], dtype=dtype),
        method="rk4",
        options=dict(step_size=0.25, perturb=perturb),
    )
    times = f.times()
    assert len(times) == 4 * 4
    for i in range(4):
        t0, t1 = 0.25 * i, 0.25 * (i + 1)
        first, last = times[4 * i], times[4 * i + 3]
        if perturb:
            assert first == nextafter(t0, INF, dtype)
            assert last == nextafter(t1, -INF, dtype)
        else:
            assert first == t0 and last == t1
        # interior stages of the 3/8 rule at t0 + dt/3, t0 + 2dt/3 (never perturbed)
        assert abs(times[4 * i + 1] - (t0 + 0.25 / 3)) <= 1e-6
        assert abs(times[4 * i + 2] - (t0 + 0.5 / 3)) <= 1e-6


def test_perturb_backward_in_time():
    """Perturbation is towards the interior of each step in the direction of
    integration."""
    f = CountingFunc(lambda t, y: -y)
    odecore.odeint(
        f,
        torch.ones(1, dtype=torch.float64),
        torch.tensor([1.0, 0.0], dtype=torch.float64),
        method="euler",
        options=dict(step_size=0.25, perturb=True),
    )
    assert f.times() == [nextafter(g, -INF, torch.float64) for g in [1.0, 0.75, 0.5, 0.25]]


@pytest.mark.parametrize("method,direction", product(FIXED_METHODS, ["forward", "backward"]))
def test_grid_constructor_is_used(method, direction):
    calls = []

    def grid(func, y0, t):
        calls.append(t.clone())
        return (
            torch.tensor([float(t[0]), 0.6, 0.65, 0.9, 1.3, float(t[-1])], dtype=t.dtype)
            if direction == "forward"
            else torch.tensor([float(t[0]), 1.3, 0.9, 0.65, 0.6, float(t[-1])], dtype=t.dtype)
        )

    f = CountingFunc(lambda t, y: -y)
    t = time_grid(direction, torch.float64)  # 0.3 .. 1.8
    _, st = odecore.odeint(
        f, torch.ones(1, dtype=torch.float64), t, method=method, options=dict(grid_constructor=grid, return_stats=True)
    )
    assert len(calls) == 1
    assert torch.equal(calls[0], t)  # the user's constructor sees the user's t
    assert st["n_accepted"] == 5 and st["n_rejected"] == 0
    if method == "euler":
        expected = [0.3, 0.6, 0.65, 0.9, 1.3] if direction == "forward" else [1.8, 1.3, 0.9, 0.65, 0.6]
        assert f.times() == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("method", FIXED_METHODS)
def test_step_size_grid(method):
    """step_size: grid t0, t0+h, ... and the last point clipped to t[-1]."""
    f = CountingFunc(lambda t, y: -y)
    _, st = odecore.odeint(
        f,
        torch.ones(1, dtype=torch.float64),
        torch.tensor([0.0, 1.0], dtype=torch.float64),
        method=method,
        options=dict(step_size=0.3, return_stats=True),
    )
    assert st["n_accepted"] == 4 and st["n_rejected"] == 0 and st["n_steps"] == 4
    if method == "euler":
        assert f.times() == pytest.approx([0.0, 0.3, 0.6, 0.9], abs=1e-15)


@pytest.mark.parametrize("method", FIXED_METHODS)
def test_step_size_and_grid_constructor_exclusive(method):
    with pytest.raises(ValueError):
        odecore.odeint(
            lambda t, y: -y,
            torch.ones(1),
            torch.tensor([0.0, 1.0]),
            method=method,
            options=dict(step_size=0.1, grid_constructor=lambda f, y0, t: t),
        )


@pytest.mark.parametrize("method", ["heun3", "rk4"])
def test_interp_cubic_is_more_accurate(method):
    """Between grid points, cubic Hermite interpolation beats linear
    interpolation when the solver itself is accurate."""
    prob = get_problem("sine")
    y0 = prob.y0(torch.float64)
    t = torch.tensor([0.0, 0.37, 0.81, 1.2], dtype=torch.float64)  # 0.37, 0.81 are off-grid
    exact = prob.exact(t, y0)
    errs = {}
    for interp in ("linear", "cubic"):
        out = odecore.odeint(prob.func, y0, t, method=method, options=dict(step_size=0.2, interp=interp))
        errs[interp] = (out[1:3] - exact[1:3]).abs().max().item()
    assert errs["cubic"] < 0.1 * errs["linear"], errs


def test_interp_unknown_raises():
    with pytest.raises(ValueError):
        odecore.odeint(
            lambda t, y: -y,
            torch.ones(1),
            torch.tensor([0.0, 0.25, 1.0]),
            method="rk4",
            options=dict(step_size=0.1, interp="quintic"),
        )


# --------------------------------------------------------------------------- #
# Misc semantics
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_unknown_option_warns(method):
    with pytest.warns(UserWarning, match="Unexpected arguments"):
        odecore.odeint(
            lambda t, y: -y,
            torch.ones(1),
            torch.tensor([0.0, 1.0]),
            method=method,
            options=dict(not_an_option=3, **({"step_size": 0.5} if method == "rk4" else {})),
        )


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_known_options_do_not_warn(method):
    opts = (
        dict(step_size=0.5, perturb=False, interp="linear")
        if method == "rk4"
        else dict(
            first_step=0.1,
            min_step=0.0,
            max_step=1.0,
            safety=0.9,
            ifactor=10.0,
            dfactor=0.2,
            max_num_steps=1000,
            dtype=torch.float64,
            step_t=torch.tensor([0.5]),
            jump_t=torch.tensor([0.7]),
        )
    )
    opts.update(backend="reference", return_stats=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        odecore.odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), method=method, options=opts)


@pytest.mark.parametrize("method,dtype", product(EXPLICIT_RK_METHODS, dtypes))
def test_single_time_point(method, dtype):
    y0 = torch.tensor([[1.0, 2.0]], dtype=dtype)
    t = torch.tensor([0.5], dtype=dtype)
    out = odecore.odeint(lambda t, y: -y, y0, t, method=method)
    assert out.shape == (1, 1, 2) and out.dtype == dtype
    assert torch.equal(out[0], y0)
    tup = odecore.odeint(lambda t, y: (-y[0], -y[1]), (y0, y0[0, 0]), t, method=method)
    assert isinstance(tup, tuple) and tup[0].shape == (1, 1, 2) and tup[1].shape == (1,)
    assert torch.equal(tup[1][0], y0[0, 0])


def test_options_dict_not_mutated():
    opts = dict(step_t=torch.tensor([0.5]), jump_t=torch.tensor([0.25]), backend="reference", return_stats=True)
    snapshot = copy.deepcopy(opts)
    odecore.odeint(lambda t, y: -y, torch.ones(1), torch.tensor([1.0, 0.0]), options=opts)  # backward: flips
    assert opts.keys() == snapshot.keys()
    for k in opts:
        if isinstance(opts[k], torch.Tensor):
            assert torch.equal(opts[k], snapshot[k])
        else:
            assert opts[k] == snapshot[k]


@pytest.mark.parametrize("tol_kind", ["tensor", "elementwise"])
def test_tolerances_as_tensors(tol_kind):
    prob = get_problem("exponential")  # y shape (2, 3)
    y0 = prob.y0(torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ref, st_ref = odecore.odeint(prob.func, y0, t, rtol=1e-6, atol=1e-6, options=dict(return_stats=True))
    if tol_kind == "tensor":
        out, st = odecore.odeint(
            prob.func,
            y0,
            t,
            rtol=torch.tensor(1e-6, dtype=torch.float64),
            atol=torch.tensor(1e-6, dtype=torch.float64),
            options=dict(return_stats=True),
        )
        assert same_steps(st, st_ref)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    else:
        loose = torch.full_like(y0, 1e-6)
        out, st = odecore.odeint(prob.func, y0, t, rtol=loose, atol=loose, options=dict(return_stats=True))
        assert st["nfe"] == st_ref["nfe"]
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        tight = loose.clone()
        tight[1, 1] = 1e-10  # one component much stricter -> more steps
        out_t, st_t = odecore.odeint(prob.func, y0, t, rtol=tight, atol=tight, options=dict(return_stats=True))
        assert st_t["nfe"] > st_ref["nfe"]
        exact = prob.exact(t, y0)[-1]
        assert abs(out_t[-1, 1, 1] - exact[1, 1]) < abs(ref[-1, 1, 1] - exact[1, 1])


def test_per_tuple_tolerances():
    def f(t, y):
        return (-y[0], torch.cos(t) * y[1])

    y0 = (torch.ones(3, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64))
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    _, st_loose = odecore.odeint(f, y0, t, rtol=1e-5, atol=1e-5, options=dict(return_stats=True))
    _, st_same = odecore.odeint(f, y0, t, rtol=[1e-5, 1e-5], atol=(1e-5, 1e-5), options=dict(return_stats=True))
    assert same_steps(st_same, st_loose)
    out_mixed, st_mixed = odecore.odeint(
        f, y0, t, rtol=(1e-5, 1e-10), atol=(1e-5, 1e-10), options=dict(return_stats=True)
    )
    assert st_mixed["nfe"] > st_loose["nfe"]
    exact1 = torch.exp(torch.sin(torch.tensor(2.0, dtype=torch.float64)))
    assert (out_mixed[1][-1] - exact1).abs().max() < 1e-8
    # per-tuple tensors (elementwise within an element)
    out2 = odecore.odeint(
        f, y0, t, rtol=(torch.tensor(1e-5), torch.full((2, 2), 1e-10, dtype=torch.float64)), atol=(1e-5, 1e-10)
    )
    assert (out2[1][-1] - exact1).abs().max() < 1e-8


# --------------------------------------------------------------------------- #
# return_stats
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method", EXPLICIT_RK_METHODS)
def test_return_stats(method):
    f = CountingFunc(van_der_pol(1.0))
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    opts = dict(return_stats=True)
    if method in FIXED_METHODS:
        opts["step_size"] = 0.125
    res = odecore.odeint(f, y0, t, rtol=1e-5, atol=1e-5, method=method, options=opts)
    assert isinstance(res, tuple) and len(res) == 2
    out, st = res
    assert isinstance(out, torch.Tensor) and out.shape == (5, 2)
    assert isinstance(st, dict)
    for key in ("nfe", "n_steps", "n_accepted", "n_rejected"):
        assert isinstance(st[key], int) and not isinstance(st[key], bool), (key, st[key])
        assert st[key] >= 0
    assert st["n_steps"] == st["n_accepted"] + st["n_rejected"]
    assert st["nfe"] == f.nfe
    if method in FIXED_METHODS:
        assert st["n_rejected"] == 0
        assert st["n_accepted"] == 16
    else:
        assert st["n_accepted"] >= 1
        assert st["nfe"] >= st["n_steps"]
    # without return_stats: the bare solution, identical
    out2 = odecore.odeint(
        van_der_pol(1.0),
        y0,
        t,
        rtol=1e-5,
        atol=1e-5,
        method=method,
        options={k: v for k, v in opts.items() if k != "return_stats"},
    )
    assert isinstance(out2, torch.Tensor)
    assert torch.equal(out, out2)


def test_return_stats_counts_rejections():
    """A too-large first step must be rejected and shows up in n_rejected."""
    prob = get_problem("exponential")
    _, st = odecore.odeint(
        prob.func,
        prob.y0(torch.float64),
        torch.tensor([0.0, 1.0], dtype=torch.float64),
        rtol=1e-10,
        atol=1e-10,
        options=dict(first_step=1.0, return_stats=True),
    )
    assert st["n_rejected"] >= 1


def test_return_stats_tuple_state():
    y0 = (torch.ones(2), torch.zeros(3))
    res = odecore.odeint(lambda t, y: (-y[0], y[1] + 1), y0, torch.tensor([0.0, 1.0]), options=dict(return_stats=True))
    sol, st = res
    assert isinstance(sol, tuple) and len(sol) == 2 and sol[1].shape == (2, 3)
    assert st["nfe"] > 0

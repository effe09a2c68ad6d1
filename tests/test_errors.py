"""Bad inputs: exception type AND a message naming the offending argument."""

import math
import re

import pytest
import torch

import odecore

from .testing import ADAPTIVE_METHODS, EXPLICIT_RK_METHODS, FIXED_METHODS

ONE = torch.ones(2)
T = torch.tensor([0.0, 1.0])


def decay(t, y):
    return -y


# --------------------------------------------------------------------------- #
# t
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("t", [torch.zeros(2, 2), torch.tensor(1.0)], ids=["2d", "0d"])
def test_t_not_one_dimensional(t):
    with pytest.raises(ValueError, match=r"\bt\b"):
        odecore.odeint(decay, ONE, t)


def test_t_empty():
    with pytest.raises(ValueError, match=r"\bt\b"):
        odecore.odeint(decay, ONE, torch.tensor([]))


@pytest.mark.parametrize(
    "t",
    [[0.0, 1.0, 0.5], [0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0]],
    ids=["up-down", "repeated", "down-up", "constant"],
)
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_t_not_strictly_monotonic(t, method):
    with pytest.raises(ValueError, match=r"(?s)\bt\b.*strictly"):
        odecore.odeint(
            decay, ONE, torch.tensor(t), method=method, options=dict(step_size=0.1) if method == "rk4" else None
        )


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_t_not_floating(dtype):
    with pytest.raises(TypeError, match=r"\bt\b"):
        odecore.odeint(decay, ONE, torch.tensor([0, 1]).to(dtype))


def test_t_nan():
    with pytest.raises(ValueError, match=r"\bt\b"):
        odecore.odeint(decay, ONE, torch.tensor([0.0, float("nan")]))


# --------------------------------------------------------------------------- #
# y0
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_y0_not_finite(bad):
    y0 = torch.tensor([1.0, bad])
    with pytest.raises(ValueError, match=r"\by0\b"):
        odecore.odeint(decay, y0, T)
    with pytest.raises(ValueError, match=r"\by0\b"):
        odecore.odeint(lambda t, y: (-y[0], -y[1]), (ONE, y0), T)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_y0_not_floating(dtype):
    with pytest.raises(TypeError, match=r"\by0\b"):
        odecore.odeint(decay, torch.tensor([1, 0]).to(dtype), T)
    with pytest.raises(TypeError, match=r"\by0\b"):
        odecore.odeint(lambda t, y: (-y[0], -y[1]), (ONE, torch.tensor([1, 0]).to(dtype)), T)


@pytest.mark.parametrize("y0", [[1.0, 2.0], 1.0, None, "y"], ids=["list", "float", "None", "str"])
def test_y0_not_tensor_or_tuple(y0):
    with pytest.raises(TypeError, match=r"\by0\b"):
        odecore.odeint(decay, y0, T)


@pytest.mark.cuda
def test_different_devices():
    with pytest.raises(ValueError, match=r"(?i)device"):
        odecore.odeint(lambda t, y: (-y[0], -y[1]), (ONE, ONE.cuda()), T)
    with pytest.raises(ValueError, match=r"(?i)device"):
        odecore.odeint(decay, ONE.cuda(), T)  # t on the CPU, y0 on the GPU


# --------------------------------------------------------------------------- #
# tolerances, method, event_fn
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize(
    "value", [-1e-6, torch.tensor(-1e-6), torch.tensor([1e-6, -1e-6])], ids=["float", "tensor", "elementwise"]
)
def test_negative_tolerance(name, value):
    with pytest.raises(ValueError, match=name):
        odecore.odeint(decay, ONE, T, **{name: value})


@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_negative_tuple_tolerance(name):
    with pytest.raises(ValueError, match=name):
        odecore.odeint(lambda t, y: (-y[0], -y[1]), (ONE, ONE), T, **{name: (1e-6, -1e-6)})


def test_unknown_method():
    with pytest.raises(ValueError) as info:
        odecore.odeint(decay, ONE, T, method="dopri7")
    msg = str(info.value)
    assert "method" in msg or "dopri7" in msg
    for name in EXPLICIT_RK_METHODS:
        assert name in msg, name


def test_event_fn_needs_two_times():
    # event handling itself: tests/test_events.py
    with pytest.raises(ValueError, match=r"len\(t\) == 2"):
        odecore.odeint(decay, ONE, torch.tensor([0.0, 1.0, 2.0]), event_fn=lambda t, y: y[0] - 0.5)


# --------------------------------------------------------------------------- #
# func misbehaving
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method", ["dopri5", "euler", "rk4"])
def test_func_wrong_shape(method):
    opts = dict(step_size=0.1) if method in ("euler", "rk4") else None
    with pytest.raises(ValueError, match=r"(?s)func.*shape"):
        odecore.odeint(lambda t, y: torch.zeros(3), ONE, T, method=method, options=opts)
    with pytest.raises(ValueError, match=r"(?s)func.*shape"):  # broadcastable is not good enough
        odecore.odeint(lambda t, y: torch.zeros(1, 2), ONE, T, method=method, options=opts)
    with pytest.raises(ValueError, match=r"(?s)func.*shape"):
        odecore.odeint(lambda t, y: (-y[0], torch.zeros(5)), (ONE, ONE), T, method=method, options=opts)
    with pytest.raises(ValueError, match=r"(?s)func.*shape"):  # same numel, wrong shape
        odecore.odeint(lambda t, y: (-y[0].reshape(2, 1), -y[1]), (ONE, ONE), T, method=method, options=opts)


@pytest.mark.parametrize("method", ["dopri5", "euler"])
def test_func_wrong_dtype(method):
    opts = dict(step_size=0.1) if method == "euler" else None
    with pytest.raises(TypeError, match=r"(?s)func.*dtype"):
        odecore.odeint(lambda t, y: (-y).double(), ONE, T, method=method, options=opts)
    with pytest.raises(TypeError, match=r"(?s)func.*dtype"):
        odecore.odeint(lambda t, y: (-y).half(), ONE.double(), T.double(), method=method, options=opts)


@pytest.mark.parametrize("method", ["dopri5", "euler"])
def test_func_wrong_dtype_tuple_state(method):
    """One element of a tuple output with the wrong dtype must not be silently
    promoted away by the concatenation."""
    opts = dict(step_size=0.1) if method == "euler" else None
    with pytest.raises(TypeError, match=r"(?s)func.*dtype"):
        odecore.odeint(lambda t, y: (-y[0], (-y[1]).half()), (ONE, ONE), T, method=method, options=opts)
    with pytest.raises(TypeError, match=r"(?s)func.*dtype"):
        odecore.odeint(lambda t, y: (-y[0], (-y[1]).double()), (ONE, ONE), T, method=method, options=opts)


@pytest.mark.parametrize("ret", [None, [0.0, 0.0], 1.0], ids=["None", "list", "float"])
def test_func_not_tensor(ret):
    with pytest.raises(TypeError, match=r"func"):
        odecore.odeint(lambda t, y: ret, ONE, T)


# --------------------------------------------------------------------------- #
# Runtime failures: must raise (never hang), naming t= and dt=
# --------------------------------------------------------------------------- #


def _assert_runtime_message(msg, *words):
    assert "t=" in msg and "dt=" in msg, msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_size_underflow(method, dtype):
    # y' = y^2, y(0) = 1 -> y = 1/(1-t) blows up at t = 1
    with pytest.raises(RuntimeError) as info:
        odecore.odeint(
            lambda t, y: y**2,
            torch.ones(1, dtype=dtype),
            torch.tensor([0.0, 2.0], dtype=dtype),
            method=method,
            rtol=1e-6,
            atol=1e-6,
        )
    msg = str(info.value)
    _assert_runtime_message(msg)
    assert "underflow" in msg or "non-finite" in msg, msg
    # where did it stop?  Close to the singularity (if the time is printed as a number).
    m = re.search(r"(?<![A-Za-z_])t\s*=\s*([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)", msg)
    if m:
        assert 0.9 < float(m.group(1)) < 1.1, msg


def test_step_size_underflow_message_float64_dopri5():
    """The canonical case reports 'underflow' specifically."""
    with pytest.raises(RuntimeError, match="underflow"):
        odecore.odeint(
            lambda t, y: y**2, torch.ones(1, dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64)
        )


@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_max_num_steps(method):
    with pytest.raises(RuntimeError) as info:
        odecore.odeint(
            lambda t, y: torch.cos(10 * t) * y,
            torch.ones(2, dtype=torch.float64),
            torch.tensor([0.0, 10.0], dtype=torch.float64),
            rtol=1e-8,
            atol=1e-8,
            method=method,
            options=dict(max_num_steps=5),
        )
    _assert_runtime_message(str(info.value), "max_num_steps")


def test_max_num_steps_not_hit():
    out = odecore.odeint(decay, ONE, T, options=dict(max_num_steps=1000))
    assert math.isclose(out[-1, 0].item(), math.exp(-1), rel_tol=1e-5)


@pytest.mark.parametrize("method", EXPLICIT_RK_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_func_returns_nan_mid_solve(method, dtype):
    calls = [0]

    def f(t, y):
        calls[0] += 1
        assert calls[0] < 100000, "solver keeps calling func after NaN"
        if t > 0.5:
            return torch.full_like(y, float("nan"))
        return -y

    opts = dict(step_size=0.1) if method in FIXED_METHODS else None
    with pytest.raises(RuntimeError) as info:
        odecore.odeint(
            f, torch.ones(2, dtype=dtype), torch.tensor([0.0, 1.0], dtype=dtype), method=method, options=opts
        )
    _assert_runtime_message(str(info.value), "non-finite")


def test_func_returns_inf_mid_solve():
    def f(t, y):
        return torch.full_like(y, float("inf")) if t > 0.5 else -y

    with pytest.raises(RuntimeError) as info:
        odecore.odeint(f, ONE.double(), T.double())
    _assert_runtime_message(str(info.value), "non-finite")

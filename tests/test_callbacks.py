"""Callbacks on func, with torchdiffeq 0.2.5's semantics.

``func.callback_step(t0, y0, dt)`` before every step attempt, ``callback_accept_step`` /
``callback_reject_step`` after it (adaptive methods), and the ``_adjoint`` variants during
odeint_adjoint's backward pass (given the augmented state as the tuple (a_t, y, a,
*a_theta)). The sequence of calls (kind, t0, dt, the state's shapes and values) is
recorded for odecore and torchdiffeq on the same problem and compared, and so are the
warnings for callbacks a solver does not call.
"""

import ast
import warnings

import pytest
import torch

import odecore

from .problems import van_der_pol

torchdiffeq = pytest.importorskip("torchdiffeq")

VAN_DER_POL = van_der_pol(1.0)
KINDS = {"callback_step": "step", "callback_accept_step": "accept", "callback_reject_step": "reject"}


class Recording(torch.nn.Module):
    """Van der Pol with a small linear layer; records every callback."""

    def __init__(self, tuple_state=False, names=tuple(KINDS) + tuple(k + "_adjoint" for k in KINDS)):
        super().__init__()
        self.tuple_state = tuple_state
        self.weight = torch.nn.Parameter(torch.tensor([[0.0, 1.0], [-1.0, -0.3]], dtype=torch.float64))
        self.log = []
        for name in names:
            kind = KINDS[name.replace("_adjoint", "")] + ("_adjoint" if name.endswith("_adjoint") else "")
            setattr(self, name, lambda t0, y0, dt, _kind=kind: self._record(_kind, t0, y0, dt))

    def forward(self, t, y):
        if self.tuple_state:
            a, b = y
            return b, -a - 0.3 * b * (1 - a**2) + 0.1 * torch.sin(t)
        return VAN_DER_POL(t, y) + 0.1 * (self.weight @ y)

    def _record(self, kind, t0, y0, dt):
        assert isinstance(t0, torch.Tensor) and t0.dim() == 0 and isinstance(dt, torch.Tensor) and dt.dim() == 0
        state = y0 if isinstance(y0, tuple) else (y0,)
        self.log.append(
            (
                kind,
                t0.item(),
                dt.item(),
                t0.dtype,
                dt.dtype,
                tuple(s.shape for s in state),
                torch.cat([s.detach().reshape(-1) for s in state]).clone(),
            )
        )


def run(
    lib,
    method="dopri5",
    tuple_state=False,
    reverse=False,
    adjoint=False,
    options=None,
    adjoint_method=None,
    adjoint_options=None,
    names=None,
    t_dtype=torch.float64,
):
    func = Recording(tuple_state, **({} if names is None else {"names": names}))
    if tuple_state:
        y0 = (torch.tensor([2.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
    else:
        y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.linspace(0, 3, 4, dtype=t_dtype)
    if reverse:
        t = t.flip(0)
    kwargs = dict(rtol=1e-5, atol=1e-7, method=method, options=options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if adjoint:
            y0 = tuple(y.requires_grad_() for y in y0) if tuple_state else y0.requires_grad_()
            out = lib.odeint_adjoint(
                func, y0, t, adjoint_method=adjoint_method, adjoint_options=adjoint_options, **kwargs
            )
            loss = sum(o.sum() for o in out) if tuple_state else out.sum()
            loss.backward()
        else:
            lib.odeint(func, y0, t, **kwargs)
    messages = [str(w.message) for w in caught if "does not support callbacks" in str(w.message)]
    return func.log, messages


def assert_same_calls(ours, theirs, rel=1e-9):
    assert len(ours) == len(theirs) > 0
    assert [c[0] for c in ours] == [c[0] for c in theirs]  # the kinds, in order
    for a, b in zip(ours, theirs):
        assert a[3:6] == b[3:6]  # time dtypes, state shapes
        # adaptive steps agree with torchdiffeq's up to rounding, amplified by the error
        # estimate (a difference of nearly equal numbers) into the next step size
        assert a[1] == pytest.approx(b[1], rel=rel, abs=1e-12)
        assert a[2] == pytest.approx(b[2], rel=rel, abs=1e-12)
        assert torch.allclose(a[6], b[6], rtol=rel, atol=1e-10)


CASES = {
    "dopri5": dict(method="dopri5"),
    "dopri5_tuple": dict(method="dopri5", tuple_state=True),
    "dopri5_reverse": dict(method="dopri5", reverse=True),
    "dopri5_float32_t": dict(method="dopri5", t_dtype=torch.float32),
    "bosh3_max_step": dict(method="bosh3", options=dict(max_step=0.3, first_step=0.5)),
    "dopri5_step_t_jump_t": dict(
        method="dopri5",
        options=dict(
            step_t=torch.tensor([0.7, 1.9], dtype=torch.float64), jump_t=torch.tensor([1.3], dtype=torch.float64)
        ),
    ),
    "rk4": dict(method="rk4", options=dict(step_size=0.25)),
    "rk4_reverse": dict(method="rk4", reverse=True, options=dict(step_size=0.25)),
    "rk4_tuple": dict(method="rk4", tuple_state=True, options=dict(step_size=0.3)),
    "euler_float32_t": dict(method="euler", t_dtype=torch.float32, options=dict(step_size=0.1)),
    "rk4_grid_t": dict(method="rk4"),
    "explicit_adams": dict(method="explicit_adams", options=dict(step_size=0.25)),
    "scipy_solver": dict(method="scipy_solver", options=dict(solver="RK45")),
}
ADJOINT_CASES = {
    "dopri5": dict(method="dopri5"),
    "dopri5_reverse": dict(method="dopri5", reverse=True),
    "dopri5_tuple": dict(method="dopri5", tuple_state=True),
    "rk4": dict(method="rk4", options=dict(step_size=0.5)),
    "dopri5_rk4_backward": dict(method="dopri5", adjoint_method="rk4", adjoint_options=dict(step_size=0.5)),
    "rk4_dopri5_backward": dict(method="rk4", options=dict(step_size=0.5), adjoint_method="dopri5", adjoint_options={}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_calls_match_torchdiffeq(case):
    kwargs = CASES[case]
    ours, our_warnings = run(odecore, **kwargs)
    theirs, their_warnings = run(torchdiffeq, **kwargs)
    if kwargs["method"] == "scipy_solver":  # no callback is called, every one warns
        assert ours == theirs == []
    else:
        assert_same_calls(ours, theirs)
    assert our_warnings == their_warnings


@pytest.mark.parametrize("case", sorted(ADJOINT_CASES))
def test_adjoint_calls_match_torchdiffeq(case):
    kwargs = ADJOINT_CASES[case]
    ours, our_warnings = run(odecore, adjoint=True, **kwargs)
    theirs, their_warnings = run(torchdiffeq, adjoint=True, **kwargs)
    # the backward system's arithmetic differs a little more (a VJP per evaluation)
    assert_same_calls(ours, theirs, rel=1e-7)
    assert any(c[0].endswith("_adjoint") for c in ours)
    assert our_warnings == their_warnings


def test_adaptive_sequence_semantics():
    """step before each attempt, then exactly one of accept/reject with the same t0; an
    accepted step moves t0 on by its dt; the rejections show in the stats."""
    func = Recording()
    _, st = odecore.odeint(
        func,
        torch.tensor([2.0, 0.0], dtype=torch.float64),
        torch.linspace(0, 3, 4, dtype=torch.float64),
        rtol=1e-5,
        atol=1e-7,
        options=dict(return_stats=True),
    )
    log = func.log
    assert len(log) == 2 * st["n_steps"]
    t = 0.0
    for step, outcome in zip(log[0::2], log[1::2]):
        assert step[0] == "step" and outcome[0] in ("accept", "reject")
        assert step[1] == outcome[1] == t
        if outcome[0] == "accept":
            t = t + outcome[2]
    assert sum(c[0] == "reject" for c in log) == st["n_rejected"] > 0
    last_accepted = [c for c in log if c[0] == "accept"][-1]
    assert last_accepted[1] < 3.0 <= t  # the last step reaches past t[-1] (outputs are interpolated)


def test_only_some_callbacks():
    func = Recording(names=("callback_accept_step",))
    odecore.odeint(func, torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert func.log and all(c[0] == "accept" for c in func.log)


def test_plain_function_with_callback_attribute():
    calls = []

    def f(t, y):
        return -y

    f.callback_step = lambda t0, y0, dt: calls.append((t0.item(), dt.item()))
    odecore.odeint(f, torch.ones(3), torch.tensor([0.0, 1.0]), method="euler", options=dict(step_size=0.25))
    assert calls == [(0.0, 0.25), (0.25, 0.25), (0.5, 0.25), (0.75, 0.25)]


@pytest.mark.parametrize(
    "method,warns",
    [("rk4", {"callback_accept_step", "callback_reject_step"}), ("scipy_solver", set(KINDS)), ("dopri5", None)],
)
def test_warning_text(method, warns):
    func = Recording(names=tuple(KINDS))
    options = dict(step_size=0.5) if method == "rk4" else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        odecore.odeint(
            func,
            torch.tensor([2.0, 0.0], dtype=torch.float64),
            torch.tensor([0.0, 1.0], dtype=torch.float64),
            method=method,
            options=options,
        )
    messages = [str(w.message) for w in caught if "callbacks" in str(w.message)]
    if warns is None:
        assert messages == []
    else:
        assert len(messages) == 1
        prefix = "Solver '{}' does not support callbacks ".format(method)
        assert messages[0].startswith(prefix) and ast.literal_eval(messages[0][len(prefix) :]) == warns


def test_callbacks_force_the_host_loop():
    """The device loop (sync_every=K) reads the host every K steps only; with callbacks the
    solve runs on the host loop, whose steps are the same."""
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    t = torch.linspace(0, 3, 4, dtype=torch.float64)
    plain = Recording(names=())
    out_device, st_device = odecore.odeint(plain, y0, t, options=dict(sync_every=4, return_stats=True))
    func = Recording()
    out_host, st_host = odecore.odeint(func, y0, t, options=dict(sync_every=4, return_stats=True))
    assert st_host["loop"] == "host" and len(func.log) == 2 * st_host["n_steps"]
    if st_device["loop"] == "device":  # the fused backend's rk_control op is available
        assert st_device["n_steps"] == st_host["n_steps"]
        assert torch.allclose(out_device, out_host, rtol=0, atol=1e-13)


def test_checkpoint_replay_does_not_call_back():
    """options['checkpoint']: callbacks fire for the forward solve's steps only, not when the
    backward pass replays them."""
    func = Recording(names=("callback_accept_step",))
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64, requires_grad=True)
    out, st = odecore.odeint(
        func, y0, torch.linspace(0, 2, 3, dtype=torch.float64), options=dict(checkpoint=3, return_stats=True)
    )
    n = len(func.log)
    assert n == st["n_accepted"]
    out.sum().backward()
    assert len(func.log) == n

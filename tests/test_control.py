"""odecore.ops.control: the one Python definition of the adaptive step control.

Its constants must be the C++ ones (rk_math.h, exported by odecore._C), and its rule must give
the fused rk_control's decisions whether it runs on floats (the reference backend, the host
loop) or on tensors (the compiled whole solve).
"""

import math

import pytest
import torch

from odecore.ops import control, get_ops, reference
from odecore.ops.control import NUM_SLOTS, ControlParams, Slot, Status

NODES = [0.2, 0.3, 0.8, 8 / 9, 1.0, 1.0]  # dopri5's


@pytest.mark.fused
def test_constants_are_the_kernels():
    from odecore import _C

    assert Slot.items() == _C.control_slots
    assert {status.name: float(status) for status in Status} == _C.status_codes
    assert NUM_SLOTS == _C.num_slots
    assert len(ControlParams._fields) == _C.num_control_params


def test_rule_on_floats():
    p = ControlParams(5.0, 0.9, 10.0, 0.2, 0.0, math.inf, 100.0, 1.0, 0.0)
    assert control.step_factor(0.0, p) == 10.0
    assert control.step_factor(1.0, p) == 0.9
    assert control.step_factor(1e9, p) == 0.2  # rejected: never below dfactor
    assert control.step_factor(1e-12, p) == 10.0  # never above ifactor
    assert control.step_factor(0.99, p) == max(0.9 / 0.99**0.2, 1.0)  # accepted: never shrinks
    assert control.accepts(1.0, 0.1, p) and not control.accepts(1.0 + 1e-16 * 4, 0.1, p)
    bounded = p._replace(min_step=0.05, max_step=0.5)
    assert control.accepts(1e9, 0.05, bounded)  # at min_step always
    assert not control.accepts(0.0, 0.6, bounded)  # above max_step never
    assert control.next_dt(0.1, 0.0, bounded) == 0.5
    f32 = p._replace(round_f32=1.0)
    assert control.step_end(0.0, 0.1, f32) == float(torch.tensor(0.1, dtype=torch.float32))
    assert control.divide(1.0, 0.0) == math.inf and control.divide(-1.0, -0.0) == math.inf
    assert math.isnan(control.divide(0.0, 0.0))


def _random_state(gen, samples, n_times):
    s = torch.zeros(samples, NUM_SLOTS, dtype=torch.float64)
    s[:, Slot.T] = torch.rand(samples, generator=gen, dtype=torch.float64) * 0.1
    s[:, Slot.DT] = torch.rand(samples, generator=gen, dtype=torch.float64) * 0.3 + 1e-3
    s[:, Slot.NEXT_OUT] = 1.0
    s[:, Slot.FIRST_OUT] = 1.0
    return s


def _ratios(gen, samples, step):
    r = torch.rand(samples, generator=gen, dtype=torch.float64) * 2.5
    specials = torch.tensor([0.0, 1.0, math.inf, math.nan, 1e-300, 1e300], dtype=torch.float64)
    pick = torch.randint(0, 12, (samples,), generator=gen)
    r = torch.where(pick < len(specials), specials[pick.clamp(max=len(specials) - 1)], r)
    return r if step % 7 else r.clamp(max=2.0)  # some sequences stay finite longer


def _tensor_update(state, ratio, times, params, stage_dtype):
    s = list(state.unbind(-1))
    accept, stage, dt = control.update(s, ratio, times, times.shape[-1], NODES, params, stage_dtype)
    stage = torch.stack([ti.to(stage_dtype) for ti in stage], -1)
    return torch.stack(s, -1), accept, stage, dt


@pytest.mark.parametrize("stage_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("per_sample_times", [False, True])
@pytest.mark.parametrize("round_f32", [0.0, 1.0])
def test_tensor_rule_is_rk_control(stage_dtype, per_sample_times, round_f32):
    """The traceable tensor form of the rule (the compiled solve's) against rk_control (fused when
    built, else the reference's float form) over sequences of attempts with random ratios."""
    ops = get_ops("fused")
    gen = torch.Generator().manual_seed(7)
    samples, n_times = 16, 6
    base = torch.sort(torch.rand(samples if per_sample_times else 1, n_times, generator=gen, dtype=torch.float64))
    times = base.values.cumsum(-1) * 0.5
    times = times if per_sample_times else times[0]
    params = ControlParams(5.0, 0.9, 10.0, 0.2, 1e-4, 0.25, 40.0, -1.0, round_f32)
    for sequence in range(4):
        state = _random_state(gen, samples, n_times)
        mine = state.clone()
        accept = torch.zeros(samples, dtype=torch.bool)
        stage_t = torch.empty(samples, len(NODES), dtype=stage_dtype)
        dt = torch.empty(samples, dtype=torch.float64)
        first = list(params._replace(prepare_only=1.0))
        ops.rk_control(state, accept, stage_t, dt, dt, times, NODES, first)
        mine, my_accept, my_stage, my_dt = _tensor_update(
            mine, dt, times, params._replace(prepare_only=1.0), stage_dtype
        )
        for step in range(30):
            ratio = _ratios(gen, samples, step + sequence)
            ops.rk_control(state, accept, stage_t, dt, ratio, times, NODES, list(params))
            mine, my_accept, my_stage, my_dt = _tensor_update(mine, ratio, times, params, stage_dtype)
            assert torch.equal(my_accept, accept), (sequence, step)
            exact = [Slot.STATUS, Slot.N_STEPS, Slot.N_ACCEPTED, Slot.STEPS_HERE, Slot.NEXT_OUT, Slot.FIRST_OUT]
            torch.testing.assert_close(mine[:, exact], state[:, exact], rtol=0, atol=0, equal_nan=True)
            # pow on a tensor may differ from libm's by an ulp: the step sizes agree to rounding
            torch.testing.assert_close(mine, state, rtol=4e-16, atol=0, equal_nan=True)
            torch.testing.assert_close(my_stage, stage_t, rtol=4e-16 if stage_dtype == torch.float64 else 2e-7, atol=0)
            torch.testing.assert_close(my_dt, dt, rtol=4e-16, atol=0)
            mine = torch.where(torch.isclose(mine, state, rtol=4e-16, atol=0, equal_nan=True), state, mine)


def test_reference_rk_control_is_the_float_rule():
    """reference.rk_control runs control.update on each sample's floats: bitwise the tensor form
    where no pow is taken (ratio 0, NaN, rejected at min_step)."""
    state = torch.zeros(1, NUM_SLOTS, dtype=torch.float64)
    state[0, Slot.DT] = 0.1
    state[0, Slot.NEXT_OUT] = state[0, Slot.FIRST_OUT] = 1
    times = torch.tensor([0.0, 0.05, 0.3], dtype=torch.float64)
    accept, stage_t = torch.zeros(1, dtype=torch.bool), torch.empty(1, 2, dtype=torch.float64)
    dt = torch.empty(1, dtype=torch.float64)
    params = ControlParams(5.0, 0.9, 10.0, 0.2, 0.0, math.inf, 100.0, 1.0, 0.0)
    reference.rk_control(state, accept, stage_t, dt, dt, times, [0.5, 1.0], list(params._replace(prepare_only=1.0)))
    assert stage_t[0].tolist() == [0.05, math.nextafter(0.1, -math.inf)] and dt.item() == 0.1
    reference.rk_control(
        state, accept, stage_t, dt, torch.zeros(1, dtype=torch.float64), times, [0.5, 1.0], list(params)
    )
    assert bool(accept) and state[0, Slot.T] == 0.1 and state[0, Slot.NEXT_OUT] == 2 and state[0, Slot.DT] == 1.0
    reference.rk_control(
        state, accept, stage_t, dt, torch.full((1,), math.nan, dtype=torch.float64), times, [0.5, 1.0], list(params)
    )
    assert state[0, Slot.STATUS] == Status.NON_FINITE and state[0, Slot.ERR_T] == 0.1
    assert stage_t[0].tolist() == [0.1, 0.1]  # stopped: queued attempts evaluate at the current time

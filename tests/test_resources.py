"""Resources (issue #9): repeated solves do not grow memory, a KeyboardInterrupt raised
inside func leaves no broken state, and solves from several threads give the serial answers.

Memory on the CPU is watched two ways: tracemalloc (Python objects) and the number of live
tensors found by the garbage collector (tensor storage itself is not seen by tracemalloc).
On CUDA, torch.cuda.memory_allocated.
"""

import gc
import threading
import tracemalloc
import warnings

import pytest
import torch
from torch import nn

import odecore
from odecore.brownian import BrownianInterval
from odecore.solvers.per_sample import SampleFailure

F64 = torch.float64
ITERATIONS = 50


class Field(nn.Module):
    def __init__(self, dim=4, dtype=F64):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(0.3 * torch.randn(dim, dim, generator=g, dtype=dtype))

    def forward(self, t, y):
        return torch.tanh(y @ self.w) - 0.1 * y


class SDE(nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(-0.5, dtype=F64))

    def f(self, t, y):
        return self.a * y

    def g(self, t, y):
        return 0.1 * torch.sigmoid(y)


def y0_batch(requires_grad=False):
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 4, generator=g, dtype=F64).requires_grad_(requires_grad)


T = torch.linspace(0, 1, 4, dtype=F64)


def solve_host():
    return odecore.odeint(Field(), y0_batch(), T, options={"sync_every": 0})


def solve_device_loop():
    return odecore.odeint(Field(), y0_batch(), T, options={"sync_every": 4})


def solve_per_sample():
    with torch.no_grad():
        return odecore.odeint(Field(), y0_batch(), T, options={"batch_dim": 0})


def solve_fixed_grid():
    return odecore.odeint(Field(), y0_batch(), T, method="rk4", options={"step_size": 0.1})


def solve_direct_backward():
    y0 = y0_batch(requires_grad=True)
    odecore.odeint(Field(), y0, T).sum().backward()
    return y0.grad


def solve_adjoint_backward():
    y0 = y0_batch(requires_grad=True)
    odecore.odeint_adjoint(Field(), y0, T).sum().backward()
    return y0.grad


def solve_checkpointed_backward():
    y0 = y0_batch(requires_grad=True)
    odecore.odeint(Field(), y0, T, options={"checkpoint": 3}).sum().backward()
    return y0.grad


def solve_sde():
    bm = BrownianInterval(0.0, 1.0, size=(3, 4), dtype=F64, entropy=7)
    return odecore.sdeint(SDE(), y0_batch(), T, bm=bm, dt=0.05)


def solve_sde_adjoint():
    y0 = y0_batch(requires_grad=True)
    bm = BrownianInterval(0.0, 1.0, size=(3, 4), dtype=F64, entropy=7)
    odecore.sdeint_adjoint(SDE(), y0, T, bm=bm, dt=0.05).sum().backward()
    return y0.grad


def failing_solve():
    """A solve that raises (NaN after a few steps): its traceback must not keep tensors alive."""
    calls = [0]

    def func(t, y):
        calls[0] += 1
        return -y if calls[0] < 20 else y * float("nan")

    try:
        odecore.odeint(func, y0_batch(), T)
    except RuntimeError:
        return None
    raise AssertionError("expected the solve to fail")


def failing_per_sample():
    def func(t, y):  # sample 1 is stiff: stopped by max_num_steps, the others finish
        return torch.where(torch.arange(3).view(3, 1) == 1, -1e9 * (y - torch.cos(t)), -y)

    try:
        with torch.no_grad():
            odecore.odeint(func, y0_batch(), T, options={"batch_dim": 0, "max_num_steps": 20})
    except SampleFailure:
        return None
    raise AssertionError("expected a SampleFailure")


SOLVES = {
    f.__name__: f
    for f in (
        solve_host,
        solve_device_loop,
        solve_per_sample,
        solve_fixed_grid,
        solve_direct_backward,
        solve_adjoint_backward,
        solve_checkpointed_backward,
        solve_sde,
        solve_sde_adjoint,
        failing_solve,
        failing_per_sample,
    )
}


def live_tensors():
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


# -- memory ------------------------------------------------------------------------------ #
@pytest.mark.slow
@pytest.mark.fused
@pytest.mark.parametrize("name", sorted(SOLVES))
def test_repeated_solves_do_not_grow_memory(name):
    """No tensor outlives its solve, and Python memory settles: after 20 traced warm-up
    solves (tracemalloc sees allocator pools and torch's Python-side caches fill up, which
    levels off), 50 more may add at most 1 KB per solve. A leaked tensor of any size, or a
    Python leak above ~1 KB per solve, fails."""
    solve = SOLVES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):  # lazily built tables, caches
            solve()
        tensors_before = live_tensors()
        tracemalloc.start()
        try:
            for _ in range(20):
                solve()
            gc.collect()
            start, _ = tracemalloc.get_traced_memory()
            for _ in range(ITERATIONS):
                solve()
            gc.collect()
            end, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        tensors_after = live_tensors()
    assert tensors_after <= tensors_before, "%s: %d live tensors before, %d after %d solves" % (
        name,
        tensors_before,
        tensors_after,
        ITERATIONS + 20,
    )
    assert end - start < 1024 * ITERATIONS, "%s: Python memory grew by %d bytes over %d solves" % (
        name,
        end - start,
        ITERATIONS,
    )


@pytest.mark.cuda
@pytest.mark.parametrize("loop", [{"sync_every": 0}, {"sync_every": 16}, {"batch_dim": 0}, "adjoint"])
def test_repeated_cuda_solves_do_not_grow_memory(loop):
    func = Field().cuda()
    y0 = y0_batch().cuda()
    t = T.cuda()

    def solve():
        if loop == "adjoint":
            y = y0.clone().requires_grad_()
            odecore.odeint_adjoint(func, y, t).sum().backward()
            func.zero_grad(set_to_none=True)
            return
        with torch.no_grad():
            odecore.odeint(func, y0, t, options=loop)

    for _ in range(3):
        solve()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(ITERATIONS):
        solve()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before, "CUDA memory grew from %d to %d bytes" % (
        before,
        torch.cuda.memory_allocated(),
    )


# -- KeyboardInterrupt ------------------------------------------------------------------- #
class Interrupting(nn.Module):
    """Field() that raises KeyboardInterrupt at its `at`-th call (forward or backward)."""

    def __init__(self, at):
        super().__init__()
        self.field = Field()
        self.at, self.calls = at, 0

    def forward(self, t, y):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.field(t, y)


def global_state():
    return dict(
        backend=odecore.get_backend(),
        grad=torch.is_grad_enabled(),
        threads=torch.get_num_threads(),
        default_dtype=torch.get_default_dtype(),
        anomaly=torch.is_anomaly_enabled(),
        inference=torch.is_inference_mode_enabled(),
        backend_info=odecore.backend_info()["backend"],
    )


def _no_grad(fn, *args, **kwargs):
    with torch.no_grad():
        return fn(*args, **kwargs)


INTERRUPTED = {
    "host": lambda f, y0: odecore.odeint(f, y0, T, options={"sync_every": 0}),
    "device_loop": lambda f, y0: odecore.odeint(f, y0, T, options={"sync_every": 4}),
    "per_sample": lambda f, y0: _no_grad(odecore.odeint, f, y0, T, options={"batch_dim": 0}),
    "fixed_grid": lambda f, y0: odecore.odeint(f, y0, T, method="rk4", options={"step_size": 0.1}),
    "implicit": lambda f, y0: odecore.odeint(f, y0, T, method="gl4", options={"step_size": 0.25}),
    "checkpoint_backward": lambda f, y0: (
        odecore.odeint(f, y0.requires_grad_(), T, options={"checkpoint": 2}).sum().backward()
    ),
    "adjoint_backward": lambda f, y0: odecore.odeint_adjoint(f, y0.requires_grad_(), T).sum().backward(),
}


@pytest.mark.fused
@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("name", sorted(INTERRUPTED))
def test_keyboard_interrupt_leaves_no_broken_state(name, backend):
    previous = odecore.get_backend()
    odecore.set_backend(backend)
    try:
        run = INTERRUPTED[name]
        reference = Interrupting(at=-1)
        run(reference, y0_batch())
        expected = odecore.odeint(reference.field, y0_batch(), T, options={"sync_every": 0})
        before = global_state()
        # interrupted at the 7th call: inside the first steps (or the backward pass's, whose
        # forward takes more than 7 calls: the interrupt lands in the backward solve)
        at = 7 if "backward" not in name else 40
        with pytest.raises(KeyboardInterrupt):
            run(Interrupting(at=at), y0_batch())
        assert global_state() == before
        # the same solves again give the same answers
        again = odecore.odeint(reference.field, y0_batch(), T, options={"sync_every": 0})
        assert torch.equal(again, expected)
        fresh = Interrupting(at=-1)
        fresh.field.load_state_dict(reference.field.state_dict())
        run(fresh, y0_batch())
    finally:
        odecore.set_backend(previous)


def test_keyboard_interrupt_in_sdeint_leaves_no_broken_state():
    class Interrupt(SDE):
        calls = 0

        def f(self, t, y):
            Interrupt.calls += 1
            if Interrupt.calls == 5:
                raise KeyboardInterrupt
            return super().f(t, y)

    expected = solve_sde()
    before = global_state()
    for adaptive in (False, True):
        Interrupt.calls = 0
        bm = BrownianInterval(0.0, 1.0, size=(3, 4), dtype=F64, entropy=7)
        with pytest.raises(KeyboardInterrupt):
            odecore.sdeint(Interrupt(), y0_batch(), T, bm=bm, dt=0.05, adaptive=adaptive)
    assert global_state() == before
    assert torch.equal(solve_sde(), expected)


# -- threads ----------------------------------------------------------------------------- #
THREADED = {
    "odeint": lambda backend, i: odecore.odeint(Field(), y0_batch() * (1 + i), T, options={"backend": backend}),
    "device_loop": lambda backend, i: odecore.odeint(
        Field(), y0_batch() * (1 + i), T, options={"backend": backend, "sync_every": 4}
    ),
    "rk4": lambda backend, i: odecore.odeint(
        Field(), y0_batch() * (1 + i), T, method="rk4", options={"backend": backend, "step_size": 0.1}
    ),
    "adjoint": lambda backend, i: _adjoint_grad(backend, i),
    "sdeint": lambda backend, i: odecore.sdeint(
        SDE(),
        y0_batch() * (1 + i),
        T,
        dt=0.05,
        options={"backend": backend},
        bm=BrownianInterval(0.0, 1.0, size=(3, 4), dtype=F64, entropy=i),
    ),
}


def _adjoint_grad(backend, i):
    y0 = (y0_batch() * (1 + i)).requires_grad_()
    odecore.odeint_adjoint(Field(), y0, T, options={"backend": backend}).sum().backward()
    return y0.grad


def _per_sample(i):
    with torch.no_grad():
        return odecore.odeint(Field(), y0_batch() * (1 + i), T, options={"batch_dim": 0})


@pytest.mark.fused
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_threads_give_the_serial_answers(backend):
    """4 threads x 3 solves of each kind at once, against the same solves one after another."""
    jobs = [(name, i) for i in range(3) for name in sorted(THREADED)] + [("per_sample", i) for i in range(3)]

    def run(name, i):
        return _per_sample(i) if name == "per_sample" else THREADED[name](backend, i)

    serial = {job: run(*job) for job in jobs}
    results, errors = {}, []
    barrier = threading.Barrier(4)

    def worker(mine):
        try:
            barrier.wait()
            for job in mine:
                results[job] = run(*job)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(jobs[k::4],)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a solving thread hung"
    assert not errors, errors
    assert set(results) == set(jobs)
    for job in jobs:
        assert torch.equal(results[job], serial[job]), "%s differs when solved in a thread" % (job,)


@pytest.mark.fused
def test_set_backend_in_one_thread_while_others_solve():
    """set_backend is global: a solve that names its backend is not affected by another
    thread switching the global one, and every answer is still the serial one."""
    expected = {b: odecore.odeint(Field(), y0_batch(), T, options={"backend": b}) for b in ("fused", "reference")}
    previous = odecore.get_backend()
    stop = threading.Event()
    errors = []

    def switcher():
        while not stop.wait(0.001):
            odecore.set_backend("reference")
            odecore.set_backend("fused")

    def solver(backend):
        try:
            for _ in range(5):
                out = odecore.odeint(Field(), y0_batch(), T, options={"backend": backend})
                assert torch.equal(out, expected[backend])
        except BaseException as error:
            errors.append(error)

    flipper = threading.Thread(target=switcher)
    flipper.start()
    workers = [threading.Thread(target=solver, args=(b,)) for b in ("fused", "reference", "fused")]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
    finally:
        stop.set()
        flipper.join()
        odecore.set_backend(previous)
    assert not errors, errors

"""One adapter class per solver library (odecore's backends and its compiled whole solve,
torchdiffeq, torchode, diffrax), for the solve suite and the adjoint suite, and the registries the
runners iterate over.

A new library is one small :class:`Implementation` subclass -- ``prepare`` (the solve to time)
and ``step_statistics`` (its step counts) -- plus its entry in ``IMPLEMENTATIONS``. The peer
libraries are imported only inside their adapters: they are optional.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import odecore

from .counting import CountingFunc, CountingWindow, OpCounter, per
from .jax_fields import has_jax_twin, jax_array, jax_twin
from .problems import AdjointInstance, Instance

# the warning torchdiffeq (and odecore, as a drop-in) gives for callbacks a solver does not call
# (fixed-grid solvers call only callback_step); the counting wrappers define them all
CALLBACK_WARNING = ".*does not support callbacks.*"


def module_available(name: str) -> bool:
    """Whether ``import name`` succeeds."""
    try:
        importlib.import_module(name)
        return True
    except Exception:
        return False


class Adapter:
    """A library as the tables name it, and the module whose import means it is installed."""

    name = "?"
    module = "?"

    def available(self) -> bool:
        return module_available(self.module)


class Implementation(Adapter):
    """One solver implementation of the solve suite.  ``prepare`` returns a zero-argument
    callable that runs one full solve and returns the solution as a (T, *y0.shape) tensor;
    ``count`` runs one solve through a counting wrapper and reports nfe and steps."""

    # the solve, func included, runs as one compiled program (see WholeProgramImplementation)
    whole_program = False
    # why its steps may differ from torchdiffeq's (the table's note when they do)
    step_control = ""

    def applicable(self, inst: Instance) -> bool:
        return True

    def why_not(self, inst: Instance) -> str:
        """Why ``applicable`` is false (for the table's note)."""
        return f"{self.name} does not support this problem"

    def prepare(self, inst: Instance, func, y0: torch.Tensor) -> Callable[[], torch.Tensor]:
        raise NotImplementedError

    def prepare_counted(self, inst: Instance, func: CountingFunc, y0: torch.Tensor) -> Callable[[], tuple]:
        """The counting solve: a callable returning (solution, the library's own record of the
        solve for :meth:`step_statistics`). Everything it sets up here stays out of the counts."""
        solve = self.prepare(inst, func, y0)
        return lambda: (solve(), None)

    def step_statistics(self, record: Any, cf: CountingFunc) -> dict[str, Any]:
        """``steps``, ``n_accepted``, ``n_rejected`` (and any library extras) of the counting solve."""
        raise NotImplementedError

    def count(
        self, inst: Instance, y0, cf: CountingFunc | None = None, counter: OpCounter | CountingWindow | None = None
    ) -> dict[str, Any]:
        """One solve with a counting wrapper ``cf`` (default: a plain one), the solve itself
        (only) inside ``counter`` when given; returns nfe/step statistics and the solution."""
        cf = cf if cf is not None else CountingFunc(inst.func)
        solve = self.prepare_counted(inst, cf, y0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=CALLBACK_WARNING)
            with counter if counter is not None else contextlib.nullcontext():
                solution, record = solve()
        return dict(nfe=cf.nfe, **self.step_statistics(record, cf), solution=solution)


class WholeProgramImplementation(Implementation):
    """A solve that runs, func included, as one compiled program: its first call compiles (the
    runner times it on its own, as the first warm-up call), no op or host read is visible to
    Python's dispatcher, and its time has no loop / func split. Its counting solve is the timed
    solve itself on the problem's own func (so the compiled program is the one timed), with nfe
    and steps from the library's statistics; ``prepare_counted`` returns (solution, statistics)."""

    whole_program = True

    def count(
        self, inst: Instance, y0, cf: CountingFunc | None = None, counter: OpCounter | CountingWindow | None = None
    ) -> dict[str, Any]:
        """One solve of ``inst.func`` (``cf`` and ``counter`` are not used: nothing can be counted
        inside the program); nfe/step statistics and the solution."""
        solution, record = self.prepare_counted(inst, inst.func, y0)()
        return dict(**self.step_statistics(record, cf), solution=solution)


def odecore_kwargs(inst: Instance, stats: bool, **options: Any) -> dict[str, Any]:
    """``odecore.odeint``'s keyword arguments for ``inst``: its options, odecore's own options,
    ``options`` and, with ``stats``, ``return_stats``."""
    kw = inst.odeint_kwargs()
    kw["options"].update(inst.odecore_options)
    kw["options"].update(options)
    if stats:
        kw["options"]["return_stats"] = True
    return kw


def plain_statistics(stats: dict[str, Any]) -> dict[str, Any]:
    """odecore's solve statistics with one-element tensors as Python numbers."""
    return {k: (v.item() if torch.is_tensor(v) and v.numel() == 1 else v) for k, v in stats.items()}


class OdecoreImpl(Implementation):
    module = "odecore"

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"odecore-{backend}"

    def available(self) -> bool:
        return hasattr(odecore, "odeint")

    def _kwargs(self, inst: Instance, stats: bool = False) -> dict[str, Any]:
        return odecore_kwargs(inst, stats, backend=self.backend)

    def prepare(self, inst, func, y0):
        kw = self._kwargs(inst)
        t = inst.t
        return lambda: odecore.odeint(func, y0, t, **kw)

    def prepare_counted(self, inst, func, y0):
        kw = self._kwargs(inst, stats=True)
        t = inst.t
        # a plain function in front of the wrapper: odecore reports its steps in stats, so it needs
        # none of the wrapper's step callbacks (they would add their tensors to the op counts)
        return lambda: odecore.odeint(lambda tt, y: func(tt, y), y0, t, **kw)

    def step_statistics(self, record, cf):
        stats = plain_statistics(record)
        return dict(
            steps=stats.get("n_steps"),
            n_accepted=stats.get("n_accepted"),
            n_rejected=stats.get("n_rejected"),
            stats_nfe=stats.get("nfe"),
            final_dt=stats.get("final_dt"),
            callback_steps=cf.n_step_callbacks,
            callback_accepts=cf.n_accept_callbacks,
            callback_rejects=cf.n_reject_callbacks,
        )


class TorchdiffeqImpl(Implementation):
    name = "torchdiffeq"
    module = "torchdiffeq"

    def prepare(self, inst, func, y0):
        import torchdiffeq

        kw = inst.odeint_kwargs()
        t = inst.t
        return lambda: torchdiffeq.odeint(func, y0, t, **kw)

    def applicable(self, inst):
        try:
            from torchdiffeq._impl.odeint import SOLVERS
        except Exception:
            return True
        return inst.method in SOLVERS

    def why_not(self, inst):
        return f"torchdiffeq has no {inst.method}"

    def step_statistics(self, record, cf):
        # counted by the wrapper's callbacks; fixed-grid solvers call only callback_step
        steps = cf.n_step_callbacks
        adaptive = cf.n_accept_callbacks + cf.n_reject_callbacks > 0
        return dict(
            steps=steps,
            n_accepted=cf.n_accept_callbacks if adaptive else steps,
            n_rejected=cf.n_reject_callbacks if adaptive else 0,
        )


class TorchodeImpl(Implementation):
    """torchode (eager, AutoDiffAdjoint + IntegralController), dopri5 or tsit5.

    Note: torchode controls the step size *per batch element* (per-sample RMS
    error norm), so its nfe/steps are not the same quantities as torchdiffeq's
    global-norm solve; ``steps`` here is the number of loop iterations
    (max over the batch of per-sample steps), and the table notes when they differ
    from torchdiffeq's.  Only 2-D states (batch, features) and adaptive dopri5/tsit5
    are wired up (torchode 1.0 has no rk4, and gives ``func`` one time per sample).
    """

    name = "torchode"
    module = "torchode"
    step_control = "per-sample step control"
    _METHODS = {"dopri5": "Dopri5", "tsit5": "Tsit5"}

    def applicable(self, inst):
        return inst.method in self._METHODS and inst.y0.ndim == 2

    def why_not(self, inst):
        if inst.method not in self._METHODS:
            return f"torchode has no {inst.method}"
        return "torchode here takes (batch, features) states only"

    def _solve_function(self, inst, func, y0):
        """A callable returning torchode's solution object of one solve."""
        import torchode as to

        term = to.ODETerm(func)
        step = getattr(to, self._METHODS[inst.method])(term=term)
        ctrl = to.IntegralController(atol=inst.atol, rtol=inst.rtol, term=term)
        solver = to.AutoDiffAdjoint(step, ctrl)
        t_eval = inst.t.expand(y0.shape[0], -1)
        return lambda: solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval))

    def prepare(self, inst, func, y0):
        solve = self._solve_function(inst, func, y0)
        return lambda: solve().ys.transpose(0, 1)

    def prepare_counted(self, inst, func, y0):
        solve = self._solve_function(inst, func, y0)

        def run():
            sol = solve()
            return sol.ys.transpose(0, 1), sol

        return run

    def step_statistics(self, record, cf):
        n_steps = record.stats["n_steps"]
        n_acc = record.stats["n_accepted"]
        return dict(
            steps=int(n_steps.max()),
            n_accepted=None,
            n_rejected=None,
            per_sample_steps_mean=float(n_steps.double().mean()),
            per_sample_accepted_mean=float(n_acc.double().mean()),
            status_ok=bool((record.status == 0).all()),
        )


class OdecoreCompiledImpl(WholeProgramImplementation):
    """odecore's compiled whole solve, ``options={'compile': 'strict'}``: a solve that cannot be
    compiled is an error row, not a silent fallback to the uncompiled loop. The program is cached
    per func object, so the first call on a problem compiles and the later ones reuse it."""

    name = "odecore-compiled"
    module = "odecore"

    def available(self) -> bool:
        return hasattr(odecore, "odeint")

    def prepare(self, inst, func, y0):
        kw = odecore_kwargs(inst, False, compile="strict")
        t = inst.t
        return lambda: odecore.odeint(func, y0, t, **kw)

    def prepare_counted(self, inst, func, y0):
        kw = odecore_kwargs(inst, True, compile="strict")
        t = inst.t
        return lambda: odecore.odeint(func, y0, t, **kw)

    def step_statistics(self, record, cf):
        stats = plain_statistics(record)
        steps = stats.get("n_steps")
        return dict(
            nfe=stats.get("nfe"),
            steps=steps,
            n_accepted=stats.get("n_accepted"),
            n_rejected=stats.get("n_rejected"),
            final_dt=stats.get("final_dt"),
            loop=stats.get("loop"),
            compiles=stats.get("compiles"),
            host_reads=stats.get("host_reads"),
            host_reads_per_step=per(stats.get("host_reads"), steps),
        )


class DiffraxImpl(WholeProgramImplementation):
    """diffrax: JAX on the CPU, one ``jax.jit`` of ``diffeqsolve(ODETerm(f), Dopri5(), t0, t1,
    dt0=None, y0, stepsize_controller=PIDController(rtol, atol), saveat=SaveAt(ts=t))`` on the
    problem's jax.numpy twin (:mod:`.jax_fields`: same field, the torch weights converted), the
    same initial state, times and tolerances. float64 runs need JAX's x64 mode (switched on at
    first use); float32 runs cast every array to float32, so they stay float32 with it on.

    Its PIDController (defaults: integral control, its own first step) is not torchdiffeq's step
    control, so it may take other steps (the table notes when it does). diffrax does not report
    nfe; ``steps`` is its ``num_steps`` (accepted + rejected). The weights are inputs of the jitted
    solve, not constants folded into it, as func's parameters are inputs of odecore's program."""

    name = "diffrax"
    module = "diffrax"
    step_control = "diffrax's PIDController, not torchdiffeq's step control"
    MAX_STEPS = 100_000
    _METHODS = {"dopri5": "Dopri5", "tsit5": "Tsit5"}

    def __init__(self):
        # func -> {(method, rtol, atol, dtype): (jitted solve, params)}: one jit per problem, so
        # that the counting solve reuses the program the first (timed) call compiled
        self._programs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def applicable(self, inst):
        return inst.method in self._METHODS and inst.y0.device.type == "cpu" and has_jax_twin(inst.func)

    def why_not(self, inst):
        if inst.method not in self._METHODS:
            return f"diffrax adapter: no {inst.method}"
        if inst.y0.device.type != "cpu":
            return "diffrax runs on the CPU here"
        return f"no jax.numpy twin of {type(inst.func).__name__}"

    def _program(self, inst: Instance, func) -> tuple:
        """The jitted solve of ``inst`` (``solve(y0, ts, params)``) and ``func``'s JAX parameters."""
        import jax

        jax.config.update("jax_enable_x64", True)
        key = (inst.method, inst.rtol, inst.atol, inst.y0.dtype)
        programs = self._programs.setdefault(func, {})
        if key not in programs:
            field, params = jax_twin(func, inst.y0.dtype)
            programs[key] = (self._jitted_solve(inst, field), params)
        return programs[key]

    def _jitted_solve(self, inst: Instance, field: Callable) -> Callable:
        """``jax.jit`` of ``solve(y0, ts, params)``: diffeqsolve of ``field`` with ``inst``'s method and tolerances."""
        import diffrax
        import jax

        solver = getattr(diffrax, self._METHODS[inst.method])()
        controller = diffrax.PIDController(rtol=inst.rtol, atol=inst.atol)

        def solve(y0, ts, params):
            return diffrax.diffeqsolve(
                diffrax.ODETerm(field),
                solver,
                ts[0],
                ts[-1],
                None,
                y0,
                args=params,
                stepsize_controller=controller,
                saveat=diffrax.SaveAt(ts=ts),
                max_steps=self.MAX_STEPS,
            )

        return jax.jit(solve)

    def _inputs(self, inst: Instance, func, y0: torch.Tensor) -> tuple:
        """(jitted solve, its arguments) with the state and times as JAX arrays."""
        solve, params = self._program(inst, func)
        return solve, (jax_array(y0, y0.dtype), jax_array(inst.t, y0.dtype), params)

    def prepare(self, inst, func, y0):
        solve, args = self._inputs(inst, func, y0)
        return lambda: solve(*args).ys.block_until_ready()

    def prepare_counted(self, inst, func, y0):
        solve, args = self._inputs(inst, func, y0)

        def run():
            sol = solve(*args)
            return torch.from_numpy(np.array(sol.ys)).to(y0.dtype), sol.stats

        return run

    def step_statistics(self, record, cf):
        stats = {k: int(v) for k, v in record.items()}
        return dict(
            nfe=None,
            steps=stats.get("num_steps"),
            n_accepted=stats.get("num_accepted_steps"),
            n_rejected=stats.get("num_rejected_steps"),
        )


IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl
    for impl in [
        OdecoreImpl("fused"),
        OdecoreImpl("reference"),
        OdecoreCompiledImpl(),
        TorchdiffeqImpl(),
        TorchodeImpl(),
        DiffraxImpl(),
    ]
}

BASELINE = "torchdiffeq"


def get_implementation(name: str) -> Implementation:
    try:
        return IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown implementation {name!r}; choose from {sorted(IMPLEMENTATIONS)}") from None


def available_implementations() -> list[str]:
    return [name for name, impl in IMPLEMENTATIONS.items() if impl.available()]


def whole_program_implementations() -> list[str]:
    """The implementations whose solve is one compiled program (first call = compile)."""
    return [name for name, impl in IMPLEMENTATIONS.items() if impl.whole_program]


def default_implementations() -> list[str]:
    """What a run without a list of implementations benchmarks: all but the whole-program ones,
    whose first call compiles for seconds on every problem and size (they run when named)."""
    return [name for name, impl in IMPLEMENTATIONS.items() if not impl.whole_program]


class AdjointImplementation(Adapter):
    """``solve(inst, func, y0, stats)`` runs one ``odeint_adjoint`` forward pass and returns
    (solution, stats dict or None)."""

    def solve(self, inst: AdjointInstance, func, y0, stats: bool = False) -> tuple:
        raise NotImplementedError


class OdecoreAdjointImpl(AdjointImplementation):
    module = "odecore"

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"odecore-{backend}"

    def available(self) -> bool:
        return hasattr(odecore, "odeint_adjoint")

    def solve(self, inst, func, y0, stats=False):
        kw = inst.odeint_kwargs()
        kw["options"]["backend"] = self.backend
        if stats:
            kw["options"]["return_stats"] = True
            return odecore.odeint_adjoint(func, y0, inst.t, **kw)
        return odecore.odeint_adjoint(func, y0, inst.t, **kw), None


class TorchdiffeqAdjointImpl(AdjointImplementation):
    name = "torchdiffeq"
    module = "torchdiffeq"

    def solve(self, inst, func, y0, stats=False):
        import torchdiffeq

        return torchdiffeq.odeint_adjoint(func, y0, inst.t, **inst.odeint_kwargs()), None


ADJOINT_IMPLEMENTATIONS: dict[str, AdjointImplementation] = {
    impl.name: impl for impl in [OdecoreAdjointImpl("fused"), OdecoreAdjointImpl("reference"), TorchdiffeqAdjointImpl()]
}

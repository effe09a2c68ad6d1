"""One adapter class per solver library (odecore's backends, torchdiffeq, torchode), for the
solve suite and the adjoint suite, and the registries the runners iterate over.

A new library is one small :class:`Implementation` subclass -- ``prepare`` (the solve to time)
and ``step_statistics`` (its step counts) -- plus its entry in ``IMPLEMENTATIONS``. The peer
libraries are imported only inside their adapters: they are optional.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Callable
from typing import Any

import torch

import odecore

from .counting import CountingFunc, CountingWindow, OpCounter
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


class OdecoreImpl(Implementation):
    module = "odecore"

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"odecore-{backend}"

    def available(self) -> bool:
        return hasattr(odecore, "odeint")

    def _kwargs(self, inst: Instance, stats: bool = False) -> dict[str, Any]:
        kw = inst.odeint_kwargs()
        kw["options"].update(inst.odecore_options)
        kw["options"]["backend"] = self.backend
        if stats:
            kw["options"]["return_stats"] = True
        return kw

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
        stats = {k: (v.item() if torch.is_tensor(v) and v.numel() == 1 else v) for k, v in record.items()}
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


IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl for impl in [OdecoreImpl("fused"), OdecoreImpl("reference"), TorchdiffeqImpl(), TorchodeImpl()]
}

BASELINE = "torchdiffeq"


def get_implementation(name: str) -> Implementation:
    try:
        return IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown implementation {name!r}; choose from {sorted(IMPLEMENTATIONS)}") from None


def available_implementations() -> list[str]:
    return [name for name, impl in IMPLEMENTATIONS.items() if impl.available()]


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

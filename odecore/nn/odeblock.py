"""ODEBlock: a continuous-depth layer h(1) = h(0) + int_0^1 f(h(t), t, theta) dt.

Chen, Rubanova, Bettencourt & Duvenaud, "Neural Ordinary Differential Equations",
NeurIPS 2018: section 2 (the adjoint method), section 3 and Table 1 (ODE-Net, trained with
the adjoint, against RK-Net, trained by backpropagating through the Runge-Kutta solver).
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..adjoint import odeint_adjoint
from ..api import odeint

__all__ = ["ODEBlock", "GRADIENT_MODES"]

GRADIENT_MODES = ("adjoint", "direct", "checkpoint")


class _CountingFunc:
    """Calls the block's odefunc, counting the call as forward (made while the block's
    forward runs) or backward (made at any other time: the adjoint's backward solve or the
    checkpointed replay, both of which run inside ``loss.backward()``)."""

    def __init__(self, block: "ODEBlock") -> None:
        self.block = block
        self.func = block.odefunc

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.block._in_forward:
            self.block.forward_nfe += 1
        else:
            self.block.backward_nfe += 1
        return self.func(t, y)


class ODEBlock(nn.Module):
    """Integrates ``dh/dt = odefunc(t, h)`` from ``t[0]`` to ``t[-1]`` (default [0, 1]) and
    returns the final state ``h(t[-1])``, of the input's shape: the ODE-Net layer of Chen et
    al., "Neural Ordinary Differential Equations", NeurIPS 2018 (section 3).

    Args:
        odefunc: the dynamics, a module called as ``odefunc(t, h)``.
        t: the integration times (increasing or decreasing, two or more).
        method, rtol, atol, options: passed to the solver (``odecore.odeint``); the
            defaults, dopri5 with rtol = atol = 1e-3, are those of the paper's MNIST runs
            (torchdiffeq's examples/odenet_mnist.py). ``options`` may hold solver options
            such as ``step_size`` for the fixed-grid methods.
        gradient: how the gradient is computed.

            - ``'adjoint'``: the adjoint sensitivity method (the paper's ODE-Net,
              ``odecore.odeint_adjoint`` with the odefunc's parameters as adjoint
              parameters): memory constant in the number of steps, gradient accurate to
              the backward solve's tolerance (``adjoint_rtol``/``adjoint_atol``, default
              the forward ones).
            - ``'direct'``: backpropagation through the solver's operations (the paper's
              RK-Net): the exact gradient of the computed solution; memory grows with the
              number of steps.
            - ``'checkpoint'``: ``odeint(..., options={'checkpoint': checkpoints})``: the
              same gradient as ``'direct'`` keeping at most ``checkpoints`` step
              checkpoints, for one extra forward solve in backward. Parameters receive
              their gradients in ``.grad`` through ``loss.backward()``, as with
              ``torch.utils.checkpoint(use_reentrant=True)``; ``torch.autograd.grad``
              with respect to them does not see those.
        checkpoints: the most step checkpoints kept in ``'checkpoint'`` mode.

    ``method``, ``rtol``, ``atol``, ``gradient``, ``checkpoints`` and ``options`` are plain
    attributes and may be changed between calls (e.g. a tighter tolerance at test time).

    Counters (reset by :meth:`reset_nfe`): ``forward_nfe`` accumulates the evaluations of
    ``odefunc`` made by forward solves, ``backward_nfe`` those made during backward passes
    (the adjoint solve, or the checkpointed replay; 0 for ``'direct'``, whose backward pass
    does not evaluate ``odefunc``). ``last_stats`` is the solver's statistics dict of the
    last forward call (``'nfe'``, ``'n_steps'``, ...; in adjoint mode it gains
    ``'backward_nfe'`` etc. once backward has run).
    """

    def __init__(
        self,
        odefunc: nn.Module,
        t: Sequence[float] | torch.Tensor = (0.0, 1.0),
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        gradient: str = "adjoint",
        checkpoints: int = 8,
        options: dict[str, Any] | None = None,
        adjoint_rtol: float | None = None,
        adjoint_atol: float | None = None,
        adjoint_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.odefunc = odefunc
        t = torch.as_tensor(t, dtype=torch.float64).detach().clone()
        if t.dim() != 1 or t.numel() < 2:
            raise ValueError("t must hold at least two times, got %s" % (t.tolist(),))
        # not persistent: state dicts stay those of torchdiffeq's odenet_mnist example
        self.register_buffer("integration_time", t, persistent=False)
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.gradient = gradient
        self.checkpoints = checkpoints
        self.options = options
        self.adjoint_rtol = adjoint_rtol
        self.adjoint_atol = adjoint_atol
        self.adjoint_options = adjoint_options
        self.forward_nfe = 0
        self._backward_nfe = 0
        self._compiled_stats: list[dict[str, Any]] = []  # compiled solves report their backward NFE here
        self.last_stats: dict[str, Any] | None = None
        self._in_forward = False

    @property
    def gradient(self) -> str:
        return self._gradient

    @gradient.setter
    def gradient(self, value: str) -> None:
        if value not in GRADIENT_MODES:
            raise ValueError("gradient must be one of %s, got %r" % (", ".join(map(repr, GRADIENT_MODES)), value))
        self._gradient = value

    @property
    def backward_nfe(self) -> int:
        """Evaluations of odefunc during backward passes (those of compiled backward solves included)."""
        return self._backward_nfe + sum(s.get("backward_nfe") or 0 for s in self._compiled_stats)

    @backward_nfe.setter
    def backward_nfe(self, value: int) -> None:
        self._backward_nfe = value - sum(s.get("backward_nfe") or 0 for s in self._compiled_stats)

    @property
    def nfe(self) -> int:
        """forward_nfe + backward_nfe."""
        return self.forward_nfe + self.backward_nfe

    def reset_nfe(self) -> None:
        """Zeroes ``forward_nfe``, ``backward_nfe`` and the odefunc's own ``nfe`` counter."""
        self.forward_nfe = 0
        self._backward_nfe = 0
        self._compiled_stats = []
        if hasattr(self.odefunc, "nfe"):
            self.odefunc.nfe = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.integration_time.to(dtype=x.dtype, device=x.device)
        compiled = bool(self.options and self.options.get("compile"))
        self._in_forward = True
        try:
            # a compiled solve traces func: it counts its evaluations in its stats, not in Python
            out, stats = self._solve(self.odefunc if compiled else _CountingFunc(self), x, t)
        finally:
            self._in_forward = False
        if compiled:
            self.forward_nfe += stats["nfe"]
            self._compiled_stats.append(stats)
        self.last_stats = stats
        return out[-1]

    def _solve(self, func: Any, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """The solution at every time of ``t`` and the solver's statistics, by the solver of
        the gradient mode."""
        options = dict(self.options) if self.options else {}
        options["return_stats"] = True
        if self.gradient == "adjoint":
            adjoint_options = None
            if self.adjoint_options is not None:
                adjoint_options = dict(self.adjoint_options)
                adjoint_options["return_stats"] = True
            return odeint_adjoint(
                func,
                x,
                t,
                rtol=self.rtol,
                atol=self.atol,
                method=self.method,
                options=options,
                adjoint_rtol=self.adjoint_rtol,
                adjoint_atol=self.adjoint_atol,
                adjoint_options=adjoint_options,
                adjoint_params=tuple(self.odefunc.parameters()),
            )
        if self.gradient == "checkpoint":
            options["checkpoint"] = self.checkpoints
        return odeint(func, x, t, rtol=self.rtol, atol=self.atol, method=self.method, options=options)

    def extra_repr(self) -> str:
        return "t=%s, method=%r, rtol=%g, atol=%g, gradient=%r" % (
            self.integration_time.tolist(),
            self.method,
            self.rtol,
            self.atol,
            self.gradient,
        )

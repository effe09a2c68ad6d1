"""Stochastic differential equations with torchsde's interface: `sdeint`, `sdeint_adjoint`,
seeded Brownian motion and torchsde's base classes BaseSDE, SDEIto and SDEStratonovich."""

from .adjoint import sdeint_adjoint
from .brownian import LEVY_AREA_APPROXIMATIONS, BrownianInterval, BrownianPath, BrownianTree, ReverseBrownian
from .methods import DEFAULT_METHOD, METHODS, SOLVERS, SRK_NOISE_TYPES
from .sdeint import MAX_NUM_STEPS, sdeint
from .system import NOISE_TYPES, SDE_TYPES, BaseSDE, SDEIto, SDEStratonovich, SDESystem

__all__ = [
    "sdeint",
    "sdeint_adjoint",
    "BrownianInterval",
    "BrownianPath",
    "BrownianTree",
    "ReverseBrownian",
    "LEVY_AREA_APPROXIMATIONS",
    "METHODS",
    "DEFAULT_METHOD",
    "SOLVERS",
    "SRK_NOISE_TYPES",
    "NOISE_TYPES",
    "SDE_TYPES",
    "MAX_NUM_STEPS",
    "SDESystem",
    "BaseSDE",
    "SDEIto",
    "SDEStratonovich",
]

"""Stochastic differential equations with torchsde's interface: `sdeint`, `sdeint_adjoint` and
seeded Brownian motion."""

from .adjoint import sdeint_adjoint
from .brownian import LEVY_AREA_APPROXIMATIONS, BrownianInterval, BrownianPath, BrownianTree, ReverseBrownian
from .methods import DEFAULT_METHOD, METHODS, SOLVERS, SRK_NOISE_TYPES
from .sdeint import MAX_NUM_STEPS, sdeint
from .system import NOISE_TYPES, SDE_TYPES, SDESystem

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
]

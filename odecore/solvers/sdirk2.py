"""2-stage singly diagonally implicit RK with gamma = 1 - sqrt(2)/2: order 2, L-stable,
stiffly accurate (R. Alexander, "Diagonally implicit Runge-Kutta methods for stiff ODEs",
SIAM J. Numer. Anal. 14, 1977)."""

import math

from .fixed_grid_implicit import FixedGridImplicitRKSolver
from .tableau import ImplicitTableau

_GAMMA = 1 - math.sqrt(2.0) / 2

TABLEAU = ImplicitTableau(
    c=(_GAMMA, 1.0),
    a=((_GAMMA, 0.0), (1 - _GAMMA, _GAMMA)),
    b=(1 - _GAMMA, _GAMMA),
)


class SDIRK2(FixedGridImplicitRKSolver):
    name = "sdirk2"
    tableau = TABLEAU
    order = 2

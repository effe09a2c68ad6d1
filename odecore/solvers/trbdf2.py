"""TR-BDF2 as a 3-stage ESDIRK: a trapezoidal stage to t0 + 2 gamma dt, then BDF2 to t1, with
gamma = 1 - sqrt(2)/2. Order 2, L-stable, stiffly accurate (Bank et al. 1985; Hosea &
Shampine, "Analysis and implementation of TR-BDF2", Appl. Numer. Math. 20, 1996)."""

import math

from .fixed_grid_implicit import FixedGridImplicitRKSolver
from .tableau import ImplicitTableau

_GAMMA = 1 - math.sqrt(2.0) / 2
_BETA = math.sqrt(2.0) / 4  # = (1 - gamma) / 2

TABLEAU = ImplicitTableau(
    c=(0.0, 2 * _GAMMA, 1.0),
    a=((0.0, 0.0, 0.0), (_GAMMA, _GAMMA, 0.0), (_BETA, _BETA, _GAMMA)),
    b=(_BETA, _BETA, _GAMMA),
)


class TRBDF2(FixedGridImplicitRKSolver):
    name = "trbdf2"
    tableau = TABLEAU
    order = 2

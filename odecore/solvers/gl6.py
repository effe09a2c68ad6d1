"""3-stage Gauss-Legendre: order 6, A-stable, symplectic (Butcher 1964; Hairer & Wanner,
"Solving ODEs II", section IV.5)."""

import math

from .fixed_grid_implicit import FixedGridImplicitRKSolver
from .tableau import ImplicitTableau

_S15 = math.sqrt(15.0)

TABLEAU = ImplicitTableau(
    c=(0.5 - _S15 / 10, 0.5, 0.5 + _S15 / 10),
    a=(
        (5 / 36, 2 / 9 - _S15 / 15, 5 / 36 - _S15 / 30),
        (5 / 36 + _S15 / 24, 2 / 9, 5 / 36 - _S15 / 24),
        (5 / 36 + _S15 / 30, 2 / 9 + _S15 / 15, 5 / 36),
    ),
    b=(5 / 18, 4 / 9, 5 / 18),
)


class GaussLegendre6(FixedGridImplicitRKSolver):
    name = "gl6"
    tableau = TABLEAU
    order = 6

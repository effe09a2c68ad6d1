"""Kutta's 3/8 rule, the fourth-order method torchdiffeq calls rk4.

W. Kutta, "Beitrag zur näherungsweisen Integration totaler Differentialgleichungen",
Z. Math. Phys. 46, 1901.
"""

from .fixed_grid import FixedGridRKSolver
from .tableau import ButcherTableau

TABLEAU = ButcherTableau(
    c=(0.0, 1 / 3, 2 / 3, 1.0),
    a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
)


class RK4(FixedGridRKSolver):
    tableau = TABLEAU
    order = 4

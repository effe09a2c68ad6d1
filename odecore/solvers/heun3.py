"""Heun's third-order method.

K. Heun, Z. Math. Phys. 45, 1900.
"""

from .fixed_grid import FixedGridRKSolver
from .tableau import ButcherTableau

TABLEAU = ButcherTableau(c=(0.0, 1 / 3, 2 / 3), a=((), (1 / 3,), (0.0, 2 / 3)), b=(1 / 4, 0.0, 3 / 4))


class Heun3(FixedGridRKSolver):
    tableau = TABLEAU
    order = 3

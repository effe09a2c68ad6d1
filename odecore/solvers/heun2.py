"""Heun's method, the explicit trapezoidal rule (order 2).

K. Heun, Z. Math. Phys. 45, 1900.
"""

from .fixed_grid import FixedGridRKSolver
from .tableau import ButcherTableau

TABLEAU = ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5))


class Heun2(FixedGridRKSolver):
    tableau = TABLEAU
    order = 2

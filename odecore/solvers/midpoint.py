"""The explicit midpoint method (order 2).

C. Runge, "Über die numerische Auflösung von Differentialgleichungen", Math. Ann. 46, 1895.
"""

from .fixed_grid import FixedGridRKSolver
from .tableau import ButcherTableau

TABLEAU = ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0))


class Midpoint(FixedGridRKSolver):
    tableau = TABLEAU
    order = 2

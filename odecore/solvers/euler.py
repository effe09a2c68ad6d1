"""The forward Euler method (order 1).

L. Euler, "Institutionum calculi integralis", 1768.
"""

from .fixed_grid import FixedGridRKSolver
from .tableau import ButcherTableau

TABLEAU = ButcherTableau(c=(0.0,), a=((),), b=(1.0,))


class Euler(FixedGridRKSolver):
    tableau = TABLEAU
    order = 1

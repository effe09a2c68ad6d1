"""Bogacki-Shampine 3(2).

P. Bogacki and L. F. Shampine, "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett. 2(4), 1989.
"""

from .adaptive import AdaptiveRKSolver
from .tableau import ButcherTableau, quartic_dense

_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
_B_HAT = (7 / 24, 1 / 4, 1 / 3, 1 / 8)

TABLEAU = ButcherTableau(
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), _B[:3]),
    b=_B,
    e=tuple(b - bh for b, bh in zip(_B, _B_HAT)),
    dense=quartic_dense(_B, (0.0, 0.5, 0.0, 0.0)),
)


class Bosh3(AdaptiveRKSolver):
    tableau = TABLEAU
    order = 3

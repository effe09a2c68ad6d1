"""Dormand-Prince 5(4) with Shampine's dense output.

J. R. Dormand and P. J. Prince, "A family of embedded Runge-Kutta formulae", J. Comput. Appl.
Math. 6(1), 1980. L. F. Shampine, "Some practical Runge-Kutta formulas", Math. Comp. 46(173),
1986 (the midpoint weights of the dense output).
"""

from .adaptive import AdaptiveRKSolver
from .tableau import ButcherTableau, quartic_dense

_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
# The embedded weights of Shampine (1986), which torchdiffeq's error estimate uses.
_B_HAT = (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60)
_MID = (
    6025192743 / 30085553152 / 2,
    0.0,
    51252292925 / 65400821598 / 2,
    -2691868925 / 45128329728 / 2,
    187940372067 / 1594534317056 / 2,
    -1776094331 / 19743644256 / 2,
    11237099 / 235043384 / 2,
)

TABLEAU = ButcherTableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _B[:6],
    ),
    b=_B,
    e=tuple(b - bh for b, bh in zip(_B, _B_HAT)),
    dense=quartic_dense(_B, _MID),
)


class Dopri5(AdaptiveRKSolver):
    tableau = TABLEAU
    order = 5

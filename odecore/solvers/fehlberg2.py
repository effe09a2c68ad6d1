"""Runge-Kutta-Fehlberg 2(1).

E. Fehlberg, "Low-order classical Runge-Kutta formulas with stepsize control and their
application to some heat transfer problems", NASA TR R-315, 1969.

As in torchdiffeq, the derivative at the end of a step is the last stage (evaluated at the
first-order solution), and it starts the next step.
"""

from .adaptive import AdaptiveRKSolver
from .tableau import ButcherTableau, quartic_dense

_B = (1 / 512, 255 / 256, 1 / 512)

TABLEAU = ButcherTableau(
    c=(0.0, 1 / 2, 1.0),
    a=((), (1 / 2,), (1 / 256, 255 / 256)),
    b=_B,
    e=(-1 / 512, 0.0, 1 / 512),
    dense=quartic_dense(_B, (0.0, 0.5, 0.0)),
)


class Fehlberg2(AdaptiveRKSolver):
    tableau = TABLEAU
    order = 2

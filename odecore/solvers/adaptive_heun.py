"""Heun's method with an Euler error estimate (adaptive Heun, 2(1)).

K. Heun, "Neue Methoden zur approximativen Integration der Differentialgleichungen einer
unabhängigen Veränderlichen", Z. Math. Phys. 45, 1900.

As in torchdiffeq, the derivative at the end of a step is the last stage (evaluated at the
Euler predictor), and it starts the next step.
"""

from .adaptive import AdaptiveRKSolver
from .tableau import ButcherTableau, quartic_dense

_B = (0.5, 0.5)

TABLEAU = ButcherTableau(
    c=(0.0, 1.0),
    a=((), (1.0,)),
    b=_B,
    e=(0.5, -0.5),
    dense=quartic_dense(_B, (0.5, 0.0)),
)


class AdaptiveHeun(AdaptiveRKSolver):
    tableau = TABLEAU
    order = 2

"""3-stage Radau IIA: order 5, L-stable, stiffly accurate; the method of Hairer & Wanner's
RADAU5 and scipy's Radau (Hairer & Wanner, "Solving ODEs II", section IV.5)."""

import math

from .fixed_grid_implicit import FixedGridImplicitRKSolver
from .tableau import ImplicitTableau

_S6 = math.sqrt(6.0)

TABLEAU = ImplicitTableau(
    c=((4 - _S6) / 10, (4 + _S6) / 10, 1.0),
    a=(
        ((88 - 7 * _S6) / 360, (296 - 169 * _S6) / 1800, (-2 + 3 * _S6) / 225),
        ((296 + 169 * _S6) / 1800, (88 + 7 * _S6) / 360, (-2 - 3 * _S6) / 225),
        ((16 - _S6) / 36, (16 + _S6) / 36, 1 / 9),
    ),
    b=((16 - _S6) / 36, (16 + _S6) / 36, 1 / 9),
)


class RadauIIA5(FixedGridImplicitRKSolver):
    name = "radauIIA5"
    tableau = TABLEAU
    order = 5

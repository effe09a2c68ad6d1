"""2-stage Radau IIA: order 3, L-stable, stiffly accurate (Ehle 1969; Hairer & Wanner,
"Solving ODEs II", section IV.5)."""

from .fixed_grid_implicit import FixedGridImplicitRKSolver
from .tableau import ImplicitTableau

TABLEAU = ImplicitTableau(
    c=(1 / 3, 1.0),
    a=((5 / 12, -1 / 12), (3 / 4, 1 / 4)),
    b=(3 / 4, 1 / 4),
)


class RadauIIA3(FixedGridImplicitRKSolver):
    name = "radauIIA3"
    tableau = TABLEAU
    order = 3

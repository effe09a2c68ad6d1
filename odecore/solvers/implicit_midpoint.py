"""The implicit midpoint rule (1-stage Gauss-Legendre): y1 = y0 + dt f(t0 + dt/2, (y0 + y1)/2).
Order 2, A-stable, symplectic."""

from .fixed_grid_implicit import FixedGridImplicitRKSolver
from .tableau import ImplicitTableau

TABLEAU = ImplicitTableau(c=(0.5,), a=((0.5,),), b=(1.0,))


class ImplicitMidpoint(FixedGridImplicitRKSolver):
    name = "implicit_midpoint"
    tableau = TABLEAU
    order = 2

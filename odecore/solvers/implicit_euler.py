"""The implicit (backward) Euler method: y1 = y0 + dt f(t1, y1). Order 1, L-stable."""

from .fixed_grid_implicit import FixedGridImplicitRKSolver
from .tableau import ImplicitTableau

TABLEAU = ImplicitTableau(c=(1.0,), a=((1.0,),), b=(1.0,))


class ImplicitEuler(FixedGridImplicitRKSolver):
    name = "implicit_euler"
    tableau = TABLEAU
    order = 1

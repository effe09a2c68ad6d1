"""The trapezoidal rule (Crank-Nicolson; 2-stage Lobatto IIIA):
y1 = y0 + dt/2 (f(t0, y0) + f(t1, y1)). Order 2, A-stable; the first stage is explicit."""

from .fixed_grid_implicit import FixedGridImplicitRKSolver
from .tableau import ImplicitTableau

TABLEAU = ImplicitTableau(c=(0.0, 1.0), a=((0.0, 0.0), (0.5, 0.5)), b=(0.5, 0.5))


class Trapezoid(FixedGridImplicitRKSolver):
    name = "trapezoid"
    tableau = TABLEAU
    order = 2

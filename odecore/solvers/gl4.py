"""2-stage Gauss-Legendre: order 4, A-stable, symplectic (Butcher 1964; Hairer & Wanner,
"Solving ODEs II", section IV.5).

The nodes are the Gauss points of [0, 1], c = 1/2 -+ sqrt(3)/6. torchdiffeq's main branch
(fixed_grid_implicit.py) has c = (1/2 - sqrt(3)/6, 1/2 - sqrt(3)/6): the second node is
wrong (its a is right), which fails b.c = 1/2 and makes that method first order on
non-autonomous problems (tests/test_implicit.py checks both).
"""

import math

from .fixed_grid_implicit import FixedGridImplicitRKSolver
from .tableau import ImplicitTableau

_S3 = math.sqrt(3.0)

TABLEAU = ImplicitTableau(
    c=(0.5 - _S3 / 6, 0.5 + _S3 / 6),
    a=((0.25, 0.25 - _S3 / 6), (0.25 + _S3 / 6, 0.25)),
    b=(0.5, 0.5),
)


class GaussLegendre4(FixedGridImplicitRKSolver):
    name = "gl4"
    tableau = TABLEAU
    order = 4

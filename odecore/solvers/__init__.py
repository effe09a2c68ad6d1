"""Solvers by torchdiffeq's method names."""
from .adaptive import AdaptiveRKSolver
from .adaptive_heun import AdaptiveHeun
from .bosh3 import Bosh3
from .dopri5 import Dopri5
from .dopri8 import Dopri8
from .euler import Euler
from .fehlberg2 import Fehlberg2
from .fixed_grid import FixedGridRKSolver
from .heun2 import Heun2
from .heun3 import Heun3
from .midpoint import Midpoint
from .rk4 import RK4
from .tsit5 import Tsit5

SOLVERS = {
    "dopri8": Dopri8,
    "dopri5": Dopri5,
    "tsit5": Tsit5,
    "bosh3": Bosh3,
    "fehlberg2": Fehlberg2,
    "adaptive_heun": AdaptiveHeun,
    "euler": Euler,
    "midpoint": Midpoint,
    "heun2": Heun2,
    "heun3": Heun3,
    "rk4": RK4,
}

__all__ = ["SOLVERS", "AdaptiveRKSolver", "FixedGridRKSolver"] + [cls.__name__ for cls in SOLVERS.values()]

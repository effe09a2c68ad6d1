"""Solvers by torchdiffeq's method names."""

from .adams import AdamsBashforth, AdamsBashforthMoulton
from .adaptive import AdaptiveRKSolver
from .adaptive_heun import AdaptiveHeun
from .bosh3 import Bosh3
from .dopri5 import Dopri5
from .dopri8 import Dopri8
from .euler import Euler
from .fehlberg2 import Fehlberg2
from .fixed_grid import FixedGridRKSolver
from .fixed_grid_implicit import FixedGridImplicitRKSolver
from .gl4 import GaussLegendre4
from .gl6 import GaussLegendre6
from .heun2 import Heun2
from .heun3 import Heun3
from .implicit_euler import ImplicitEuler
from .implicit_midpoint import ImplicitMidpoint
from .midpoint import Midpoint
from .radau_iia3 import RadauIIA3
from .radau_iia5 import RadauIIA5
from .rk4 import RK4
from .scipy_wrapper import ScipyWrapperODESolver
from .sdirk2 import SDIRK2
from .trapezoid import Trapezoid
from .trbdf2 import TRBDF2
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
    "explicit_adams": AdamsBashforth,
    "implicit_adams": AdamsBashforthMoulton,
    "fixed_adams": AdamsBashforthMoulton,  # torchdiffeq's older name of implicit_adams
    # implicit Runge-Kutta on the fixed grid (torchdiffeq's main branch names), Newton's method
    "implicit_euler": ImplicitEuler,
    "implicit_midpoint": ImplicitMidpoint,
    "trapezoid": Trapezoid,
    "gl4": GaussLegendre4,
    "gl6": GaussLegendre6,
    "radauIIA3": RadauIIA3,
    "radauIIA5": RadauIIA5,
    "sdirk2": SDIRK2,
    "trbdf2": TRBDF2,
    "scipy_solver": ScipyWrapperODESolver,  # any scipy.integrate.solve_ivp method
}

__all__ = ["SOLVERS", "AdaptiveRKSolver", "FixedGridRKSolver", "FixedGridImplicitRKSolver"] + sorted(
    {cls.__name__ for cls in SOLVERS.values()}
)

"""odecore: neural differential equation solvers with fused C++/CUDA step kernels.

``import odecore as torchdiffeq`` works: `odeint` takes torchdiffeq's arguments, options and
method names and gives the same results.
"""

from .adjoint import odeint_adjoint
from .api import odeint, odeint_event
from .dense import DenseSolution, odeint_dense
from .ops import backend_info, get_backend, set_backend
from .sde import (
    BaseSDE,
    BrownianInterval,
    BrownianPath,
    BrownianTree,
    SDEIto,
    SDEStratonovich,
    sdeint,
    sdeint_adjoint,
)
from .solvers import SOLVERS
from .solvers.base import Perturb

__version__ = "0.1.0"

__all__ = [
    "odeint",
    "odeint_adjoint",
    "odeint_event",
    "odeint_dense",
    "DenseSolution",
    "sdeint",
    "sdeint_adjoint",
    "BrownianInterval",
    "BrownianPath",
    "BrownianTree",
    "BaseSDE",
    "SDEIto",
    "SDEStratonovich",
    "backend_info",
    "set_backend",
    "get_backend",
    "SOLVERS",
    "Perturb",
    "__version__",
]

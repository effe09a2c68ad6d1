"""odecore.brownian, as the README documents it: the Brownian motions of odecore.sde.brownian."""

from .sde.brownian import LEVY_AREA_APPROXIMATIONS, BrownianInterval, BrownianPath, BrownianTree, ReverseBrownian

__all__ = ["BrownianInterval", "BrownianTree", "BrownianPath", "ReverseBrownian", "LEVY_AREA_APPROXIMATIONS"]

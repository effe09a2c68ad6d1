"""The user's SDE as the solvers see it: drift and diffusion looked up by name, their shapes
checked, and the diffusion applied to a Brownian increment for each noise type."""

import torch

NOISE_TYPES = ("diagonal", "scalar", "additive", "general")
SDE_TYPES = ("ito", "stratonovich")
NAME_KEYS = ("drift", "diffusion", "prior_drift", "drift_and_diffusion", "drift_and_diffusion_prod")


def check_tensor(x: object, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError("%s must return a torch.Tensor, got %s" % (name, type(x).__name__))


class SDESystem:
    """``sde``'s drift ``f(t, y)`` and diffusion ``g(t, y)`` (torchsde's ``names`` may rename
    them), its ``noise_type`` and ``sde_type``, and the products of g with an increment."""

    def __init__(self, sde: object, names: dict | None = None):
        self.names = dict(names or {})
        unknown = set(self.names) - set(NAME_KEYS)
        if unknown:
            raise ValueError("names has unknown keys %s" % sorted(unknown))
        self.f = getattr(sde, self.names.get("drift", "f"), None)
        self.g = getattr(sde, self.names.get("diffusion", "g"), None)
        if not callable(self.f) or not callable(self.g):
            raise TypeError("sde must have callable drift f(t, y) and diffusion g(t, y) methods (see names=)")
        self.noise_type = getattr(sde, "noise_type", None)
        self.sde_type = getattr(sde, "sde_type", None)
        if self.noise_type not in NOISE_TYPES:
            raise ValueError("sde.noise_type must be one of %s, got %r" % (NOISE_TYPES, self.noise_type))
        if self.sde_type not in SDE_TYPES:
            raise ValueError("sde.sde_type must be one of %s, got %r" % (SDE_TYPES, self.sde_type))
        # additive and general noise: g is a (batch, d, m) matrix applied to the m increments
        self.matrix = self.noise_type in ("additive", "general")

    def check(self, y: torch.Tensor, f: object, g: object) -> None:
        """f and g have the shapes the state and the noise type need."""
        batch, d = y.shape
        check_tensor(g, "sde.g")
        if not isinstance(f, torch.Tensor) or f.shape != y.shape:
            raise ValueError(
                "sde.f returned shape %s, expected the state's %s" % (getattr(f, "shape", type(f)), tuple(y.shape))
            )
        expected = {"diagonal": (batch, d), "scalar": (batch, d, 1)}.get(self.noise_type)
        if expected is not None and g.shape != expected:
            raise ValueError(
                "sde.g returned shape %s, expected %s for %s noise" % (tuple(g.shape), expected, self.noise_type)
            )
        if self.matrix and (g.dim() != 3 or g.shape[:2] != (batch, d)):
            raise ValueError(
                "sde.g returned shape %s, expected (%d, %d, m) for %s noise"
                % (tuple(g.shape), batch, d, self.noise_type)
            )

    def brownian_size(self, y: torch.Tensor, g: torch.Tensor) -> tuple:
        """The shape of the Brownian motion that drives the SDE at state y with diffusion g."""
        check_tensor(g, "sde.g")
        return {"diagonal": y.shape, "scalar": (y.shape[0], 1)}.get(self.noise_type, (y.shape[0], g.shape[-1]))

    def check_increment(self, y: torch.Tensor, g: torch.Tensor, dw: object, name: str = "bm(t0, t1)") -> None:
        """The Brownian motion's increment has the shape the noise type needs."""
        check_tensor(dw, name)
        expected = tuple(self.brownian_size(y, g))
        if tuple(dw.shape) != expected:
            raise ValueError(
                "%s returned shape %s, expected %s for %s noise (bm's size)"
                % (name, tuple(dw.shape), expected, self.noise_type)
            )

    def elementwise(self, g: torch.Tensor, dw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g and dW as tensors of the state's shape for the fused update (diagonal, scalar),
        or (g dW, ones) for matrix noise."""
        if self.noise_type == "diagonal":
            return g, dw
        if self.noise_type == "scalar":
            return g.squeeze(-1), dw.expand(-1, g.shape[1])
        gdw = torch.bmm(g, dw.unsqueeze(-1)).squeeze(-1)
        return gdw, torch.ones_like(gdw)

    def gdg(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """g * dg/dy elementwise (diagonal noise: sum_j g_j dg_i/dy_j with dg_i/dy_j = 0 off the diagonal)."""
        with torch.enable_grad():
            y = y.detach().requires_grad_(True) if not y.requires_grad else y
            g = self.g(t, y)
            check_tensor(g, "sde.g")
            if not g.requires_grad:  # g does not depend on y (e.g. a constant): dg/dy = 0
                return torch.zeros_like(g)
            (vjp,) = torch.autograd.grad(g, y, g, create_graph=torch.is_grad_enabled(), allow_unused=True)
        return torch.zeros_like(g) if vjp is None else vjp

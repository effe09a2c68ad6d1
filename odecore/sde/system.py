"""The user's SDE as the solvers see it: drift and diffusion looked up by name (or their combined
forms f_and_g, g_prod, f_and_g_prod, as torchsde's BaseSDE / ForwardSDE have them), their shapes
checked, and the diffusion applied to a Brownian increment for each noise type. Also torchsde's
base classes BaseSDE, SDEIto and SDEStratonovich."""

import torch
from torch import nn

NOISE_TYPES = ("diagonal", "scalar", "additive", "general")
SDE_TYPES = ("ito", "stratonovich")
NAME_KEYS = ("drift", "diffusion", "prior_drift", "drift_and_diffusion", "drift_and_diffusion_prod")
# each of the SDE's functions: (its names= key, its default attribute name)
_FUNCTIONS = (
    ("f", "drift"),
    ("g", "diffusion"),
    ("f_and_g", "drift_and_diffusion"),
    ("g_prod", None),
    ("f_and_g_prod", "drift_and_diffusion_prod"),
)


def check_tensor(x: object, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError("%s must return a torch.Tensor, got %s" % (name, type(x).__name__))


def _missing(name):
    # torchsde's ForwardSDE.f_default / g_default
    raise RuntimeError("Method `%s` has not been provided, but is required for this method." % name)


class SDESystem:
    """``sde``'s drift and diffusion, its ``noise_type`` and ``sde_type``, and the products of g
    with an increment.

    The sde defines ``f(t, y)`` (drift) and ``g(t, y)`` (diffusion), or instead / as well
    ``f_and_g(t, y) -> (f, g)``, ``g_prod(t, y, v) -> g v`` and ``f_and_g_prod(t, y, v) -> (f, g v)``
    (torchsde's names; ``names`` may rename f, g, f_and_g and f_and_g_prod). As torchsde's
    ForwardSDE, each combined call is used where it is defined: `f_and_g_prod` is the sde's own,
    or f and g_prod, or f_and_g (or f and g) times v; `f_and_g` is the sde's own or f and g.
    Methods that need the diffusion matrix itself (milstein, srk, reversible_heun, log_ode with
    general noise, the Ito adjoint) raise torchsde's RuntimeError when the sde has only g_prod."""

    def __init__(self, sde: object, names: dict | None = None):
        self.names = dict(names or {})
        unknown = set(self.names) - set(NAME_KEYS)
        if unknown:
            raise ValueError("names has unknown keys %s" % sorted(unknown))
        given = {}
        for attr, key in _FUNCTIONS:
            fn = getattr(sde, self.names.get(key, attr) if key else attr, None)
            given[attr] = fn if callable(fn) else None
        if given["f"] is None and given["f_and_g"] is None and given["f_and_g_prod"] is None:
            raise ValueError(
                "sde must define at least one of `f`, `f_and_g`, or `f_and_g_prod`. (Or possibly more "
                "depending on the method chosen.) (see names= for other method names)"
            )
        if all(given[k] is None for k in ("g", "f_and_g", "g_prod", "f_and_g_prod")):
            raise ValueError(
                "sde must define at least one of `g`, `f_and_g`, `g_prod` or `f_and_g_prod`. (Or possibly "
                "more depending on the method chosen.) (see names= for other method names)"
            )
        self.noise_type = getattr(sde, "noise_type", None)
        self.sde_type = getattr(sde, "sde_type", None)
        if self.noise_type not in NOISE_TYPES:
            raise ValueError("sde.noise_type must be one of %s, got %r" % (NOISE_TYPES, self.noise_type))
        if self.sde_type not in SDE_TYPES:
            raise ValueError("sde.sde_type must be one of %s, got %r" % (SDE_TYPES, self.sde_type))
        # additive and general noise: g is a (batch, d, m) matrix applied to the m increments
        self.matrix = self.noise_type in ("additive", "general")
        self._ones = None
        self.resolve(**given)

    def resolve(self, f=None, g=None, f_and_g=None, g_prod=None, f_and_g_prod=None) -> None:
        """Binds f, g, f_and_g, g_prod and f_and_g_prod from the callables the sde defines (None:
        not defined), each of the missing ones from the others, once (torchsde's ForwardSDE)."""
        self.has_g = g is not None or f_and_g is not None  # the diffusion matrix itself is available
        self.has_f_and_g = f_and_g is not None
        # g dW comes from the sde's own product (f_and_g_prod, or f and g_prod), not from g
        self.uses_prod = f_and_g_prod is not None or (f is not None and g_prod is not None)
        if f is None:
            f = (lambda t, y: f_and_g(t, y)[0]) if f_and_g is not None else (lambda t, y: _missing("f"))
        if g is None:
            g = (lambda t, y: f_and_g(t, y)[1]) if f_and_g is not None else (lambda t, y: _missing("g"))
        self.f, self.g = f, g
        self.f_and_g = f_and_g if f_and_g is not None else (lambda t, y: (f(t, y), g(t, y)))
        if g_prod is None:
            if self.has_g or f_and_g_prod is None:
                g_prod = lambda t, y, v: self.prod(g(t, y), v)  # noqa: E731
            else:  # only f_and_g_prod: its product (the drift is computed and dropped)
                g_prod = lambda t, y, v: f_and_g_prod(t, y, v)[1]  # noqa: E731
        self.g_prod = g_prod
        if f_and_g_prod is None:
            if self.uses_prod:
                f_and_g_prod = lambda t, y, v: (f(t, y), g_prod(t, y, v))  # noqa: E731
            else:
                f_and_g_prod = lambda t, y, v: self._f_and_g_then_prod(t, y, v)  # noqa: E731
        self.f_and_g_prod = f_and_g_prod

    def _f_and_g_then_prod(self, t, y, v):
        f, g = self.f_and_g(t, y)
        return f, self.prod(g, v)

    def prod(self, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """g v: elementwise for diagonal noise, else the batched matrix-vector product."""
        check_tensor(g, "sde.g")
        if self.noise_type == "diagonal":
            return g * v
        return torch.bmm(g, v.unsqueeze(-1)).squeeze(-1)

    def adjoint_of_prod(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The gradient of a . prod(g, v) with respect to g."""
        return a * v if self.noise_type == "diagonal" else a.unsqueeze(-1) * v.unsqueeze(-2)

    def require_g(self, what: str) -> None:
        """`what` (e.g. "method 'milstein'") needs the diffusion matrix: refuse an sde that has
        only g_prod / f_and_g_prod, with torchsde's RuntimeError."""
        if not self.has_g:
            raise RuntimeError(
                "Method `g` has not been provided, but is required for this method. (%s needs the "
                "diffusion matrix: define sde.g or sde.f_and_g, not only g_prod / f_and_g_prod)" % what
            )

    def drift_and_noise(self, t, y, dw):
        """(f, g_e, dw_e) at (t, y) with g_e * dw_e = g(t, y) dW elementwise, from one call of the
        sde's cheapest combination (f_and_g_prod, f and g_prod, f_and_g, or f and g)."""
        if self.uses_prod:
            f, gdw = self.f_and_g_prod(t, y, dw)
            return f, gdw, self.ones_like(gdw)
        f, g = self.f_and_g(t, y)
        return (f,) + self.elementwise(g, dw)

    def noise(self, t, y, dw):
        """g_e with g_e * dw_e = g(t, y) dW, dw_e as `drift_and_noise` gives it."""
        if self.uses_prod:
            return self.g_prod(t, y, dw)
        return self.elementwise(self.g(t, y), dw)[0]

    def ones_like(self, x: torch.Tensor) -> torch.Tensor:
        ones = self._ones
        if ones is None or ones.shape != x.shape or ones.dtype != x.dtype or ones.device != x.device:
            ones = self._ones = torch.ones_like(x)
        return ones

    def check(self, y: torch.Tensor, f: object, g: object) -> None:
        """f and g have the shapes the state and the noise type need."""
        batch, d = y.shape
        check_tensor(g, "sde.g")
        self.check_drift(y, f)
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

    def check_drift(self, y: torch.Tensor, f: object, name: str = "sde.f") -> None:
        if not isinstance(f, torch.Tensor) or f.shape != y.shape:
            raise ValueError(
                "%s returned shape %s, expected the state's %s" % (name, getattr(f, "shape", type(f)), tuple(y.shape))
            )

    def check_first(self, y: torch.Tensor, f: object, g_e: object) -> None:
        """The first evaluation of `drift_and_noise`: f, and g dW (the product's path) or g."""
        if not self.uses_prod:
            return  # checked with the diffusion matrix (`check`)
        self.check_drift(y, f, "sde.f (or f_and_g_prod)")
        check_tensor(g_e, "sde.g_prod")
        self.check_drift(y, g_e, "sde.g_prod (or f_and_g_prod)")

    def brownian_size(self, y: torch.Tensor, g: torch.Tensor | None) -> tuple:
        """The shape of the Brownian motion that drives the SDE at state y with diffusion g
        (g None: known only for diagonal and scalar noise)."""
        if self.noise_type in ("diagonal", "scalar"):
            return tuple(y.shape) if self.noise_type == "diagonal" else (y.shape[0], 1)
        if g is None:
            raise ValueError(
                "Cannot infer noise size (i.e. number of Brownian motion channels). Either pass `bm` "
                "explicitly, or specify one of the `g`, `f_and_g` functions."
            )
        check_tensor(g, "sde.g")
        return (y.shape[0], g.shape[-1])

    def check_increment(self, y: torch.Tensor, g: torch.Tensor | None, dw: object, name: str = "bm(t0, t1)") -> None:
        """The Brownian motion's increment has the shape the noise type needs (g None: the
        number of channels of additive / general noise is not checked)."""
        check_tensor(dw, name)
        if g is None and self.matrix:
            ok = dw.dim() == 2 and dw.shape[0] == y.shape[0]
            expected = "(%d, m)" % y.shape[0]
        else:
            expected = tuple(self.brownian_size(y, g))
            ok = tuple(dw.shape) == expected
        if not ok:
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
        return gdw, self.ones_like(gdw)

    def gdg(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """g * dg/dy elementwise (diagonal noise: sum_j g_j dg_i/dy_j with dg_i/dy_j = 0 off the diagonal)."""
        return self.diffusion_and_gdg(t, y)[2]

    def diffusion_and_gdg(self, t: torch.Tensor, y: torch.Tensor, with_f: bool = False) -> tuple:
        """(f or None, g, (g . grad) g) at (t, y) from one evaluation of g (of f_and_g when
        `with_f` and the sde defines it): for diagonal noise g_i dg_i/dy_i, for scalar noise
        the Jacobian-vector product J c of the column c = g[..., 0] (Milstein's term; torchsde
        takes J^T c there, which agrees where J is symmetric, e.g. for one state dimension).
        f and g keep the graph to y only while grad mode is on."""
        grad_mode = torch.is_grad_enabled()
        with torch.enable_grad():
            x = y if y.requires_grad else y.detach().requires_grad_(True)
            if with_f:
                f, g = self.f_and_g(t, x)
            else:
                f, g = None, self.g(t, x)
            check_tensor(g, "sde.g")
            term = self._gdg_of(g, x, grad_mode)
        if not grad_mode:
            f = None if f is None else f.detach()
            g = g.detach()
        return f, g, term

    def _gdg_of(self, g, x, create_graph):
        if not g.requires_grad:  # g does not depend on y (e.g. a constant): dg/dy = 0
            return torch.zeros_like(g if self.noise_type == "diagonal" else g[..., 0])
        if self.noise_type == "diagonal":
            (vjp,) = torch.autograd.grad(g, x, g, create_graph=create_graph, retain_graph=True, allow_unused=True)
            return torch.zeros_like(g) if vjp is None else vjp
        c = g[..., 0]  # scalar noise: J c by double backward (J^T u, then its gradient in u along c)
        probe = torch.zeros_like(c, requires_grad=True)
        (jt_probe,) = torch.autograd.grad(c, x, probe, create_graph=True, allow_unused=True)
        if jt_probe is None or not jt_probe.requires_grad:
            return torch.zeros_like(c)
        (jc,) = torch.autograd.grad(jt_probe, probe, c, create_graph=create_graph, retain_graph=True)
        return jc


class BaseSDE(nn.Module):
    """torchsde's BaseSDE: an ``nn.Module`` with checked ``noise_type`` and ``sde_type``
    attributes; subclasses define f and g (or f_and_g, g_prod, f_and_g_prod)."""

    def __init__(self, noise_type: str, sde_type: str):
        super().__init__()
        if noise_type not in NOISE_TYPES:
            raise ValueError(f"Expected noise type in {sorted(NOISE_TYPES)}, but found {noise_type}")
        if sde_type not in SDE_TYPES:
            raise ValueError(f"Expected sde type in {sorted(SDE_TYPES)}, but found {sde_type}")
        self.noise_type = noise_type
        self.sde_type = sde_type


class SDEIto(BaseSDE):
    """torchsde's SDEIto: a BaseSDE of sde_type 'ito'."""

    def __init__(self, noise_type: str):
        super().__init__(noise_type=noise_type, sde_type="ito")


class SDEStratonovich(BaseSDE):
    """torchsde's SDEStratonovich: a BaseSDE of sde_type 'stratonovich'."""

    def __init__(self, noise_type: str):
        super().__init__(noise_type=noise_type, sde_type="stratonovich")

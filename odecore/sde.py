"""sdeint: stochastic differential equations with torchsde's interface (torchsde 0.2.6).

``sde`` has ``f(t, y)`` (drift) and ``g(t, y)`` (diffusion), ``noise_type`` in
``{'diagonal', 'scalar', 'additive', 'general'}`` and ``sde_type`` in ``{'ito',
'stratonovich'}``. ``y0`` is (batch, d); the output is (len(ts), batch, d). Steps are fixed
(size ``dt``, the last one shortened to end on ``ts[-1]``) and outputs between steps are
linearly interpolated, as torchsde does. The Brownian motion ``bm`` is queried for every
step's increment ``bm(t0, t1)``; by default a seeded ``odecore.brownian.BrownianInterval``
on [ts[0], ts[-1]].

Methods (strong order): ``euler`` (Euler-Maruyama, Ito; 0.5, 1.0 for additive noise),
``milstein`` (Ito or Stratonovich, diagonal or additive noise; 1.0), ``heun`` and
``midpoint`` (Stratonovich; 0.5, 1.0 for commutative noise). Each step's update with
diagonal or scalar noise is one fused ``sde_step`` op; general and additive noise add
the matrix-vector product g dW first.

Kloeden & Platen, "Numerical Solution of Stochastic Differential Equations", 1992.
"""
import math

import torch

from .ops import BACKENDS, get_ops

NOISE_TYPES = ("diagonal", "scalar", "additive", "general")
SDE_TYPES = ("ito", "stratonovich")
METHODS = {
    "euler": ("ito",),
    "milstein": ("ito", "stratonovich"),
    "heun": ("stratonovich",),
    "midpoint": ("stratonovich",),
    "srk": ("ito",),
}
DEFAULT_METHOD = {"ito": "euler", "stratonovich": "midpoint"}


class _SDE:
    """The user's sde seen through `names`, with diffusion-times-increment products."""

    def __init__(self, sde, names):
        names = dict(names or {})
        unknown = set(names) - {"drift", "diffusion", "prior_drift", "drift_and_diffusion", "drift_and_diffusion_prod"}
        if unknown:
            raise ValueError("names has unknown keys %s" % sorted(unknown))
        self.f = getattr(sde, names.get("drift", "f"), None)
        self.g = getattr(sde, names.get("diffusion", "g"), None)
        if not callable(self.f) or not callable(self.g):
            raise TypeError("sde must have callable drift f(t, y) and diffusion g(t, y) methods (see names=)")
        self.noise_type = getattr(sde, "noise_type", None)
        self.sde_type = getattr(sde, "sde_type", None)
        if self.noise_type not in NOISE_TYPES:
            raise ValueError("sde.noise_type must be one of %s, got %r" % (NOISE_TYPES, self.noise_type))
        if self.sde_type not in SDE_TYPES:
            raise ValueError("sde.sde_type must be one of %s, got %r" % (SDE_TYPES, self.sde_type))
        self.matrix = self.noise_type in ("additive", "general")

    def check(self, y, f, g):
        batch, d = y.shape
        if not isinstance(f, torch.Tensor) or f.shape != y.shape:
            raise ValueError("sde.f returned shape %s, expected the state's %s" % (getattr(f, "shape", type(f)), tuple(y.shape)))
        expected = {"diagonal": (batch, d), "scalar": (batch, d, 1)}.get(self.noise_type)
        if expected is not None and g.shape != expected:
            raise ValueError("sde.g returned shape %s, expected %s for %s noise" % (tuple(g.shape), expected, self.noise_type))
        if self.matrix and (g.dim() != 3 or g.shape[:2] != (batch, d)):
            raise ValueError("sde.g returned shape %s, expected (%d, %d, m) for %s noise" % (tuple(g.shape), batch, d, self.noise_type))

    def brownian_size(self, y, g):
        return {"diagonal": y.shape, "scalar": (y.shape[0], 1)}.get(self.noise_type, (y.shape[0], g.shape[-1]))

    def elementwise(self, g, dw):
        """g and dW as tensors of the state's shape for the fused update (diagonal, scalar),
        or (g dW, ones) for matrix noise."""
        if self.noise_type == "diagonal":
            return g, dw
        if self.noise_type == "scalar":
            return g.squeeze(-1), dw.expand(-1, g.shape[1])
        gdw = torch.bmm(g, dw.unsqueeze(-1)).squeeze(-1)
        return gdw, torch.ones_like(gdw)

    def gdg(self, t, y):
        """g * dg/dy elementwise (diagonal noise: sum_j g_j dg_i/dy_j with dg_i/dy_j = 0 off the diagonal)."""
        with torch.enable_grad():
            y = y.detach().requires_grad_(True) if not y.requires_grad else y
            g = self.g(t, y)
            (vjp,) = torch.autograd.grad(g, y, g, create_graph=torch.is_grad_enabled(), allow_unused=True)
        return torch.zeros_like(g) if vjp is None else vjp


def sdeint(sde, y0, ts, bm=None, method=None, dt=1e-3, adaptive=False, rtol=1e-5, atol=1e-4, dt_min=1e-5,
           options=None, names=None, logqp=False, extra=False, extra_solver_state=None):
    """Solves an SDE at the times `ts`; torchsde.sdeint's signature. Returns (len(ts), batch, d).

    Not yet supported (each raises NotImplementedError): ``adaptive=True``, ``logqp``,
    ``extra``/``extra_solver_state`` and the ``srk`` method. odecore's ``options``:
    ``backend`` ('fused' or 'reference').
    """
    for flag, name in ((adaptive, "adaptive"), (logqp, "logqp"), (extra, "extra"), (extra_solver_state is not None, "extra_solver_state")):
        if flag:
            raise NotImplementedError("odecore.sdeint does not support %s yet" % name)
    s = _SDE(sde, names)
    if not isinstance(y0, torch.Tensor) or not torch.is_floating_point(y0):
        raise TypeError("y0 must be a floating point tensor")
    if y0.dim() != 2:
        raise ValueError("y0 must be of shape (batch, d), got %s" % (tuple(y0.shape),))
    if not bool(torch.isfinite(y0).all()):
        raise ValueError("y0 contains NaN or inf")
    if not isinstance(ts, torch.Tensor) or ts.dim() != 1 or len(ts) < 1:
        raise ValueError("ts must be a non-empty 1-D tensor")
    times = ts.detach().tolist()
    if any(not b > a for a, b in zip(times[:-1], times[1:])):
        raise ValueError("ts must be strictly increasing")
    if not (isinstance(dt, (int, float)) and dt > 0 and math.isfinite(dt)):
        raise ValueError("dt must be a positive float, got %r" % (dt,))
    method = DEFAULT_METHOD[s.sde_type] if method is None else method
    if method not in METHODS:
        raise ValueError('method must be one of %s, got %r' % (sorted(METHODS), method))
    if method == "srk":
        raise NotImplementedError("odecore.sdeint does not support method='srk' yet; use 'euler' or 'milstein'")
    if s.sde_type not in METHODS[method]:
        raise ValueError("method %r does not solve %s SDEs (it solves %s)" % (method, s.sde_type, ", ".join(METHODS[method])))
    if method == "milstein" and s.noise_type not in ("diagonal", "additive"):
        raise ValueError("method 'milstein' needs diagonal or additive noise, got %s" % s.noise_type)
    options = dict(options or {})
    backend = options.pop("backend", None)
    if backend is not None and backend not in BACKENDS:
        raise ValueError("options['backend'] must be one of %s, got %r" % (BACKENDS, backend))
    if options:
        raise ValueError("unknown options %s" % sorted(options))
    ops = get_ops(backend, y0.device)

    def tensor_time(v):
        return torch.scalar_tensor(v, dtype=y0.dtype, device=y0.device)

    if bm is None:
        from .brownian import BrownianInterval

        g0 = s.g(tensor_time(times[0]), y0)
        s.check(y0, s.f(tensor_time(times[0]), y0), g0)
        bm = BrownianInterval(t0=times[0], t1=times[-1], size=s.brownian_size(y0, g0), dtype=y0.dtype, device=y0.device)
    correction_ito = 1.0 if s.sde_type == "ito" else 0.0
    checked = [bm is None]

    def step(t0, t1, y):
        h = t1 - t0
        dw = bm(t0, t1)
        tt = tensor_time(t0)
        if method in ("euler", "milstein"):
            f, g = s.f(tt, y), s.g(tt, y)
            if not checked[0]:
                s.check(y, f, g)
                checked[0] = True
            g_e, dw_e = s.elementwise(g, dw)
            gdg = s.gdg(tt, y) if method == "milstein" and s.noise_type == "diagonal" else None
            return ops.sde_step(y, f, g_e, dw_e, gdg, h, correction_ito * h)
        if method == "heun":
            f0, g0 = s.f(tt, y), s.g(tt, y)
            g0_e, dw_e = s.elementwise(g0, dw)
            y_pred = ops.sde_step(y, f0, g0_e, dw_e, None, h, 0.0)
            t1t = tensor_time(t1)
            f1, g1 = s.f(t1t, y_pred), s.g(t1t, y_pred)
            g1_e, _ = s.elementwise(g1, dw)
            return ops.sde_step(y, 0.5 * (f0 + f1), 0.5 * (g0_e + g1_e), dw_e, None, h, 0.0)
        # midpoint
        f0, g0 = s.f(tt, y), s.g(tt, y)
        g0_e, dw_e = s.elementwise(g0, dw)
        y_mid = y + 0.5 * (f0 * h + g0_e * dw_e)
        tm = tensor_time(t0 + 0.5 * h)
        fm, gm = s.f(tm, y_mid), s.g(tm, y_mid)
        gm_e, _ = s.elementwise(gm, dw)
        return ops.sde_step(y, fm, gm_e, dw_e, None, h, 0.0)

    ys = [y0]
    t, y = times[0], y0
    prev_t, prev_y = t, y
    for out_t in times[1:]:
        while t < out_t:
            next_t = min(t + dt, times[-1])
            prev_t, prev_y = t, y
            y = step(t, next_t, y)
            t = next_t
        if out_t == t:
            ys.append(y)
        else:
            x = (out_t - prev_t) / (t - prev_t)
            ys.append(prev_y + x * (y - prev_y))
    out = torch.stack(ys)
    if not bool(torch.isfinite(out.detach()).all()):
        bad = int((~torch.isfinite(out.detach()).reshape(len(times), -1).all(1)).nonzero()[0, 0])
        raise RuntimeError("non-finite values in the SDE solution at t=%r, dt=%r" % (times[bad], dt))
    return out

"""sdeint: stochastic differential equations with torchsde's interface (torchsde 0.2.6).

``sde`` has ``f(t, y)`` (drift) and ``g(t, y)`` (diffusion), ``noise_type`` in
``{'diagonal', 'scalar', 'additive', 'general'}`` and ``sde_type`` in ``{'ito',
'stratonovich'}``. ``y0`` is (batch, d); the output is (len(ts), batch, d). Steps are of
size ``dt`` (the last one shortened to end on ``ts[-1]``), or adaptive, and outputs between
steps are linearly interpolated, as torchsde does. The Brownian motion ``bm`` is queried for
every step's increment ``bm(t0, t1)`` (``bm(t0, t1, return_U=True)`` for srk); by default a
seeded ``odecore.brownian.BrownianInterval`` on [ts[0], ts[-1]] (with
``levy_area_approximation='space-time'`` for srk).

Methods (strong order): ``euler`` (Euler-Maruyama, Ito; 0.5, 1.0 for additive noise),
``milstein`` (Ito or Stratonovich, diagonal or additive noise; 1.0), ``heun`` and
``midpoint`` (Stratonovich; 0.5, 1.0 for commutative noise), ``srk`` (Ito; diagonal,
scalar or additive noise). Each step's update of euler/milstein/heun/midpoint with
diagonal or scalar noise is one fused ``sde_step`` op; general and additive noise add
the matrix-vector product g dW first.

``srk`` is torchsde's: Roessler's (2010) stochastic Runge-Kutta schemes SRID2 (diagonal and
scalar noise, 4 stages) and SRA1 (additive noise, 2 stages), driven by I = W and
I_(k,0) = U = int_t0^t1 (W_u - W_t0) du of each step, so it needs a Brownian motion with a
space-time Levy area (``levy_area_approximation`` 'space-time', 'davie' or 'foster';
ValueError otherwise). Strong order 1.5 for diagonal/scalar noise and for additive noise
(2 when the drift is linear, e.g. Ornstein-Uhlenbeck, where SRA1's order-1.5 error term
vanishes). Its results equal torchsde's srk on the same Brownian path to rounding.

``adaptive=True`` is torchsde's step doubling: each attempt takes one step of size h and two
of h/2 on the same Brownian path, the error is the RMS over all elements of
(y_h - y_h/2) / (rtol max(|y_h|, |y_h/2|) + atol), the step size follows torchsde's PI
controller (safety 0.9, factor in [0.2, 1.4], never shrinking after an accepted step), the
two half steps' result is kept when the error is <= 1 or the step is at ``dt_min`` (with
torchsde's warning "Hitting minimum allowed step size"), and ``dt`` is the first step size.
Any method may be adaptive (torchsde warns for euler with non-additive noise, so do we).

``logqp=True`` is torchsde's: ``sde`` must also have the prior drift ``h(t, y)`` (or
``names={'prior_drift': ...}``); the state gets one more coordinate with drift
0.5 |u|^2 and no diffusion, u = (f - h) / g (diagonal noise; torchsde's |g| >= 1e-7 guard)
or u = pinv(g) (f - h) (scalar, additive, general noise), solved with the same method, and
sdeint returns (ys, log_ratio), log_ratio of shape (len(ts) - 1, batch) the increments
of int 0.5 |u|^2 dt over [ts[i], ts[i + 1]]. With diagonal noise torchsde's Brownian motion
has d + 1 channels (one per augmented coordinate); a motion of d channels is accepted too.

Differences from torchsde
-------------------------
* The default method for Ito SDEs is ``euler`` (torchsde: ``srk`` unless the noise is
  general).
* Not supported (NotImplementedError): ``extra=True`` and ``extra_solver_state`` (none of
  our methods has solver state); torchsde's ``euler_heun``, ``reversible_heun``,
  ``log_ode`` and adjoint-only methods.
* With ``adaptive=True``, ``dt_min`` must be > 0 and ``rtol``, ``atol`` >= 0 (ValueError;
  torchsde does not check). Adaptive runs of srk and additive-noise euler take the same
  steps as torchsde's on the same Brownian path; for the fused Milstein / midpoint /
  Heun updates a last-bit difference in the error estimate can move a step, so their
  adaptive runs match torchsde's only statistically.

Kloeden & Platen, "Numerical Solution of Stochastic Differential Equations", 1992.
Roessler, "Runge-Kutta methods for the strong approximation of solutions of stochastic
differential equations", SIAM J. Numer. Anal. 48(3), 2010.
"""

import math
import warnings

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
SRK_NOISE_TYPES = ("diagonal", "scalar", "additive")
LEVY_AREAS = ("space-time", "davie", "foster")  # what srk accepts on the Brownian motion
# Default bound on the steps (attempts, when adaptive) between two output times, as odeint's.
MAX_NUM_STEPS = 2**31 - 1


class _Tableau:
    def __init__(self, **kw):
        self.__dict__.update(kw)


# Roessler (2010), "Runge-Kutta methods for the strong approximation of solutions of
# stochastic differential equations", SIAM J. Numer. Anal. 48(3): the Ito schemes torchsde's
# srk uses. SRID2: diagonal (and scalar) noise, SRA1: additive noise; both strong order 1.5.
srid2 = _Tableau(
    STAGES=4,
    C0=(0, 1, 1 / 2, 0),
    C1=(0, 1 / 4, 1, 1 / 4),
    A0=((), (1,), (1 / 4, 1 / 4), (0, 0, 0)),
    A1=((), (1 / 4,), (1, 0), (0, 0, 1 / 4)),
    B0=((), (0,), (1, 1 / 2), (0, 0, 0)),
    B1=((), (-1 / 2,), (1, 0), (2, -1, 1 / 2)),
    alpha=(1 / 6, 1 / 6, 2 / 3, 0),
    beta1=(-1, 4 / 3, 2 / 3, 0),
    beta2=(1, -4 / 3, 1 / 3, 0),
    beta3=(2, -4 / 3, -2 / 3, 0),
    beta4=(-2, 5 / 3, -2 / 3, 1),
)
sra1 = _Tableau(
    STAGES=2,
    C0=(0, 3 / 4),
    C1=(1, 0),
    A0=((), (3 / 4,)),
    B0=((), (3 / 2,)),
    alpha=(1 / 3, 2 / 3),
    beta1=(1, 0),
    beta2=(-1, 1),
)


class _SDE:
    """The user's sde seen through `names`, with diffusion-times-increment products."""

    def __init__(self, sde, names, logqp=False):
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
        if logqp:
            h = getattr(sde, names.get("prior_drift", "h"), None)
            if not callable(h):
                raise TypeError(
                    "logqp=True needs the prior drift h(t, y) as a method of sde (or names={'prior_drift': ...})"
                )
            self.f, self.g = self._logqp(self.f, self.g, h, self.noise_type == "diagonal")

    @staticmethod
    def _logqp(f, g, h, diagonal):
        """torchsde's logqp augmentation: the state gets one more coordinate, with drift
        0.5 |u|^2, u = (f - h) / g (diagonal noise; |g| clamped to >= 1e-7 as torchsde's
        stable_division) or u = pinv(g) (f - h) (matrix and scalar noise), and no diffusion."""

        def f_aug(t, y):
            x = y[:, :-1]
            fx, gx, hx = f(t, x), g(t, x), h(t, x)
            if diagonal:
                gs = torch.where(gx.abs().detach() > 1e-7, gx, torch.full_like(gx, 1e-7) * gx.sign())
                u = (fx - hx) / gs
            else:
                u = torch.bmm(gx.pinverse(), (fx - hx).unsqueeze(-1)).squeeze(-1)
            return torch.cat([fx, 0.5 * (u**2).sum(dim=1, keepdim=True)], dim=1)

        def g_aug(t, y):
            gx = g(t, y[:, :-1])
            if diagonal:
                return torch.cat([gx, gx.new_zeros(gx.shape[0], 1)], dim=1)
            return torch.cat([gx, gx.new_zeros(gx.shape[0], 1, gx.shape[-1])], dim=1)

        return f_aug, g_aug

    @staticmethod
    def _check_g(g):
        if not isinstance(g, torch.Tensor):
            raise TypeError("sde.g must return a torch.Tensor, got %s" % type(g).__name__)

    def check(self, y, f, g):
        batch, d = y.shape
        self._check_g(g)
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

    def brownian_size(self, y, g):
        self._check_g(g)
        return {"diagonal": y.shape, "scalar": (y.shape[0], 1)}.get(self.noise_type, (y.shape[0], g.shape[-1]))

    def check_increment(self, y, g, dw, name="bm(t0, t1)"):
        """The Brownian motion's increment has the shape the noise type needs."""
        if not isinstance(dw, torch.Tensor):
            raise TypeError("%s must return a torch.Tensor, got %s" % (name, type(dw).__name__))
        expected = tuple(self.brownian_size(y, g))
        if tuple(dw.shape) != expected:
            raise ValueError(
                "%s returned shape %s, expected %s for %s noise (bm's size)"
                % (name, tuple(dw.shape), expected, self.noise_type)
            )

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
            self._check_g(g)
            if not g.requires_grad:  # g does not depend on y (e.g. a constant): dg/dy = 0
                return torch.zeros_like(g)
            (vjp,) = torch.autograd.grad(g, y, g, create_graph=torch.is_grad_enabled(), allow_unused=True)
        return torch.zeros_like(g) if vjp is None else vjp


class _PaddedBrownian:
    """logqp with diagonal noise: torchsde's Brownian motion has one channel per augmented
    state coordinate (d + 1); this one lets a motion of the state's d channels be used too
    (the log-ratio coordinate has no noise, so its channel is zero)."""

    def __init__(self, bm):
        self.bm = bm
        self.levy_area_approximation = getattr(bm, "levy_area_approximation", None)

    def __call__(self, ta, tb, return_U=False):
        out = self.bm(ta, tb, return_U=return_U)

        def pad(x):
            return torch.cat([x, x.new_zeros(*x.shape[:-1], 1)], dim=-1)

        return tuple(pad(x) for x in out) if return_U else pad(out)


def _error_estimate(y_full, y_half, rtol, atol, eps=1e-7, t=None, dt=None):
    """torchsde's step-doubling error: RMS over all elements of (y_full - y_half) / tol,
    tol = rtol max(|y_full|, |y_half|) + atol (both floored at eps)."""
    tol = (rtol * torch.max(y_full.abs(), y_half.abs()) + atol).clamp_min(eps)
    err = (((y_full - y_half) / tol) ** 2).sum().div(max(y_full.numel(), 1)).sqrt().clamp_min(eps)
    err = float(err)
    if math.isnan(err):
        raise RuntimeError(
            "non-finite values (NaN or inf) in the adaptive step's error estimate at t=%r, dt=%r; "
            "sde.f or sde.g returned NaN/inf or the solution overflowed" % (t, dt)
        )
    return err


def _next_step_size(error, step_size, prev_ratio, safety=0.9, facmin=0.2, facmax=1.4):
    """torchsde's step size controller (adaptive_stepping.update_step_size): a PI controller
    on the error ratio safety / error, exponents 1/4.5 and 0.13 after an accepted step,
    1/1.5 and 0 after a rejected one; the factor is clamped to [facmin, facmax], and to
    [1, facmax] after an accepted step. Returns (new step size, ratio for the next call)."""
    if math.isinf(error):  # the limit of the formula below (ratio 0): a rejected step, shrunk by facmin
        return step_size * facmin, prev_ratio
    if error > 1:
        pfactor, ifactor = 0.0, 1 / 1.5
    else:
        pfactor, ifactor = 0.13, 1 / 4.5
    ratio = safety / error
    if prev_ratio is None:
        prev_ratio = ratio
    factor = ratio**ifactor * (ratio / prev_ratio) ** pfactor
    if error <= 1:
        prev_ratio = ratio
        facmin = 1.0
    factor = min(facmax, max(facmin, factor))
    return step_size * factor, prev_ratio


def _positive_number(x, name, allow_zero=False):
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    bad = isinstance(x, bool) or not isinstance(x, (int, float))
    if bad or not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        raise ValueError("%s must be a %s float, got %r" % (name, "non-negative" if allow_zero else "positive", x))
    return float(x)


def sdeint(
    sde,
    y0,
    ts,
    bm=None,
    method=None,
    dt=1e-3,
    adaptive=False,
    rtol=1e-5,
    atol=1e-4,
    dt_min=1e-5,
    options=None,
    names=None,
    logqp=False,
    extra=False,
    extra_solver_state=None,
):
    """Solves an SDE at the times `ts`; torchsde.sdeint's signature. Returns (len(ts), batch, d),
    or with ``logqp=True`` the pair (ys, log_ratio), log_ratio of shape (len(ts) - 1, batch)
    holding the increments over [ts[i], ts[i + 1]] of int 0.5 |u|^2 dt (u = (f - h) / g, see
    the module docstring).

    ``adaptive=True`` uses torchsde's step doubling with ``rtol``, ``atol`` and ``dt_min``
    (``dt`` is then the first step size). Not yet supported (NotImplementedError):
    ``extra``/``extra_solver_state``. odecore's ``options``: ``backend`` ('fused' or
    'reference') and ``max_num_steps`` (the most steps, or adaptive attempts, between two
    output times; RuntimeError naming t and dt beyond it, as odeint's).
    """
    for flag, name in ((extra, "extra"), (extra_solver_state is not None, "extra_solver_state")):
        if flag:
            raise NotImplementedError("odecore.sdeint does not support %s yet" % name)
    logqp = bool(logqp)
    s = _SDE(sde, names, logqp)
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
        raise ValueError("method must be one of %s, got %r" % (sorted(METHODS), method))
    if s.sde_type not in METHODS[method]:
        raise ValueError(
            "method %r does not solve %s SDEs (it solves %s)" % (method, s.sde_type, ", ".join(METHODS[method]))
        )
    if method == "milstein" and s.noise_type not in ("diagonal", "additive"):
        raise ValueError("method 'milstein' needs diagonal or additive noise, got %s" % s.noise_type)
    if method == "srk" and s.noise_type not in SRK_NOISE_TYPES:
        raise ValueError("method 'srk' needs diagonal, scalar or additive noise, got %s" % s.noise_type)
    if adaptive:
        rtol = _positive_number(rtol, "rtol", allow_zero=True)
        atol = _positive_number(atol, "atol", allow_zero=True)
        dt_min = _positive_number(dt_min, "dt_min")
        if method == "euler" and s.noise_type != "additive":
            warnings.warn(
                "Numerical solution is not guaranteed to converge to the correct solution when using "
                "adaptive time-stepping with the Euler--Maruyama method with non-additive noise."
            )
    if options is not None and not isinstance(options, dict):
        raise TypeError("options must be a dict, got %s" % type(options).__name__)
    options = dict(options or {})
    backend = options.pop("backend", None)
    if backend is not None and backend not in BACKENDS:
        raise ValueError("options['backend'] must be one of %s, got %r" % (BACKENDS, backend))
    max_num_steps = options.pop("max_num_steps", MAX_NUM_STEPS)
    if isinstance(max_num_steps, bool) or not isinstance(max_num_steps, int) or max_num_steps < 0:
        raise ValueError("options['max_num_steps'] must be a non-negative int, got %r" % (max_num_steps,))
    if options:
        raise ValueError("unknown options %s" % sorted(options))
    ops = get_ops(backend, y0.device)

    def tensor_time(v):
        return torch.scalar_tensor(v, dtype=y0.dtype, device=y0.device)

    d = y0.shape[1]
    if logqp:  # torchsde's augmented state: the log-ratio integral as one more coordinate
        y0 = torch.cat([y0, y0.new_zeros(y0.shape[0], 1)], dim=1)
    if bm is None:
        from .brownian import BrownianInterval

        g0 = s.g(tensor_time(times[0]), y0)
        s.check(y0, s.f(tensor_time(times[0]), y0), g0)
        bm = BrownianInterval(
            t0=times[0],
            t1=times[-1],
            size=s.brownian_size(y0, g0),
            dtype=y0.dtype,
            device=y0.device,
            levy_area_approximation="space-time" if method == "srk" else "none",
        )
    elif logqp and s.noise_type == "diagonal" and tuple(getattr(bm, "shape", ()))[-1:] == (d,):
        bm = _PaddedBrownian(bm)
    if method == "srk":
        levy = getattr(bm, "levy_area_approximation", None)
        if levy not in LEVY_AREAS:
            raise ValueError(
                "method 'srk' needs a Brownian motion with a space-time Levy area, e.g. "
                "BrownianInterval(..., levy_area_approximation='space-time'); bm has "
                "levy_area_approximation=%r" % (levy,)
            )
    correction_ito = 1.0 if s.sde_type == "ito" else 0.0
    checked = [bm is None, bm is None]  # (f and g, the Brownian increments) checked once

    def step(t0, t1, y):
        h = t1 - t0
        if method == "srk":
            return srk_step(t0, t1, y)
        dw = bm(t0, t1)
        tt = tensor_time(t0)
        if method in ("euler", "milstein"):
            f, g = s.f(tt, y), s.g(tt, y)
            if not checked[0]:
                s.check(y, f, g)
                checked[0] = True
            if not checked[1]:
                s.check_increment(y, g, dw)
                checked[1] = True
            g_e, dw_e = s.elementwise(g, dw)
            gdg = s.gdg(tt, y) if method == "milstein" and s.noise_type == "diagonal" else None
            return ops.sde_step(y, f, g_e, dw_e, gdg, h, correction_ito * h)
        if method == "heun":
            f0, g0 = s.f(tt, y), s.g(tt, y)
            if not checked[1]:
                s.check(y, f0, g0)
                s.check_increment(y, g0, dw)
                checked[1] = True
            g0_e, dw_e = s.elementwise(g0, dw)
            y_pred = ops.sde_step(y, f0, g0_e, dw_e, None, h, 0.0)
            t1t = tensor_time(t1)
            f1, g1 = s.f(t1t, y_pred), s.g(t1t, y_pred)
            g1_e, _ = s.elementwise(g1, dw)
            return ops.sde_step(y, 0.5 * (f0 + f1), 0.5 * (g0_e + g1_e), dw_e, None, h, 0.0)
        # midpoint
        f0, g0 = s.f(tt, y), s.g(tt, y)
        if not checked[1]:
            s.check(y, f0, g0)
            s.check_increment(y, g0, dw)
            checked[1] = True
        g0_e, dw_e = s.elementwise(g0, dw)
        y_mid = y + 0.5 * (f0 * h + g0_e * dw_e)
        tm = tensor_time(t0 + 0.5 * h)
        fm, gm = s.f(tm, y_mid), s.g(tm, y_mid)
        gm_e, _ = s.elementwise(gm, dw)
        return ops.sde_step(y, fm, gm_e, dw_e, None, h, 0.0)

    def srk_step(t0, t1, y):
        """Rossler (2010): SRID2 (diagonal, scalar noise) or SRA1 (additive noise), with
        I = W and I_(k,0) = U = int (W_u - W_t0) du over the step, as torchsde's srk."""
        h = t1 - t0
        rh = 1.0 / h
        I, I0 = bm(t0, t1, return_U=True)
        if not checked[1]:
            g0 = s.g(tensor_time(t0), y)
            s.check(y, s.f(tensor_time(t0), y), g0)
            s.check_increment(y, g0, I, "bm(t0, t1, return_U=True)[0]")
            s.check_increment(y, g0, I0, "bm(t0, t1, return_U=True)[1]")
            checked[1] = True
        if s.noise_type == "additive":
            # SRA1: g is evaluated at y0 (additive noise does not depend on the state)
            F, G = [], {}

            def g_at(c):  # g(t0 + c h, y0), once per distinct time
                if c not in G:
                    G[c] = s.g(tensor_time(t0 + c * h), y)
                return G[c]

            def g_prod(c, v):
                return torch.bmm(g_at(c), v.unsqueeze(-1)).squeeze(-1)

            y1 = y
            for i in range(sra1.STAGES):
                Hi = y
                for j in range(i):
                    Hi = Hi + sra1.A0[i][j] * F[j] * h + g_prod(sra1.C1[j], sra1.B0[i][j] * I0 * rh)
                F.append(s.f(tensor_time(t0 + sra1.C0[i] * h), Hi))
                if i == 0 and not checked[0]:
                    s.check(y, F[0], g_at(sra1.C1[0]))
                    checked[0] = True
                weight = sra1.beta2[i] * I0 * rh
                if sra1.beta1[i] != 0:
                    weight = sra1.beta1[i] * I + weight
                y1 = y1 + sra1.alpha[i] * F[i] * h + g_prod(sra1.C1[i], weight)
            return y1

        # SRID2: diagonal g (batch, d), or scalar g (batch, d, 1) times (batch, 1) weights
        sqrt_h = math.sqrt(h)
        Ikk = (I**2 - h) * 0.5
        Ikkk = (I**3 - 3 * h * I) * (1 / 6)
        F, G = [], []
        y1 = y
        for i in range(srid2.STAGES):
            H0, H1 = y, y
            for j in range(i):  # zero coefficients skipped (x + 0 * y == x)
                if srid2.A0[i][j] != 0:
                    H0 = H0 + srid2.A0[i][j] * F[j] * h
                if srid2.B0[i][j] != 0:
                    H0 = H0 + srid2.B0[i][j] * G[j] * I0 * rh
                if srid2.A1[i][j] != 0:
                    H1 = H1 + srid2.A1[i][j] * F[j] * h
                if srid2.B1[i][j] != 0:
                    H1 = H1 + srid2.B1[i][j] * G[j] * sqrt_h
            needed = srid2.alpha[i] != 0 or any(
                srid2.A0[k][i] != 0 or srid2.A1[k][i] != 0 for k in range(i + 1, srid2.STAGES)
            )
            F.append(s.f(tensor_time(t0 + srid2.C0[i] * h), H0) if needed else None)
            g = s.g(tensor_time(t0 + srid2.C1[i] * h), H1)
            if i == 0 and not checked[0]:
                s.check(y, F[0], g)
                checked[0] = True
            G.append(g.squeeze(2) if g.dim() == 3 else g)
            weight = (
                srid2.beta1[i] * I
                + srid2.beta2[i] * Ikk / sqrt_h
                + srid2.beta3[i] * I0 * rh
                + srid2.beta4[i] * Ikkk * rh
            )
            if srid2.alpha[i] != 0:
                y1 = y1 + srid2.alpha[i] * F[i] * h
            y1 = y1 + G[i] * weight
        return y1

    ys = [y0]
    t, y = times[0], y0
    prev_t, prev_y = t, y
    step_size, prev_ratio = dt, None
    for out_t in times[1:]:
        steps_here = 0
        if not adaptive and (out_t - t) / step_size > max_num_steps:
            # the fixed steps to this output time would exceed the bound: say so now, not after
            # max_num_steps of them (a tiny dt would otherwise run for hours)
            raise RuntimeError(
                "max_num_steps exceeded (%d steps) at t=%r, dt=%r: about %.3g steps of dt are needed to "
                "reach the output time %r" % (max_num_steps, t, step_size, (out_t - t) / step_size, out_t)
            )
        while t < out_t:
            if steps_here >= max_num_steps:
                raise RuntimeError("max_num_steps exceeded (%d steps) at t=%r, dt=%r" % (max_num_steps, t, step_size))
            steps_here += 1
            next_t = min(t + step_size, times[-1])
            if not adaptive:
                if not next_t > t:
                    raise RuntimeError(
                        "step size underflow: t=%r, dt=%r; t + dt == t (dt is too small for the "
                        "magnitude of t)" % (t, step_size)
                    )
                prev_t, prev_y = t, y
                y = step(t, next_t, y)
                t = next_t
                continue
            # step doubling: one step of size h against two of h / 2 on the same Brownian path
            mid_t = 0.5 * (t + next_t)
            if not t < mid_t < next_t:
                raise RuntimeError("adaptive step size %r underflows at t=%r" % (next_t - t, t))
            y_full = step(t, next_t, y)
            y_half = step(mid_t, next_t, step(t, mid_t, y))
            with torch.no_grad():
                error = _error_estimate(y_full, y_half, rtol, atol, t=t, dt=next_t - t)
            step_size, prev_ratio = _next_step_size(error, step_size, prev_ratio)
            if step_size < dt_min:
                warnings.warn("Hitting minimum allowed step size in adaptive time-stepping.")
                step_size, prev_ratio = dt_min, None
            if error <= 1 or step_size <= dt_min:  # accept
                prev_t, prev_y = t, y
                t, y = next_t, y_half
        if out_t == t:
            ys.append(y)
        else:
            x = (out_t - prev_t) / (t - prev_t)
            ys.append(prev_y + x * (y - prev_y))
    out = torch.stack(ys)
    if not bool(torch.isfinite(out.detach()).all()):
        bad = int((~torch.isfinite(out.detach()).reshape(len(times), -1).all(1)).nonzero()[0, 0])
        raise RuntimeError("non-finite values in the SDE solution at t=%r, dt=%r" % (times[bad], dt))
    if logqp:
        log_ratio = out[..., d]
        return out[..., :d], log_ratio[1:] - log_ratio[:-1]
    return out

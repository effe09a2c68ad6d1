"""Implicit Runge-Kutta methods on the fixed grid, stage equations solved by Newton's method.

A step solves for the stage increments Z_i = Y_i - y0 of the implicit stages

    G(Z)_i = Z_i - dt * sum_j a_ij f(t0 + c_j dt, y0 + Z_j) = 0

by simplified Newton iterations: the Jacobian J = df/dy(t0, y0) is formed once per step
(by autograd: one batched vector-Jacobian product per row; by forward differences when
func's output carries no graph, as in the adjoint's augmented dynamics), the matrix
I - dt * (A kron J) is LU-factorised once (torch.linalg.lu_factor), and every iteration
costs one evaluation of f per implicit stage and one triangular solve. The iteration stops
when the update is within tolerance,

    rms(dZ / (atol + rtol * max(|y0|, |y0 + Z|) + 16 eps (|y0| + |Z|))) <= 1,

(the eps term: the update cannot shrink below rounding), and raises RuntimeError naming t
and dt when ``max_iters`` iterations (default 100, torchdiffeq's) do not get there or the
iterates stop being finite. A stage whose row of A is zero (c = 0: trapezoid, trbdf2) is
f(t0, y0) itself. The solution is y1 = y0 + dt * e * f0 + sum_i d_i Z_i with d = b A^-1
(over the implicit stages; Hairer & Wanner, "Solving ODEs II", IV.8), which equals
y0 + dt * sum_i b_i f(Y_i) at the solution without the further evaluations and without
multiplying the remaining error by the stiff dt * J.

Gradients flow by backpropagation through the iterations (J is a constant of the graph;
the iteration contracts the derivative as it does the error, to about the same tolerance).
"""

import math

import torch

from .base import Perturb
from .fixed_grid_increment import FixedGridIncrementSolver

MAX_ITERS = 100


def _reaches_other_leaves(f, x):
    """Whether f's graph reaches a tensor that requires grad other than x (a parameter)."""
    seen, stack = set(), [f.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf
        if variable is not None:
            if variable is not x:
                return True
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


class FixedGridImplicitRKSolver(FixedGridIncrementSolver):
    """Base of the implicit fixed-grid methods: a subclass sets `tableau` (ImplicitTableau)
    and `order`. Options: ``max_iters`` (100) and the fixed-grid ones."""

    tableau = None
    order = None

    def __init__(self, func, y0, rtol=None, atol=None, *, max_iters=MAX_ITERS, **kwargs):
        super().__init__(func, y0, rtol, atol, **kwargs)
        if (
            isinstance(max_iters, bool)
            or not isinstance(max_iters, (int, float))
            or not math.isfinite(max_iters)
            or int(max_iters) != max_iters
            or max_iters < 1
        ):
            raise ValueError("max_iters must be a positive integer, got {!r}".format(max_iters))
        self.max_iters = int(max_iters)
        n = y0.numel()
        flat = y0.reshape(-1)
        # odeint's defaults when the class is built directly
        self.rtol = self._tolerance(rtol, 1e-7, flat)
        self.atol = self._tolerance(atol, 1e-9, flat)
        tab = self.tableau
        dtype, device = y0.dtype, y0.device
        self._a = torch.tensor(tab.a_implicit, dtype=dtype, device=device)
        self._a_explicit = torch.tensor(tab.a_explicit, dtype=dtype, device=device).unsqueeze(1)
        self._c = [tab.c[i] for i in tab.implicit]
        self._c_tensor = torch.tensor(self._c, dtype=dtype, device=device).unsqueeze(1)
        self._d = torch.tensor(tab.d, dtype=dtype, device=device).unsqueeze(1)
        # torch.linalg has no half-precision LU: the Newton matrix of a float16 / bfloat16
        # state is factorised in float32
        self._lin_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        self._eye = torch.eye(len(tab.implicit) * n, dtype=self._lin_dtype, device=device)
        self._floor = 16 * torch.finfo(dtype).eps
        self.n_jacobians = 0
        self.n_newton_iters = 0

    # -- the Jacobian ----------------------------------------------------------------- #

    def _f0_and_jacobian(self, t0, y, perturb):
        """f(t0, y) (on the graph when gradients are recorded) and df/dy there as an
        (n, n) matrix off the graph."""
        self.n_jacobians += 1
        if torch.is_grad_enabled() and y.requires_grad:
            f0 = self.func(t0, y, perturb)
            return f0, self._autograd_jacobian(f0, y, t0, perturb)
        with torch.enable_grad():
            x = y.detach().requires_grad_(True)
            f = self.func(t0, x, perturb)
            jac = self._autograd_jacobian(f, x, t0, perturb)
        if torch.is_grad_enabled() and _reaches_other_leaves(f, x):
            return f, jac  # func's parameters need the graph of f0 (x is a leaf of no use)
        return f.detach(), jac

    def _autograd_jacobian(self, f, x, t0, perturb):
        n = x.numel()
        if n == 0:  # an empty state
            return f.new_zeros(0, 0)
        if not f.requires_grad:
            return self._fd_jacobian(f, x, t0, perturb)
        basis = torch.eye(n, dtype=f.dtype, device=f.device).reshape(n, *f.shape)
        try:
            (jac,) = torch.autograd.grad(f, x, basis, retain_graph=True, allow_unused=True, is_grads_batched=True)
        except (RuntimeError, NotImplementedError):  # an op vmap cannot batch: one product per row
            rows = [torch.autograd.grad(f, x, basis[i], retain_graph=True, allow_unused=True)[0] for i in range(n)]
            jac = None if rows[0] is None else torch.stack(rows)
        if jac is None:  # f does not depend on y
            return f.new_zeros(n, n)
        return jac.detach().reshape(n, n)

    def _fd_jacobian(self, f, x, t0, perturb):
        """Forward differences, for a func whose output has no graph."""
        with torch.no_grad():
            f = f.detach().reshape(-1)
            flat = x.detach().reshape(-1)
            sqrt_eps = math.sqrt(torch.finfo(flat.dtype).eps)
            cols = []
            for j in range(flat.numel()):
                xj = flat.clone()
                xj[j] += sqrt_eps * max(1.0, abs(float(flat[j])))
                h = xj[j] - flat[j]
                cols.append((self.func(t0, xj.view(x.shape), perturb).reshape(-1) - f) / h)
            return torch.stack(cols, dim=1)

    # -- the step --------------------------------------------------------------------- #

    def _times(self, t0, t1):
        dt = t1 - t0
        return [t1 if c == 1.0 else t0 if c == 0.0 else t0 + c * dt for c in self._c]

    def _stage_f(self, t, c, y):
        if c == 1.0:
            return self.func(t, y, Perturb.PREV if self.perturb else Perturb.NONE)
        if c == 0.0:
            return self.func(t, y, Perturb.NEXT if self.perturb else Perturb.NONE)
        return self.func(t, y)

    def _step(self, t0, t1, y):
        tab = self.tableau
        dt = t1 - t0
        shape = y.shape
        flat = y.reshape(-1)
        f0, jac = self._f0_and_jacobian(t0, y, Perturb.NEXT if self.perturb else Perturb.NONE)
        f0_flat = f0.reshape(-1)
        m = len(self._c)
        lin = self._lin_dtype
        lu, pivots = torch.linalg.lu_factor(self._eye - dt * torch.kron(self._a, jac).to(lin))
        base = dt * self._a_explicit * f0_flat if tab.explicit_first else None
        times = self._times(t0, t1)
        z = (dt * self._c_tensor) * f0_flat.detach()  # the stages on the tangent line
        ratio = math.inf
        for _ in range(self.max_iters):
            self.n_newton_iters += 1
            fz = torch.stack(
                [self._stage_f(ti, ci, (flat + zi).view(shape)).reshape(-1) for ti, ci, zi in zip(times, self._c, z)]
            )
            g = z - dt * (self._a @ fz)
            if base is not None:
                g = g - base
            dz = torch.linalg.lu_solve(lu, pivots, g.reshape(-1, 1).to(lin)).to(g.dtype).view(m, -1)
            z = z - dz
            ratio = self._update_ratio(dz, flat, z)
            if not math.isfinite(ratio):
                raise RuntimeError(
                    "%s: Newton's method for the stage equations produced non-finite values at t=%r, "
                    "dt=%r; use a smaller step" % (self._name(), self._user_time(t0), self._user_time(dt))
                )
            if ratio <= 1.0:
                break
        else:
            raise RuntimeError(
                "%s: Newton's method for the stage equations did not converge in %d iterations at t=%r, "
                "dt=%r (last update %.3g times the tolerance); use a smaller step or raise "
                "options['max_iters']" % (self._name(), self.max_iters, self._user_time(t0), self._user_time(dt), ratio)
            )
        dy = (self._d * z).sum(0)
        if tab.explicit_first and tab.e != 0.0:
            dy = dy + (dt * tab.e) * f0_flat
        return f0, dy.view(shape)

    def _update_ratio(self, dz, y, z):
        if dz.numel() == 0:  # an empty state: nothing to solve
            return 0.0
        with torch.no_grad():
            yz = (y + z).abs()
            scale = self.atol + self.rtol * torch.maximum(y.abs(), yz) + self._floor * (y.abs() + z.abs())
            scale = scale.clamp_min(torch.finfo(y.dtype).tiny)
            return float((dz / scale).pow(2).mean().sqrt())

    def _user_time(self, t):
        return self.func.time_sign * t if hasattr(self.func, "time_sign") else t

    def _name(self):
        return getattr(self, "name", type(self).__name__)

    def stats(self):
        out = super().stats()
        out.update(n_jacobians=self.n_jacobians, n_newton_iters=self.n_newton_iters)
        return out

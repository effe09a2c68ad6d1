"""``scipy_solver``: any ``scipy.integrate.solve_ivp`` method, as torchdiffeq 0.2.5's
ScipyWrapperODESolver.

``options={'solver': 'RK45' | 'RK23' | 'DOP853' | 'Radau' | 'BDF' | 'LSODA' (default) | an
OdeSolver subclass, 'min_step': 0, 'max_step': inf}``. The state goes to numpy as torchdiffeq
hands it (scipy works in float64, or complex128 for a complex state), func is called under
``torch.no_grad()`` with y back in y0's dtype and device, rtol/atol pass through unchanged
and solve_ivp evaluates at the output times (``t_eval``). ``norm``, ``grid_points`` and
``eps`` are ignored as in torchdiffeq; other unknown options warn.

As in torchdiffeq the result does not depend differentiably on y0 or func's parameters:
gradients come from ``odeint_adjoint``, whose backward augmented system scipy solves too
(with ``adjoint_method='scipy_solver'``, the default when ``method`` is). No callbacks
are supported (they warn).

Statistics: 'nfe' (every call of func, including the finite-difference Jacobians of the
implicit methods), 'n_accepted' (scipy's steps), 'n_steps' and 'n_rejected' (for the
explicit RK methods RK23/RK45/DOP853, whose attempts cost a known number of evaluations;
``None`` for Radau, BDF and LSODA, which do not expose their rejected attempts), 'final_dt'
(the step size scipy would try next), 'njev' and 'nlu'.
"""

import torch

from .base import warn_unused

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


class ScipyWrapperODESolver:
    differentiable = False  # the solve leaves torch: no graph (use odeint_adjoint)

    @classmethod
    def valid_callbacks(cls):
        return set()

    def __init__(
        self,
        func,
        y0,
        rtol,
        atol,
        *,
        ops=None,
        segments=None,
        min_step=0,
        max_step=float("inf"),
        solver="LSODA",
        norm=None,
        grid_points=None,
        eps=None,
        sync_every=None,
        **unused,
    ):
        warn_unused(type(self), unused)
        try:
            from scipy.integrate import solve_ivp
            from scipy.integrate._ivp.base import OdeSolver
            from scipy.integrate._ivp.ivp import METHODS
        except ImportError as err:  # pragma: no cover - scipy is a test dependency
            raise ImportError("method='scipy_solver' needs scipy (pip install scipy)") from err
        self._solve_ivp = solve_ivp
        if isinstance(solver, str):
            if solver not in METHODS:
                raise ValueError(
                    "options['solver'] must be one of %s or an OdeSolver subclass, got %r"
                    % (", ".join(map(repr, METHODS)), solver)
                )
            self.method_cls = METHODS[solver]
        elif isinstance(solver, type) and issubclass(solver, OdeSolver):
            self.method_cls = solver
        else:
            raise ValueError(
                "options['solver'] must be a solve_ivp method name or an OdeSolver subclass, got %r" % (solver,)
            )
        self.solver = solver
        self.func = func
        self.dtype, self.device, self.shape = y0.dtype, y0.device, y0.shape
        # a complex state arrives as its real view (..., 2); scipy integrates it as complex
        self.complex = bool(getattr(func, "complex_view", False))
        y0 = y0.detach()
        if self.complex:
            y0 = torch.view_as_complex(y0.contiguous())
        self.y0 = y0.cpu().numpy().reshape(-1)
        self.rtol, self.atol = self._tolerance(rtol), self._tolerance(atol)
        self.min_step, self.max_step = min_step, max_step
        self._stats = {"nfe": 0, "n_steps": 0, "n_accepted": 0, "n_rejected": 0, "final_dt": None}

    @staticmethod
    def _tolerance(tol):
        """odecore's float64 tolerance tensors back to what torchdiffeq passes: a float, or
        one value per element."""
        if isinstance(tol, torch.Tensor):
            tol = tol.detach().cpu()
            return tol.item() if tol.numel() == 1 else tol.numpy()
        return tol

    def _numpy_func(self):
        func, device, dtype, shape = self.func, self.device, self.dtype, self.shape
        complex_dtype = _COMPLEX.get(dtype)

        def np_func(t, y):
            if self.complex:
                y = torch.view_as_real(torch.tensor(y).to(device, complex_dtype)).reshape(shape)
            else:
                y = torch.reshape(torch.tensor(y).to(device, dtype), shape)
            with torch.no_grad():
                f = func(float(t), y)
            f = f.detach()
            if self.complex:
                f = torch.view_as_complex(f.reshape(-1, 2).contiguous())
            return f.cpu().numpy().reshape(-1)

        return np_func

    def integrate(self, t, t_tensor, recorder=None):
        """Solves at the increasing float times `t` (`t_tensor` holds them in t's dtype)."""
        if recorder is not None:
            raise ValueError(
                "options['checkpoint'] is not supported by method='scipy_solver' (scipy's steps cannot be "
                "replayed); use odeint_adjoint for gradients"
            )
        record = {"solver": None, "accepted": 0, "attempts": 0}
        times = t_tensor.detach().cpu().numpy()
        sol = self._solve_ivp(
            self._numpy_func(),
            t_span=[times.min(), times.max()],
            y0=self.y0,
            t_eval=times,
            method=_counting(self.method_cls, record),
            rtol=self.rtol,
            atol=self.atol,
            min_step=self.min_step,
            max_step=self.max_step,
        )
        self._record_stats(record, sol)
        if not sol.success or sol.y.shape[1] != len(times):
            raise RuntimeError(
                "scipy_solver (%s) failed: %s (reached t=%r of %r)"
                % (
                    getattr(self.method_cls, "__name__", self.solver),
                    sol.message,
                    float(sol.t[-1]) if len(sol.t) else float(times[0]),
                    float(times[-1]),
                )
            )
        out = torch.tensor(sol.y).T
        if self.complex:
            out = torch.view_as_real(out.to(self.device, _COMPLEX[self.dtype]).contiguous())
        else:
            out = out.to(self.device, self.dtype).contiguous()
        return out.reshape(-1, *self.shape)

    def _record_stats(self, record, sol):
        solver = record["solver"]
        n_stages = getattr(self.method_cls, "n_stages", None)
        explicit_rk = isinstance(n_stages, int) and n_stages > 0 and hasattr(self.method_cls, "A")
        attempts = record["attempts"] if explicit_rk else None
        accepted = record["accepted"]
        final_dt = None
        if solver is not None:
            if hasattr(solver, "h_abs"):
                final_dt = float(solver.h_abs)
            elif hasattr(solver, "_lsoda_solver"):  # LSODA: rwork[11] is the step size to try next
                final_dt = float(abs(solver._lsoda_solver._integrator.rwork[11]))
            elif solver.step_size is not None:
                final_dt = float(solver.step_size)
        self._stats = {
            "nfe": self.func.nfe,
            "n_steps": attempts,
            "n_accepted": accepted,
            "n_rejected": None if attempts is None else attempts - accepted,
            "final_dt": final_dt,
            "njev": int(sol.njev),
            "nlu": int(sol.nlu),
        }

    def stats(self):
        return dict(self._stats)


_COUNTING = {}


def _counting(base, record):
    """`base` with its steps counted into `record` (the same arithmetic: only `_step_impl`
    is wrapped): accepted steps, and for the explicit RK methods the attempts (each costs
    `n_stages` evaluations of fun)."""
    cls = _COUNTING.get(base)
    if cls is None:
        n_stages = getattr(base, "n_stages", None)

        def _step_impl(self):
            before = self.nfev
            success, message = base._step_impl(self)
            rec = self._odecore_record
            rec["solver"] = self
            if success:
                rec["accepted"] += 1
            if isinstance(n_stages, int) and n_stages > 0:
                rec["attempts"] += (self.nfev - before) // n_stages
            return success, message

        cls = type(base.__name__, (base,), {"_step_impl": _step_impl, "__module__": base.__module__})
        _COUNTING[base] = cls
    # the record travels on a subclass per solve (cheap), so concurrent solves do not share it
    return type(cls.__name__, (cls,), {"_odecore_record": record, "__module__": base.__module__})

"""Drop-in parity with torchdiffeq 0.2.5.

Adaptive methods: the number of function evaluations is within 5% of
torchdiffeq's (counted by wrapping func) and the solutions agree to within the
requested tolerance.  Fixed-grid methods: identical values (~1e-12 in float64),
including interp='cubic' and perturb=True, and the same times passed to func.
"""

import pytest
import torch

import odecore

from .problems import get_problem, spiral, van_der_pol
from .testing import FIXED_METHODS, CountingFunc, dtypes, product, time_grid

torchdiffeq = pytest.importorskip("torchdiffeq")

PARITY_ADAPTIVE = ["dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"]


def _exponential():
    prob = get_problem("exponential")
    return prob.func, prob.y0(torch.float64).tolist(), (0.3, 1.8)


PROBLEMS = {
    "van_der_pol": lambda: (van_der_pol(1.0), [2.0, 0.0], (0.0, 3.0)),
    "spiral": lambda: (spiral(), [2.0, 0.0], (0.0, 5.0)),
    "exponential": _exponential,
}


def both(f, y0, t, **kwargs):
    """Solve with torchdiffeq and odecore; return (out_td, nfe_td, out_oc, nfe_oc, stats)."""
    ftd, foc = CountingFunc(f), CountingFunc(f)
    out_td = torchdiffeq.odeint(ftd, y0, t, **kwargs)
    kwargs = dict(kwargs)
    kwargs["options"] = dict(kwargs.get("options") or {}, return_stats=True)
    out_oc, stats = odecore.odeint(foc, y0, t, **kwargs)
    # stats['nfe'] counts exactly the calls of func
    assert stats["nfe"] == foc.nfe, (stats, foc.nfe)
    return out_td, ftd, out_oc, foc, stats


def assert_nfe_close(nfe_oc, nfe_td):
    assert abs(nfe_oc - nfe_td) <= 0.05 * nfe_td, (nfe_oc, nfe_td)


def assert_solutions_agree(a, b, rtol, atol):
    # Both are approximations with errors of order the tolerance; they should
    # agree to a small multiple of it.
    diff = (a.double() - b.double()).abs()
    bound = 10 * (atol + rtol * b.double().abs())
    assert (diff <= bound).all(), (diff.max().item(), (diff / bound).max().item())


@pytest.mark.parametrize("method,problem,dtype", product(PARITY_ADAPTIVE, sorted(PROBLEMS), dtypes))
def test_adaptive_parity(method, problem, dtype):
    f, y0, (a, b) = PROBLEMS[problem]()
    y0 = torch.tensor(y0, dtype=dtype)
    t = torch.linspace(a, b, 6, dtype=dtype)
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    if method == "adaptive_heun":
        tol *= 10  # ~1/sqrt(tol) steps: keep it quick
    out_td, ftd, out_oc, foc, stats = both(f, y0, t, rtol=tol, atol=tol, method=method)
    assert_nfe_close(foc.nfe, ftd.nfe)
    assert out_oc.shape == out_td.shape and out_oc.dtype == out_td.dtype
    assert_solutions_agree(out_oc, out_td, tol, tol)


@pytest.mark.parametrize("method", PARITY_ADAPTIVE)
def test_adaptive_parity_backward_in_time(method):
    f, y0, _ = PROBLEMS["van_der_pol"]()
    y0 = torch.tensor(y0, dtype=torch.float64)
    t = torch.linspace(2.0, -1.0, 4, dtype=torch.float64)
    out_td, ftd, out_oc, foc, _ = both(f, y0, t, rtol=1e-6, atol=1e-6, method=method)
    assert_nfe_close(foc.nfe, ftd.nfe)
    assert_solutions_agree(out_oc, out_td, 1e-6, 1e-6)


@pytest.mark.parametrize("method", PARITY_ADAPTIVE)
def test_adaptive_parity_tuple_state_per_tuple_tolerances(method):
    def f(t, y):
        a, b = y
        return (-0.5 * a + torch.sin(t) * b.sum(), torch.stack([b[1], -b[0]]))

    y0 = (torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64))
    t = torch.linspace(0.0, 3.0, 4, dtype=torch.float64)
    ftd, foc = CountingFunc(f), CountingFunc(f)
    kw = dict(rtol=(1e-7, 1e-4), atol=(1e-4, 1e-7), method=method)
    out_td = torchdiffeq.odeint(ftd, y0, t, **kw)
    out_oc = odecore.odeint(foc, y0, t, **kw)
    assert_nfe_close(foc.nfe, ftd.nfe)
    for a, b in zip(out_oc, out_td):
        assert_solutions_agree(a, b, 1e-4, 1e-4)


@pytest.mark.parametrize("method", PARITY_ADAPTIVE)
def test_adaptive_parity_jump_t_and_step_t(method):
    def f(t, y):
        return torch.where(t < 0.5, -y, 2 * torch.cos(3 * t) * y)

    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    t = torch.linspace(0.0, 1.5, 4, dtype=torch.float64)
    for opts in (
        dict(jump_t=torch.tensor([0.5], dtype=torch.float64)),
        dict(step_t=torch.tensor([0.25, 1.1], dtype=torch.float64)),
        dict(jump_t=torch.tensor([0.5], dtype=torch.float64), step_t=torch.tensor([0.25, 1.1], dtype=torch.float64)),
    ):
        tol = 1e-5 if method == "adaptive_heun" else 1e-7
        out_td, ftd, out_oc, foc, _ = both(f, y0, t, rtol=tol, atol=tol, method=method, options=opts)
        assert_nfe_close(foc.nfe, ftd.nfe)
        assert_solutions_agree(out_oc, out_td, tol, tol)


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_adaptive_parity_options(method):
    """first_step / max_step / min_step / safety / ifactor / dfactor have the
    same effect on the step sequence as in torchdiffeq."""
    f, y0, _ = PROBLEMS["van_der_pol"]()
    y0 = torch.tensor(y0, dtype=torch.float64)
    t = torch.linspace(0.0, 2.0, 3, dtype=torch.float64)
    for opts in (
        dict(first_step=0.01),
        dict(max_step=0.05),
        dict(min_step=0.02),
        dict(safety=0.5, ifactor=2.0, dfactor=0.5),
    ):
        out_td, ftd, out_oc, foc, _ = both(f, y0, t, rtol=1e-6, atol=1e-6, method=method, options=opts)
        assert_nfe_close(foc.nfe, ftd.nfe)
        assert_solutions_agree(out_oc, out_td, 1e-6, 1e-6)


# --------------------------------------------------------------------------- #
# Fixed grid: same values
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "method,interp,perturb,dtype", product(FIXED_METHODS, ["linear", "cubic"], [False, True], dtypes)
)
def test_fixed_grid_parity(method, interp, perturb, dtype):
    f = van_der_pol(1.0)
    y0 = torch.tensor([2.0, 0.0], dtype=dtype)
    t = torch.linspace(0.0, 2.0, 7, dtype=dtype)  # output times between grid points
    opts = dict(step_size=0.15, interp=interp, perturb=perturb)
    ftd, foc = CountingFunc(f), CountingFunc(f)
    out_td = torchdiffeq.odeint(ftd, y0, t, method=method, options=opts)
    out_oc = odecore.odeint(foc, y0, t, method=method, options=opts)
    kw = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_oc, out_td, **kw)
    # The times passed to func (incl. the nextafter-perturbed ones) are the
    # same as torchdiffeq's.  With cubic interpolation torchdiffeq evaluates
    # func(t1, y1) once per output point; odecore may reuse evaluations, so
    # only require a subset there.  (float32: interior stage times such as
    # t0 + dt/3 may round differently by an ulp; compare float64 only.)
    if interp == "linear":
        assert foc.nfe == ftd.nfe
    else:
        assert foc.nfe <= ftd.nfe
    if dtype == torch.float64:
        ts_td, ts_oc = set(ftd.times()), set(foc.times())
        if interp == "linear":
            assert ts_oc == ts_td, (sorted(ts_oc ^ ts_td))[:5]
        else:
            assert ts_oc <= ts_td, sorted(ts_oc - ts_td)[:5]


@pytest.mark.parametrize("method,direction", product(FIXED_METHODS, ["forward", "backward"]))
def test_fixed_grid_parity_grid_constructor_and_direction(method, direction):
    prob = get_problem("sine")
    y0 = prob.y0(torch.float64)
    t = time_grid(direction, torch.float64)

    def grid(func, y0, t):
        return torch.linspace(float(t[0]), float(t[-1]), 11, dtype=t.dtype)

    for opts in (dict(grid_constructor=grid), dict(step_size=0.1)):
        out_td = torchdiffeq.odeint(prob.func, y0, t, method=method, options=opts)
        out_oc = odecore.odeint(prob.func, y0, t, method=method, options=opts)
        torch.testing.assert_close(out_oc, out_td, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", FIXED_METHODS)
def test_fixed_grid_parity_no_options(method):
    """Without step_size/grid_constructor the grid is t itself."""
    prob = get_problem("linear")
    y0 = prob.y0(torch.float64)
    t = torch.linspace(0.0, 1.0, 21, dtype=torch.float64)
    out_td = torchdiffeq.odeint(prob.func, y0, t, method=method)
    out_oc = odecore.odeint(prob.func, y0, t, method=method)
    torch.testing.assert_close(out_oc, out_td, rtol=1e-12, atol=1e-12)

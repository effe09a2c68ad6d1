"""The four fused operators (torch.ops.odecore.*) and their Python wrappers
``odecore.ops.get_ops('fused' | 'reference')``: values against independent
float64 oracles, fused vs reference, autograd (gradcheck and fused vs
reference), NaN/inf semantics of the error ratio, and torch.library.opcheck
(schema, autograd registration, fake kernel, aot dispatch)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import odecore
import odecore.ops

from .testing import (
    backends,
    devices,
    dtypes,
    make_noncontiguous,
    oracle_finish,
    oracle_interp,
    oracle_ratio,
    oracle_stage,
    product,
    require_backend,
    require_fused,
    transposed,
)

# Dormand–Prince-like coefficients (nothing special about them: the ops take
# arbitrary coefficient lists).
A = [3 / 40, 9 / 40, -0.5]
B = [35 / 384, 0.0, 500 / 1113, 125 / 192]
E = [71 / 57600, 0.0, -71 / 16695, 71 / 1920]
DT = 0.37
# Two-term polynomials per stage (D = 2): P_j(x) = p0 x + p1 x^2
POLY = [1.0, -0.5, 0.0, 0.5, 0.25, 0.25, -0.1, 0.1]

LAYOUTS = ["contiguous", "strided", "transposed", "mixed"]
SHAPE = (5, 7)


def ops_for(backend, device="cpu"):
    require_backend(backend, device)
    return odecore.ops.get_ops(backend)


def _layout(x, layout, i):
    if layout == "contiguous":
        return x.contiguous()
    if layout == "strided":
        return make_noncontiguous(x)
    if layout == "transposed":
        return transposed(x)
    if layout == "mixed":  # alternate contiguous / strided / transposed between arguments
        return [x.contiguous(), make_noncontiguous(x), transposed(x)][i % 3]
    raise ValueError(layout)


def make_state(dtype, n_k, layout="contiguous", shape=SHAPE, seed=0, requires_grad=False, scale=1.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    y0 = (torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) * scale).to(device)
    ks = [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device) for _ in range(n_k)]
    if len(shape) == 2:
        y0 = _layout(y0, layout, 0)
        ks = [_layout(k, layout, i + 1) for i, k in enumerate(ks)]
    if requires_grad:
        y0 = y0.detach().requires_grad_()
        ks = [k.detach().requires_grad_() for k in ks]
    return y0, ks


def tols(y0, kind, rtol=1e-3, atol=1e-4):
    n = y0.numel()
    if kind == "scalar":
        return (
            torch.tensor(rtol, dtype=torch.float64, device=y0.device),
            torch.tensor(atol, dtype=torch.float64, device=y0.device),
        )
    if kind == "one":  # numel 1 but not 0-d
        return (
            torch.tensor([rtol], dtype=torch.float64, device=y0.device),
            torch.tensor([atol], dtype=torch.float64, device=y0.device),
        )
    # elementwise, varying: flat of numel(y0), or with y0's shape
    ramp = torch.linspace(0.5, 2.0, n, dtype=torch.float64, device=y0.device)
    r, a = rtol * ramp, atol * ramp.flip(0)
    if kind == "shaped":
        r, a = r.reshape(y0.shape), a.reshape(y0.shape)
    return r, a


def close_kw(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)


SEGMENTS = {"single": [35], "multi": [10, 3, 22], "many": [1] * 35}


# --------------------------------------------------------------------------- #
# Values
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend,dtype,layout,device", product(backends, dtypes, LAYOUTS, devices))
def test_rk_stage(backend, dtype, layout, device):
    ops = ops_for(backend, device)
    y0, ks = make_state(dtype, len(A), layout, device=device)
    out = ops.rk_stage(y0, ks, A, DT)
    assert out.shape == y0.shape and out.dtype == dtype and out.device == y0.device
    torch.testing.assert_close(out.double(), oracle_stage(y0, ks, A, DT), **close_kw(dtype))
    # inputs untouched
    assert torch.equal(y0, make_state(dtype, len(A), layout, device=device)[0])


@pytest.mark.parametrize("backend,dtype", product(backends, dtypes))
def test_rk_stage_edge_cases(backend, dtype):
    ops = ops_for(backend)
    y0, ks = make_state(dtype, 2)
    # dt = 0 -> y0 exactly
    assert torch.equal(ops.rk_stage(y0, ks, [0.3, 0.7], 0.0), y0)
    # all-zero coefficients -> y0 exactly
    assert torch.equal(ops.rk_stage(y0, ks, [0.0, 0.0], DT), y0)
    # a single stage
    torch.testing.assert_close(
        ops.rk_stage(y0, ks[:1], [2.0], DT).double(), oracle_stage(y0, ks[:1], [2.0], DT), **close_kw(dtype)
    )
    # 0-d state
    y0s, kss = make_state(dtype, 3, shape=())
    out = ops.rk_stage(y0s, kss, A, DT)
    assert out.shape == ()
    torch.testing.assert_close(out.double(), oracle_stage(y0s, kss, A, DT), **close_kw(dtype))
    # the output is a new tensor, not an alias of y0
    out = ops.rk_stage(y0, ks, [0.0, 0.0], DT)
    assert out.data_ptr() != y0.data_ptr()


@pytest.mark.parametrize(
    "backend,dtype,layout,tol_kind,segments,device",
    product(
        backends,
        dtypes,
        ["contiguous", "mixed"],
        ["scalar", "one", "elementwise", "shaped"],
        ["single", "multi", "many"],
        devices,
    ),
)
def test_rk_finish(backend, dtype, layout, tol_kind, segments, device):
    ops = ops_for(backend, device)
    y0, ks = make_state(dtype, len(B), layout, device=device)
    rtol, atol = tols(y0, tol_kind)
    segs = SEGMENTS[segments]
    y1, ratio = ops.rk_finish(y0, ks, B, E, DT, rtol, atol, segs)
    assert y1.shape == y0.shape and y1.dtype == dtype
    assert isinstance(ratio, torch.Tensor) and ratio.shape == () and ratio.dtype == torch.float64
    exp_y1, exp_ratio = oracle_finish(y0, ks, B, E, DT, rtol, atol, segs)
    torch.testing.assert_close(y1.double(), exp_y1, **close_kw(dtype))
    # the ratio involves a cancelling sum: a looser relative tolerance in float32
    assert math.isclose(ratio.item(), exp_ratio, rel_tol=1e-10 if dtype == torch.float64 else 1e-4)


def test_rk_finish_segments_matter():
    """The mixed norm (max over segments of the rms) differs from the plain rms,
    and each segment is normalised by its own length."""
    ops = odecore.ops.get_ops("reference")
    y0 = torch.zeros(4, dtype=torch.float64)
    k = [torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)]
    one = torch.tensor(1.0, dtype=torch.float64)
    zero = torch.tensor(0.0, dtype=torch.float64)
    # err = [1, 0, 0, 0], tol = atol = 1
    _, r_single = ops.rk_finish(y0, k, [0.0], [1.0], 1.0, zero, one, [4])
    _, r_multi = ops.rk_finish(y0, k, [0.0], [1.0], 1.0, zero, one, [1, 3])
    _, r_multi2 = ops.rk_finish(y0, k, [0.0], [1.0], 1.0, zero, one, [2, 2])
    assert math.isclose(r_single.item(), 0.5, rel_tol=1e-14)  # sqrt(1/4)
    assert math.isclose(r_multi.item(), 1.0, rel_tol=1e-14)  # max(sqrt(1), 0)
    assert math.isclose(r_multi2.item(), math.sqrt(0.5), rel_tol=1e-14)
    r_er = ops.rk_error_ratio(y0, y0, k, [1.0], 1.0, zero, one, [1, 3])
    assert math.isclose(r_er.item(), 1.0, rel_tol=1e-14)


@pytest.mark.parametrize("backend", backends)
def test_rk_finish_tolerance_uses_max_of_y0_y1(backend):
    ops = ops_for(backend)
    # |y0| = 1, |y1| = 3 -> scale uses 3; err = dt * e * k = 0.5
    y0 = torch.tensor([1.0], dtype=torch.float64)
    k = [torch.tensor([2.0], dtype=torch.float64)]
    rtol = torch.tensor(0.1, dtype=torch.float64)
    atol = torch.tensor(0.2, dtype=torch.float64)
    y1, r = ops.rk_finish(y0, k, [1.0], [0.25], 1.0, rtol, atol, [1])
    assert y1.item() == 3.0
    assert math.isclose(r.item(), 0.5 / (0.2 + 0.1 * 3.0), rel_tol=1e-14)
    # and with |y0| > |y1|
    y0 = torch.tensor([-5.0], dtype=torch.float64)
    y1, r = ops.rk_finish(y0, k, [1.0], [0.25], 1.0, rtol, atol, [1])
    assert y1.item() == -3.0
    assert math.isclose(r.item(), 0.5 / (0.2 + 0.1 * 5.0), rel_tol=1e-14)


@pytest.mark.parametrize(
    "backend,dtype,layout,tol_kind,segments,device",
    product(backends, dtypes, ["contiguous", "mixed"], ["scalar", "elementwise"], ["single", "multi"], devices),
)
def test_rk_error_ratio(backend, dtype, layout, tol_kind, segments, device):
    ops = ops_for(backend, device)
    y0, ks = make_state(dtype, len(E), layout, device=device)
    y1 = _layout(ks[0] * 0.5 + y0, layout, 2)  # any y1 will do: it only enters the tolerance scale
    rtol, atol = tols(y0, tol_kind)
    segs = SEGMENTS[segments]
    ratio = ops.rk_error_ratio(y0, y1, ks, E, DT, rtol, atol, segs)
    assert ratio.shape == () and ratio.dtype == torch.float64
    err = oracle_stage(torch.zeros_like(y0), ks, E, DT)
    exp = oracle_ratio(y0, y1, err, rtol, atol, segs)
    assert math.isclose(ratio.item(), exp, rel_tol=1e-10 if dtype == torch.float64 else 1e-4)
    # consistent with rk_finish when y1 is the same
    y1f, rf = ops.rk_finish(y0, ks, B, E, DT, rtol, atol, segs)
    r2 = ops.rk_error_ratio(y0, y1f, ks, E, DT, rtol, atol, segs)
    assert math.isclose(r2.item(), rf.item(), rel_tol=1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("backend,dtype,layout,device", product(backends, dtypes, LAYOUTS, devices))
def test_rk_interp(backend, dtype, layout, device):
    ops = ops_for(backend, device)
    y0, ks = make_state(dtype, 4, layout, device=device)
    x = [0.0, 0.25, 0.6180339887, 1.0]
    out = ops.rk_interp(y0, ks, POLY, DT, x)
    assert out.shape == (len(x), *y0.shape) and out.dtype == dtype
    torch.testing.assert_close(out.double(), oracle_interp(y0, ks, POLY, DT, x), **close_kw(dtype))
    # x = 0 reproduces y0 (every P_j has no constant term)
    torch.testing.assert_close(out[0], y0, rtol=0, atol=0)


@pytest.mark.parametrize("backend,dtype", product(backends, dtypes))
def test_rk_interp_edge_cases(backend, dtype):
    ops = ops_for(backend)
    y0, ks = make_state(dtype, 2)
    # D = 1 and D = 3
    for poly in ([0.5, 0.5], [1.0, -1.0, 0.5, 0.0, 1.0, -0.5]):
        out = ops.rk_interp(y0, ks, poly, DT, [0.3, 0.9])
        torch.testing.assert_close(out.double(), oracle_interp(y0, ks, poly, DT, [0.3, 0.9]), **close_kw(dtype))
    # one point
    out = ops.rk_interp(y0, ks, [0.5, 0.5], DT, [0.5])
    assert out.shape == (1, *SHAPE)
    # zero points
    out = ops.rk_interp(y0, ks, [0.5, 0.5], DT, [])
    assert out.shape == (0, *SHAPE)
    # points outside [0, 1] are just polynomial evaluation
    out = ops.rk_interp(y0, ks, [0.5, 0.5], DT, [-0.5, 1.5])
    torch.testing.assert_close(out.double(), oracle_interp(y0, ks, [0.5, 0.5], DT, [-0.5, 1.5]), **close_kw(dtype))


@pytest.mark.parametrize("backend,dtype", product(backends, dtypes))
def test_zero_size_state(backend, dtype):
    ops = ops_for(backend)
    y0, ks = make_state(dtype, 2, shape=(0, 3))
    out = ops.rk_stage(y0, ks, [0.5, 0.5], DT)
    assert out.shape == (0, 3) and out.dtype == dtype
    rtol, atol = tols(y0, "scalar")
    y1, ratio = ops.rk_finish(y0, ks, [0.5, 0.5], [0.1, -0.1], DT, rtol, atol, [0])
    assert y1.shape == (0, 3) and ratio.shape == () and ratio.dtype == torch.float64
    r = ops.rk_error_ratio(y0, y0, ks, [0.1, -0.1], DT, rtol, atol, [0])
    assert r.shape == () and r.dtype == torch.float64
    out = ops.rk_interp(y0, ks, [0.5, 0.5], DT, [0.0, 1.0])
    assert out.shape == (2, 0, 3)


# --------------------------------------------------------------------------- #
# NaN / inf semantics of the error ratio
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "backend,dtype,where,device", product(backends, dtypes, ["nan_k", "inf_k", "nan_y0", "inf_y0"], devices)
)
def test_rk_finish_nonfinite_gives_nan_ratio(backend, dtype, where, device):
    ops = ops_for(backend, device)
    y0, ks = make_state(dtype, len(B), device=device)
    bad = float("nan") if where.startswith("nan") else float("inf")
    if where.endswith("k"):
        ks[2] = ks[2].clone()
        ks[2][1, 3] = bad  # B[2], E[2] != 0: poisons y1 and err
    else:
        y0 = y0.clone()
        y0[4, 6] = bad
    rtol, atol = tols(y0, "scalar")
    y1, ratio = ops.rk_finish(y0, ks, B, E, DT, rtol, atol, [35])
    assert not torch.isfinite(y1).all()
    assert math.isnan(ratio.item())
    y1, ratio = ops.rk_finish(y0, ks, B, E, DT, rtol, atol, [20, 15])
    assert math.isnan(ratio.item())


@pytest.mark.parametrize(
    "backend,dtype,where,device", product(backends, dtypes, ["nan_y1", "inf_y1", "-inf_y1", "nan_k"], devices)
)
def test_rk_error_ratio_nonfinite_gives_nan(backend, dtype, where, device):
    ops = ops_for(backend, device)
    y0, ks = make_state(dtype, len(E), device=device)
    y1 = y0.clone()
    if where == "nan_k":
        ks[3] = ks[3].clone()
        ks[3][0, 0] = float("nan")
    else:
        y1[2, 2] = float(where[:-3])
    rtol, atol = tols(y0, "scalar")
    for segs in ([35], [5, 30]):
        ratio = ops.rk_error_ratio(y0, y1, ks, E, DT, rtol, atol, segs)
        assert math.isnan(ratio.item()), (where, segs, ratio)


# --------------------------------------------------------------------------- #
# Fused vs reference, directly
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype,layout,device", product(dtypes, LAYOUTS, devices))
def test_fused_matches_reference(dtype, layout, device):
    require_fused(device)
    fused, ref = odecore.ops.get_ops("fused"), odecore.ops.get_ops("reference")
    y0, ks = make_state(dtype, 4, layout, seed=3, device=device)
    rtol, atol = tols(y0, "elementwise")
    # Rounding-level agreement (summation order / FMA may differ).
    kw = dict(rtol=64 * torch.finfo(dtype).eps, atol=64 * torch.finfo(dtype).eps)
    torch.testing.assert_close(fused.rk_stage(y0, ks, B, DT), ref.rk_stage(y0, ks, B, DT), **kw)
    (y1f, rf), (y1r, rr) = (
        fused.rk_finish(y0, ks, B, E, DT, rtol, atol, [7, 28]),
        ref.rk_finish(y0, ks, B, E, DT, rtol, atol, [7, 28]),
    )
    torch.testing.assert_close(y1f, y1r, **kw)
    assert math.isclose(rf.item(), rr.item(), rel_tol=1e-10 if dtype == torch.float64 else 1e-4)
    ef = fused.rk_error_ratio(y0, y1r, ks, E, DT, rtol, atol, [35])
    er = ref.rk_error_ratio(y0, y1r, ks, E, DT, rtol, atol, [35])
    assert math.isclose(ef.item(), er.item(), rel_tol=1e-10 if dtype == torch.float64 else 1e-4)
    x = [0.1, 0.5, 0.9]
    torch.testing.assert_close(
        fused.rk_interp(y0, ks, POLY, DT, x),
        ref.rk_interp(y0, ks, POLY, DT, x),
        rtol=64 * torch.finfo(dtype).eps,
        atol=64 * torch.finfo(dtype).eps,
    )


@pytest.mark.fused
def test_fused_ops_are_the_registered_ops():
    """get_ops('fused') dispatches to torch.ops.odecore.* (same results)."""
    fused = odecore.ops.get_ops("fused")
    y0, ks = make_state(torch.float64, 3)
    assert torch.equal(fused.rk_stage(y0, ks, A, DT), torch.ops.odecore.rk_stage(y0, ks, A, DT))
    rtol, atol = tols(y0, "scalar")
    a = fused.rk_finish(y0, ks, A, A, DT, rtol, atol, [35])
    b = torch.ops.odecore.rk_finish(y0, ks, A, A, DT, rtol, atol, [35])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_get_ops_rejects_unknown_backend():
    with pytest.raises(ValueError):
        odecore.ops.get_ops("no-such-backend")


# --------------------------------------------------------------------------- #
# Autograd
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend,layout", product(backends, ["contiguous", "mixed"]))
def test_gradcheck_ops(backend, layout):
    ops = ops_for(backend)
    y0, ks = make_state(torch.float64, 3, layout, shape=(3, 4), requires_grad=True)
    rtol, atol = tols(y0, "scalar")
    torch.autograd.gradcheck(lambda y, *k: ops.rk_stage(y, list(k), A, DT), (y0, *ks))
    torch.autograd.gradcheck(
        lambda y, *k: ops.rk_finish(y, list(k), A, [0.1, -0.2, 0.1], DT, rtol, atol, [12])[0], (y0, *ks)
    )
    torch.autograd.gradcheck(lambda y, *k: ops.rk_interp(y, list(k), POLY[:6], DT, [0.2, 0.7, 1.0]), (y0, *ks))


@pytest.mark.fused
def test_fused_gradients_match_reference(dtype):
    grads = {}
    for backend in backends:
        ops = odecore.ops.get_ops(backend)
        y0, ks = make_state(dtype, 4, "mixed", seed=5, requires_grad=True)
        rtol, atol = tols(y0, "scalar")
        w = torch.randn((5, *SHAPE), generator=torch.Generator().manual_seed(9), dtype=dtype)
        s = ops.rk_stage(y0, ks[:3], A, DT)
        y1, _ = ops.rk_finish(s, ks, B, E, DT, rtol, atol, [35])
        out = ops.rk_interp(y1, ks, POLY, DT, [0.0, 0.2, 0.4, 0.8, 1.0])
        loss = (w * out).sum()
        grads[backend] = torch.autograd.grad(loss, [y0, *ks])
    for gf, gr in zip(grads["fused"], grads["reference"]):
        torch.testing.assert_close(
            gf, gr, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=1e-12 if dtype == torch.float64 else 1e-5
        )


@pytest.mark.parametrize("backend", backends)
def test_ratio_not_differentiable(backend):
    ops = ops_for(backend)
    y0, ks = make_state(torch.float64, 4, requires_grad=True)
    rtol, atol = tols(y0, "scalar")
    y1, ratio = ops.rk_finish(y0, ks, B, E, DT, rtol, atol, [35])
    assert y1.requires_grad
    r2 = ops.rk_error_ratio(y0, y1, ks, E, DT, rtol, atol, [35])
    for r in (ratio, r2):
        if r.requires_grad:  # allowed, but then it must carry no gradient
            gs = torch.autograd.grad(r, [y0, *ks], allow_unused=True, retain_graph=True)
            assert all(g is None or torch.count_nonzero(g) == 0 for g in gs)


# --------------------------------------------------------------------------- #
# opcheck: schema, autograd registration, fake kernels, aot dispatch
# --------------------------------------------------------------------------- #

OPCHECK_CASES = product(dtypes, ["contiguous", "strided", "transposed", "empty"], [False, True], devices)


def _opcheck_inputs(dtype, layout, requires_grad, n_k, device):
    require_fused(device)
    shape = (0, 3) if layout == "empty" else (3, 4)
    lay = "contiguous" if layout == "empty" else layout
    return make_state(dtype, n_k, lay, shape=shape, requires_grad=requires_grad, device=device)


def _segments(y0):
    n = y0.numel()
    return [n] if n < 2 else [2, n - 2]


@pytest.mark.parametrize("dtype,layout,requires_grad,device", OPCHECK_CASES)
def test_opcheck_rk_stage(dtype, layout, requires_grad, device):
    y0, ks = _opcheck_inputs(dtype, layout, requires_grad, 3, device)
    torch.library.opcheck(torch.ops.odecore.rk_stage.default, (y0, ks, A, DT))


@pytest.mark.parametrize("dtype,layout,requires_grad,device", OPCHECK_CASES)
def test_opcheck_rk_finish(dtype, layout, requires_grad, device):
    y0, ks = _opcheck_inputs(dtype, layout, requires_grad, 4, device)
    for tol_kind in ("scalar", "elementwise"):
        rtol, atol = tols(y0, tol_kind)
        torch.library.opcheck(torch.ops.odecore.rk_finish.default, (y0, ks, B, E, DT, rtol, atol, _segments(y0)))


@pytest.mark.parametrize("dtype,layout,requires_grad,device", OPCHECK_CASES)
def test_opcheck_rk_error_ratio(dtype, layout, requires_grad, device):
    y0, ks = _opcheck_inputs(dtype, layout, requires_grad, 4, device)
    y1 = (y0.detach() * 1.5).requires_grad_(requires_grad)
    rtol, atol = tols(y0, "elementwise")
    torch.library.opcheck(torch.ops.odecore.rk_error_ratio.default, (y0, y1, ks, E, DT, rtol, atol, _segments(y0)))


@pytest.mark.parametrize("dtype,layout,requires_grad,device", OPCHECK_CASES)
def test_opcheck_rk_interp(dtype, layout, requires_grad, device):
    y0, ks = _opcheck_inputs(dtype, layout, requires_grad, 4, device)
    torch.library.opcheck(torch.ops.odecore.rk_interp.default, (y0, ks, POLY, DT, [0.0, 0.5, 1.0]))


# --------------------------------------------------------------------------- #
# Property-based: random shapes, strides, coefficients
# --------------------------------------------------------------------------- #


@st.composite
def op_problems(draw):
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    n_k = draw(st.integers(1, 5))
    # magnitudes either 0 or >= 1e-3 (avoid float32 underflow artefacts)
    coef = st.one_of(st.just(0.0), st.floats(1e-3, 2.0), st.floats(-2.0, -1e-3))
    a = draw(st.lists(coef, min_size=n_k, max_size=n_k))
    e = draw(st.lists(coef, min_size=n_k, max_size=n_k))
    dt = draw(st.one_of(st.floats(1e-3, 1.0), st.floats(-1.0, -1e-3)))
    seed = draw(st.integers(0, 2**16))
    dtype = draw(st.sampled_from(dtypes))
    strided = draw(st.booleans())
    numel = math.prod(shape)
    cuts = sorted(draw(st.lists(st.integers(1, max(numel - 1, 1)), max_size=3, unique=True))) if numel > 1 else []
    segments = [b - a_ for a_, b in zip([0] + cuts, cuts + [numel])]
    return shape, n_k, a, e, dt, seed, dtype, strided, segments


@pytest.mark.parametrize("backend", backends)
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=op_problems())
def test_property_ops_match_oracle(backend, problem):
    ops = ops_for(backend)
    shape, n_k, a, e, dt, seed, dtype, strided, segments = problem
    y0, ks = make_state(dtype, n_k, "contiguous", shape=shape, seed=seed)
    if strided and len(shape) >= 1:
        y0 = make_noncontiguous(y0)
        ks = [make_noncontiguous(k) for k in ks]
    tol_kw = close_kw(dtype)
    out = ops.rk_stage(y0, ks, a, dt)
    torch.testing.assert_close(out.double(), oracle_stage(y0, ks, a, dt), **tol_kw)
    rtol = torch.tensor(1e-3, dtype=torch.float64)
    atol = torch.tensor(1e-3, dtype=torch.float64)
    y1, ratio = ops.rk_finish(y0, ks, a, e, dt, rtol, atol, segments)
    exp_y1, exp_ratio = oracle_finish(y0, ks, a, e, dt, rtol, atol, segments)
    torch.testing.assert_close(y1.double(), exp_y1, **tol_kw)
    # The error estimate is a cancelling sum: bound the rounding error of the
    # ratio by the ratio of the *absolute* error sum (triangle inequality).
    err_abs = oracle_stage(torch.zeros_like(y0), [k.abs() for k in ks], [abs(c) for c in e], abs(dt))
    ratio_abs = oracle_ratio(y0, exp_y1, err_abs, rtol, atol, segments)
    slack = 32 * torch.finfo(dtype).eps * (ratio_abs + abs(exp_ratio))
    assert abs(ratio.item() - exp_ratio) <= slack + 1e-12 * abs(exp_ratio), (ratio.item(), exp_ratio, slack)

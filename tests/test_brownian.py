"""odecore.brownian: seeded, query-order-independent Brownian motion (torchsde's API).

Three kinds of checks:
* path consistency (same entropy -> same values in any query order; increments add up;
  point and interval queries agree; float32 is the float64 path rounded),
* the law, exactly (the Schauder coefficients give covariance min(s, s') on the grid) and
  statistically over many coordinates (mean, variance, normality, independence of
  disjoint increments, the Brownian-bridge conditional law, the covariance matrix),
* the API: errors, torchsde's BrownianTree / BrownianPath signatures, and torchsde itself
  (same calls on both, same statistics, torchsde.sdeint driven by our motion).

Statistical tests use fixed entropies, so they are deterministic; their thresholds
(p > 1e-3, |corr| < 0.05, variance within ~6 standard errors) fail for a wrong scale, a
wrong distribution or correlated noise.
"""

import math
import random
import warnings

import numpy as np
import pytest
import torch

from odecore.sde import brownian
from odecore.sde.brownian import BrownianInterval, BrownianPath, BrownianTree, ReverseBrownian

from .testing import devices, dtypes, product

scipy_stats = pytest.importorskip("scipy.stats")

N = 20000  # coordinates used as independent samples in the statistical tests


def sample_bm(dtype=torch.float64, entropy=0, t0=0.0, t1=1.0, **kwargs):
    return BrownianInterval(t0, t1, size=(N,), dtype=dtype, entropy=entropy, **kwargs)


def as_np(x):
    if isinstance(x, np.ndarray):
        return x.astype(np.float64).reshape(-1)
    return x.detach().double().cpu().numpy().reshape(-1)


def check_normal(x, var, what):
    """x: samples that should be N(0, var)."""
    x = as_np(x)
    n = x.size
    se_mean = math.sqrt(var / n)
    assert abs(x.mean()) < 5 * se_mean, (what, x.mean(), se_mean)
    # the sample variance of n normals has relative standard error sqrt(2 / n)
    assert abs(x.var() / var - 1) < 6 * math.sqrt(2 / n), (what, x.var(), var)
    p_ks = scipy_stats.kstest(x / math.sqrt(var), "norm").pvalue
    p_normal = scipy_stats.normaltest(x).pvalue
    assert p_ks > 1e-3 and p_normal > 1e-3, (what, p_ks, p_normal)


def corr(x, y):
    return float(np.corrcoef(as_np(x), as_np(y))[0, 1])


def random_queries(rng, t0, t1, n):
    out = []
    for _ in range(n):
        a, b = sorted(rng.uniform(t0, t1) for _ in range(2))
        out.append((a, b))
        out.append((rng.uniform(t0, t1),))
    out += [(t0,), (t1,), (t0, t1), (t0, rng.uniform(t0, t1)), (rng.uniform(t0, t1), t1)]
    return out


# --------------------------------------------------------------------------- #
# Reproducibility and consistency of one path
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype,device", product(dtypes, devices))
def test_same_entropy_same_values_any_order(dtype, device):
    rng = random.Random(0)
    queries = random_queries(rng, -0.5, 2.0, 15)
    ref_bm = BrownianInterval(-0.5, 2.0, size=(3, 2), dtype=dtype, device=device, entropy=1234)
    ref = [ref_bm(*q) for q in queries]
    for cache_size in [0, 1, 45, None]:
        bm = BrownianInterval(-0.5, 2.0, size=(3, 2), dtype=dtype, device=device, entropy=1234, cache_size=cache_size)
        order = list(range(len(queries))) * 2  # every query twice, shuffled
        rng.shuffle(order)
        for i in order:
            out = bm(*queries[i])
            assert out.shape == (3, 2) and out.dtype == dtype and out.device.type == torch.device(device).type
            assert torch.equal(out, ref[i]), (cache_size, queries[i])


def test_different_entropy_different_values():
    outs = [BrownianInterval(0.0, 1.0, size=(5,), entropy=e)(0.1, 0.6) for e in [0, 1, 2, -1, 2**80]]
    for i in range(len(outs)):
        for j in range(i):
            assert not torch.allclose(outs[i], outs[j])


def test_entropy_none_follows_torch_seed():
    torch.manual_seed(7)
    a = BrownianInterval(0.0, 1.0, size=(4,))
    b = BrownianInterval(0.0, 1.0, size=(4,))
    torch.manual_seed(7)
    c = BrownianInterval(0.0, 1.0, size=(4,))
    assert isinstance(a.entropy, int) and a.entropy == c.entropy and a.entropy != b.entropy
    assert torch.equal(a(0.2, 0.9), c(0.2, 0.9))
    assert not torch.equal(a(0.2, 0.9), b(0.2, 0.9))


def test_increments_add_up(dtype):
    rng = random.Random(1)
    bm = BrownianInterval(0.0, 3.0, size=(50,), dtype=dtype, entropy=5)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for _ in range(10):
        ts = sorted(rng.uniform(0.0, 3.0) for _ in range(6))
        pieces = sum(bm(a, b) for a, b in zip(ts[:-1], ts[1:]))
        whole = bm(ts[0], ts[-1])
        assert (pieces - whole).abs().max().item() < tol * 8, ts
        # interval queries are differences of point queries
        assert (bm(ts[2]) - bm(ts[1]) - bm(ts[1], ts[2])).abs().max().item() < tol * 8
    # the whole interval from a fine partition (a solver's steps)
    grid = torch.linspace(0.0, 3.0, 301, dtype=torch.float64).tolist()
    total = torch.stack([bm(a, b) for a, b in zip(grid[:-1], grid[1:])]).double().sum(0)
    assert (total - bm(0.0, 3.0).double()).abs().max().item() < tol * 100


def test_hypothesis_order_and_additivity():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
    @hypothesis.given(st.lists(st.floats(-1.0, 4.0), min_size=3, max_size=6), st.integers(0, 2**64), st.randoms())
    def check(ts, entropy, rnd):
        ts = sorted(ts)
        fresh = BrownianInterval(-1.0, 4.0, size=(3,), dtype=torch.float64, entropy=entropy)
        values = {t: fresh(t) for t in ts}
        other = BrownianInterval(-1.0, 4.0, size=(3,), dtype=torch.float64, entropy=entropy, cache_size=2)
        shuffled = list(ts)
        rnd.shuffle(shuffled)
        for t in shuffled:
            assert torch.equal(other(t), values[t])
        inc = sum(other(a, b) for a, b in zip(ts[:-1], ts[1:]))
        assert torch.allclose(inc, values[ts[-1]] - values[ts[0]], atol=1e-12, rtol=0)

    check()


def test_point_queries(dtype):
    bm = BrownianInterval(0.5, 2.5, size=(2, 3), dtype=dtype, entropy=3)
    for t in [0.5, 0.75, 1.1234, 2.5]:
        assert torch.equal(bm(t), bm(0.5, t))
        assert torch.equal(bm(t, t), torch.zeros(2, 3, dtype=dtype))
    assert torch.equal(bm(0.5), torch.zeros(2, 3, dtype=dtype))
    assert torch.equal(bm(2.5), bm(0.5, 2.5))
    assert bm(1.0).abs().sum() > 0


def test_float32_is_the_float64_path_rounded():
    b32 = BrownianInterval(0.0, 2.0, size=(7,), dtype=torch.float32, entropy=11)
    b64 = BrownianInterval(0.0, 2.0, size=(7,), dtype=torch.float64, entropy=11)
    for q in [(0.3, 0.31), (0.0, 2.0), (1.7,), (0.123456789, 1.987654321)]:
        assert torch.equal(b32(*q), b64(*q).float())


def test_tensor_times():
    bm = BrownianInterval(torch.tensor(0.0), torch.tensor([1.0]), size=(3,), entropy=2)
    ref = bm(0.25, 0.75)
    for a, b in [
        (torch.tensor(0.25), torch.tensor(0.75)),
        (torch.tensor([0.25], dtype=torch.float64), 0.75),
        (np.float32(0.25), np.float64(0.75)),
        (torch.tensor(0.25, requires_grad=True), 0.75),
    ]:
        assert torch.equal(bm(a, b), ref)
    # float32 times a solver accumulates (t + dt in float32) may overshoot t1 by an ulp
    t = torch.tensor(0.0, dtype=torch.float32)
    for _ in range(10):
        t = t + torch.tensor(0.1, dtype=torch.float32)
    assert torch.equal(bm(0.5, t), bm(0.5, 1.0))


def test_output_is_not_the_cache():
    bm = BrownianInterval(0.0, 1.0, size=(4,), dtype=torch.float64, entropy=1)
    x = bm(0.3)
    ref = x.clone()
    x.mul_(0)
    assert torch.equal(bm(0.3), ref)
    assert torch.equal(bm(0.0, 0.3), ref)


def test_cache_is_bounded():
    bm = BrownianInterval(0.0, 1.0, size=(4,), entropy=1, cache_size=5)
    for i in range(50):
        bm(i / 50, (i + 1) / 50)
    assert len(bm._cache) <= 5
    unbounded = BrownianInterval(0.0, 1.0, size=(4,), entropy=1, cache_size=None)
    for i in range(50):
        assert torch.equal(unbounded(i / 50, (i + 1) / 50), bm(i / 50, (i + 1) / 50))
    assert len(unbounded._cache) == 50


def test_properties_and_sizes():
    bm = BrownianInterval(0.25, 1.5, size=[2, 3], dtype=torch.float64, device="cpu", entropy=9)
    assert (bm.t0, bm.t1) == (0.25, 1.5)
    assert bm.shape == (2, 3) and bm.size() == torch.Size([2, 3])
    assert bm.dtype == torch.float64 and bm.device == torch.device("cpu")
    assert bm.entropy == 9 and bm.levy_area_approximation == "none"
    assert "BrownianInterval" in repr(bm) and "entropy=9" in repr(bm)
    assert BrownianInterval(0.0, 1.0, size=5).shape == (5,)
    assert BrownianInterval(0.0, 1.0, size=torch.Size([5])).shape == (5,)
    assert BrownianInterval(0.0, 1.0, size=()).shape == () and BrownianInterval(0.0, 1.0, size=())(0.5).shape == ()
    assert BrownianInterval(0.0, 1.0, size=(0, 3))(0.5).shape == (0, 3)
    assert BrownianInterval(0.0, 1.0, size=(2,)).dtype == torch.get_default_dtype()
    # torchsde-only tuning arguments are accepted (and ignored)
    BrownianInterval(0.0, 1.0, size=(2,), dt=0.01, pool_size=16, halfway_tree=True, tol=1e-5, cache_size=None)
    # a degenerate interval (sdeint with a single output time)
    point = BrownianInterval(1.0, 1.0, size=(2,))
    assert torch.equal(point(1.0), torch.zeros(2)) and torch.equal(point(1.0, 1.0), torch.zeros(2))


def test_return_u_and_a_are_none():
    bm = BrownianInterval(0.0, 1.0, size=(2,), entropy=0)
    w = bm(0.1, 0.4)
    out_u = bm(0.1, 0.4, return_U=True)
    out_a = bm(0.1, 0.4, return_A=True)
    out_ua = bm(0.1, 0.4, return_U=True, return_A=True)
    assert len(out_u) == 2 and torch.equal(out_u[0], w) and out_u[1] is None
    assert len(out_a) == 2 and out_a[1] is None
    assert len(out_ua) == 3 and out_ua[1] is None and out_ua[2] is None


def test_tol_sets_the_grid():
    bm = BrownianInterval(0.0, 2.0, size=(6,), entropy=1, tol=1e-3)
    assert bm.depth == 11 and 2.0 * 2.0**-bm.depth <= 1e-3
    fine = BrownianInterval(0.0, 2.0, size=(6,), entropy=1)
    assert fine.depth == brownian.DEFAULT_DEPTH
    assert BrownianInterval(0.0, 1.0, size=(1,), tol=0.5).depth == 1
    assert BrownianInterval(0.0, 1.0, size=(1,), tol=10.0).depth == 1
    assert BrownianInterval(0.0, 1.0, size=(1,), tol=1e-300).depth == brownian.MAX_DEPTH
    # times resolve to the grid of spacing 2 * 2**-11
    h = 2.0 * 2.0**-11
    assert torch.equal(bm(0.0, 0.3 * h), torch.zeros(6))
    assert torch.equal(bm(100 * h, 100.3 * h), torch.zeros(6))
    assert torch.equal(bm(100 * h + 1e-9, 200 * h), bm(100 * h, 200 * h))
    # a coarse grid is a coarsening of the fine one: grid points agree with the full-depth path
    for t in [0.5, 1.0, 1.25, 37 * h]:
        assert torch.allclose(bm(t), fine(t), atol=1e-6)
    ts = sorted(random.Random(2).uniform(0, 2) for _ in range(8))
    pieces = sum(bm(a, b) for a, b in zip(ts[:-1], ts[1:]))
    assert torch.allclose(pieces, bm(ts[0], ts[-1]), atol=1e-6)


# --------------------------------------------------------------------------- #
# The law: exact covariance of the construction
# --------------------------------------------------------------------------- #


def _coefficient_vectors(bm, gs):
    """Coefficients of B(g 2^-K) on the standard normals, keyed by node id (root: 0)."""
    vecs = []
    for g in gs:
        ids, coeffs = bm._path(g)
        assert len(ids) == len(set(ids.tolist()))
        d = dict(zip(ids.tolist(), coeffs.tolist()))
        d[0] = g / bm._grid_n
        vecs.append(d)
    return vecs


@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_construction_has_brownian_covariance(tol):
    """sum over shared nodes of c_i c_j == min(s_i, s_j): the points are jointly Brownian
    (hence each conditional law given the others is the Brownian bridge), exactly."""
    bm = BrownianInterval(0.0, 1.0, size=(1,), entropy=0, tol=tol)
    n = bm._grid_n
    rng = random.Random(3)
    gs = [rng.randrange(n + 1) for _ in range(12)] + [0, n, n // 2, n // 4 + 1, n - 1, 1, (n // 3) | 1]
    vecs = _coefficient_vectors(bm, gs)
    for gi, vi in zip(gs, vecs):
        for gj, vj in zip(gs, vecs):
            cov = sum(c * vj[k] for k, c in vi.items() if k in vj)
            assert abs(cov - min(gi, gj) / n) < 1e-13, (gi, gj, cov)
    # the path of a point meets one node per level (and the root)
    assert all(len(v) <= bm.depth + 1 for v in vecs)


# --------------------------------------------------------------------------- #
# The law: statistics over N independent coordinates
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "dtype,interval", product(dtypes, [(0.0, 1.0), (0.1, 0.35), (-1.3, 2.9), (1.7, 1.7 + 1e-6), (4.0, 5.0)])
)
def test_increment_law(dtype, interval):
    a, b = interval
    bm = sample_bm(dtype, entropy=17, t0=-2.0, t1=5.0)
    check_normal(bm(a, b), b - a, interval)


def test_increment_law_over_entropies():
    """The same coordinate over many seeds (rather than many coordinates of one seed)."""
    xs = torch.stack(
        [BrownianInterval(0.0, 2.0, size=(4,), dtype=torch.float64, entropy=e)(0.3, 1.4) for e in range(1500)]
    )
    for j in range(4):
        x = as_np(xs[:, j])
        assert abs(x.var() / 1.1 - 1) < 6 * math.sqrt(2 / len(x))
        assert scipy_stats.kstest(x / math.sqrt(1.1), "norm").pvalue > 1e-3
    assert abs(corr(xs[:, 0], xs[:, 1])) < 0.1


def test_disjoint_increments_uncorrelated():
    bm = sample_bm(entropy=21, t0=0.0, t1=2.0)
    intervals = [(0.0, 0.3), (0.3, 0.31), (0.31, 1.0), (1.2, 1.2001), (1.5, 2.0)]
    incs = [bm(a, b) for a, b in intervals]
    for i in range(len(incs)):
        for j in range(i):
            assert abs(corr(incs[i], incs[j])) < 0.05, (intervals[i], intervals[j])
    # and a single increment against the motion before it
    assert abs(corr(bm(1.0, 1.7), bm(1.0))) < 0.05


@pytest.mark.parametrize("order", ["ends_first", "mid_first"])
def test_bridge_law(order):
    a, m, b = 0.2, 0.37, 0.61
    bm = sample_bm(entropy=33, t0=0.0, t1=1.0)
    if order == "ends_first":
        wa, wb, wm = bm(a), bm(b), bm(m)
    else:
        wm, wa, wb = bm(m), bm(a), bm(b)
    # W(m) | W(a), W(b) ~ N(W(a) + (m - a)/(b - a) (W(b) - W(a)), (m - a)(b - m)/(b - a))
    resid = wm - (wa + (m - a) / (b - a) * (wb - wa))
    check_normal(resid, (m - a) * (b - m) / (b - a), "bridge residual")
    assert abs(corr(resid, wa)) < 0.05 and abs(corr(resid, wb - wa)) < 0.05


def test_bridge_to_given_endpoint():
    """W= conditions on W(t1) - W(t0): the path is the Brownian bridge to it."""
    W = torch.full((N,), 0.7, dtype=torch.float64)
    bm = BrownianInterval(1.0, 3.0, W=W, entropy=4)
    assert bm.shape == (N,) and bm.dtype == torch.float64
    assert torch.allclose(bm(1.0, 3.0), W, atol=1e-14, rtol=0)
    s = 0.3
    x = bm(1.0 + 2.0 * s)
    check_normal(x - s * 0.7, 2.0 * s * (1 - s), "bridge to W")


def test_covariance_matrix():
    ts = [0.05, 0.2, 0.21, 0.5, 0.77, 1.3]
    bm = sample_bm(entropy=8, t0=0.0, t1=1.5)
    order = [3, 0, 5, 1, 4, 2]  # sampled out of order on purpose
    vals = {i: as_np(bm(ts[i])) for i in order}
    X = np.stack([vals[i] for i in range(len(ts))])
    emp = X @ X.T / N
    exact = np.minimum.outer(np.array(ts), np.array(ts))
    # entries have standard error <= sqrt(2) * 1.3 / sqrt(N) ~ 0.013
    assert np.abs(emp - exact).max() < 0.06, emp - exact


def test_coordinates_independent():
    bm = sample_bm(entropy=12, t0=0.0, t1=1.0)
    x = as_np(bm(0.2, 0.9))
    # neighbouring coordinates (incl. the two halves of a Box-Muller pair) and far ones
    for lag in [1, 2, 3, 1000]:
        assert abs(np.corrcoef(x[:-lag], x[lag:])[0, 1]) < 0.05, lag
    even, odd = x[0::2], x[1::2]
    assert abs(np.corrcoef(even**2, odd**2)[0, 1]) < 0.05  # R cos, R sin are independent


# --------------------------------------------------------------------------- #
# The random-number machinery
# --------------------------------------------------------------------------- #


def test_mix64_wraps_like_unsigned_64bit():
    """The hash relies on int64 tensor multiplication wrapping modulo 2**64."""
    rng = random.Random(5)
    xs = [rng.getrandbits(64) for _ in range(500)] + [0, 1, 2**63, 2**64 - 1, 2**63 - 1]
    ref = [brownian._mix64_py(x) for x in xs]
    t = brownian._mix64(torch.tensor([brownian._signed64(x) for x in xs], dtype=torch.int64))
    assert t.tolist() == ref
    n = brownian._mix64_np(np.array(xs, dtype=np.uint64)).view(np.int64)
    assert n.tolist() == ref


def test_normals_quality():
    ids = np.arange(1, 401, dtype=np.uint64)  # neighbouring node ids
    counters = torch.arange(1, 51, dtype=torch.int64) * brownian._GAMMA
    z = brownian._normals(brownian._node_keys(ids, brownian._stream_key(0)), counters, 100)
    assert z.shape == (400, 100) and z.dtype == torch.float64
    x = z.numpy()
    check_normal(x, 1.0, "normals")
    assert abs((np.abs(x) > 3).mean() - 0.0027) < 0.0015
    # neighbouring nodes and coordinates are uncorrelated
    assert abs(np.corrcoef(x[:-1].ravel(), x[1:].ravel())[0, 1]) < 0.03
    assert abs(np.corrcoef(x[:, :-1].ravel(), x[:, 1:].ravel())[0, 1]) < 0.03
    # a value depends only on (entropy, node, coordinate)
    sub = brownian._normals(brownian._node_keys(ids[7:9], brownian._stream_key(0)), counters[:3], 5)
    assert torch.allclose(sub, z[7:9, :5], rtol=0, atol=1e-15)


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "query,pattern",
    [
        ((1.5,), r"\bta=1\.5\b"),
        ((-0.25,), r"\bta=-0\.25\b"),
        ((0.2, 1.5), r"\btb=1\.5\b"),
        ((-0.1, 0.5), r"\bta=-0\.1\b"),
        ((0.0, 1.001), r"\btb=1\.001\b"),
    ],
)
def test_query_outside_interval(query, pattern):
    bm = BrownianInterval(0.0, 1.0, size=(2,), entropy=0)
    with pytest.raises(ValueError, match=pattern):
        bm(*query)


def test_query_within_rounding_is_clamped():
    bm = BrownianInterval(0.0, 1.0, size=(2,), entropy=0)
    assert torch.equal(bm(0.0, 1.0 + 1e-9), bm(0.0, 1.0))
    assert torch.equal(bm(-1e-9, 0.5), bm(0.0, 0.5))


def test_query_reversed():
    bm = BrownianInterval(0.0, 1.0, size=(2,), entropy=0)
    with pytest.raises(ValueError, match=r"ta=0\.7.*tb=0\.3"):
        bm(0.7, 0.3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_query_not_finite(bad):
    bm = BrownianInterval(0.0, 1.0, size=(2,), entropy=0)
    with pytest.raises(ValueError, match=r"\bta=.*not finite"):
        bm(bad)
    with pytest.raises(ValueError, match=r"\btb=.*not finite"):
        bm(0.1, bad)
    with pytest.raises(ValueError, match=r"\bta=.*not finite"):
        bm(torch.tensor(bad), 0.5)


@pytest.mark.parametrize("bad", [torch.tensor([0.1, 0.2]), "a", None, 1j])
def test_query_not_scalar(bad):
    bm = BrownianInterval(0.0, 1.0, size=(2,), entropy=0)
    with pytest.raises(ValueError, match=r"\bta\b"):
        bm(bad, 0.5)


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(levy_area_approximation="bogus"), ValueError, "levy_area_approximation"),
        (dict(H=torch.zeros(2)), ValueError, r"\bH\b"),  # H needs a Levy area
        (dict(H=torch.zeros(3), levy_area_approximation="space-time"), ValueError, r"\bH\b"),
        (
            dict(
                W=torch.zeros(2),
                H=torch.zeros(2, dtype=torch.float64),
                dtype=None,
                levy_area_approximation="space-time",
            ),
            ValueError,
            r"\bH\b",
        ),
        (dict(t0=1.0, t1=0.0), ValueError, r"\bt0\b"),
        (dict(t0=float("nan")), ValueError, r"\bt0\b"),
        (dict(t1=float("inf")), ValueError, r"\bt1\b"),
        (dict(t0=-1e308, t1=1e308), ValueError, r"t1 - t0"),
        (dict(t0=torch.zeros(2)), ValueError, r"\bt0\b"),
        (dict(size=None), ValueError, r"\bsize\b"),
        (dict(size=(2, -1)), ValueError, r"\bsize\b"),
        (dict(size=(2.5,)), ValueError, r"\bsize\b"),
        (dict(dtype=torch.int64), ValueError, r"\bdtype\b"),
        (dict(entropy=1.5), TypeError, r"\bentropy\b"),
        (dict(tol=-1e-3), ValueError, r"\btol\b"),
        (dict(tol=float("nan")), ValueError, r"\btol\b"),
        (dict(cache_size=-1), ValueError, r"\bcache_size\b"),
        (dict(W=torch.zeros(3)), ValueError, r"\bW\b"),
        (dict(W=torch.zeros(2, dtype=torch.int64)), ValueError, r"\bW\b"),
    ],
)
def test_constructor_errors(kwargs, exc, pattern):
    args = dict(t0=0.0, t1=1.0, size=(2,))
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        BrownianInterval(**args)


# --------------------------------------------------------------------------- #
# BrownianTree, BrownianPath, ReverseBrownian
# --------------------------------------------------------------------------- #


def test_brownian_tree(dtype):
    w0 = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    bm = BrownianTree(t0=0.0, w0=w0, entropy=3)
    assert isinstance(bm, BrownianInterval) and bm.t1 == 1.0 and bm.dtype == dtype and bm.shape == (3,)
    assert torch.equal(bm(0.0), w0)
    assert torch.allclose(bm(0.4) - w0, bm(0.0, 0.4), atol=1e-6, rtol=0)
    assert bm.depth == 20  # tol=1e-6 on [0, 1]
    # ending at w1
    w1 = torch.tensor([0.0, 1.0, 2.0], dtype=dtype)
    bridged = BrownianTree(0.0, w0, t1=2.0, w1=w1, entropy=3)
    assert torch.allclose(bridged(2.0), w1, atol=1e-6)
    # odecore extension: BrownianInterval-style keywords
    kw = BrownianTree(t0=0.0, t1=1.0, size=(3,), dtype=dtype, entropy=3)
    assert torch.equal(kw(0.0, 0.4), bm(0.0, 0.4)) and torch.equal(kw(0.0), torch.zeros(3, dtype=dtype))
    with pytest.raises(TypeError, match=r"\bw0\b"):
        BrownianTree(0.0, 1.0, 2.0)


def test_brownian_path():
    w0 = torch.zeros(2, 2)
    bm = BrownianPath(t0=1.0, w0=w0 + 3.0, entropy=6)
    assert bm.t1 == 2.0 and bm.cache_size is None
    assert torch.equal(bm(1.0), w0 + 3.0)
    assert torch.allclose(bm(1.5) - 3.0, bm(1.0, 1.5), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"\bta=2\.5\b"):
        bm(2.5)
    longer = BrownianPath(1.0, w0, entropy=6, t1=11.0)
    assert longer(1.0, 10.0).shape == (2, 2)


def test_reverse_brownian():
    bm = BrownianInterval(0.0, 1.0, size=(3,), entropy=1)
    rbm = ReverseBrownian(bm)
    assert torch.equal(rbm(-0.7, -0.3), bm(0.3, 0.7))
    assert rbm.shape == bm.shape and rbm.dtype == bm.dtype and rbm.levy_area_approximation == "none"


# --------------------------------------------------------------------------- #
# Space-time Levy area: U = int_ta^tb (W_u - W_ta) du, H = U / h - W / 2
# --------------------------------------------------------------------------- #

LEVY = ["space-time", "davie", "foster"]


def st_bm(dtype=torch.float64, entropy=0, t0=0.0, t1=1.0, size=(N,), **kwargs):
    return BrownianInterval(
        t0, t1, size=size, dtype=dtype, entropy=entropy, levy_area_approximation="space-time", **kwargs
    )


def space_time_area(bm, a, b):
    w, u = bm(a, b, return_U=True)
    return w, u / (b - a) - w / 2


def _st_coefficient_vectors(bm, gs):
    """Coefficients of B(s) and Q(s) = int_0^s B on the standard normals (unit interval)."""
    out = []
    for g in gs:
        ids, cw3, cw4, cq3, cq4 = bm._path_st(g)
        assert len(ids) == len(set(ids.tolist())) and len(ids) <= bm.depth
        s = g / bm._grid_n
        cw = {("W",): s, ("H",): math.sqrt(3) * s * (1 - s)}
        cq = {("W",): s * s / 2, ("H",): s * s * (3 - 2 * s) / math.sqrt(12)}
        for i, a3, a4, b3, b4 in zip(ids.tolist(), cw3, cw4, cq3, cq4):
            cw[3, i], cw[4, i], cq[3, i], cq[4, i] = a3, a4, b3, b4
        out.append((cw, cq))
    return out


@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_space_time_construction_has_exact_covariance(tol):
    """The grid values of (W, Q), Q(s) = int_0^s W, have exactly the covariances of Brownian
    motion and its integral: Cov(W_s, W_t) = min(s, t), Cov(W_s, Q_t) = int_0^t min(s, u) du,
    Cov(Q_s, Q_t) = s^2 t / 2 - s^3 / 6 (s <= t). So every (W, U) query has the exact law."""
    bm = st_bm(size=(1,), tol=tol)
    n = bm._grid_n
    rng = random.Random(5)
    gs = [rng.randrange(n + 1) for _ in range(12)] + [0, n, n // 2, n // 4 + 1, n - 1, 1, (n // 3) | 1]
    vecs = _st_coefficient_vectors(bm, gs)

    def dot(x, y):
        return sum(c * y[k] for k, c in x.items() if k in y)

    for gi, (wi, qi) in zip(gs, vecs):
        for gj, (wj, qj) in zip(gs, vecs):
            s, t = gi / n, gj / n
            lo, hi = min(s, t), max(s, t)
            assert abs(dot(wi, wj) - lo) < 1e-13, (gi, gj)
            assert abs(dot(wi, qj) - (t * t / 2 if t <= s else s * t - s * s / 2)) < 1e-13, (gi, gj)
            assert abs(dot(qi, qj) - (lo * lo * hi / 2 - lo**3 / 6)) < 1e-13, (gi, gj)


@pytest.mark.parametrize("dtype,interval", product(dtypes, [(0.0, 1.0), (0.1, 0.35), (-1.3, 2.9), (1.7, 1.7 + 1e-4)]))
def test_space_time_area_law(dtype, interval):
    """H ~ N(0, h / 12), uncorrelated with (in fact independent of) W ~ N(0, h)."""
    a, b = interval
    # (entropy 17 gives normaltest p = 6e-4 for W on the shortest interval: over 40
    # entropies those p-values are uniform, KS p = 0.86)
    bm = st_bm(dtype, entropy=18, t0=-2.0, t1=5.0)
    w, u = bm(a, b, return_U=True)
    assert w.dtype == u.dtype == dtype and w.shape == u.shape == (N,)
    h = b - a
    H = u.double() / h - w.double() / 2
    check_normal(w, h, ("W", interval))
    check_normal(H, h / 12, ("H", interval))
    assert abs(corr(w, H)) < 0.05
    # H is independent of W: its conditional variance does not depend on |W|
    big = as_np(w).__abs__() > math.sqrt(h)
    assert abs(as_np(H)[big].var() / as_np(H)[~big].var() - 1) < 0.1


def test_space_time_area_law_over_entropies():
    """The same coordinate over many seeds; and (W, H) of adjacent intervals uncorrelated."""
    rows = []
    for e in range(1500):
        bm = BrownianInterval(0.0, 2.0, size=(2,), dtype=torch.float64, entropy=e, levy_area_approximation="space-time")
        w1, h1 = space_time_area(bm, 0.3, 1.4)
        w2, h2 = space_time_area(bm, 1.4, 1.9)
        rows.append(torch.cat([w1, h1, w2, h2]))
    xs = torch.stack(rows)  # columns: W1 (2), H1 (2), W2 (2), H2 (2)
    check_normal(xs[:, 2], 1.1 / 12, "H over entropies")
    check_normal(xs[:, 3], 1.1 / 12, "H over entropies")
    check_normal(xs[:, 6], 0.5 / 12, "H over entropies")
    c = np.corrcoef(xs.numpy().T)
    off = c[~np.eye(8, dtype=bool)]
    assert np.abs(off).max() < 0.1, c


def test_space_time_increments_and_areas_add_up(dtype):
    rng = random.Random(1)
    bm = st_bm(dtype, entropy=5, t0=0.0, t1=3.0, size=(50,))
    ref = st_bm(torch.float64, entropy=5, t0=0.0, t1=3.0, size=(50,))
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    for _ in range(10):
        ts = sorted(rng.uniform(0.0, 3.0) for _ in range(6))
        w_sum = torch.zeros(50, dtype=torch.float64)
        u_sum = torch.zeros(50, dtype=torch.float64)
        for a, b in zip(ts[:-1], ts[1:]):
            w, u = ref(a, b, return_U=True)
            u_sum = u_sum + u + (b - a) * w_sum
            w_sum = w_sum + w
        w, u = ref(ts[0], ts[-1], return_U=True)
        assert (w - w_sum).abs().max().item() < 1e-13 and (u - u_sum).abs().max().item() < 1e-13, ts
        # interval queries are point queries combined: U_ab = U_0b - U_0a - (b - a) W_0a
        (wa, ua), (wb, ub) = ref(ts[1], return_U=True), ref(ts[2], return_U=True)
        w, u = ref(ts[1], ts[2], return_U=True)
        assert (w - (wb - wa)).abs().max().item() < 1e-13
        assert (u - (ub - ua - (ts[2] - ts[1]) * wa)).abs().max().item() < 1e-13
        # float32 is the float64 path rounded
        w, u = ref(ts[0], ts[-1], return_U=True)
        w32, u32 = bm(ts[0], ts[-1], return_U=True)
        assert w32.dtype == u32.dtype == dtype
        assert torch.allclose(w32.double(), w, atol=tol, rtol=0) and torch.allclose(u32.double(), u, atol=tol, rtol=0)
    # a solver's steps: the whole interval from a fine partition
    grid = torch.linspace(0.0, 3.0, 301, dtype=torch.float64).tolist()
    w_sum = u_sum = torch.zeros(50, dtype=torch.float64)
    for a, b in zip(grid[:-1], grid[1:]):
        w, u = ref(a, b, return_U=True)
        u_sum, w_sum = u_sum + u + (3.0 - b) * w, w_sum + w
    w, u = ref(0.0, 3.0, return_U=True)
    assert (w - w_sum).abs().max().item() < 1e-12 and (u - u_sum).abs().max().item() < 1e-12


@pytest.mark.parametrize("dtype,levy", product(dtypes, LEVY))
def test_space_time_same_entropy_same_values_any_order(dtype, levy):
    rng = random.Random(0)
    queries = random_queries(rng, -0.5, 2.0, 10)
    kw = dict(size=(3, 2), dtype=dtype, entropy=1234, levy_area_approximation=levy)
    ref_bm = BrownianInterval(-0.5, 2.0, **kw)
    ref = [ref_bm(*q, return_U=True, return_A=True) for q in queries]
    for cache_size in [0, 1, None]:
        bm = BrownianInterval(-0.5, 2.0, cache_size=cache_size, **kw)
        order = list(range(len(queries))) * 2
        rng.shuffle(order)
        for i in order:
            w, u, A = bm(*queries[i], return_U=True, return_A=True)
            assert w.shape == u.shape == (3, 2) and w.dtype == u.dtype == dtype
            assert torch.equal(w, ref[i][0]) and torch.equal(u, ref[i][1]), (cache_size, queries[i])
            if levy == "space-time":
                assert A is None
            else:
                assert A.shape == (3, 2, 2) and A.dtype == dtype and torch.equal(A, ref[i][2])
            # the plain increment is the same W
            assert torch.equal(bm(*queries[i]), w)
    other = BrownianInterval(-0.5, 2.0, **dict(kw, entropy=1235))
    assert not torch.allclose(other(0.1, 0.9, return_U=True)[1], ref_bm(0.1, 0.9, return_U=True)[1])


def test_space_time_conditioning_on_w_and_h():
    W = torch.linspace(-1, 1, N, dtype=torch.float64)
    H = torch.linspace(0.5, -0.3, N, dtype=torch.float64)
    span = 2.5
    both = BrownianInterval(1.0, 1.0 + span, W=W, H=H, entropy=3, levy_area_approximation="space-time")
    w, u = both(1.0, 1.0 + span, return_U=True)
    assert torch.allclose(w, W, atol=1e-14) and torch.allclose(u, span * (W / 2 + H), atol=1e-14)
    # the midpoint's conditional law given (W, H): mean W/2 + 3H/2, variance span / 16
    check_normal(both(1.0 + span / 2) - (W / 2 + 1.5 * H), span / 16, "midpoint | W, H")
    # the left half: H_l = H / 4 + sqrt(span / 48) X3 - sqrt(span) X4 / 8
    w_l, h_l = space_time_area(both, 1.0, 1.0 + span / 2)
    check_normal(h_l - H / 4, span / 48 + span / 64, "left H | W, H")
    only_w = BrownianInterval(0.0, span, W=W, entropy=3, levy_area_approximation="space-time")
    w, h = space_time_area(only_w, 0.0, span)
    assert torch.allclose(w, W, atol=1e-14)
    check_normal(h, span / 12, "H | W")
    only_h = BrownianInterval(0.0, span, H=H, entropy=3, levy_area_approximation="davie")
    w, h = space_time_area(only_h, 0.0, span)
    assert torch.allclose(h, H, atol=1e-13)
    check_normal(w, span, "W | H")


def test_space_time_returns_and_properties():
    bm = st_bm(size=(2, 3), entropy=9)
    assert bm.levy_area_approximation == "space-time" and "levy_area_approximation='space-time'" in repr(bm)
    w, u = bm(0.2, 0.2, return_U=True)
    zeros = torch.zeros(2, 3, dtype=torch.float64)
    assert torch.equal(w, zeros) and torch.equal(u, zeros)
    w, a = bm(0.1, 0.4, return_A=True)
    assert a is None and torch.equal(w, bm(0.1, 0.4))
    w, u, a = bm(0.1, 0.4, return_U=True, return_A=True)
    assert a is None and torch.equal(u, bm(0.1, 0.4, return_U=True)[1])
    # point queries start at t0, and the output is not the cache
    w, u = bm(0.4, return_U=True)
    assert torch.equal(w, bm(0.0, 0.4)) and torch.equal(u, bm(0.0, 0.4, return_U=True)[1])
    w.add_(1.0)
    assert not torch.equal(w, bm(0.4))
    empty = BrownianInterval(0.0, 1.0, size=(0, 3), levy_area_approximation="space-time")
    assert empty(0.5, return_U=True)[1].shape == (0, 3)
    assert BrownianInterval(0.0, 1.0, size=(), levy_area_approximation="foster")(0.5, return_A=True)[1].shape == ()
    assert BrownianInterval(0.0, 1.0, size=(4,), levy_area_approximation="davie")(0.5, return_A=True)[1].shape == (4,)
    # ReverseBrownian passes the request through (as torchsde's does)
    assert len(ReverseBrownian(bm)(-0.4, -0.1, return_U=True)) == 2


@pytest.mark.parametrize("levy", ["davie", "foster"])
def test_davie_foster_levy_area(levy):
    bm = BrownianInterval(0.0, 1.0, size=(4000, 3), dtype=torch.float64, entropy=8, levy_area_approximation=levy)
    w, u, A = bm(0.2, 0.7, return_U=True, return_A=True)
    h = 0.5
    H = u / h - w / 2
    assert A.shape == (4000, 3, 3)
    assert torch.allclose(A, -A.transpose(-1, -2), atol=1e-15)
    assert torch.equal(A.diagonal(dim1=-2, dim2=-1), torch.zeros(4000, 3, dtype=torch.float64))
    # the deterministic part is H W^T - W H^T; the rest is centred noise of torchsde's scale
    resid = A - (H.unsqueeze(-1) * w.unsqueeze(-2) - w.unsqueeze(-1) * H.unsqueeze(-2))
    if levy == "davie":
        check_normal(resid[:, 0, 1], 2 * h * h / 12, "davie noise")
    else:
        std = (0.1 * h * (0.1 * h + H[:, 0] ** 2 + H[:, 1] ** 2)).sqrt()
        check_normal(resid[:, 0, 1] / std, 2.0, "foster noise")
    assert abs(corr(resid[:, 0, 1], resid[:, 1, 2])) < 0.05


def test_space_time_against_torchsde_statistics():
    torchsde = _torchsde()
    for levy in LEVY:
        theirs = torchsde.BrownianInterval(
            0.0, 2.0, size=(4000, 2), dtype=torch.float64, entropy=5, levy_area_approximation=levy
        )
        ours = BrownianInterval(0.0, 2.0, size=(4000, 2), dtype=torch.float64, entropy=5, levy_area_approximation=levy)
        for a, b in [(0.0, 0.4), (0.4, 0.45), (0.45, 2.0)]:
            out_t = theirs(a, b, return_U=True, return_A=True)
            out_o = ours(a, b, return_U=True, return_A=True)
            assert len(out_t) == len(out_o) == 3
            for x, y in zip(out_t, out_o):
                if x is None:
                    assert y is None
                    continue
                assert x.shape == y.shape and x.dtype == y.dtype
                x, y = as_np(x), as_np(y)
                assert scipy_stats.ks_2samp(x, y).pvalue > 1e-3, (levy, a, b)


# --------------------------------------------------------------------------- #
# torchsde
# --------------------------------------------------------------------------- #


def _torchsde():
    return pytest.importorskip("torchsde")


def test_torchsde_same_calls_work_on_both():
    torchsde = _torchsde()
    kwargs = dict(
        t0=0.0,
        t1=1.0,
        size=(4, 3),
        dtype=torch.float64,
        device="cpu",
        entropy=7,
        dt=None,
        tol=0.0,
        pool_size=8,
        cache_size=45,
        halfway_tree=False,
        levy_area_approximation="none",
    )
    w0 = torch.zeros(4, 3, dtype=torch.float64)
    pairs = [
        (torchsde.BrownianInterval(**kwargs), BrownianInterval(**kwargs)),
        (
            torchsde.BrownianInterval(0.0, 1.0, (4, 3), torch.float64, "cpu", 7),
            BrownianInterval(0.0, 1.0, (4, 3), torch.float64, "cpu", 7),
        ),
        (
            torchsde.BrownianTree(t0=0.0, w0=w0, t1=1.0, entropy=3, tol=1e-6, pool_size=24),
            BrownianTree(t0=0.0, w0=w0, t1=1.0, entropy=3, tol=1e-6, pool_size=24),
        ),
        (torchsde.BrownianPath(t0=0.0, w0=w0), BrownianPath(t0=0.0, w0=w0)),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde warns on point queries
        for theirs, ours in pairs:
            assert tuple(theirs.shape) == tuple(ours.shape) == (4, 3)
            assert tuple(theirs.size()) == tuple(ours.size())
            assert theirs.dtype == ours.dtype and torch.device(theirs.device) == ours.device
            assert theirs.levy_area_approximation == ours.levy_area_approximation
            for q in [(0.2, 0.5), (0.5,), (torch.tensor(0.1), torch.tensor(0.9))]:
                a, b = theirs(*q), ours(*q)
                assert a.shape == b.shape and a.dtype == b.dtype
            ra, rb = theirs(0.2, 0.5, return_U=False, return_A=False), ours(0.2, 0.5, return_U=False, return_A=False)
            assert ra.shape == rb.shape
    reverse = (torchsde._brownian.ReverseBrownian(pairs[0][0]), ReverseBrownian(pairs[0][1]))
    assert reverse[0](-0.5, -0.2).shape == reverse[1](-0.5, -0.2).shape


def test_torchsde_same_statistics():
    torchsde = _torchsde()
    theirs = torchsde.BrownianInterval(0.0, 2.0, size=(N,), dtype=torch.float64, entropy=5)
    ours = BrownianInterval(0.0, 2.0, size=(N,), dtype=torch.float64, entropy=5)
    steps = [0.0, 0.4, 0.45, 1.3, 2.0]
    for a, b in zip(steps[:-1], steps[1:]):
        x, y = as_np(theirs(a, b)), as_np(ours(a, b))
        assert abs(x.var() / y.var() - 1) < 0.1
        assert scipy_stats.ks_2samp(x, y).pvalue > 1e-3, (a, b)
        check_normal(ours(a, b), b - a, (a, b))


def test_torchsde_sdeint_accepts_our_brownian_motion():
    torchsde = _torchsde()

    class Noise(torch.nn.Module):
        noise_type = "diagonal"
        sde_type = "ito"

        def f(self, t, y):
            return torch.zeros_like(y)

        def g(self, t, y):
            return torch.ones_like(y)

    y0 = torch.full((5, 2), 0.5, dtype=torch.float64)
    ts = torch.tensor([0.0, 0.35, 1.0], dtype=torch.float64)
    bm = BrownianInterval(0.0, 1.0, size=(5, 2), dtype=torch.float64, entropy=2)
    ys = torchsde.sdeint(Noise(), y0, ts, bm=bm, method="euler", dt=0.01)
    # dy = dW: the solution is y0 + W(t) - W(0), whatever the steps
    for i, t in enumerate(ts.tolist()):
        assert torch.allclose(ys[i], y0 + bm(t), atol=1e-12)

"""Seeded Brownian motion with torchsde's interface (torchsde 0.2.6): BrownianInterval, BrownianTree,
BrownianPath and ReverseBrownian, each a deterministic function of its seed, queried on any
interval in any order. The construction (a dyadic Levy-Ciesielski expansion on a time grid,
counter-based normals) and the differences from torchsde are in docs/brownian.md."""

import collections
import hashlib
import math
import operator
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["BrownianInterval", "BrownianTree", "BrownianPath", "ReverseBrownian", "LEVY_AREA_APPROXIMATIONS"]

LEVY_AREA_APPROXIMATIONS = ("none", "space-time", "davie", "foster")
Time = float | torch.Tensor  # a time: a number or a one-element tensor

# Grid depth for tol=0: spacing (t1 - t0) * 2**-52, the float64 resolution of the interval.
DEFAULT_DEPTH = 52
MAX_DEPTH = 62  # node ids 2**d + k must fit in int64

# Space-time tree constants; X4 normals use node id + 2**63 (ids are < 2**63).
_X4_STREAM = np.uint64(1 << 63)
_SQRT3 = math.sqrt(3.0)
_SQRT3_2 = 0.5 * math.sqrt(3.0)
_RSQRT12 = 1.0 / math.sqrt(12.0)
_RSQRT48 = 1.0 / math.sqrt(48.0)

# Relative slack for queries just outside [t0, t1] (float32 rounding of the times).
_SLACK = 8 * torch.finfo(torch.float32).eps


# --------------------------------------------------------------------------- #
# Counter-based normals: SplitMix64 in int64 tensor arithmetic (multiplication wraps
# modulo 2**64; test_brownian checks that against a pure-Python reference).
# --------------------------------------------------------------------------- #

_MASK64 = (1 << 64) - 1


def _signed64(c):
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


_GAMMA = _signed64(0x9E3779B97F4A7C15)  # SplitMix64 increment (stream of a node)
_NODE_GAMMA = _signed64(0xD1B54A32D192ED03)  # spreads node ids before hashing
_M1 = _signed64(0xBF58476D1CE4E5B9)
_M2 = _signed64(0x94D049BB133111EB)
_A_KEY = _signed64(0xA5A50DD51EAFC0DE)  # stream of the Davie / Foster normals


def _srl(x, k):
    """Logical right shift of an int64 tensor (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix64(x):
    """SplitMix64's finaliser, elementwise on an int64 tensor (a bijection of 64-bit words).
    Overwrites and returns x."""
    t = torch.empty_like(x)
    for k, m in ((30, _M1), (27, _M2), (31, None)):
        torch.bitwise_right_shift(x, k, out=t)
        t &= (1 << (64 - k)) - 1  # logical shift
        x ^= t
        if m is not None:
            x *= m
    return x


def _mix64_py(x):
    """Reference _mix64 on a Python int (unsigned 64-bit arithmetic); returns signed."""
    x &= _MASK64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    return _signed64(x)


def _mix64_np(x):
    """_mix64 on a numpy uint64 array (numpy array arithmetic wraps modulo 2**64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _node_keys(ids, stream_key):
    """Per-node stream keys mix(id * NODE_GAMMA + stream_key) of a uint64 array of node ids,
    as an int64 torch tensor (CPU)."""
    ids = np.asarray(ids, dtype=np.uint64).reshape(-1)
    x = ids * np.uint64(_NODE_GAMMA & _MASK64) + np.uint64(stream_key & _MASK64)
    return torch.from_numpy(_mix64_np(x).view(np.int64))


def _stream_key(entropy):
    """64-bit key of an arbitrary-size integer seed."""
    digest = hashlib.blake2b(str(int(entropy)).encode(), digest_size=8, person=b"odecore.bm").digest()
    return _signed64(int.from_bytes(digest, "little"))


def _normals(keys, counters, numel):
    """Standard normals Z[n, i], float64 of shape (N, numel), for node keys (int64, (N,),
    from _node_keys) and coordinates i < numel; ``counters`` is (p + 1) * GAMMA for the pairs
    p < ceil(numel / 2).

    Pair p of node n is one SplitMix64 output x = mix(key_n + (p + 1) GAMMA), key_n =
    mix(n NODE_GAMMA + stream_key): Box-Muller with a 40-bit radius uniform (|Z| up to 7.5)
    and a 24-bit angle gives Z[n, 2p] = R cos(theta), Z[n, 2p + 1] = R sin(theta). So each
    value is a function of (entropy, node, coordinate) alone, up to the last-bit rounding of
    log/cos/sin (which torch may compute with vector or scalar code depending on where the
    element sits; the same query is therefore bitwise reproducible within a process)."""
    x = _mix64(keys.unsqueeze(-1) + counters)
    # u1 = (2v + 1) 2^-41 in (0, 1) with v the top 40 bits (exact in float64); theta from the low 24.
    r = (_srl(x, 24) * 2 + 1).to(torch.float64).mul_(2.0**-41).log_().mul_(-2.0).sqrt_()
    theta = ((x & 0xFFFFFF) * 2 + 1).to(torch.float64).mul_(math.pi * 2.0**-24)
    z = torch.stack([r * theta.cos(), r.mul_(theta.sin_())], dim=-1)  # (N, P, 2)
    return z.reshape(z.shape[0], -1)[:, :numel]


# --------------------------------------------------------------------------- #
# Argument checking
# --------------------------------------------------------------------------- #


def _scalar(x, name):
    """float(x) for a Python/numpy number or a one-element tensor; ValueError otherwise."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(
                "%s must be a scalar (float or one-element tensor), got a tensor of shape %s" % (name, tuple(x.shape))
            )
        if x.is_complex():
            raise ValueError("%s must be real, got %r" % (name, x))
        return float(x.detach().item())
    if isinstance(x, bool) or x is None or isinstance(x, complex):
        raise ValueError("%s must be a real number, got %r" % (name, x))
    try:
        return float(x)
    except (TypeError, ValueError):
        raise ValueError("%s must be a real number, got %r" % (name, x)) from None


def _finite(x, name):
    v = _scalar(x, name)
    if not math.isfinite(v):
        raise ValueError("%s=%r is not finite" % (name, v))
    return v


def _size(size):
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size,)
    try:
        size = torch.Size(tuple(operator.index(n) for n in size))
    except TypeError:
        raise ValueError("size must be a tuple of non-negative ints, got %r" % (size,)) from None
    if any(n < 0 for n in size):
        raise ValueError("size must be a tuple of non-negative ints, got %r" % (tuple(size),))
    return size


def _check_levy(levy_area_approximation):
    if levy_area_approximation not in LEVY_AREA_APPROXIMATIONS:
        raise ValueError(
            "levy_area_approximation must be one of %s, got %r" % (LEVY_AREA_APPROXIMATIONS, levy_area_approximation)
        )


def _check_given(X, name, size, dtype, device):
    """Checks a given W or H against size/dtype/device; returns (size, dtype, device) it implies."""
    if not isinstance(X, torch.Tensor) or not X.is_floating_point():
        raise ValueError("%s must be a floating point tensor, got %r" % (name, type(X).__name__))
    if size is not None and _size(size) != X.shape:
        raise ValueError("size=%s and %s.shape=%s differ" % (tuple(_size(size)), name, tuple(X.shape)))
    if dtype is not None and dtype != X.dtype:
        raise ValueError("dtype=%s and %s.dtype=%s differ" % (dtype, name, X.dtype))
    if device is not None and torch.device(device) != X.device:
        raise ValueError("device=%s and %s.device=%s differ" % (device, name, X.device))
    return X.shape, X.dtype, X.device


def _check_interval(t0, t1, tol, dt, cache_size):
    """(t0, t1, tol, cache_size) as numbers, once they (and dt) are valid."""
    t0 = _finite(t0, "t0")
    t1 = _finite(t1, "t1")
    if t0 > t1:
        raise ValueError("t0=%r must be <= t1=%r" % (t0, t1))
    if not math.isfinite(t1 - t0):
        raise ValueError("t1 - t0 = %r (t0=%r, t1=%r) is not finite" % (t1 - t0, t0, t1))
    tol = _scalar(tol, "tol")
    if not (tol >= 0.0) or math.isinf(tol):
        raise ValueError("tol=%r must be a finite number >= 0" % (tol,))
    if dt is not None:
        _scalar(dt, "dt")
    if cache_size is not None:
        try:
            cache_size = operator.index(cache_size)
        except TypeError:
            raise ValueError("cache_size must be a non-negative int or None, got %r" % (cache_size,)) from None
        if cache_size < 0:
            raise ValueError("cache_size must be a non-negative int or None, got %r" % (cache_size,))
    return t0, t1, tol, cache_size


def _shape_dtype_device(size, dtype, device, W, H):
    """The motion's torch.Size, dtype and device: as given, or implied by W or H."""
    if W is not None:
        size, dtype, device = _check_given(W, "W", size, dtype, device)
    if H is not None:
        size, dtype, device = _check_given(H, "H", size, dtype, device)
    if size is None:
        raise ValueError("size must be given (or W or H, which imply it)")
    size = _size(size)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError("dtype must be a floating point torch.dtype, got %r" % (dtype,))
    device = torch.device("cpu") if device is None else torch.device(device)
    return size, dtype, device


def _entropy(entropy):
    """The seed as an int; None draws one from torch's global generator."""
    if entropy is None:
        return int(torch.randint(0, 2**62, ()).item())
    try:
        return operator.index(entropy)
    except TypeError:
        raise TypeError("entropy must be an int or None, got %r" % (type(entropy).__name__,)) from None


def _depth(span, tol):
    """K, the grid depth: spacing span 2^-K at most tol (tol = 0: the float64 resolution)."""
    if tol == 0.0 or span == 0.0:
        return DEFAULT_DEPTH
    ratio = span / tol
    return MAX_DEPTH if ratio >= 2.0**MAX_DEPTH else max(1, math.ceil(math.log2(ratio)))


# --------------------------------------------------------------------------- #
# BrownianInterval
# --------------------------------------------------------------------------- #


class BrownianInterval:
    """Brownian motion on [t0, t1], a deterministic function of ``entropy``.

    ``bm(ta, tb)`` is the increment W(tb) - W(ta) (requires t0 <= ta <= tb <= t1),
    ``bm(t)`` is W(t) - W(t0); both are tensors of shape ``size``, ``dtype``, ``device``.
    docs/brownian.md describes the construction and the differences from torchsde.

    Arguments (torchsde's ``BrownianInterval`` signature):
        t0, t1: the interval (floats or one-element tensors), t0 <= t1.
        size: shape of the motion, e.g. (batch, noise channels). May be omitted if W is given.
        dtype: default ``torch.get_default_dtype()`` (or W's). float32 and float64 motions
            with the same entropy give the same path.
        device: default CPU (or W's).
        entropy: int seed (any size); ``None`` draws one from torch's global generator.
        dt: ignored (torchsde's hint for its dependency tree).
        tol: time resolution. 0 (default): times are resolved to (t1 - t0) * 2**-52;
            tol > 0: to the coarsest dyadic grid of spacing <= tol (faster queries).
        pool_size: ignored (torchsde's entropy-pool size).
        cache_size: how many evaluated points to keep (LRU); ``None`` for no limit, 0 for
            none. Only speed depends on it, never the values.
        halfway_tree: ignored; the construction is always the dyadic (halfway) tree.
        levy_area_approximation: ``'none'`` (default), ``'space-time'`` (U with return_U),
            ``'davie'`` or ``'foster'`` (U, and A with return_A).
        W: optional increment W(t1) - W(t0) to condition on (the path is then the Brownian
            bridge to W). H: optional space-time Levy area over [t0, t1] to condition on
            (needs a Levy area), so that bm(t0, t1, return_U=True)[1] == (t1 - t0) (W / 2 + H).
    """

    def __init__(
        self,
        t0: Time = 0.0,
        t1: Time = 1.0,
        size: int | Sequence[int] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        entropy: int | None = None,
        dt: float | None = None,
        tol: float = 0.0,
        pool_size: int = 8,
        cache_size: int | None = 45,
        halfway_tree: bool = False,
        levy_area_approximation: str = "none",
        W: torch.Tensor | None = None,
        H: torch.Tensor | None = None,
    ):
        t0, t1, tol, cache_size = _check_interval(t0, t1, tol, dt, cache_size)
        _check_levy(levy_area_approximation)
        have_H = levy_area_approximation != "none"
        if H is not None and not have_H:
            raise ValueError(
                "H (the space-time Levy area over [t0, t1]) is only used with levy_area_approximation "
                "in ('space-time', 'davie', 'foster'), got levy_area_approximation='none'"
            )
        size, dtype, device = _shape_dtype_device(size, dtype, device, W, H)
        self._t0, self._t1, self._span = t0, t1, t1 - t0
        self._size, self._dtype, self._device = size, dtype, device
        self._numel = size.numel()
        self._entropy = _entropy(entropy)
        self._dt, self._tol, self._pool_size = dt, tol, pool_size
        self._cache_size, self._halfway_tree = cache_size, halfway_tree
        self._levy_area_approximation = levy_area_approximation
        self._slack = _SLACK * max(abs(t0), abs(t1), self._span)
        self._sqrt_span = math.sqrt(self._span)
        self._init_grid(_depth(self._span, tol))
        self._key = _stream_key(self._entropy)
        self._counters = torch.arange(1, (self._numel + 1) // 2 + 1, dtype=torch.int64, device=device) * _GAMMA
        self._W = None if W is None else W.detach().reshape(-1).to(torch.float64)
        self._H = None if H is None else H.detach().reshape(-1).to(torch.float64)
        self._have_H = have_H
        self._have_A = levy_area_approximation in ("davie", "foster")
        if have_H:
            self._init_space_time()
        self._a_counters = None
        self._cache = collections.OrderedDict()

    def _init_grid(self, depth):
        """Per level d < K: shift K - d, mask 2^(K-d) - 1, tent half-width 2^(K-d-1) (grid units),
        first node id 2^d and tent slope 2^(d/2 - K): S = m * slope, m = distance to the nearer end."""
        self._depth = depth
        self._grid_n = 1 << depth
        levels = list(range(depth))
        self._np_shift = np.array([depth - d for d in levels], dtype=np.uint64)
        self._np_mask = np.array([(1 << (depth - d)) - 1 for d in levels], dtype=np.uint64)
        self._np_half = np.array([1 << (depth - d - 1) for d in levels], dtype=np.uint64)
        self._np_base = np.array([1 << d for d in levels], dtype=np.uint64)
        self._np_scale = np.array([2.0 ** (d / 2 - depth) for d in levels], dtype=np.float64)

    def _init_space_time(self):
        """The space-time tree's per-level constants (see _path_st). Its own stream key, so that
        its normals are unrelated to those of the 'none' motion with the same entropy."""
        depth = self._depth
        levels = list(range(depth))
        self._st_key = _mix64_py(self._key ^ _signed64(0x5A17_E0F1_A5E7_1EE5))
        self._np_x_scale = np.array([2.0 ** -(depth - d - 1) for d in levels], dtype=np.float64)  # 1 / half
        self._np_sqrt_len = np.array([2.0 ** (-d / 2) for d in levels], dtype=np.float64)  # sqrt(L)
        self._np_q_scale = np.array([2.0 ** (-1.5 * d - 1) for d in levels], dtype=np.float64)  # (L / 2) sqrt(L)
        self._span15 = self._span * self._sqrt_span

    # ------------------------------------------------------------------ #
    # Points
    # ------------------------------------------------------------------ #

    def _grid(self, t):
        """The grid index (0 .. 2**K) of an (already range-checked) time."""
        if t <= self._t0:
            return 0
        if t >= self._t1:
            return self._grid_n
        g = round((t - self._t0) / self._span * self._grid_n)
        return min(max(g, 0), self._grid_n)

    def _path(self, g):
        """Node ids (uint64) and Schauder coefficients (float64) of grid point g, in level order:
        B(g 2^-K) = g 2^-K Z_root + sum_j coeffs_j Z[ids_j] (unit interval; root not listed).
        Node (d, k) has id 2^d + k; the root's id is 0.

        This is the Levy-Ciesielski expansion B(s) = s Z_root + sum_{d, k} Z_{d,k} S_{d,k}(s),
        S_{d,k} the Schauder tent on [k 2^-d, (k+1) 2^-d] (peak 2^(-d/2) / 2 at its midpoint): at
        a grid point it is a finite sum, one tent per level, and exactly Brownian."""
        if 0 < g < self._grid_n:
            # levels d < K - ctz(g): below them g is a grid point of the level (no tent touches it)
            n = self._depth - ((g & -g).bit_length() - 1)
        else:
            n = 0
        gu = np.uint64(g)
        r = gu & self._np_mask[:n]
        half = self._np_half[:n]
        m = np.where(r <= half, r, (half << np.uint64(1)) - r)
        return self._np_base[:n] + (gu >> self._np_shift[:n]), m.astype(np.float64) * self._np_scale[:n]

    def _path_st(self, g):
        """The space-time tree's node ids (uint64) and coefficients of grid point g, in level
        order: on the unit interval, with L = 2^-d the length of the level-d node containing g
        and x the position of g in that node's half (0 < x <= 1),

            B(g 2^-K) = root terms + sum_j cw3_j X3[ids_j] + cw4_j X4[ids_j],
            Q(g 2^-K) = int_0^(g 2^-K) B = root terms + sum_j cq3_j X3[ids_j] + cq4_j X4[ids_j].

        Node (d, k) has id 2^d + k (its X4 normals are drawn under id + 2^63). The tree splits a
        node's (W, H) (length L) into its halves' with two fresh normals X3, X4, their exact
        conditional law:

            W_left  = W / 2 + 3 H / 2 + sqrt(L) X4 / 4,    H_left  = H / 4 + sqrt(L / 48) X3 - sqrt(L) X4 / 8,
            W_right = W / 2 - 3 H / 2 - sqrt(L) X4 / 4,    H_right = H / 4 - sqrt(L / 48) X3 - sqrt(L) X4 / 8,

        so node (d, k) adds a piecewise quadratic of X3, X4 that vanishes outside the node, at
        its ends and in its integral."""
        if 0 < g < self._grid_n:
            n = self._depth - ((g & -g).bit_length() - 1)
        else:
            n = 0
        gu = np.uint64(g)
        r = gu & self._np_mask[:n]
        half = self._np_half[:n]
        left = r <= half
        x = (r - np.where(left, np.uint64(0), half)).astype(np.float64) * self._np_x_scale[:n]
        y = 1.0 - x
        xy = x * y
        sl = self._np_sqrt_len[:n]
        q = self._np_q_scale[:n]
        cw3 = np.where(left, _SQRT3_2, -_SQRT3_2) * sl * xy
        cw4 = sl * (0.25 * np.where(left, x, y) - 0.75 * xy)
        cq3 = (q * _RSQRT48) * np.where(left, x * x * (3.0 - 2.0 * x), y * y * (1.0 + 2.0 * x))
        cq4 = (0.25 * q) * np.where(left, -x * xy, xy * y)
        return self._np_base[:n] + (gu >> self._np_shift[:n]), cw3, cw4, cq3, cq4

    def _evaluate_st(self, g):
        """(W(t) - W(t0), Q(t)) at t = t0 + g 2^-K (t1 - t0), Q(t) = int_t0^t (W(u) - W(t0)) du,
        as a float64 tensor (2, numel)."""
        ids, cw3, cw4, cq3, cq4 = self._path_st(g)
        s = g / self._grid_n
        ids = [ids, ids | _X4_STREAM]
        cw, cq = [cw3, cw4], [cq3, cq4]
        if self._W is None:  # root increment Z_W (unit variance)
            ids.append(np.zeros(1, np.uint64))
            cw.append(np.array([s]))
            cq.append(np.array([0.5 * s * s]))
        if self._H is None:  # root space-time area Z_H / sqrt(12)
            ids.append(np.full(1, _X4_STREAM, np.uint64))
            cw.append(np.array([_SQRT3 * s * (1.0 - s)]))
            cq.append(np.array([s * s * (3.0 - 2.0 * s) * _RSQRT12]))
        if self._numel == 0:
            return torch.zeros(2, 0, dtype=torch.float64, device=self._device)
        ids = np.concatenate(ids)
        if len(ids):
            keys = _node_keys(ids, self._st_key).to(self._device)
            z = _normals(keys, self._counters, self._numel)
            c = torch.from_numpy(np.stack([np.concatenate(cw), np.concatenate(cq)])).to(self._device)
            out = c @ z
            out[0].mul_(self._sqrt_span)
            out[1].mul_(self._span15)
        else:
            out = torch.zeros(2, self._numel, dtype=torch.float64, device=self._device)
        if self._W is not None:
            out[0].add_(self._W, alpha=s)
            out[1].add_(self._W, alpha=0.5 * s * s * self._span)
        if self._H is not None:
            out[0].add_(self._H, alpha=6.0 * s * (1.0 - s))
            out[1].add_(self._H, alpha=s * s * (3.0 - 2.0 * s) * self._span)
        return out

    def _evaluate(self, g):
        """W(t0 + g 2^-K (t1 - t0)) - W(t0) as a flat float64 tensor (numel,); with a Levy area
        the (2, numel) tensor of _evaluate_st."""
        if self._have_H:
            return self._evaluate_st(g)
        ids, coeffs = self._path(g)
        s = g / self._grid_n
        if self._W is None:
            ids = np.append(ids, np.uint64(0))  # root node: Z_root, coefficient s
            coeffs = np.append(coeffs, s)
        if self._numel == 0:
            return torch.zeros(0, dtype=torch.float64, device=self._device)
        if len(ids):
            keys = _node_keys(ids, self._key).to(self._device)
            z = _normals(keys, self._counters, self._numel)
            c = torch.from_numpy(coeffs).to(self._device)
            w = (c @ z).mul_(self._sqrt_span)
        else:
            w = torch.zeros(self._numel, dtype=torch.float64, device=self._device)
        if self._W is not None:
            w = w + s * self._W
        return w

    def _value(self, g):
        if g == 0:
            return None  # W(t0) - W(t0) = 0
        cache = self._cache
        w = cache.get(g)
        if w is not None:
            cache.move_to_end(g)
            return w
        w = self._evaluate(g)
        if self._cache_size is None or self._cache_size > 0:
            cache[g] = w
            if self._cache_size is not None and len(cache) > self._cache_size:
                cache.popitem(last=False)
        return w

    def _time(self, t, name):
        t = _finite(t, name)
        lo, hi = self._t0, self._t1
        if t < lo:
            if t < lo - self._slack:
                raise ValueError("%s=%r is outside [t0, t1]=[%r, %r] of the Brownian motion" % (name, t, lo, hi))
            t = lo
        elif t > hi:
            if t > hi + self._slack:
                raise ValueError("%s=%r is outside [t0, t1]=[%r, %r] of the Brownian motion" % (name, t, lo, hi))
            t = hi
        return t

    # ------------------------------------------------------------------ #
    # Public interface
    # ------------------------------------------------------------------ #

    def __call__(
        self, ta: Time, tb: Time | None = None, return_U: bool = False, return_A: bool = False
    ) -> torch.Tensor | tuple:
        """W(tb) - W(ta), or W(ta) - W(t0) if tb is None. With return_U / return_A, torchsde's
        tuples (W, U), (W, A) or (W, U, A): U = int_ta^tb (W(u) - W(ta)) du (space-time Levy
        area H = U / (tb - ta) - W / 2), A the Davie / Foster approximation of the Levy area;
        None where ``levy_area_approximation`` does not provide them ('none': neither;
        'space-time': no A)."""
        if tb is None:
            ta, tb = self._t0, self._time(ta, "ta")
        else:
            ta, tb = self._time(ta, "ta"), self._time(tb, "tb")
            if ta > tb:
                raise ValueError("query times must satisfy ta <= tb, got ta=%r > tb=%r" % (ta, tb))
        ga, gb = self._grid(ta), self._grid(tb)
        wa, wb = self._value(ga), self._value(gb)
        if not self._have_H:
            if wb is None:
                out = torch.zeros(self._size, dtype=self._dtype, device=self._device)
            elif wa is None:  # copy: never hand out the cached tensor itself
                out = wb.to(self._dtype, copy=True).reshape(self._size)
            else:
                out = (wb - wa).to(self._dtype).reshape(self._size)
            if return_U and return_A:
                return out, None, None
            if return_U or return_A:
                return out, None
            return out

        h = (gb - ga) / self._grid_n * self._span  # the grid interval's length
        if wb is None:
            w = u = torch.zeros(self._numel, dtype=torch.float64, device=self._device)
        elif wa is None:
            w, u = wb[0], wb[1]
        else:
            w = wb[0] - wa[0]
            u = wb[1] - wa[1] - h * wa[0]
        out = w.to(self._dtype, copy=True).reshape(self._size)
        if not (return_U or return_A):
            return out
        result = [out]
        if return_U:
            result.append(u.to(self._dtype, copy=True).reshape(self._size))
        if return_A:
            result.append(self._levy_area(w, u, h, ga, gb) if self._have_A else None)
        return tuple(result)

    def _levy_area(self, w, u, h, ga, gb):
        """torchsde's Davie / Foster approximation of the Levy area over the grid interval
        [ga, gb] from its W and U (float64, flat), with the extra normals hashed from
        (entropy, ga, gb): A = H W^T - W H^T + std (N - N^T)."""
        size = self._size
        if len(size) < 2 or h == 0.0:
            # a scalar motion (or a batch of them, torchsde's convention) has no Levy area
            shape = size if len(size) < 2 else (*size, size[-1])
            return torch.zeros(shape, dtype=self._dtype, device=self._device)
        m = size[-1]
        W = w.reshape(size)
        H = (u / h - 0.5 * w).reshape(size)
        A = H.unsqueeze(-1) * W.unsqueeze(-2) - W.unsqueeze(-1) * H.unsqueeze(-2)
        numel = self._numel * m
        if self._a_counters is None or self._a_counters.numel() != (numel + 1) // 2:
            self._a_counters = torch.arange(1, (numel + 1) // 2 + 1, dtype=torch.int64, device=self._device) * _GAMMA
        key = _mix64_py(_mix64_py(self._st_key ^ _A_KEY) + ga * _GAMMA + gb * _NODE_GAMMA)
        keys = torch.tensor([key], dtype=torch.int64, device=self._device)
        noise = _normals(keys, self._a_counters, numel).reshape(*size, m)
        noise = noise - noise.transpose(-1, -2)  # skew-symmetric, variance 2 off the diagonal
        if self._levy_area_approximation == "foster":
            h10 = 0.1 * h
            H2 = H * H
            std = (h10 * (h10 + H2.unsqueeze(-1) + H2.unsqueeze(-2))).sqrt()
        else:  # davie
            std = math.sqrt(h * h / 12.0)
        return (A + std * noise).to(self._dtype)

    def __repr__(self):
        return (
            "%s(t0=%r, t1=%r, size=%s, dtype=%s, device=%r, entropy=%r, tol=%r, cache_size=%r, "
            "levy_area_approximation=%r)"
            % (
                type(self).__name__,
                self._t0,
                self._t1,
                tuple(self._size),
                self._dtype,
                self._device,
                self._entropy,
                self._tol,
                self._cache_size,
                self._levy_area_approximation,
            )
        )

    @property
    def t0(self):
        return self._t0

    @property
    def t1(self):
        return self._t1

    @property
    def shape(self):
        return self._size

    def size(self):
        """The shape (torchsde's BaseBrownian.size())."""
        return self._size

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return self._device

    @property
    def entropy(self):
        return self._entropy

    @property
    def levy_area_approximation(self):
        return self._levy_area_approximation

    @property
    def tol(self):
        return self._tol

    @property
    def dt(self):
        return self._dt

    @property
    def pool_size(self):
        return self._pool_size

    @property
    def cache_size(self):
        return self._cache_size

    @property
    def halfway_tree(self):
        return self._halfway_tree

    @property
    def depth(self):
        """K: times are resolved to the grid t0 + j (t1 - t0) 2**-K."""
        return self._depth


class _Offset(BrownianInterval):
    """torchsde's BrownianTree / BrownianPath: W(t0) = w0, so bm(t) = w0 + increment."""

    def _init_offset(self, w0):
        self._w0 = w0

    def __call__(
        self, t: Time, tb: Time | None = None, return_U: bool = False, return_A: bool = False
    ) -> torch.Tensor | tuple:
        out = super().__call__(t, tb, return_U=return_U, return_A=return_A)
        if tb is None and not return_U and not return_A:
            out = out + self._w0
        return out

    @property
    def w0(self):
        return self._w0


def _check_w0(w0, cls):
    if not isinstance(w0, torch.Tensor) or not w0.is_floating_point():
        raise TypeError("%s: w0 must be a floating point tensor (the value W(t0)), got %r" % (cls, type(w0).__name__))


class BrownianTree(_Offset):
    """torchsde's ``BrownianTree(t0, w0, t1=None, w1=None, entropy=None, tol=1e-6, ...)``:
    a BrownianInterval on [t0, t1] (t1 defaults to t0 + 1) of w0's shape, dtype and device,
    starting at W(t0) = w0 (``bm(t)`` returns W(t), ``bm(ta, tb)`` the increment) and, if
    w1 is given, ending at W(t1) = w1. ``tol`` is the time resolution (see BrownianInterval).
    ``pool_size``, ``cache_depth`` and ``safety`` are ignored.

    odecore extension: ``w0`` may be omitted if ``size`` (and optionally dtype, device) are
    given as keywords; then W(t0) = 0."""

    def __init__(
        self,
        t0: Time,
        w0: torch.Tensor | None = None,
        t1: Time | None = None,
        w1: torch.Tensor | None = None,
        entropy: int | None = None,
        tol: float = 1e-6,
        pool_size: int = 24,
        cache_depth: int = 9,
        safety: float | None = None,
        *,
        size: int | Sequence[int] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        cache_size: int | None = 45,
    ):
        if w0 is None:
            if size is None:
                raise ValueError("BrownianTree needs w0 (or size=...)")
            w0 = torch.zeros(
                _size(size), dtype=dtype if dtype is not None else torch.get_default_dtype(), device=device
            )
        _check_w0(w0, "BrownianTree")
        t0 = _finite(t0, "t0")
        t1 = t0 + 1.0 if t1 is None else t1
        W = None
        if w1 is not None:
            if not isinstance(w1, torch.Tensor) or w1.shape != w0.shape:
                raise ValueError("w1 must be a tensor of w0's shape %s" % (tuple(w0.shape),))
            W = (w1 - w0).to(w0.dtype)
        super().__init__(
            t0=t0,
            t1=t1,
            size=w0.shape,
            dtype=w0.dtype,
            device=w0.device,
            entropy=entropy,
            tol=tol,
            pool_size=pool_size,
            cache_size=cache_size,
            halfway_tree=True,
            W=W,
        )
        self._init_offset(w0)


class BrownianPath(_Offset):
    """torchsde's ``BrownianPath(t0, w0, window_size=8)``: a BrownianInterval on [t0, t1]
    (t1 defaults to t0 + 1, as in torchsde) with W(t0) = w0 that keeps every evaluated point
    (unbounded cache). ``window_size`` is ignored. odecore extensions: ``entropy`` and ``t1``
    keywords. Queries after t1 raise ValueError (torchsde clamps them to t1 with a warning)."""

    def __init__(
        self, t0: Time, w0: torch.Tensor, window_size: int = 8, *, entropy: int | None = None, t1: Time | None = None
    ):
        _check_w0(w0, "BrownianPath")
        t0 = _finite(t0, "t0")
        t1 = t0 + 1.0 if t1 is None else t1
        super().__init__(
            t0=t0, t1=t1, size=w0.shape, dtype=w0.dtype, device=w0.device, entropy=entropy, cache_size=None
        )
        self._init_offset(w0)


class ReverseBrownian:
    """torchsde's ReverseBrownian: the motion of ``base`` seen in reversed time,
    ``rbm(ta, tb) = base(-tb, -ta)`` (for adjoint solves, which run in -t)."""

    def __init__(self, base_brownian: BrownianInterval):
        self.base_brownian = base_brownian

    def __call__(
        self, ta: Time, tb: Time | None = None, return_U: bool = False, return_A: bool = False
    ) -> torch.Tensor | tuple:
        if tb is None:
            raise ValueError("ReverseBrownian needs an interval query rbm(ta, tb)")
        return self.base_brownian(-_scalar(tb, "tb"), -_scalar(ta, "ta"), return_U=return_U, return_A=return_A)

    def __repr__(self):
        return "%s(base_brownian=%r)" % (type(self).__name__, self.base_brownian)

    @property
    def dtype(self):
        return self.base_brownian.dtype

    @property
    def device(self):
        return self.base_brownian.device

    @property
    def shape(self):
        return self.base_brownian.shape

    def size(self):
        return self.base_brownian.shape

    @property
    def levy_area_approximation(self):
        return self.base_brownian.levy_area_approximation

"""The synthetic spiral data set of Chen et al. 2018, section 5.1.

Chen, Rubanova, Bettencourt & Duvenaud, "Neural Ordinary Differential Equations",
NeurIPS 2018, section 5.1: 2-D spirals, half clockwise and half counter-clockwise, each
observed at ``nsample`` equally spaced times from a random starting point, with Gaussian
observation noise. The curves follow torchdiffeq's examples/latent_ode.py, so a model
trained on either generator sees the same distribution.
"""

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

__all__ = ["SpiralFunc", "generate_spiral2d", "spiral_curves"]


def spiral_curves(
    ts: npt.ArrayLike, stop: float = 1.0, a: float = 0.0, b: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The two noise-free curves at the times ``ts`` (a numpy array), each (len(ts), 2):

    - counter-clockwise, centred at (5, 0): the Archimedean spiral r = a + b theta with
      theta = t (the angle grows with t);
    - clockwise, centred at (-5, 0): r = a + 50 b / theta with theta = stop + 1 - t (the
      angle falls with t, from stop + 1 at t = 0, so theta >= 1 for t in [0, stop]).
    """
    ts = np.asarray(ts, dtype=np.float64)
    theta_cw = stop + 1.0 - ts
    r_cw = a + 50.0 * b / theta_cw
    clockwise = np.stack([r_cw * np.cos(theta_cw) - 5.0, r_cw * np.sin(theta_cw)], axis=1)
    theta_cc = ts
    r_cc = a + b * theta_cc
    counter_clockwise = np.stack([r_cc * np.cos(theta_cc) + 5.0, r_cc * np.sin(theta_cc)], axis=1)
    return clockwise, counter_clockwise


def generate_spiral2d(
    nspiral: int = 1000,
    ntotal: int = 500,
    nsample: int = 100,
    start: float = 0.0,
    stop: float = 1,
    noise_std: float = 0.1,
    a: float = 0.0,
    b: float = 1.0,
    savefig: bool = False,
    seed: int | np.random.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy clockwise / counter-clockwise spirals (Chen et al. 2018, section 5.1).

    The time grid ``orig_ts`` has ``ntotal`` points from ``start`` to ``stop``; each spiral
    picks its direction with probability 1/2 (see :func:`spiral_curves`) and a random start
    index in ``[nsample, ntotal - nsample)`` (away from both ends; any start that fits when
    ``ntotal < 2 nsample + 1``), and is observed at the ``nsample`` consecutive grid points
    from there with N(0, noise_std^2) noise on each coordinate. The observation times are
    ``samp_ts = orig_ts[:nsample]``: every trajectory is seen as starting at ``start``.

    Args:
        seed: an int (or ``numpy.random.Generator``) for a reproducible draw; ``None`` draws
            from numpy's global random state (``np.random.seed`` makes that reproducible,
            as with torchdiffeq's generator).
        savefig: also plot the two curves and the first spiral's observations to
            ``./ground_truth.png`` (needs matplotlib, which odecore does not depend on).
        dtype: the dtype of the returned tensors.

    Returns:
        ``(orig_trajs, samp_trajs, orig_ts, samp_ts)`` as torch tensors of shapes
        (nspiral, ntotal, 2) (each spiral's full noise-free curve), (nspiral, nsample, 2),
        (ntotal,) and (nsample,).
    """
    if nsample < 1 or ntotal < nsample:
        raise ValueError("need 1 <= nsample <= ntotal, got nsample=%d, ntotal=%d" % (nsample, ntotal))
    if noise_std < 0:
        raise ValueError("noise_std must be non-negative, got %r" % (noise_std,))
    if stop + 1.0 - start <= 0:
        raise ValueError("the clockwise spiral needs stop + 1 - t > 0 on [start, stop]")
    if seed is None:
        rng = np.random  # the global RandomState, through its module-level functions
        integers, uniform = rng.randint, rng.random_sample
    else:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        integers, uniform = rng.integers, rng.random

    orig_ts = np.linspace(start, stop, num=ntotal)
    samp_ts = orig_ts[:nsample]
    clockwise, counter_clockwise = spiral_curves(orig_ts, stop=stop, a=a, b=b)

    low, high = (nsample, ntotal - nsample) if ntotal - nsample > nsample else (0, ntotal - nsample + 1)
    first = integers(low, high, size=nspiral)
    is_cc = uniform(nspiral) > 0.5
    orig_trajs = np.where(is_cc[:, None, None], counter_clockwise[None], clockwise[None])
    window = first[:, None] + np.arange(nsample)[None, :]
    samp_trajs = orig_trajs[np.arange(nspiral)[:, None], window]
    samp_trajs = samp_trajs + noise_std * rng.standard_normal(samp_trajs.shape)

    if savefig:
        _plot(clockwise, counter_clockwise, samp_trajs)

    return tuple(torch.as_tensor(np.ascontiguousarray(x)).to(dtype) for x in (orig_trajs, samp_trajs, orig_ts, samp_ts))


def _plot(clockwise, counter_clockwise, samp_trajs):  # pragma: no cover - optional dependency
    try:
        import matplotlib

        matplotlib.use("agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("generate_spiral2d(savefig=True) needs matplotlib") from e
    plt.figure()
    plt.plot(clockwise[:, 0], clockwise[:, 1], label="clock")
    plt.plot(counter_clockwise[:, 0], counter_clockwise[:, 1], label="counter clock")
    if len(samp_trajs):
        plt.scatter(samp_trajs[0, :, 0], samp_trajs[0, :, 1], s=3, c="k", label="first sample")
    plt.legend()
    plt.savefig("./ground_truth.png", dpi=500)
    plt.close()
    print("Saved ground truth spiral at {}".format("./ground_truth.png"))


class SpiralFunc(nn.Module):
    """torchdiffeq examples/ode_demo.py's model: Linear(2, hidden) -> tanh -> Linear(hidden, 2)
    applied to y^3, weights N(0, 0.1), biases 0."""

    def __init__(self, hidden: int = 50) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        for m in self.net.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0, std=0.1)
                nn.init.constant_(m.bias, val=0)

    def forward(self, t: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y**3)

"""The latent ODE time-series model of Chen et al. 2018, section 5, and its ELBO.

Chen, Rubanova, Bettencourt & Duvenaud, "Neural Ordinary Differential Equations",
NeurIPS 2018, section 5 (figure 6): a recognition RNN encodes the observations into
q(z_t0 | x), an ODE carries a sample of z_t0 to the observation times and a decoder maps it
back. Sizes and defaults follow torchdiffeq's examples/latent_ode.py.
"""

import math
from typing import Any

import torch
from torch import nn

from ..adjoint import odeint_adjoint
from ..api import odeint

__all__ = ["RecognitionRNN", "LatentODEfunc", "Decoder", "LatentODE", "log_normal_pdf", "normal_kl", "elbo"]

_LOG_2PI = math.log(2.0 * math.pi)


def log_normal_pdf(x: torch.Tensor, mean: torch.Tensor, logvar: float | torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(logvar))."""
    logvar = torch.as_tensor(logvar, dtype=x.dtype, device=x.device)
    return -0.5 * (_LOG_2PI + logvar + (x - mean) ** 2 / torch.exp(logvar))


def normal_kl(mu1: torch.Tensor, lv1: torch.Tensor, mu2: torch.Tensor, lv2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mu1, exp(lv1)) || N(mu2, exp(lv2))) of diagonal Gaussians."""
    v1, v2 = torch.exp(lv1), torch.exp(lv2)
    return 0.5 * (lv2 - lv1) + (v1 + (mu1 - mu2) ** 2) / (2.0 * v2) - 0.5


def _reduce(value: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return value.mean()
    if reduction == "sum":
        return value.sum()
    if reduction == "none":
        return value
    raise ValueError("reduction must be 'mean', 'sum' or 'none', got %r" % (reduction,))


def elbo(
    samp_trajs: torch.Tensor,
    pred_x: torch.Tensor,
    qz0_mean: torch.Tensor,
    qz0_logvar: torch.Tensor,
    noise_std: float = 0.3,
    reduction: str = "mean",
) -> torch.Tensor:
    """The evidence lower bound of Chen et al. 2018, section 5, per trajectory:
    ``sum_t log N(x_t; pred_x_t, noise_std^2) - KL(q(z_t0 | x) || N(0, I))``.

    ``samp_trajs`` and ``pred_x`` are (B, T, obs_dim), ``qz0_mean``/``qz0_logvar``
    (B, latent_dim). ``reduction``: 'mean' (default; the negative is torchdiffeq's
    latent_ode training loss), 'sum' or 'none' (shape (B,)).
    """
    noise_logvar = 2.0 * math.log(noise_std)
    logpx = log_normal_pdf(samp_trajs, pred_x, noise_logvar).sum(-1).sum(-1)
    kl = normal_kl(qz0_mean, qz0_logvar, torch.zeros_like(qz0_mean), torch.zeros_like(qz0_logvar)).sum(-1)
    return _reduce(logpx - kl, reduction)


class LatentODEfunc(nn.Module):
    """The latent dynamics dz/dt = f(z): an MLP latent_dim -> nhidden -> nhidden ->
    latent_dim with ELU activations (autonomous: ``t`` is ignored). ``nfe`` counts calls."""

    def __init__(self, latent_dim: int = 4, nhidden: int = 20) -> None:
        super().__init__()
        self.elu = nn.ELU(inplace=True)
        self.fc1 = nn.Linear(latent_dim, nhidden)
        self.fc2 = nn.Linear(nhidden, nhidden)
        self.fc3 = nn.Linear(nhidden, latent_dim)
        self.nfe = 0

    def forward(self, t: float | torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        out = self.elu(self.fc1(z))
        out = self.elu(self.fc2(out))
        return self.fc3(out)


class RecognitionRNN(nn.Module):
    """The recognition network: an Elman RNN (tanh) run backwards in time over the
    observations, whose last output holds the mean and log-variance of
    q(z_t0 | x_t0..x_tN) (Chen et al. 2018, section 5).

    ``forward(x, h)`` is one step (x: (B, obs_dim), h: (B, nhidden)) returning
    ``(out, h)`` with out of size 2 latent_dim; :meth:`encode` runs the whole sequence.
    ``nbatch`` is only the default batch size of :meth:`init_hidden`.
    """

    def __init__(self, latent_dim: int = 4, obs_dim: int = 2, nhidden: int = 25, nbatch: int = 1) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.nhidden = nhidden
        self.nbatch = nbatch
        self.i2h = nn.Linear(obs_dim + nhidden, nhidden)
        self.h2o = nn.Linear(nhidden, latent_dim * 2)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.i2h(torch.cat((x, h), dim=1)))
        return self.h2o(h), h

    def init_hidden(
        self, nbatch: int | None = None, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Zero hidden state (nbatch or self.nbatch, nhidden), on the parameters' device
        and dtype unless given."""
        weight = self.i2h.weight
        return torch.zeros(
            self.nbatch if nbatch is None else nbatch,
            self.nhidden,
            dtype=weight.dtype if dtype is None else dtype,
            device=weight.device if device is None else device,
        )

    initHidden = init_hidden  # torchdiffeq's name

    def encode(self, samp_trajs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, obs_dim) observations -> (qz0_mean, qz0_logvar), each (B, latent_dim)."""
        if samp_trajs.dim() != 3 or samp_trajs.shape[1] == 0:
            raise ValueError("samp_trajs must be (batch, time >= 1, obs_dim), got %s" % (tuple(samp_trajs.shape),))
        h = self.init_hidden(samp_trajs.shape[0], samp_trajs.dtype, samp_trajs.device)
        for i in reversed(range(samp_trajs.shape[1])):
            out, h = self(samp_trajs[:, i], h)
        return out[:, : self.latent_dim], out[:, self.latent_dim :]


class Decoder(nn.Module):
    """Latent state -> observation mean: latent_dim -> nhidden -> obs_dim with ReLU."""

    def __init__(self, latent_dim: int = 4, obs_dim: int = 2, nhidden: int = 20) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(latent_dim, nhidden)
        self.fc2 = nn.Linear(nhidden, obs_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(z)))


class LatentODE(nn.Module):
    """The latent ODE of Chen et al. 2018, section 5: :class:`RecognitionRNN` ->
    z_t0 ~ q(z_t0 | x) -> ``odeint`` through :class:`LatentODEfunc` -> :class:`Decoder`,
    trained by maximising :meth:`elbo` (Gaussian observation noise, a standard normal prior
    on z_t0).

    Args:
        latent_dim, obs_dim: sizes of the latent state and of one observation.
        nhidden: hidden units of the dynamics and the decoder; rnn_nhidden: of the RNN.
        noise_std: the observation noise of the likelihood in :meth:`elbo`.
        method, rtol, atol, options: the solver (defaults: dopri5 with odeint's default
            tolerances, as torchdiffeq's latent_ode example).
        adjoint: gradients by the adjoint method (``odeint_adjoint``) instead of direct
            backpropagation through the solver.

    The latent initial state belongs to the first observation time ``samp_ts[0]``
    (the RNN ends its backward pass there); output times ``ts`` given to
    :meth:`forward`/:meth:`decode` start from that time and may run past the observations
    (extrapolation) or, decreasing, before them.
    """

    def __init__(
        self,
        latent_dim: int = 4,
        obs_dim: int = 2,
        nhidden: int = 20,
        rnn_nhidden: int = 25,
        noise_std: float = 0.3,
        method: str = "dopri5",
        rtol: float = 1e-7,
        atol: float = 1e-9,
        options: dict[str, Any] | None = None,
        adjoint: bool = False,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.func = LatentODEfunc(latent_dim, nhidden)
        self.rec = RecognitionRNN(latent_dim, obs_dim, rnn_nhidden)
        self.dec = Decoder(latent_dim, obs_dim, nhidden)
        self.noise_std = noise_std
        self.method, self.rtol, self.atol, self.options, self.adjoint = method, rtol, atol, options, adjoint

    def encode(self, samp_trajs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, obs_dim) -> (qz0_mean, qz0_logvar)."""
        return self.rec.encode(samp_trajs)

    @staticmethod
    def sample_z0(qz0_mean: torch.Tensor, qz0_logvar: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """z0 = mean + exp(logvar / 2) * eps, eps ~ N(0, I) (the mean when ``sample`` is false)."""
        if not sample:
            return qz0_mean
        return qz0_mean + torch.exp(0.5 * qz0_logvar) * torch.randn_like(qz0_mean)

    def decode(self, z0: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """Integrates the latent state z0 (B, latent_dim), at time ts[0], to every time of
        ``ts`` and decodes: (B, len(ts), obs_dim)."""
        ts = ts.to(z0.dtype)
        solve = odeint_adjoint if self.adjoint else odeint
        pred_z = solve(self.func, z0, ts, rtol=self.rtol, atol=self.atol, method=self.method, options=self.options)
        return self.dec(pred_z.permute(1, 0, 2))

    def forward(
        self,
        samp_trajs: torch.Tensor,
        samp_ts: torch.Tensor,
        ts: torch.Tensor | None = None,
        sample: bool = True,
        return_posterior: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Predicted observation means (B, len(ts), obs_dim) at ``ts`` (default
        ``samp_ts``) from the observations ``samp_trajs`` (B, len(samp_ts), obs_dim).
        With ``return_posterior`` also returns ``(qz0_mean, qz0_logvar)``."""
        if samp_trajs.dim() != 3 or samp_trajs.shape[1] != len(samp_ts):
            raise ValueError(
                "samp_trajs must be (batch, len(samp_ts)=%d, obs_dim), got %s" % (len(samp_ts), tuple(samp_trajs.shape))
            )
        qz0_mean, qz0_logvar = self.encode(samp_trajs)
        z0 = self.sample_z0(qz0_mean, qz0_logvar, sample)
        pred_x = self.decode(z0, samp_ts if ts is None else ts)
        return (pred_x, (qz0_mean, qz0_logvar)) if return_posterior else pred_x

    def elbo(
        self, samp_trajs: torch.Tensor, samp_ts: torch.Tensor, sample: bool = True, reduction: str = "mean"
    ) -> torch.Tensor:
        """The ELBO of the observations (one reparameterised sample of z_t0, or its
        posterior mean when ``sample`` is false); the training loss is ``-elbo``."""
        pred_x, (qz0_mean, qz0_logvar) = self(samp_trajs, samp_ts, sample=sample, return_posterior=True)
        return elbo(samp_trajs, pred_x, qz0_mean, qz0_logvar, noise_std=self.noise_std, reduction=reduction)

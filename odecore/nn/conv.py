"""Convolutions that see the time: the layers inside the ODE-Net's dynamics function.

Chen, Rubanova, Bettencourt & Duvenaud, "Neural Ordinary Differential Equations",
NeurIPS 2018, section 3: as in the paper's MNIST experiments (and torchdiffeq's
examples/odenet_mnist.py), the time enters each convolution as one extra, constant channel.
"""

import torch
from torch import nn

__all__ = ["ConcatConv2d", "time_channel"]


def time_channel(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` as a (B, 1, H, W) map shaped like one channel of ``x`` (B, C, H, W).

    ``t`` may be a Python number, a 0-d / one-element tensor (one time for the batch) or a
    tensor of B times (one per sample). It takes ``x``'s dtype and device.
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.numel() == 1:
        t = t.reshape(1, 1, 1, 1)
    elif t.dim() == 1 and t.numel() == x.shape[0]:
        t = t.reshape(-1, 1, 1, 1)
    else:
        raise ValueError(
            "t must be a scalar or hold one time per sample (%d), got shape %s" % (x.shape[0], tuple(t.shape))
        )
    return t.expand(x.shape[0], 1, x.shape[2], x.shape[3])


class ConcatConv2d(nn.Module):
    """A 2-D convolution (or transposed convolution) of ``[t, x]``: the time ``t`` is
    broadcast to a (B, 1, H, W) channel and concatenated in front of ``x``'s channels, so
    the layer has ``dim_in + 1`` input channels (Chen et al. 2018, section 3).

    ``forward(t, x)``: ``x`` of shape (B, dim_in, H, W); ``t`` a scalar or B times.
    The other arguments are those of :class:`torch.nn.Conv2d` /
    :class:`torch.nn.ConvTranspose2d` (``transpose=True``).
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        ksize: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        transpose: bool = False,
    ) -> None:
        super().__init__()
        module = nn.ConvTranspose2d if transpose else nn.Conv2d
        self.dim_in, self.dim_out, self.transpose = dim_in, dim_out, transpose
        self._layer = module(
            dim_in + 1,
            dim_out,
            kernel_size=ksize,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )

    def forward(self, t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._layer(torch.cat([time_channel(t, x), x], dim=1))

    def extra_repr(self) -> str:
        return "time channel + %d -> %d%s" % (self.dim_in, self.dim_out, ", transpose" if self.transpose else "")

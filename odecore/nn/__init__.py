"""The neural-network models of the papers odecore reproduces, on odecore's solvers.

- Chen, Rubanova, Bettencourt & Duvenaud, "Neural Ordinary Differential Equations", NeurIPS
  2018: the MNIST classifiers of section 3 / Table 1 (:class:`ODENet`, :class:`RKNet`,
  :class:`ResNet` and their parts, after torchdiffeq's examples/odenet_mnist.py) and the
  latent ODE of section 5 with its spiral data (:class:`LatentODE`, :func:`elbo`,
  :func:`generate_spiral2d`, after torchdiffeq's examples/latent_ode.py).
- Kong, Sun & Zhang, "SDE-Net", ICML 2020: :class:`SDENet`, :class:`SDENetRegression`.

``import odecore.nn`` (``import odecore`` does not import it).
"""

from .classifiers import DOWNSAMPLING, ODENet, ResBlock, ResNet, RKNet, downsampling_layers, head_layers
from .conv import ConcatConv2d, time_channel
from .latent_ode import Decoder, LatentODE, LatentODEfunc, RecognitionRNN, elbo, log_normal_pdf, normal_kl
from .odeblock import GRADIENT_MODES, ODEBlock
from .odefunc import ODEFunc, norm
from .sdenet import SDENet, SDENetRegression, euler_maruyama, sdenet_train_step
from .spirals import SpiralFunc, generate_spiral2d, spiral_curves

__all__ = [
    "ConcatConv2d",
    "time_channel",
    "ODEFunc",
    "norm",
    "ODEBlock",
    "GRADIENT_MODES",
    "ResBlock",
    "ODENet",
    "RKNet",
    "ResNet",
    "downsampling_layers",
    "head_layers",
    "DOWNSAMPLING",
    "RecognitionRNN",
    "LatentODEfunc",
    "Decoder",
    "LatentODE",
    "elbo",
    "log_normal_pdf",
    "normal_kl",
    "SpiralFunc",
    "generate_spiral2d",
    "spiral_curves",
    "SDENet",
    "SDENetRegression",
    "euler_maruyama",
    "sdenet_train_step",
]

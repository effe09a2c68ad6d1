"""Neural-network modules of Chen, Rubanova, Bettencourt & Duvenaud, "Neural Ordinary
Differential Equations", NeurIPS 2018, on odecore's solvers.

- Section 3 / Table 1 (MNIST): :class:`ConcatConv2d`, :class:`ODEFunc`, :class:`ODEBlock`
  (gradients by the adjoint, by direct backpropagation or by checkpointed backpropagation),
  the classifiers :class:`ODENet`, :class:`RKNet`, :class:`ResNet` and their
  :class:`ResBlock`. Layer layout and parameter names follow torchdiffeq's
  examples/odenet_mnist.py. Default downsampling is ``'res'`` (0.233M / 0.601M parameters
  for ODE-Net / ResNet at MNIST size, the paper's 0.22M / 0.60M); ``'conv'`` gives
  0.208M / 0.577M.
- Section 5 (latent ODEs for time series): :class:`RecognitionRNN`,
  :class:`LatentODEfunc`, :class:`Decoder`, :class:`LatentODE`, :func:`elbo`,
  :func:`log_normal_pdf`, :func:`normal_kl` and the spiral data :func:`generate_spiral2d`,
  following torchdiffeq's examples/latent_ode.py.

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

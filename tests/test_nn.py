"""odecore.nn: the models of Chen et al. 2018 ("Neural Ordinary Differential Equations")
on odecore's solvers. ConcatConv2d against a hand-built convolution, ODEFunc/ODEBlock
shapes and nfe counters (against the solver statistics, the odefunc's own counter and
fixed-grid arithmetic), the three gradient modes against each other and against finite
differences, the Table 1 parameter counts, the classifiers (forward/backward at MNIST and
digits size, torchdiffeq-compatible state dicts), the spiral data (shapes, seeds, noise,
curves) and the latent ODE (ELBO against torch.distributions, training)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import odecore
import odecore.nn as onn

from .testing import dtypes, max_abs_err, product

GRADIENTS = list(onn.GRADIENT_MODES)
DOWNSAMPLINGS = list(onn.DOWNSAMPLING)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def smooth_func(dim=4, seed=0):
    """A tiny float64 ODEFunc with a smooth activation (ReLU's kinks make tight-tolerance
    adaptive solves reject most steps and slow the adjoint's convergence)."""
    torch.manual_seed(seed)
    return onn.ODEFunc(dim, activation=nn.Softplus()).double()


def param_grads(module):
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])


# --------------------------------------------------------------------------- #
# ConcatConv2d
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype,transpose", product(dtypes, [False, True]))
def test_concat_conv2d_matches_hand_built_convolution(dtype, transpose):
    torch.manual_seed(0)
    layer = onn.ConcatConv2d(3, 5, ksize=3, stride=2, padding=1, transpose=transpose).to(dtype)
    x = torch.randn(2, 3, 7, 7, dtype=dtype)
    t = 0.7
    out = layer(torch.tensor(t, dtype=dtype), x)
    expected_hw = 13 if transpose else 4  # (7-1)*2-2+3 or floor((7+2-3)/2)+1
    assert out.shape == (2, 5, expected_hw, expected_hw)
    assert out.dtype == dtype

    # independent: the time is a constant first input channel
    inp = torch.cat([torch.full((2, 1, 7, 7), t, dtype=dtype), x], 1)
    conv = F.conv_transpose2d if transpose else F.conv2d
    ref = conv(inp, layer._layer.weight, layer._layer.bias, stride=2, padding=1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert max_abs_err(out, ref) < tol

    # the time channel is used: moving t changes the output (by a conv of a constant map)
    out0 = layer(0.0, x)
    assert max_abs_err(out0, out) > 1e-3
    w_t = layer._layer.weight[:, :1] if not transpose else layer._layer.weight[:1]
    shift = conv(torch.full((2, 1, 7, 7), t, dtype=dtype), w_t, None, stride=2, padding=1)
    assert max_abs_err(out - out0, shift) < tol


def test_concat_conv2d_per_sample_times_and_bad_t():
    torch.manual_seed(0)
    layer = onn.ConcatConv2d(2, 3, 3, 1, 1).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    out = layer(torch.tensor([0.0, 1.0], dtype=torch.float64), x)
    assert max_abs_err(out[:1], layer(0.0, x[:1])) < 1e-12
    assert max_abs_err(out[1:], layer(1.0, x[1:])) < 1e-12
    with pytest.raises(ValueError, match="one time per sample"):
        layer(torch.zeros(3, dtype=torch.float64), x)


# --------------------------------------------------------------------------- #
# ODEFunc, ODEBlock: shapes and counters
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dim", [4, 64])
def test_odefunc_layout_shape_and_nfe(dim):
    torch.manual_seed(0)
    f = onn.ODEFunc(dim)
    assert f.norm1.num_groups == min(32, dim) and f.norm3.num_channels == dim
    assert f.conv1._layer.in_channels == dim + 1 and f.conv2._layer.out_channels == dim
    # GN, 2 x (GN + ConcatConv(dim+1 -> dim, 3x3, bias))
    assert n_params(f) == 3 * 2 * dim + 2 * ((dim + 1) * dim * 9 + dim)
    h = torch.randn(2, dim, 6, 6)
    assert f.nfe == 0
    out = f(torch.tensor(0.3), h)
    f(0.5, h)
    assert out.shape == h.shape and f.nfe == 2
    # output ends with a GroupNorm (affine weight 1, bias 0 at init): zero mean per group
    groups = out.reshape(2, min(32, dim), -1)
    assert groups.mean(-1).abs().max().item() < 1e-5


@pytest.mark.parametrize("gradient,method", product(GRADIENTS, ["dopri5", "rk4"]))
def test_odeblock_forward_and_nfe_counters(gradient, method):
    f = smooth_func()
    options = dict(step_size=0.25) if method == "rk4" else None
    block = onn.ODEBlock(f, method=method, rtol=1e-6, atol=1e-6, gradient=gradient, options=options)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)

    out = block(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    # independent solve of the same problem
    with torch.no_grad():
        ref, stats = odecore.odeint(
            f,
            x,
            torch.tensor([0.0, 1.0], dtype=torch.float64),
            rtol=1e-6,
            atol=1e-6,
            method=method,
            options=dict(options or {}, return_stats=True),
        )
    assert max_abs_err(out, ref[-1]) < 1e-12
    f.nfe = 0  # the reference solve's calls

    # forward nfe: the solver's own count; rk4 with 4 steps of 0.25 is 4 x 4 evaluations
    assert block.forward_nfe == block.last_stats["nfe"] == stats["nfe"]
    if method == "rk4":
        assert block.forward_nfe == 16
    assert block.backward_nfe == 0

    (out**2).sum().backward()
    assert f.nfe == block.backward_nfe  # every call after forward was made by backward
    if gradient == "direct":
        assert block.backward_nfe == 0  # backprop through the graph evaluates nothing
    elif gradient == "adjoint":
        assert block.backward_nfe == block.last_stats["backward_nfe"] > 0
    else:  # the checkpointed replay re-evaluates the steps
        assert 0 < block.backward_nfe <= block.forward_nfe
    assert x.grad is not None and all(p.grad is not None for p in f.parameters())

    # counters accumulate over calls; reset_nfe zeroes them and the odefunc's counter
    first_forward = block.forward_nfe
    with torch.no_grad():
        block(x)
    assert block.forward_nfe == 2 * first_forward and block.nfe == block.forward_nfe + block.backward_nfe
    block.reset_nfe()
    assert block.forward_nfe == block.backward_nfe == f.nfe == 0


def test_odeblock_settings_time_interval_and_dtype():
    f = smooth_func()
    block = onn.ODEBlock(f, t=(1.0, 0.25), rtol=1e-8, atol=1e-8, gradient="direct")
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    ref = odecore.odeint(f, x, torch.tensor([1.0, 0.25], dtype=torch.float64), rtol=1e-8, atol=1e-8)[-1]
    assert max_abs_err(block(x), ref) < 1e-12
    # settable between calls
    block.method, block.options = "euler", dict(step_size=0.25)
    block.reset_nfe()
    block(x)
    assert block.forward_nfe == 3
    with pytest.raises(ValueError, match="gradient must be one of"):
        block.gradient = "rk"
    with pytest.raises(ValueError, match="gradient must be one of"):
        onn.ODEBlock(f, gradient="backprop")
    # float32 module on float32 input: the integration times follow the input's dtype
    block32 = onn.ODEBlock(onn.ODEFunc(4))
    assert block32(torch.randn(1, 4, 3, 3)).dtype == torch.float32
    assert "integration_time" not in block32.state_dict()


def test_odeblock_matches_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    f = smooth_func(seed=1)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    block = onn.ODEBlock(f, rtol=1e-7, atol=1e-7, gradient="direct")
    with torch.no_grad():
        out = block(x)
        f.nfe = 0
        ref = torchdiffeq.odeint(f, x, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1e-7, atol=1e-7)[-1]
    assert max_abs_err(out, ref) < 1e-10
    assert block.forward_nfe == f.nfe


# --------------------------------------------------------------------------- #
# Gradient modes
# --------------------------------------------------------------------------- #


def block_gradients(func, x, gradient, tol, **kwargs):
    block = onn.ODEBlock(func, rtol=tol, atol=tol, gradient=gradient, **kwargs)
    func.zero_grad()
    x = x.clone().requires_grad_(True)
    out = block(x)
    (out**2).sum().backward()
    return param_grads(func), x.grad.clone(), block


@pytest.mark.parametrize("tol", [1e-8, 1e-10])
def test_gradient_modes_agree(tol):
    f = smooth_func()
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    g_direct, x_direct, _ = block_gradients(f, x, "direct", tol)
    g_adj, x_adj, block = block_gradients(f, x, "adjoint", tol)
    g_ckpt, x_ckpt, ckpt_block = block_gradients(f, x, "checkpoint", tol, checkpoints=3)
    assert ckpt_block.last_stats["checkpoints"] <= 3 < ckpt_block.last_stats["n_steps"]

    scale = max(1.0, g_direct.abs().max().item())
    # the adjoint is the continuous gradient, to about the backward solve's tolerance
    adj_tol = 1e-4 if tol == 1e-8 else 1e-6
    assert max_abs_err(g_adj, g_direct) < adj_tol * scale
    assert max_abs_err(x_adj, x_direct) < adj_tol * scale
    # checkpointed backprop replays the same operations: the same gradient
    assert max_abs_err(g_ckpt, g_direct) < 1e-10 * scale
    assert max_abs_err(x_ckpt, x_direct) < 1e-10 * scale


def test_checkpoint_equals_direct_on_the_paper_odefunc():
    # ReLU dynamics (the paper's): exact agreement does not need smoothness
    torch.manual_seed(0)
    f = onn.ODEFunc(8).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    g_direct, x_direct, _ = block_gradients(f, x, "direct", 1e-6)
    g_ckpt, x_ckpt, _ = block_gradients(f, x, "checkpoint", 1e-6, checkpoints=2)
    assert max_abs_err(g_ckpt, g_direct) < 1e-10 * max(1.0, g_direct.abs().max().item())
    assert max_abs_err(x_ckpt, x_direct) < 1e-10 * max(1.0, x_direct.abs().max().item())


def test_direct_gradient_matches_finite_differences():
    # fixed-grid rk4: the computed solution is a smooth function of the parameters
    f = smooth_func(dim=2)
    block = onn.ODEBlock(f, method="rk4", options=dict(step_size=0.25), gradient="direct")
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    f.zero_grad()
    (block(x) ** 2).sum().backward()
    weight = f.conv1._layer.weight
    torch.manual_seed(3)
    v = torch.randn_like(weight)
    analytic = (weight.grad * v).sum().item()
    eps = 1e-5
    with torch.no_grad():
        weight += eps * v
        plus = (block(x) ** 2).sum().item()
        weight -= 2 * eps * v
        minus = (block(x) ** 2).sum().item()
        weight += eps * v
    numeric = (plus - minus) / (2 * eps)
    assert abs(analytic - numeric) < 1e-6 * max(1.0, abs(numeric))


# --------------------------------------------------------------------------- #
# Classifiers
# --------------------------------------------------------------------------- #

# hand counts: conv stem 640 + 2 x (128 + 65,600); res stem 640 + 2 x (2 x (128 + 36,864) + 4,096);
# ODE block 3 x 128 + 2 x (65 x 64 x 9 + 64); ResBlock 2 x (128 + 36,864); head 128 + 650
EXPECTED_PARAMS = {
    ("conv", "ode"): 132096 + 75392 + 778,
    ("conv", "res"): 132096 + 6 * 73984 + 778,
    ("res", "ode"): 156800 + 75392 + 778,
    ("res", "res"): 156800 + 6 * 73984 + 778,
}


@pytest.mark.parametrize("downsampling", DOWNSAMPLINGS)
def test_parameter_counts_table_1(downsampling):
    ode, res = onn.ODENet(downsampling=downsampling), onn.ResNet(downsampling=downsampling)
    assert n_params(ode) == EXPECTED_PARAMS[downsampling, "ode"]
    assert n_params(res) == EXPECTED_PARAMS[downsampling, "res"]
    assert n_params(onn.RKNet(downsampling=downsampling)) == n_params(ode)
    # Chen et al. 2018, Table 1: ODE-Net / RK-Net 0.22M, ResNet 0.60M
    assert abs(n_params(ode) / 0.22e6 - 1) < 0.1
    assert abs(n_params(res) / 0.60e6 - 1) < 0.1


def test_default_configuration():
    net = onn.ODENet()
    assert net.downsampling == "res" and onn.ResNet().downsampling == "res"
    block = net.ode_block
    assert isinstance(block, onn.ODEBlock) and isinstance(block.odefunc, onn.ODEFunc)
    assert (block.method, block.rtol, block.atol, block.gradient) == ("dopri5", 1e-3, 1e-3, "adjoint")
    # the defaults meet Table 1
    assert abs(n_params(net) / 0.22e6 - 1) < 0.1 and abs(n_params(onn.ResNet()) / 0.60e6 - 1) < 0.1


# spatial size of the ODE block's state: 3x3 valid conv, then two stride-2 halvings
STEM_SIZE = {("res", 28): 7, ("conv", 28): 6, ("res", 8): 2, ("conv", 8): 1}


@pytest.mark.parametrize("downsampling,size", product(DOWNSAMPLINGS, [28, 8]))
def test_odenet_forward_backward(downsampling, size):
    torch.manual_seed(0)
    net = onn.ODENet(downsampling=downsampling)
    x = torch.randn(2, 1, size, size)
    stem = net[: net.stem_length]
    assert type(stem) is nn.Sequential and len(stem) == len(onn.downsampling_layers(1, 64, downsampling))
    hw = STEM_SIZE[downsampling, size]
    assert stem(x).shape == (2, 64, hw, hw)

    logits = net(x)
    assert logits.shape == (2, 10) and bool(torch.isfinite(logits).all())
    assert net.ode_block.forward_nfe > 0
    if hw == 1:
        # digits through the conv stem leave 1x1 maps: GroupNorm then normalises pairs of
        # values and the dynamics are too ill-conditioned to train (direct gradients ~1e7;
        # the adjoint's backward solve diverges, as torchdiffeq's does): forward only
        return
    F.cross_entropy(logits, torch.tensor([3, 7])).backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in net.parameters())
    assert net.ode_block.backward_nfe == net.ode_block.last_stats["backward_nfe"] > 0
    net.reset_nfe()
    assert net.ode_block.nfe == 0
    net.eval()
    with torch.no_grad():
        assert max_abs_err(net(x), logits) < 1e-5


def test_rknet_is_direct_backprop():
    torch.manual_seed(0)
    rk = onn.RKNet(in_channels=3, num_classes=4, dim=8)
    assert rk.ode_block.gradient == "direct" and isinstance(rk, onn.ODENet)
    x = torch.randn(2, 3, 12, 12)
    rk(x).sum().backward()
    assert rk.ode_block.backward_nfe == 0 and rk.ode_block.forward_nfe > 0
    # the same weights in an ODENet with direct gradients: identical gradients
    ode = onn.ODENet(in_channels=3, num_classes=4, dim=8, gradient="direct")
    ode.load_state_dict(rk.state_dict())
    ode(x).sum().backward()
    for p, q in zip(rk.parameters(), ode.parameters()):
        assert torch.equal(p.grad, q.grad)
    with pytest.raises(ValueError, match="direct"):
        onn.RKNet(gradient="adjoint")


def test_resnet_forward_and_resblock():
    torch.manual_seed(0)
    net = onn.ResNet(dim=16)
    assert sum(isinstance(m, onn.ResBlock) for m in net) == 6 + 2  # 6 blocks + 2 in the stem
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    # ResBlock against a functional re-implementation
    block = onn.ResBlock(16, 16).double()
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    h = F.relu(F.group_norm(x, 16, block.norm1.weight, block.norm1.bias))
    h = F.conv2d(h, block.conv1.weight, padding=1)
    h = F.relu(F.group_norm(h, 16, block.norm2.weight, block.norm2.bias))
    h = F.conv2d(h, block.conv2.weight, padding=1)
    assert max_abs_err(block(x), x + h) < 1e-12
    with pytest.raises(ValueError, match="downsampling"):
        onn.ResNet(downsampling="pool")


def test_state_dict_layout_is_torchdiffeqs():
    # examples/odenet_mnist.py: nn.Sequential(*downsampling, ODEBlock(ODEfunc(64)), *head)
    keys = list(onn.ODENet(downsampling="conv").state_dict())
    ode = [
        "7.odefunc.%s.%s" % (layer, k)
        for layer in ("norm1", "conv1._layer", "norm2", "conv2._layer", "norm3")
        for k in ("weight", "bias")
    ]
    expected = (
        ["%d.%s" % (i, k) for i in (0, 1, 3, 4, 6) for k in ("weight", "bias")]
        + ode
        + ["8.weight", "8.bias", "12.weight", "12.bias"]
    )
    assert sorted(keys) == sorted(expected)
    res_keys = set(onn.ResNet().state_dict())
    assert {"1.downsample.weight", "2.conv2.weight", "8.norm2.bias", "9.weight", "13.weight"} <= res_keys


# --------------------------------------------------------------------------- #
# Spiral data
# --------------------------------------------------------------------------- #


def curves(ts, stop, a, b):
    """The two spirals, written out independently (ts: float64 tensor)."""
    th = stop + 1.0 - ts
    r = a + 50.0 * b / th
    cw = torch.stack([r * torch.cos(th) - 5.0, r * torch.sin(th)], 1)
    r = a + b * ts
    cc = torch.stack([r * torch.cos(ts) + 5.0, r * torch.sin(ts)], 1)
    return cw, cc


def test_spirals_shapes_curves_and_directions():
    stop, a, b = 6 * math.pi, 0.0, 0.3
    orig, samp, orig_ts, samp_ts = onn.generate_spiral2d(
        nspiral=200, ntotal=100, nsample=20, stop=stop, a=a, b=b, noise_std=0.0, seed=0, dtype=torch.float64
    )
    assert orig.shape == (200, 100, 2) and samp.shape == (200, 20, 2)
    assert orig_ts.shape == (100,) and samp_ts.shape == (20,) and orig.dtype == torch.float64
    assert torch.equal(samp_ts, orig_ts[:20])
    assert max_abs_err(orig_ts, torch.linspace(0, stop, 100, dtype=torch.float64)) < 1e-12
    cw, cc = curves(orig_ts, stop, a, b)
    is_cc = (orig - cc).abs().amax((1, 2)) < 1e-9
    is_cw = (orig - cw).abs().amax((1, 2)) < 1e-9
    assert bool((is_cc ^ is_cw).all())
    assert 0.35 < is_cc.double().mean().item() < 0.65
    # rotation sense around each spiral's centre
    for traj, centre, sign in ((cc, 5.0, 1.0), (cw, -5.0, -1.0)):
        rel = traj - torch.tensor([centre, 0.0], dtype=torch.float64)
        cross = rel[:-1, 0] * rel[1:, 1] - rel[:-1, 1] * rel[1:, 0]
        assert bool((sign * cross[1:] > 0).all())  # (cc starts at its centre: cross[0] = 0)
    # noise-free samples are windows of the curve, started away from both ends
    starts = []
    for i in range(200):
        d = torch.stack([(orig[i, k : k + 20] - samp[i]).abs().max() for k in range(81)])
        k = int(d.argmin())
        assert d[k].item() < 1e-12
        starts.append(k)
    assert min(starts) >= 20 and max(starts) < 80 and len(set(starts)) > 20


def test_spirals_reproducible_and_noise_level():
    kwargs = dict(nspiral=100, ntotal=60, nsample=15, stop=6 * math.pi, b=0.3, noise_std=0.2)
    first = onn.generate_spiral2d(seed=7, **kwargs)
    again = onn.generate_spiral2d(seed=7, **kwargs)
    other = onn.generate_spiral2d(seed=8, **kwargs)
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    assert not torch.equal(first[1], other[1])
    assert first[1].dtype == torch.float32
    # seed=None draws from numpy's global state (np.random.seed makes it reproducible)
    np.random.seed(5)
    g1 = onn.generate_spiral2d(**kwargs)
    np.random.seed(5)
    g2 = onn.generate_spiral2d(**kwargs)
    assert torch.equal(g1[1], g2[1])
    # residual noise: match each sample to its window of the curve
    orig, samp = first[0].double(), first[1].double()
    residuals = []
    for i in range(len(samp)):
        d = torch.stack([((orig[i, k : k + 15] - samp[i]) ** 2).sum() for k in range(60 - 15 + 1)])
        k = int(d.argmin())
        residuals.append(samp[i] - orig[i, k : k + 15])
    res = torch.stack(residuals)
    assert abs(res.std().item() / 0.2 - 1) < 0.1 and abs(res.mean().item()) < 0.03


# --------------------------------------------------------------------------- #
# Latent ODE
# --------------------------------------------------------------------------- #


def test_log_normal_pdf_and_kl_against_torch_distributions():
    torch.manual_seed(0)
    x, m1, m2 = torch.randn(3, 5, dtype=torch.float64).unbind(0)
    lv1, lv2 = torch.randn(2, 5, dtype=torch.float64).unbind(0)
    d1 = torch.distributions.Normal(m1, torch.exp(0.5 * lv1))
    d2 = torch.distributions.Normal(m2, torch.exp(0.5 * lv2))
    assert max_abs_err(onn.log_normal_pdf(x, m1, lv1), d1.log_prob(x)) < 1e-12
    assert max_abs_err(onn.normal_kl(m1, lv1, m2, lv2), torch.distributions.kl_divergence(d1, d2)) < 1e-12


def tiny_spirals(n=6):
    orig, samp, orig_ts, samp_ts = onn.generate_spiral2d(
        nspiral=n, ntotal=40, nsample=10, stop=6 * math.pi, b=0.3, noise_std=0.1, seed=0
    )
    return samp, samp_ts


def test_latent_ode_forward_and_elbo():
    torch.manual_seed(0)
    samp, samp_ts = tiny_spirals()
    model = onn.LatentODE(rtol=1e-5, atol=1e-5)
    assert model.rec.h2o.out_features == 8 and model.rec.nhidden == 25 and model.func.fc2.in_features == 20
    pred = model(samp, samp_ts)
    assert pred.shape == samp.shape
    # extrapolation past the observations
    assert model(samp, samp_ts, ts=torch.linspace(0, 2 * float(samp_ts[-1]), 15)).shape == (6, 15, 2)

    # the ELBO against an independent computation with torch.distributions
    pred, (mean, logvar) = model(samp, samp_ts, sample=False, return_posterior=True)
    logpx = torch.distributions.Normal(pred, 0.3).log_prob(samp).sum((1, 2))
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    per_traj = model.elbo(samp, samp_ts, sample=False, reduction="none")
    assert per_traj.shape == (6,)
    assert max_abs_err(per_traj, logpx - kl) < 1e-3
    value = model.elbo(samp, samp_ts)  # one reparameterised sample
    assert value.dim() == 0 and math.isfinite(value.item())
    (-value).backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    assert model.rec.i2h.weight.grad.abs().sum() > 0 and model.func.fc1.weight.grad.abs().sum() > 0

    # the recognition RNN reads the sequence backwards: its last input is the first observation
    h = model.rec.init_hidden(6)
    for i in reversed(range(10)):
        out, h = model.rec(samp[:, i], h)
    assert max_abs_err(torch.cat(model.encode(samp), 1), out) < 1e-6


def test_latent_ode_adjoint_gradients_match_direct():
    torch.manual_seed(0)
    samp, samp_ts = tiny_spirals(3)
    samp, samp_ts = samp.double(), samp_ts.double()
    grads = []
    for adjoint in (False, True):
        torch.manual_seed(1)
        model = onn.LatentODE(rtol=1e-10, atol=1e-10, adjoint=adjoint).double()
        (-model.elbo(samp, samp_ts, sample=False)).backward()
        grads.append(param_grads(model))
    assert max_abs_err(grads[1], grads[0]) < 1e-6 * max(1.0, grads[0].abs().max().item())


def test_latent_ode_training_decreases_loss():
    torch.manual_seed(0)
    samp, samp_ts = tiny_spirals(8)
    model = onn.LatentODE(rtol=1e-4, atol=1e-4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss():
        return -model.elbo(samp, samp_ts, sample=False)

    with torch.no_grad():
        initial = loss().item()
    for _ in range(15):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    with torch.no_grad():
        final = loss().item()
    assert math.isfinite(final) and final < 0.9 * initial

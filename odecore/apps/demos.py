"""`odecore demo`: small runs that show the solvers and models at work, each writing a PNG.

- ``vdp``: Van der Pol solved with every method on both backends (a table, no training).
- ``spiral``: learn the spiral dynamics y' = (y^3) A from one trajectory, as torchdiffeq's
  examples/ode_demo.py (Chen et al. 2018); plots the true and fitted trajectories.
- ``latent``: a latent ODE on noisy spirals (Chen et al. 2018, section 5); plots
  reconstructions and extrapolations.
"""

import argparse
import math
import os
import time

import numpy as np
import torch

from .. import odeint, odeint_adjoint
from ..nn import LatentODE, SpiralFunc, generate_spiral2d
from ..solvers import SOLVERS, AdaptiveRKSolver
from .outputs import plot_line, pyplot, save_figure

# the explicit fixed-grid Runge-Kutta methods the vdp table shows beside the adaptive ones
FIXED = {"euler", "midpoint", "heun2", "heun3", "rk4"}


def demo_vdp(args: argparse.Namespace) -> int:
    """Van der Pol solved by every explicit Runge-Kutta method on both backends: a table."""
    torch.manual_seed(0)
    y0 = torch.randn(args.batch, 2, dtype=torch.float64)
    t = torch.linspace(0.0, 8.2, 50, dtype=torch.float64)

    def van_der_pol(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, 2.0 * (1 - x * x) * v - x], dim=-1)

    print("Van der Pol (mu=2), batch %d, t in [0, 8.2], rtol=atol=1e-6" % args.batch)
    print("%-14s %6s %7s %10s %10s %12s" % ("method", "nfe", "steps", "fused ms", "ref ms", "max |diff|"))
    # the implicit, multistep and scipy methods are other demos' business
    methods = [m for m, cls in SOLVERS.items() if issubclass(cls, AdaptiveRKSolver) or m in FIXED]
    for method in methods:
        options = {"step_size": 0.01} if method in FIXED else {}
        results = {}
        for backend in ("fused", "reference"):
            start = time.perf_counter()
            y, stats = odeint(
                van_der_pol,
                y0,
                t,
                rtol=1e-6,
                atol=1e-6,
                method=method,
                options=dict(options, backend=backend, return_stats=True),
            )
            results[backend] = (y, stats, (time.perf_counter() - start) * 1e3)
        (yf, stats, tf), (yr, _, tr) = results["fused"], results["reference"]
        print(
            "%-14s %6d %7d %10.2f %10.2f %12.2e"
            % (method, stats["nfe"], stats["n_steps"], tf, tr, (yf - yr).abs().max().item())
        )
    return 0


def save_demo_figure(fig, out: str, name: str) -> int:
    """Writes <out>/<name>, says so; the demo's exit status."""
    print("wrote", save_figure(fig, os.path.join(out, name)))
    return 0


def demo_spiral(args: argparse.Namespace) -> int:
    """Learns the spiral dynamics from one trajectory; spiral.png shows the true and fitted one."""
    torch.manual_seed(args.seed)
    true_a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])
    true_y0 = torch.tensor([[2.0, 0.0]])
    t = torch.linspace(0.0, 25.0, 1000)
    with torch.no_grad():
        true_y = odeint(lambda t, y: (y**3) @ true_a, true_y0, t, method="dopri5")
    func = SpiralFunc()
    optimizer = torch.optim.RMSprop(func.parameters(), lr=1e-3)
    solve = odeint_adjoint if args.adjoint else odeint
    start = time.perf_counter()
    for itr in range(1, args.iterations + 1):
        s = torch.from_numpy(np.random.RandomState(itr).choice(990, 20, replace=False))
        batch_y0, batch_t, batch_y = true_y[s], t[:10], torch.stack([true_y[s + i] for i in range(10)], dim=0)
        optimizer.zero_grad()
        pred_y = solve(func, batch_y0, batch_t, rtol=1e-6, atol=1e-6)
        loss = (pred_y - batch_y).abs().mean()
        loss.backward()
        optimizer.step()
        if itr % max(1, args.iterations // 10) == 0 or itr == args.iterations:
            with torch.no_grad():
                full = odeint(func, true_y0, t, rtol=1e-6, atol=1e-6)
            print(
                "iteration %4d  batch loss %.4f  trajectory loss %.4f  (%.1fs)"
                % (itr, loss.item(), (full - true_y).abs().mean().item(), time.perf_counter() - start)
            )
    fig, (ax1, ax2) = pyplot().subplots(1, 2, figsize=(10, 4))
    plot_line(ax1, t, true_y[:, 0, 0], "g-", label="true x")
    plot_line(ax1, t, full[:, 0, 0], "b--", label="fitted x")
    plot_line(ax1, t, true_y[:, 0, 1], "g-", alpha=0.5, label="true y")
    plot_line(ax1, t, full[:, 0, 1], "b--", alpha=0.5, label="fitted y")
    ax1.set_xlabel("t")
    ax1.legend()
    plot_line(ax2, true_y[:, 0, 0], true_y[:, 0, 1], "g-", label="true")
    plot_line(ax2, full[:, 0, 0], full[:, 0, 1], "b--", label="fitted")
    ax2.set_title("phase portrait")
    ax2.legend()
    return save_demo_figure(fig, args.out, "spiral.png")


def demo_latent(args: argparse.Namespace) -> int:
    """Trains a latent ODE on noisy spirals; latent.png shows a reconstruction and extrapolation."""
    torch.manual_seed(args.seed)
    orig_trajs, samp_trajs, orig_ts, samp_ts = generate_spiral2d(
        nspiral=args.nspiral,
        ntotal=500,
        nsample=100,
        start=0.0,
        stop=6 * math.pi,
        noise_std=0.3,
        a=0.0,
        b=0.3,
        seed=args.seed,
    )
    model = LatentODE(rtol=1e-5, atol=1e-5, adjoint=args.adjoint)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    start = time.perf_counter()
    for itr in range(1, args.iterations + 1):
        optimizer.zero_grad()
        loss = -model.elbo(samp_trajs, samp_ts)
        loss.backward()
        optimizer.step()
        if itr % max(1, args.iterations // 10) == 0 or itr == args.iterations:
            print("iteration %4d  -elbo %.3f  (%.1fs)" % (itr, loss.item(), time.perf_counter() - start))
    with torch.no_grad():
        ts_pos = torch.linspace(0.0, 2 * math.pi, 200)
        ts_neg = torch.linspace(-math.pi, 0.0, 100).flip(0)
        qz0_mean, _ = model.encode(samp_trajs[:1])
        pos = model.decode(qz0_mean, ts_pos)[0]
        neg = model.decode(qz0_mean, ts_neg)[0].flip(0)
    fig, ax = pyplot().subplots(figsize=(5, 5))
    plot_line(ax, orig_trajs[0, :, 0], orig_trajs[0, :, 1], "g", label="true trajectory")
    plot_line(ax, pos[:, 0], pos[:, 1], "r", label="learned trajectory (t > 0)")
    plot_line(ax, neg[:, 0], neg[:, 1], "c", label="learned trajectory (t < 0)")
    ax.scatter(samp_trajs[0, :, 0], samp_trajs[0, :, 1], s=3, label="sampled data")
    ax.legend()
    return save_demo_figure(fig, args.out, "latent.png")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="odecore demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="demo", required=True)
    vdp = sub.add_parser("vdp", help="every method on both backends")
    vdp.add_argument("--batch", type=int, default=256)
    spiral = sub.add_parser("spiral", help="learn the spiral dynamics (PNG of fitted trajectories)")
    latent = sub.add_parser("latent", help="latent ODE on noisy spirals (PNG of reconstructions)")
    for p, iterations in ((spiral, 300), (latent, 1000)):
        p.add_argument("--iterations", type=int, default=iterations)
        p.add_argument("--adjoint", action="store_true")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", default="runs/demo")
    latent.add_argument("--nspiral", type=int, default=300)
    args = parser.parse_args(argv)
    for name in ("batch", "iterations", "nspiral"):
        if getattr(args, name, 1) < 1:
            parser.error("--%s must be positive" % name)
    return {"vdp": demo_vdp, "spiral": demo_spiral, "latent": demo_latent}[args.demo](args)

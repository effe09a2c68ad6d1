"""sdeint_adjoint's adjoint_method='adjoint_reversible_heun': exact gradients of the reversible
Heun solution (odecore.sde.methods.ReversibleHeun) by running its steps backwards.

Kidger, Foster, Li & Lyons, "Efficient and Accurate Gradients for Neural SDEs", NeurIPS 2021;
torchsde 0.2.6's AdjointReversibleHeun. The forward step from (y0, f0, g0, z0) is

    z1 = 2 y0 - z0 + f0 h + g0 dW,   (f1, g1) = (f, g)(t1, z1),   y1 = y0 + (f0 + f1) h / 2 + (g0 + g1) dW / 2,

and it inverts algebraically: z0 = 2 y1 - z1 - f1 h - g1 dW, (f0, g0) = (f, g)(t0, z0),
y0 = y1 - (f0 + f1) h / 2 - (g0 + g1) dW / 2. So the backward pass rebuilds every state from the
last one (memory constant in the number of steps) and back-propagates through each step
exactly: one evaluation of f_and_g with its vector-Jacobian product a step.

Unlike torchsde, which steps backwards by dt from each output time (exact only where the output
times lie on the step grid, and not for adaptive steps: it warns), the steps are the recorded
forward ones (a Trajectory) and outputs between two steps pass their gradient to both through
the interpolation weights, so the gradients are those of the forward solution in every case.
"""

import torch

from .sdeint import Trajectory
from .system import SDESystem


def _evaluate(system, t, z, params):
    """(f, g) at (t, z) with their graph to z (a fresh leaf) and the parameters."""
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        f, g = system.f_and_g(t, leaf)
    return f, g, leaf


def _vjp(graph, adj_f, adj_g, params):
    """(adj_f . df/dz + adj_g . dg/dz, the same over each parameter) for graph = (f, g, z)."""
    f, g, leaf = graph
    pairs = [(o, w) for o, w in ((f, adj_f), (g, adj_g)) if o.requires_grad]
    inputs = (leaf,) + tuple(params)
    grads = (None,) * len(inputs)
    if pairs:
        grads = torch.autograd.grad([o for o, _ in pairs], inputs, [w for _, w in pairs], allow_unused=True)
    return [torch.zeros_like(x) if v is None else v for x, v in zip(inputs, grads)]


def reversible_heun_gradients(
    system: SDESystem,
    bm,
    params: tuple,
    ys: torch.Tensor,
    final: tuple,
    grad_ys: torch.Tensor,
    grad_final: tuple,
    trajectory: Trajectory,
) -> tuple:
    """(dL/dy0, dL/d(f0, g0, z0), dL/d each parameter) of the reversible Heun solution `ys` whose
    steps and output weights `trajectory` recorded, `final` its last extra state (f, g, z),
    given dL/dys and dL/d(final)."""
    like = ys[0]
    time = lambda t: torch.scalar_tensor(t, dtype=like.dtype, device=like.device)  # noqa: E731
    uses = {}  # state index -> [(output, weight)]
    resets = {}  # state index -> the output saved exactly there
    for j, (i_prev, w_prev, i_curr, w_curr) in enumerate(trajectory.outputs):
        uses.setdefault(i_curr, []).append((j, w_curr))
        if w_prev != 0.0:
            uses.setdefault(i_prev, []).append((j, w_prev))
        else:
            resets[i_curr] = j
    f, g, z = final
    y = ys[-1]
    adj_y = torch.zeros_like(y)
    adj_f, adj_g, adj_z = grad_final
    adj_params = [torch.zeros_like(q) for q in params]
    steps = trajectory.steps
    graph = _evaluate(system, time(steps[-1][1]), z, params) if steps else None
    for k in range(len(steps), 0, -1):
        for j, w in uses.get(k, ()):
            adj_y = adj_y + w * grad_ys[j]
        if k in resets:
            y = ys[resets[k]]  # the saved forward value (the rebuilt one differs by rounding)
        t0, t1 = steps[k - 1]
        h, dw = t1 - t0, bm(t0, t1)
        half = system.adjoint_of_prod(adj_y, 0.5 * dw)
        adj_f, adj_g = adj_f + adj_y * (0.5 * h), adj_g + half  # y1's dependence on f1, g1
        vjp_z, *vjp_params = _vjp(graph, adj_f, adj_g, params)  # (f1, g1) = F(t1, z1)
        adj_z = adj_z + vjp_z
        adj_params = [a + v for a, v in zip(adj_params, vjp_params)]
        z = 2 * y - z - f * h - system.prod(g, dw)  # the step run backwards
        graph = _evaluate(system, time(t0), z, params)
        f0, g0 = graph[0].detach(), graph[1].detach()
        y = y - (f0 + f) * (0.5 * h) - system.prod(g0 + g, 0.5 * dw)
        f, g = f0, g0
        # the adjoints of (y0, f0, g0, z0) through z1 and y1
        adj_y, adj_z, adj_f, adj_g = (
            adj_y + 2 * adj_z,
            -adj_z,
            adj_y * (0.5 * h) + adj_z * h,
            half + system.adjoint_of_prod(adj_z, dw),
        )
    for j, w in uses.get(0, ()):
        adj_y = adj_y + w * grad_ys[j]
    return adj_y, (adj_f, adj_g, adj_z), adj_params

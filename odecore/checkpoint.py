"""Exact gradients in bounded memory: backpropagation through the solver from at most N
step checkpoints (``odeint(..., options={'checkpoint': N})``).

Direct backprop through `odeint` keeps every step's graph alive until backward: memory
grows with the number of steps. Here the forward pass runs without a graph, records the
accepted steps (their times and sizes: a few floats each) and keeps the state at no more
than N of them, spaced evenly (the spacing doubles whenever N would be exceeded, so it is
never more than twice the best spacing for the final step count). The backward pass
replays the steps between consecutive checkpoints with a graph, from the last segment to
the first, and backpropagates through each: the same operations on the same values as
direct backprop, so the same gradient, for one extra forward pass of compute. This is the
idea of diffrax's checkpointed backpropagation (Kidger, "On Neural Differential
Equations", 2021, section 5.1), with evenly thinned rather than binomial checkpoints.

Like ``torch.utils.checkpoint(use_reentrant=True)``, the backward pass runs
``torch.autograd.backward`` on each replayed segment: parameters of ``func`` receive their
gradients in ``.grad`` (use ``loss.backward()``; ``torch.autograd.grad`` with respect to
them does not see those) and the gradient for ``y0`` flows back as usual.
"""

import torch


class Recorder:
    """Told by a solver of each accepted step and of the outputs after it; keeps the state
    at the start of at most `limit` evenly spaced steps."""

    def __init__(self, limit):
        self.limit = limit
        self.steps = []
        self.emits = []
        self.stride = 1
        self.saved = {}  # step index -> (y, f) at its start

    def step(self, info, y, f):
        index = len(self.steps)
        if index % self.stride == 0:
            self.saved[index] = (y, f)
            if len(self.saved) > self.limit:
                self.stride *= 2
                self.saved = {i: v for i, v in self.saved.items() if i % self.stride == 0}
        self.steps.append(info)
        self.emits.append([])

    def outputs(self, times):
        self.emits[-1].extend(times)


def checkpointed_solve(factory, y0, limit):
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(
            "options['checkpoint'] must be a positive int (the most step checkpoints kept), got %r" % (limit,)
        )
    stats = {}
    # the dummy input makes the graph node exist even when only func's parameters need grad
    solution = _CheckpointedSolve.apply(factory, limit, stats, y0, torch.empty(0, requires_grad=True))
    return solution, stats


class _CheckpointedSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, factory, limit, stats, y0, _dummy):
        recorder = Recorder(limit)
        with torch.no_grad():
            solver = factory(y0)
            solution = factory.integrate(solver, recorder)
        stats.update(solver.stats())
        stats["checkpoints"] = len(recorder.saved)
        indices = sorted(recorder.saved)
        has_f = recorder.saved[indices[0]][1] is not None if indices else False
        saved = []
        for i in indices:
            y, f = recorder.saved[i]
            saved += [y, f] if has_f else [y]
        ctx.save_for_backward(*saved)
        ctx.factory, ctx.steps, ctx.emits, ctx.indices, ctx.has_f = (
            factory,
            recorder.steps,
            recorder.emits,
            indices,
            has_f,
        )
        return solution

    @staticmethod
    def backward(ctx, grad_solution):
        factory, steps, emits, indices = ctx.factory, ctx.steps, ctx.emits, ctx.indices
        saved = ctx.saved_tensors
        width = 2 if ctx.has_f else 1
        rows = [1]  # output row of the first output after each step
        for times in emits:
            rows.append(rows[-1] + len(times))
        grad_y = grad_f = None
        grad_y0 = grad_solution[0].clone()
        for s in range(len(indices) - 1, -1, -1):
            start, stop = indices[s], indices[s + 1] if s + 1 < len(indices) else len(steps)
            with torch.enable_grad():
                y = saved[width * s].detach().requires_grad_(True)
                solver = factory(y)
                if not ctx.has_f:
                    f = None
                elif s == 0:  # the first derivative, recomputed on the graph as the forward pass did
                    f = solver.func(factory.times[0], y)
                else:
                    f = saved[width * s + 1].detach().requires_grad_(True)
                chunks, y_end, f_end = solver.replay(y, f, steps[start:stop], emits[start:stop])
                outputs = torch.cat(chunks) if chunks else None
            tensors, grads = [], []
            if outputs is not None:
                tensors.append(outputs)
                grads.append(grad_solution[rows[start] : rows[stop]])
            for tensor, grad in ((y_end, grad_y), (f_end, grad_f)):
                if grad is not None:
                    tensors.append(tensor)
                    grads.append(grad)
            if tensors:
                torch.autograd.backward(tensors, grads)
            grad_y = y.grad if y.grad is not None else torch.zeros_like(y)
            grad_f = f.grad if f is not None and f.is_leaf else None
        grad_y0 += grad_y
        return None, None, None, grad_y0, None

"""Counting what a solve does besides its wall time: vector-field calls and steps
(:class:`CountingFunc`), dispatched ops and host reads inside and outside ``func``
(:class:`OpCounter`), CUDA synchronisations (:class:`CudaSyncWarnings`) and profiled
kernels (:func:`count_kernels`). Definitions of the counts: benchmarks/README.md.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from .timing import grad_context, synchronize


class BudgetExceeded(Exception):
    """Raised from inside ``func`` when a solve runs past its deadline (``--case-budget``)."""


def per(total: float | None, count: int | None) -> float | None:
    """``total / count``; None when the total is missing or the count is 0 or missing."""
    return None if total is None or not count else total / count


# Ops that read device memory on the host: .item() / float() / bool(tensor) all end in
# _local_scalar_dense; the others have an output whose size depends on the data (a sync on CUDA).
_HOST_READ_OPS = frozenset(
    {
        "aten._local_scalar_dense",
        "aten.nonzero",
        "aten.masked_select",
        "aten._unique2",
        "aten.unique_dim",
        "aten.unique_consecutive",
        "aten.equal",
        "aten.nonzero_static",
    }
)
_COPY_OPS = frozenset({"aten._to_copy", "aten.copy_"})


def _is_device_to_host(name, args, out) -> bool:
    if name == "aten._to_copy":
        src, dst = (args[0] if args else None), out
    else:  # copy_(dst, src)
        dst, src = (args[0] if args else None), (args[1] if len(args) > 1 else None)
    return (
        isinstance(src, torch.Tensor)
        and isinstance(dst, torch.Tensor)
        and src.device.type not in ("cpu", "meta")
        and dst.device.type == "cpu"
    )


class OpCounter(TorchDispatchMode):
    """Counts the ops dispatched (ATen and custom ``odecore::`` ops, below autograd) and the
    host reads, in two buckets: ``"func"`` while inside :meth:`in_func` (the user's vector
    field; :class:`CountingFunc` enters it around every call) and ``"solver"`` otherwise.

    A host read is one ``aten._local_scalar_dense`` (``.item()``, ``float()``, ``bool()`` of a
    tensor), one ``Tensor.tolist()`` call (patched while the counter is active: on the CPU it
    dispatches nothing), one copy from a device to the CPU, or one op whose output size depends
    on the data (``nonzero``, ``masked_select``, ``unique``, ``equal``). On CUDA each is a
    device-to-host synchronisation; on the CPU they are the reads that would be.

    Usage::

        with OpCounter() as c:
            ...
        c.ops["solver"]       # Counter {'aten.mul.Tensor': 3, 'odecore.rk_stage.default': 6, ...}
        c.n_ops("solver"), c.host_reads["solver"]
    """

    def __init__(self):
        super().__init__()
        self.ops: dict[str, Counter] = {"solver": Counter(), "func": Counter()}
        self.host_reads: dict[str, int] = {"solver": 0, "func": 0}
        self.host_read_ops: dict[str, Counter] = {"solver": Counter(), "func": Counter()}
        self.where = "solver"
        self._paused = 0
        self._saved_tolist = None

    def n_ops(self, where: str = "solver") -> int:
        return sum(self.ops[where].values())

    def _host_read(self, what: str):
        self.host_reads[self.where] += 1
        self.host_read_ops[self.where][what] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self._paused:
            self.ops[self.where][str(func)] += 1
            name = str(func.overloadpacket)
            if name in _HOST_READ_OPS:
                self._host_read(str(func))
            elif name in _COPY_OPS and _is_device_to_host(name, args, out):
                self._host_read(str(func) + " (device to host)")
        return out

    @contextlib.contextmanager
    def in_func(self):
        """Ops and reads inside this block go to the ``"func"`` bucket."""
        prev, self.where = self.where, "func"
        try:
            yield
        finally:
            self.where = prev

    def __enter__(self):
        counter = self
        had_own = "tolist" in torch.Tensor.__dict__
        original = torch.Tensor.tolist

        def tolist(tensor, *a, **k):
            counter._host_read("Tensor.tolist")
            counter._paused += 1  # its own copy to the CPU is the same read
            try:
                return original(tensor, *a, **k)
            finally:
                counter._paused -= 1

        self._saved_tolist = (had_own, torch.Tensor.__dict__.get("tolist"))
        torch.Tensor.tolist = tolist
        try:
            return super().__enter__()
        except BaseException:
            self._restore_tolist()
            raise

    def _restore_tolist(self):
        had_own, orig = self._saved_tolist
        if had_own:
            torch.Tensor.tolist = orig
        else:
            del torch.Tensor.tolist
        self._saved_tolist = None

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._restore_tolist()

    def summary(self, steps: int | None, nfe: int | None, top: int = 12) -> dict[str, Any]:
        """Totals, per-step and per-evaluation figures, and the most frequent solver ops."""
        solver, func = self.n_ops("solver"), self.n_ops("func")
        hr_s, hr_f = self.host_reads["solver"], self.host_reads["func"]
        return dict(
            solver_ops=solver,
            func_ops=func,
            solver_ops_per_step=per(solver, steps),
            func_ops_per_eval=per(func, nfe),
            host_reads=hr_s,
            func_host_reads=hr_f,
            host_reads_per_step=per(hr_s, steps),
            custom_ops_per_step=per(sum(v for k, v in self.ops["solver"].items() if not k.startswith("aten.")), steps),
            top_solver_ops=dict(self.ops["solver"].most_common(top)),
            host_read_ops=dict(self.host_read_ops["solver"]),
        )


class CountingFunc(nn.Module):
    """Counts vector-field calls and (torchdiffeq-style) step callbacks.  With a
    ``counter`` (:class:`OpCounter`) each call runs in its ``"func"`` bucket; with a
    ``deadline`` (``time.perf_counter()`` value) a call past it raises :class:`BudgetExceeded`."""

    def __init__(self, func, counter: OpCounter | None = None, deadline: float | None = None):
        super().__init__()
        self.func = func
        self.counter = counter
        self.deadline = deadline
        self.nfe = 0
        self.n_step_callbacks = 0
        self.n_accept_callbacks = 0
        self.n_reject_callbacks = 0

    def forward(self, t, y):
        self.nfe += 1
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise BudgetExceeded(f"solve still running after its time budget ({self.nfe} evaluations)")
        if self.counter is None:
            return self.func(t, y)
        with self.counter.in_func():
            return self.func(t, y)

    # torchdiffeq callbacks (odecore, as a drop-in, may call them too).
    def callback_step(self, t0, y0, dt):
        self.n_step_callbacks += 1

    def callback_accept_step(self, t0, y0, dt):
        self.n_accept_callbacks += 1

    def callback_reject_step(self, t0, y0, dt):
        self.n_reject_callbacks += 1


class AdjointCountingFunc(CountingFunc):
    """CountingFunc that also counts torchdiffeq's backward-pass step callbacks."""

    def __init__(self, func):
        super().__init__(func)
        self.n_step_callbacks_adjoint = 0
        self.n_accept_callbacks_adjoint = 0
        self.n_reject_callbacks_adjoint = 0

    def callback_step_adjoint(self, t0, y0, dt):
        self.n_step_callbacks_adjoint += 1

    def callback_accept_step_adjoint(self, t0, y0, dt):
        self.n_accept_callbacks_adjoint += 1

    def callback_reject_step_adjoint(self, t0, y0, dt):
        self.n_reject_callbacks_adjoint += 1


def _syncs_recorded(log) -> int:
    return sum(1 for w in log if "synchroniz" in str(w.message))


class CudaSyncWarnings:
    """``torch.cuda.set_sync_debug_mode('warn')`` for a block, counting the warnings
    (each one a synchronising CUDA call); other warnings are re-emitted on exit."""

    def __init__(self):
        self.count: int | None = None
        self.ok = False
        self._cm = None
        self._log = None
        self._prev = None

    def __enter__(self):
        self._cm = warnings.catch_warnings(record=True)
        self._log = self._cm.__enter__()
        warnings.simplefilter("always")
        try:
            self._prev = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
            self.ok = True
        except Exception:  # a torch without it: no count
            self.ok = False
        return self

    @property
    def recording(self) -> bool:
        """Whether the block has been entered (so that :meth:`mark` has a log to measure)."""
        return self._log is not None

    def mark(self) -> int:
        return len(self._log)

    def syncs_since(self, mark: int) -> int:
        return _syncs_recorded(self._log[mark:])

    def __exit__(self, *exc):
        if self.ok:
            torch.cuda.set_sync_debug_mode(self._prev)
        log = list(self._log)
        self._cm.__exit__(*exc)
        self.count = _syncs_recorded(log) if self.ok else None
        for w in log:
            if "synchroniz" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return False


class CountingWindow:
    """The block one counted solve runs in: the OpCounter and, on CUDA, the sync warnings."""

    def __init__(self, counter: OpCounter | None, cuda_syncs: CudaSyncWarnings | None):
        self.counter, self.cuda_syncs = counter, cuda_syncs
        self._stack = None

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        if self.cuda_syncs is not None:
            self._stack.enter_context(self.cuda_syncs)
        if self.counter is not None:
            self._stack.enter_context(self.counter)
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)


class SyncSplittingFunc(CountingFunc):
    """CountingFunc that also attributes CUDA sync warnings raised inside ``func`` to it."""

    def __init__(self, func, counter, deadline, cuda_syncs: CudaSyncWarnings):
        super().__init__(func, counter=counter, deadline=deadline)
        self.cuda_syncs = cuda_syncs
        self.func_cuda_syncs = 0

    def forward(self, t, y):
        mark = self.cuda_syncs.mark() if self.cuda_syncs.recording else None
        try:
            return super().forward(t, y)
        finally:
            if mark is not None and self.cuda_syncs.recording:
                self.func_cuda_syncs += self.cuda_syncs.syncs_since(mark)


def count_kernels(run: Callable[[], Any], device, *, grad: bool = False) -> dict[str, Any]:
    """One call of ``run`` under ``torch.profiler``: device kernels, memcpys and memsets, and
    the CUDA runtime's kernel-launch and synchronise calls (counts for the whole call; the
    synchronise calls include the one or two at the end of the profiled block).
    On the CPU only ``cpu_ops`` (profiled top-level and nested op events) is meaningful."""
    device = torch.device(device)
    if device.type == "cuda":
        # CUDA activity only (kernels, memcpys and the runtime calls): CPU op events would
        # multiply the trace and its processing time on the long solves. Should a profiler
        # record no kernels that way, once more with the CPU activity too.
        res = _profile_counts(run, device, grad, [ProfilerActivity.CUDA])
        if res["kernels"] == 0:
            res = _profile_counts(run, device, grad, [ProfilerActivity.CPU, ProfilerActivity.CUDA])
        return res
    return _profile_counts(run, device, grad, [ProfilerActivity.CPU])


def _profile_counts(run, device, grad, acts) -> dict[str, Any]:
    with grad_context(grad):
        synchronize(device)
        with profile(activities=acts) as prof:
            run()
            synchronize(device)
    res = dict(kernels=0, memcpys=0, memsets=0, launch_calls=0, sync_calls=0, cpu_ops=0)
    results = prof.profiler.kineto_results
    if results is None:
        raise RuntimeError("the profiler returned no results")
    device_events = 0
    for e in results.events():
        kind = str(e.activity_type()).lower()
        name = e.name()
        try:
            device_events += e.device_type() != torch.autograd.DeviceType.CPU and "annotation" not in kind
        except Exception:
            pass
        if "memcpy" in kind:
            res["memcpys"] += 1
        elif "memset" in kind:
            res["memsets"] += 1
        elif "kernel" in kind:
            res["kernels"] += 1
        elif "runtime" in kind or "driver" in kind:
            if "LaunchKernel" in name or "cuLaunch" in name:
                res["launch_calls"] += 1
            if "Synchronize" in name:
                res["sync_calls"] += 1
        elif kind == "cpu_op":
            res["cpu_ops"] += 1
    if res["kernels"] == 0 and device_events > res["memcpys"] + res["memsets"]:
        # a profiler that names the activity differently: every other device event is a kernel
        res["kernels"] = device_events - res["memcpys"] - res["memsets"]
    return res
